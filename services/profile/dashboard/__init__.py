"""The contact-centre agent dashboard, served by the profile API at /dashboard.

``routes`` is the HTTP adapter (page, static files, /v1/dashboard endpoints); ``live`` the pure
fan-out of profile changes and screen pops to open streams; ``stream_tokens`` the signed tokens
EventSource opens a stream with; ``feed`` the per-process Kafka consumer feeding ``live``;
``consents`` the read from the consent service. The page itself is plain HTML, CSS and ES
modules in ``templates/`` and ``static/`` (no build step).
"""

from services.profile.dashboard.routes import api_blueprint, install

__all__ = ["api_blueprint", "install"]
