"""`python -m services.profile api|worker|migrate-hetus`"""

import sys

from services.common import hetu_migration
from services.common.runner import service_main
from services.profile.api import create_app
from services.profile.hetu_migration import RULES
from services.profile.worker import build_consumers

DEFAULT_PORT = 8102

if __name__ == "__main__":
    sys.exit(service_main(service="profile", default_port=DEFAULT_PORT, app_factory=create_app,
                          worker_factory=build_consumers,
                          commands={"migrate-hetus": hetu_migration.command("profile", RULES)},
                          # each live dashboard stream holds a thread while open
                          stream_threads=lambda settings: settings.dashboard_max_streams))
