"""The Grafana dashboard and the Prometheus alerts ask only for metrics the code exposes: every
metric name in a query must be declared with prometheus_client somewhere under services/."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DECLARATION = re.compile(r"\b(Counter|Gauge|Histogram|Summary)\(\s*\"([a-zA-Z_:][\w:]*)\"")
METRIC_IN_QUERY = re.compile(r"\bmuisti_\w+")
PROMETHEUS_OWN = {"up"}  # series Prometheus itself records for every target


def exposed_series() -> set[str]:
    """Sample names prometheus_client writes for the metrics declared in services/."""
    series = set()
    for path in (REPO / "services").rglob("*.py"):
        for kind, name in DECLARATION.findall(path.read_text()):
            if kind == "Counter":
                series.add(name if name.endswith("_total") else name + "_total")
            elif kind in ("Histogram", "Summary"):
                series |= {name + "_bucket", name + "_sum", name + "_count"}
            else:
                series.add(name)
    return series


EXPOSED = exposed_series()
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))


def dashboard_queries() -> list[tuple[str, str]]:
    queries = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            queries += [(panel["title"], target["expr"]) for target in panel["targets"]]
    return queries


def alert_queries() -> list[tuple[str, str]]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [(rule["alert"], rule["expr"]) for group in rules["groups"] for rule in group["rules"]]


def test_the_code_declares_the_metrics_the_queries_rely_on():
    assert {"muisti_consumer_lag_messages", "muisti_messages_dead_lettered_total",
            "muisti_http_request_duration_seconds_bucket"} <= EXPOSED


@pytest.mark.parametrize(("title", "expr"), dashboard_queries() + alert_queries())
def test_every_query_asks_only_for_exposed_metrics(title, expr):
    names = set(METRIC_IN_QUERY.findall(expr))
    assert names <= EXPOSED, f"{title}: {sorted(names - EXPOSED)} are not exposed by the code"
    assert names or PROMETHEUS_OWN & set(re.findall(r"\b\w+\b", expr)), title


def test_the_dashboard_covers_what_operators_watch():
    (dashboard,) = DASHBOARDS
    doc = json.loads(dashboard.read_text())
    titles = " | ".join(panel["title"].lower() for panel in doc["panels"])
    for subject in ("ingestion", "lag", "dead letters", "lookup latency", "erasure backlog"):
        assert subject in titles
    ids = [panel["id"] for panel in doc["panels"]]
    assert len(ids) == len(set(ids))


def test_panels_use_the_provisioned_prometheus_datasource():
    datasources = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = datasources["datasources"][0]["uid"]
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            assert panel["datasource"]["uid"] == uid
            assert all(target["datasource"]["uid"] == uid for target in panel["targets"])
