"""HTTP entry point of the consent service."""

from flask import Flask

from services.common import web
from services.common.config import Settings
from services.consent.consents_api import consents_blueprint, install_consents
from services.consent.preferences import routes as preferences
from services.consent.privacy_api import install_privacy, privacy_blueprint


def create_app(settings: Settings | None = None) -> Flask:
    app = web.create_app(service="consent", settings=settings or Settings.from_env(),
                         blueprints=[consents_blueprint(), privacy_blueprint()])
    install_consents(app)
    install_privacy(app)
    preferences.install(app)
    return app
