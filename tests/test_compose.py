"""The Compose stack, run for real: the classifier image, MLflow over the project's registry, Prometheus scraping
the service, and every query of the Grafana dashboard answered with data after a short load.

Run with `make test-compose` (after `make containerize`). Where no registry is reachable, `STANDINS=1
COMPOSE_SERVICES="classifier mlflow prometheus"` uses locally built MLflow/Prometheus images and leaves Grafana out.
"""

import json
import os
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import requests

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = [str(ROOT / ".ci" / "compose.sh")]
SERVICES = os.environ.get("COMPOSE_SERVICES", "classifier mlflow prometheus grafana").split()
CLASSIFIER, MLFLOW, PROMETHEUS, GRAFANA = (f"http://127.0.0.1:{p}" for p in (3000, 5000, 9090, 3001))
DASHBOARD = json.loads((ROOT / "deploy/grafana/dashboards/imdb-sentiment.json").read_text())
QUERIES = {f"{p['title']} [{i}]": t["expr"] for p in DASHBOARD["panels"] for i, t in enumerate(p["targets"])}
pytestmark = [pytest.mark.container, pytest.mark.timeout(900)]


def wait_for(url: str, seconds: float = 180) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    pytest.fail(f"{url} not up in {seconds} s")


@pytest.fixture(scope="module")
def stack():
    subprocess.run([*COMPOSE, "up", "-d", *SERVICES], cwd=ROOT, check=True)
    try:
        for url in (f"{CLASSIFIER}/health", f"{MLFLOW}/health", f"{PROMETHEUS}/-/ready"):
            wait_for(url)
        yield
    finally:
        subprocess.run([*COMPOSE, "down"], cwd=ROOT, check=False)


def test_stack_serves_tracks_and_monitors(stack):
    # more texts than the drift monitor needs before it publishes PSI (its min_texts, 100)
    reviews = pd.read_parquet(ROOT.parent / "shared/data/imdb/test.parquet").text.sample(120, random_state=4).tolist()
    for review in reviews:
        assert requests.post(f"{CLASSIFIER}/predict", json={"text": review}).status_code == 200
    requests.post(f"{CLASSIFIER}/predict_batch", json={"texts": reviews[:8]}).raise_for_status()

    registered = requests.get(f"{MLFLOW}/api/2.0/mlflow/registered-models/get", params={"name": "imdb-sentiment"})
    aliases = {a["alias"] for a in registered.json()["registered_model"].get("aliases", [])}
    assert "champion" in aliases, registered.text

    answered, deadline = {}, time.time() + 90
    while time.time() < deadline and len(answered) < len(QUERIES):
        for title, expr in QUERIES.items():
            result = requests.get(f"{PROMETHEUS}/api/v1/query", params={"query": expr}).json()["data"]["result"]
            if any(r["value"][1] != "NaN" for r in result):
                answered[title] = {
                    r["metric"].get("endpoint") or r["metric"].get("label") or "": r["value"][1] for r in result
                }
        time.sleep(5)
    assert set(answered) == set(QUERIES), set(QUERIES) - set(answered)

    grafana = None
    if "grafana" in SERVICES:
        wait_for(f"{GRAFANA}/api/health")
        grafana = requests.get(f"{GRAFANA}/api/search", params={"query": DASHBOARD["title"]}).json()
        assert grafana, "dashboard not provisioned"
    report = {
        "services": SERVICES,
        "standins": os.environ.get("STANDINS") == "1",
        "mlflow_aliases": sorted(aliases),
        "dashboard_queries_answered": answered,
        "grafana_dashboards": grafana,
    }
    out = ROOT / "reports" / "container"
    out.mkdir(parents=True, exist_ok=True)
    (out / "compose.json").write_text(json.dumps(report, indent=2) + "\n")
