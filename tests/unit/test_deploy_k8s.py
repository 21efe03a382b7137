"""deploy/k8s, checked offline: every manifest against the Kubernetes API's own schemas (strict:
unknown fields fail; shipped by kubernetes-validate), then against what Muisti needs: probes,
resources, selectors that match, autoscalers and budgets that point at real Deployments,
worker replicas within the partition count. (kubeconform would need its schemas from the
internet, which is out of reach here.)"""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
FILES = sorted(path for path in K8S.glob("*.yaml") if path.name != "kustomization.yaml")
RESOURCES = [doc for path in FILES for doc in yaml.safe_load_all(path.read_text()) if doc]
PACKAGES = sorted(path.parent.name for path in (REPO / "services").glob("*/__main__.py")
                  if path.parent.name != "cli")
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.utils.latest_version())


def of_kind(kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in RESOURCES if doc["kind"] == kind}


DEPLOYMENTS = of_kind("Deployment")


def container(deployment: dict) -> dict:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def default_port(package: str) -> int:
    text = (REPO / "services" / package / "__main__.py").read_text()
    return int(re.search(r"DEFAULT_PORT = (\d+)", text).group(1))


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("resource", RESOURCES,
                         ids=lambda doc: f"{doc['kind']}/{doc['metadata']['name']}")
def test_every_manifest_is_valid_for_the_kubernetes_api(resource, version):
    kubernetes_validate.validate(resource, version, strict=True)


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(path.name for path in FILES)


def test_everything_lives_in_the_muisti_namespace_and_is_labelled_as_muisti():
    for doc in RESOURCES:
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "muisti"
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "muisti", doc["metadata"]["name"]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_service_has_an_api_behind_a_service_with_autoscaler_and_budget(package):
    api = DEPLOYMENTS[f"{package}-api"]
    main = container(api)
    assert main["command"] == ["python", "-m", f"services.{package}", "api"]
    assert {"name": "http", "containerPort": default_port(package)} in main["ports"]
    service = of_kind("Service")[f"{package}-api"]
    assert matches(service["spec"]["selector"], api["spec"]["template"]["metadata"]["labels"])
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    hpa = of_kind("HorizontalPodAutoscaler")[f"{package}-api"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": f"{package}-api"}
    assert hpa["spec"]["minReplicas"] >= 2
    assert f"{package}-api" in of_kind("PodDisruptionBudget")


@pytest.mark.parametrize("package", PACKAGES)
def test_every_service_has_a_worker_with_no_more_replicas_than_partitions(package):
    worker = DEPLOYMENTS[f"{package}-worker"]
    assert container(worker)["command"] == ["python", "-m", f"services.{package}", "worker"]
    partitions = int(of_kind("ConfigMap")["muisti-config"]["data"]["CDP_TOPIC_PARTITIONS"])
    assert 1 <= worker["spec"]["replicas"] <= partitions
    assert f"{package}-worker" in of_kind("PodDisruptionBudget")
    assert f"{package}-worker" not in of_kind("HorizontalPodAutoscaler")


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_deployments_probe_health_limit_resources_and_select_their_own_pods(name):
    deployment = DEPLOYMENTS[name]
    spec = deployment["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert matches(spec["selector"]["matchLabels"], labels)
    main = container(deployment)
    port_names = {port["name"] for port in main["ports"]}
    assert main["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert main["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe"):
        assert main[probe]["httpGet"]["port"] in port_names
    for bound in ("requests", "limits"):
        assert set(main["resources"][bound]) >= {"cpu", "memory"}
    assert spec["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    assert main["securityContext"]["allowPrivilegeEscalation"] is False
    if main["securityContext"].get("readOnlyRootFilesystem"):
        writable = {mount["mountPath"] for mount in main.get("volumeMounts", [])}
        spool = {env["name"]: env.get("value") for env in main.get("env", [])}.get("CDP_SPOOL_DIR")
        assert spool is None or spool in writable


def test_every_pod_reads_the_config_map_and_secret_that_exist():
    config_maps, secrets = set(of_kind("ConfigMap")), set(of_kind("Secret"))
    pods = [*DEPLOYMENTS.values(), *of_kind("Job").values()]
    for pod in pods:
        sources = container(pod)["envFrom"]
        assert {s["configMapRef"]["name"] for s in sources if "configMapRef" in s} <= config_maps
        assert {s["secretRef"]["name"] for s in sources if "secretRef" in s} <= secrets
        assert len(sources) == 2


def test_budgets_select_the_pods_of_a_deployment():
    for name, budget in of_kind("PodDisruptionBudget").items():
        labels = DEPLOYMENTS[name]["spec"]["template"]["metadata"]["labels"]
        assert matches(budget["spec"]["selector"]["matchLabels"], labels)


def test_settings_given_to_the_pods_are_real_muisti_settings():
    from dataclasses import fields

    from services.common.config import Settings, env_name

    known = {env_name(spec.name) for spec in fields(Settings)}
    given = set(of_kind("ConfigMap")["muisti-config"]["data"])
    given |= set(of_kind("Secret")["muisti-secrets"]["stringData"])
    given |= {var["name"] for d in DEPLOYMENTS.values() for var in container(d).get("env", [])}
    assert given <= known, given - known


def test_the_topic_job_runs_a_real_cli_command():
    from services.cli.__main__ import COMMANDS

    command = container(of_kind("Job")["muisti-topics"])["command"]
    assert command[0] == "muisti" and tuple(command[1:]) in COMMANDS
