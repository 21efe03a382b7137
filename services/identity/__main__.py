"""`python -m services.identity api|worker|migrate-hetus`"""

import sys

from services.common import hetu_migration
from services.common.runner import service_main
from services.identity.api import create_app
from services.identity.hetu_migration import RULES
from services.identity.worker import build_consumers

DEFAULT_PORT = 8101

if __name__ == "__main__":
    sys.exit(service_main(service="identity", default_port=DEFAULT_PORT, app_factory=create_app,
                          worker_factory=build_consumers,
                          commands={"migrate-hetus": hetu_migration.command("identity", RULES)}))
