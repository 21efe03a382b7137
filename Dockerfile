# One image for every Muisti process; the command picks which one runs:
#   python -m services.<identity|profile|consent|social|export> api|worker
#   muisti <operator command>            (e.g. `muisti topics create`)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # inside a container the APIs must listen beyond loopback
    CDP_HTTP_HOST=0.0.0.0

WORKDIR /app

# dependencies first, so a code change does not reinstall them
COPY pyproject.toml README.md LICENSE ./
COPY services ./services
# /var/lib/muisti: the one writable place (export files for directory destinations, the
# profile API's access-log spool)
RUN pip install . \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin muisti \
    && mkdir -p /var/lib/muisti/exports /var/lib/muisti/spool && chown -R 10001 /var/lib/muisti

USER 10001

# APIs answer /healthz on CDP_HTTP_PORT, workers on CDP_WORKER_METRICS_PORT; the check probes
# whichever the container sets (and passes for one-shot commands that set neither)
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-m", "services.cli.healthcheck"]

CMD ["muisti", "--help"]
