"""Deployment files: the Kubernetes manifest against the Kubernetes schema (offline), compose and Grafana wiring."""

import json
import os
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from serving.settings import available_cpus

ROOT = Path(__file__).resolve().parents[1]


def test_kubernetes_manifest_is_valid_with_probes_autoscaler_and_disruption_budget():
    documents = list(yaml.safe_load_all((ROOT / "deploy/kubernetes/imdb-sentiment.yaml").read_text()))
    for document in documents:
        kubernetes_validate.validate(document, kubernetes_validate.latest_version(), strict=True)
    kinds = {d["kind"]: d for d in documents}
    assert set(kinds) == {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    selector = kinds["Deployment"]["spec"]["selector"]
    assert (
        kinds["PodDisruptionBudget"]["spec"]["selector"] == selector
        and kinds["PodDisruptionBudget"]["spec"]["minAvailable"] == 1
    )
    container = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"


def test_compose_stack_and_dashboard_queries():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert set(compose["services"]) == {"classifier", "mlflow", "prometheus", "grafana"}
    assert "3000:3000" in compose["services"]["classifier"]["ports"]
    prometheus = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    assert prometheus["scrape_configs"][0]["static_configs"][0]["targets"] == ["classifier:3000"]
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/imdb-sentiment.json").read_text())
    queries = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for metric in (
        "bentoml_service_request_total",
        "request_duration_seconds_bucket",
        "adaptive_batch_size",
        "sentiment_predictions_total",
        "sentiment_ab_requests_total",
        "sentiment_ab_latency_seconds_bucket",
    ):
        assert metric in queries


MANIFEST = ROOT / "deploy/kubernetes/imdb-sentiment.yaml"


def deployment() -> dict:
    (found,) = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d["kind"] == "Deployment"]
    return found["spec"]["template"]["spec"]


def test_the_pod_runs_as_the_images_numeric_user_on_a_read_only_root():
    """The kubelet's rules: `runAsNonRoot` needs a numeric user (the image names `bentoml`), and a read-only root
    needs every path the service writes on a volume (the ones tests/test_container.py gives the image)."""
    pod = deployment()
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] and isinstance(pod["securityContext"]["runAsUser"], int)
    assert pod["securityContext"]["runAsUser"] > 0 and isinstance(pod["securityContext"]["runAsGroup"], int)
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    empty_dirs = {volume["name"] for volume in pod["volumes"] if "emptyDir" in volume}
    assert {mount["name"] for mount in container["volumeMounts"]} <= empty_dirs
    assert "/tmp" in {mount["mountPath"] for mount in container["volumeMounts"]}


def test_the_memory_limit_is_above_the_measured_peak():
    """`make test-container` measures the image's peak memory under a mixed load and `/explain`: the limit keeps a
    quarter above it."""
    limit = deployment()["containers"][0]["resources"]["limits"]["memory"]
    limit_mb = int(limit.removesuffix("Gi")) * 1024 if limit.endswith("Gi") else int(limit.removesuffix("Mi"))
    measured = json.loads((ROOT / "reports/container/container.json").read_text())
    assert limit_mb >= 1.25 * measured["peak_memory_mb"], (limit, measured["peak_memory_mb"])


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "max 100000"}, "all"),
        ({"cpu.max": "200000 100000"}, 2),
        ({"cpu.max": "150000 100000"}, 2),
        ({"cpu.max": "50000 100000"}, 1),
        ({"cpu/cpu.cfs_quota_us": "100000", "cpu/cpu.cfs_period_us": "100000"}, 1),  # cgroup v1
        ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, "all"),
        ({}, "all"),
    ],
)
def test_threads_follow_the_containers_cpu_quota(tmp_path, files, expected):
    """ONNX Runtime's threads come from the cgroup's CPU quota when there is one, not from the node's cores."""
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(content + "\n")
    usable = len(os.sched_getaffinity(0))
    assert available_cpus(tmp_path) == (usable if expected == "all" else min(expected, usable))
