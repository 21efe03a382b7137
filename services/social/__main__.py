"""`python -m services.social api|worker`"""

import sys

from services.common.runner import service_main
from services.social.api import create_app
from services.social.worker import build_consumers

DEFAULT_PORT = 8104

if __name__ == "__main__":
    sys.exit(service_main(service="social", default_port=DEFAULT_PORT, app_factory=create_app,
                          worker_factory=build_consumers))
