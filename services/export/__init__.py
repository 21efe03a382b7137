"""Muisti Export: consent-gated partner exports and deletion propagation."""
