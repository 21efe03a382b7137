"""HTTP entry point of the profile service."""

from flask import Flask

from services.common import web
from services.common.config import Settings


def create_app(settings: Settings | None = None) -> Flask:
    return web.create_app(service="profile", settings=settings or Settings.from_env())
