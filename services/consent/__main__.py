"""`python -m services.consent api|worker`"""

import sys

from services.common.runner import service_main
from services.consent.api import create_app
from services.consent.worker import build_consumers

DEFAULT_PORT = 8103

if __name__ == "__main__":
    sys.exit(service_main(service="consent", default_port=DEFAULT_PORT, app_factory=create_app,
                          worker_factory=build_consumers))
