"""`python -m services.export api|worker|rewrap-secrets|migrate-hetus`"""

import sys

from services.common.runner import service_main
from services.export.api import create_app
from services.export.operations import COMMANDS
from services.export.worker import build_consumers

DEFAULT_PORT = 8105

if __name__ == "__main__":
    sys.exit(service_main(service="export", default_port=DEFAULT_PORT, app_factory=create_app,
                          worker_factory=build_consumers, commands=COMMANDS))
