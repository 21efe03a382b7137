"""Muisti Consent and privacy: purposes, consent ledger, data-subject requests."""
