"""Muisti Profile: the profile projection, lookup API and the agent dashboard."""
