"""Muisti Social: platform webhooks, pollers, normalisation and complaint detection."""
