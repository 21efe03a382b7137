"""Muisti Identity: channel ingestion for web and phone and the identity graph."""
