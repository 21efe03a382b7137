"""The customer preference centre, served by the consent service at /preferences: customers
sign in with a one-time code, see what is held about them, decide each purpose, object to
direct marketing, ask for a correction, an erasure or their data. See
docs/PREFERENCE_CENTRE.md."""
