# Muisti: `make run` brings the platform up, `make test` runs every test.
# Everything installs itself: a virtualenv in .venv, Kafka and FerretDB cached in ~/.cache/muisti.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install run stop status test test-unit bench lint provision chromium docker-compose

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) chromium docker-compose

# The dashboard's browser test runs Debian's chromium (Playwright drives it; no browser download)
chromium:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian's chromium for the dashboard's browser test"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
		|| { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; \
	else \
		echo "/usr/bin/chromium is missing: run 'sudo apt-get install chromium' (the dashboard's browser test needs it)"; \
	fi

# The compose file's test runs `docker-compose config` (Debian's Compose; no engine needed)
docker-compose:
	@if [ -x /usr/bin/docker-compose ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian's docker-compose to validate deploy/docker-compose.yml"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null \
		|| { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null; }; \
	else \
		echo "/usr/bin/docker-compose is missing: run 'sudo apt-get install docker-compose' (the compose file's test needs it)"; \
	fi

provision: install
	$(PY) -m deploy.local.infra provision

run: install
	$(PY) -m deploy.local.platform start

stop: install
	$(PY) -m deploy.local.platform stop

status: install
	$(PY) -m deploy.local.platform status

# The whole suite against the real broker and store (started once, instance "test").
# Each run starts from empty infrastructure (consumer groups then replay only this run's
# events); under CI it is stopped afterwards.
test: install
	$(PY) -m deploy.local.infra start --name test --fresh
	status=0; $(PY) -m pytest || status=$$?; \
	if [ -n "$$CI" ]; then $(PY) -m deploy.local.infra stop --name test; fi; \
	exit $$status

test-unit: install
	$(PY) -m pytest tests/unit

bench: install
	$(PY) -m bench

lint: install
	$(VENV)/bin/ruff check services deploy tests bench
