"""deploy/docker-compose.yml and the Dockerfile, checked without a container engine.

Compose itself validates the file (`docker-compose config`, Debian's package, which `make
install` adds; it needs no engine), with the secrets `muisti secrets` writes and without them;
the file is also validated against the Compose specification's JSON schema (vendored by
check-jsonschema) and checked for what Muisti needs: every service's API and worker, settings,
health-gated start order, unique host ports, files that exist, Prometheus scraping every
process."""

from __future__ import annotations

import json
import re
import subprocess
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
import yaml

from deploy.local.infra import KAFKA_VERSION

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
MUISTI = {name: spec for name, spec in SERVICES.items() if "build" in spec}
PACKAGES = sorted(path.parent.name for path in (REPO / "services").glob("*/__main__.py")
                  if path.parent.name != "cli")


def default_port(package: str) -> int:
    text = (REPO / "services" / package / "__main__.py").read_text()
    return int(re.search(r"DEFAULT_PORT = (\d+)", text).group(1))


DOCKER_COMPOSE = Path("/usr/bin/docker-compose")


def compose_config(env_file: Path) -> subprocess.CompletedProcess:
    if not DOCKER_COMPOSE.exists():
        pytest.fail(f"{DOCKER_COMPOSE} is missing: run `make install` (as root it installs "
                    "Debian's docker-compose package)")
    return subprocess.run([str(DOCKER_COMPOSE), "--env-file", str(env_file), "-f",
                           str(DEPLOY / "docker-compose.yml"), "config"],
                          capture_output=True, text=True, timeout=60, cwd=REPO)


def test_compose_validates_the_file_with_the_secrets_muisti_writes(tmp_path):
    from services.cli.secrets_env import new_secrets

    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{name}={value}\n" for name, value in new_secrets().items()))
    result = compose_config(env_file)
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(result.stdout)
    assert set(rendered["services"]) == set(SERVICES)


def test_compose_refuses_to_start_without_the_secrets_and_says_how_to_make_them(tmp_path):
    empty = tmp_path / ".env"
    empty.write_text("")
    result = compose_config(empty)
    assert result.returncode != 0
    assert "run muisti secrets > deploy/.env" in result.stderr


def test_the_file_follows_the_compose_specification():
    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    jsonschema.validators.validator_for(schema)(schema).validate(COMPOSE)


@pytest.mark.parametrize("package", PACKAGES)
def test_every_service_runs_its_api_and_its_worker(package):
    api, worker = SERVICES[f"{package}-api"], SERVICES[f"{package}-worker"]
    assert api["command"] == ["python", "-m", f"services.{package}", "api"]
    assert worker["command"] == ["python", "-m", f"services.{package}", "worker"]
    assert api["environment"]["CDP_HTTP_PORT"] == str(default_port(package))
    assert int(worker["environment"]["CDP_WORKER_METRICS_PORT"]) > 0


@pytest.mark.parametrize("name", sorted(MUISTI))
def test_muisti_containers_are_built_configured_and_wait_for_healthy_dependencies(name):
    spec = MUISTI[name]
    assert spec["image"] and spec["build"]["dockerfile"] == "Dockerfile"
    assert isinstance(spec["command"], list) and spec["command"]
    env = spec["environment"]
    assert env["CDP_KAFKA_BOOTSTRAP"].startswith("kafka:")
    assert env["CDP_MONGO_URI"].startswith("mongodb://mongo:")
    assert env["CDP_HTTP_HOST"] == "0.0.0.0"
    depends = spec["depends_on"]
    assert depends["kafka"]["condition"] == "service_healthy"
    for dependency, rule in depends.items():
        assert dependency in SERVICES
        assert rule["condition"] in ("service_healthy", "service_completed_successfully")
        if rule["condition"] == "service_healthy":
            assert "healthcheck" in SERVICES[dependency], dependency
    if name != "topics":
        assert depends["mongo"]["condition"] == "service_healthy"
        assert depends["topics"]["condition"] == "service_completed_successfully"


def test_topics_are_created_by_the_muisti_command_once_kafka_is_healthy():
    from services.cli.__main__ import COMMANDS

    topics = SERVICES["topics"]
    assert topics["command"][0] == "muisti"
    assert tuple(topics["command"][1:]) in COMMANDS
    assert topics["restart"] == "no"


def test_kafka_runs_kraft_at_the_version_the_local_setup_uses():
    kafka = SERVICES["kafka"]
    assert kafka["image"] == f"apache/kafka:{KAFKA_VERSION}"
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_mongo_is_a_replica_set_the_services_connect_to_as_such():
    mongo = SERVICES["mongo"]
    assert mongo["image"].startswith("mongo:7")
    assert "--replSet" in mongo["command"]
    replica_set = mongo["command"][mongo["command"].index("--replSet") + 1]
    assert f"replicaSet={replica_set}" in MUISTI["identity-api"]["environment"]["CDP_MONGO_URI"]
    assert "rs.initiate" in " ".join(mongo["healthcheck"]["test"])


def test_host_ports_are_unique_and_bound_to_loopback():
    published = [port for spec in SERVICES.values() for port in spec.get("ports", [])]
    host_ports = [port.rsplit(":", 1)[0] for port in published]
    assert len(host_ports) == len(set(host_ports))
    assert all(port.startswith("127.0.0.1:") for port in published)


def test_every_file_the_compose_file_mounts_or_builds_from_exists():
    for spec in SERVICES.values():
        if "build" in spec:
            context = (DEPLOY / spec["build"]["context"]).resolve()
            assert (context / spec["build"]["dockerfile"]).is_file()
        for volume in spec.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), source
            else:
                assert source in COMPOSE["volumes"], source


def test_prometheus_scrapes_every_api_and_every_worker():
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {target for job in config["scrape_configs"] for static in job["static_configs"]
               for target in static["targets"]}
    for package in PACKAGES:
        api_port = SERVICES[f"{package}-api"]["environment"]["CDP_HTTP_PORT"]
        worker_port = SERVICES[f"{package}-worker"]["environment"]["CDP_WORKER_METRICS_PORT"]
        assert f"{package}-api:{api_port}" in targets
        assert f"{package}-worker:{worker_port}" in targets
    for rule_file in config["rule_files"]:
        mounted = [v for v in SERVICES["prometheus"]["volumes"] if v.endswith(rule_file + ":ro")]
        assert mounted, rule_file


def test_grafana_is_provisioned_with_the_dashboards_directory_it_mounts():
    provider = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "muisti.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert f"./grafana/dashboards:{path}:ro" in SERVICES["grafana"]["volumes"]


def test_the_image_runs_as_a_user_installs_without_dev_tools_and_checks_health():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.M)
    user = re.search(r"^USER (\S+)", dockerfile, re.M).group(1)
    assert user not in ("root", "0")
    assert re.search(r"pip install \.(\s|$)", dockerfile)  # no [dev] extras
    assert '"services.cli.healthcheck"' in dockerfile
    assert (REPO / "services" / "cli" / "healthcheck.py").is_file()
    ignore = (REPO / ".dockerignore").read_text().split()
    assert "!services/" in ignore and "!pyproject.toml" in ignore


def test_settings_given_to_the_containers_are_real_muisti_settings():
    from dataclasses import fields

    from services.common.config import Settings, env_name

    known = {env_name(spec.name) for spec in fields(Settings)}
    given = {name for spec in MUISTI.values() for name in spec["environment"]}
    assert given <= known, given - known


def test_every_secret_compose_requires_is_one_muisti_secrets_writes():
    from services.cli.secrets_env import new_secrets

    text = (DEPLOY / "docker-compose.yml").read_text()
    required = set(re.findall(r"\$\{(MUISTI_\w+):\?", text))
    assert required and required <= set(new_secrets())
