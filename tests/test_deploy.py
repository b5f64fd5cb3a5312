"""Deployment files: the Kubernetes manifest against the Kubernetes schema (offline), compose and Grafana wiring."""

import json
from pathlib import Path

import kubernetes_validate
import yaml

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
