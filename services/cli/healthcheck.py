"""The container health check: ``python -m services.cli.healthcheck``.

Probes ``/healthz`` of the process in this container: an API on ``CDP_HTTP_PORT``, a worker on
``CDP_WORKER_METRICS_PORT``. A container that sets neither (a one-shot command such as topic
creation) has nothing to probe and counts as healthy. Standard library only: it runs every few
seconds, so it must start fast.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping


def health_url(env: Mapping[str, str]) -> str | None:
    """The /healthz URL to probe, or None when the container serves no HTTP."""
    for variable in ("CDP_HTTP_PORT", "CDP_WORKER_METRICS_PORT"):
        port = env.get(variable, "").strip()
        if port and port != "0":
            return f"http://127.0.0.1:{int(port)}/healthz"
    return None


def main() -> int:
    url = health_url(os.environ)
    if url is None:
        return 0
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
