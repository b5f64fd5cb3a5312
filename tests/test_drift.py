"""Drift monitoring with the release export: in-distribution IMDb reviews stay under the PSI alert level, shifted
traffic (AG News, SMS messages, one-line reviews; 300 texts each) crosses it, in the monitor and over HTTP
(/metrics, /health); the alert rules use only metrics the service exports."""

import re
import time
from pathlib import Path

import bentoml
import pandas as pd
import pytest
import requests
import yaml

from serving.core.drift import FEATURES, PROFILE_FILE, PSI_ALERT, DriftMonitor, TextStatistics, answer_statistics
from serving.core.hybrid import HybridRouter
from serving.core.selfcheck import SelfCheckLimits, load_classifier
from serving.settings import SETTINGS

ROOT = Path(__file__).resolve().parents[1]
N = 300
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def traffic(data_dir) -> dict[str, list[str]]:
    """N texts of each kind, from the test splits (the reference profile was built on validation)."""
    imdb = pd.read_parquet(data_dir / "imdb" / "test.parquet").sample(2 * N, random_state=0).text.tolist()
    return {
        "imdb": imdb[:N],
        "ag_news": pd.read_parquet(data_dir / "ag_news" / "test.parquet").sample(N, random_state=0).text.tolist(),
        "sms": pd.read_parquet(data_dir / "sms_spam" / "test.parquet").sample(N, random_state=0).text.tolist(),
        "one_line_reviews": [re.split(r"(?<=[.!?])\s", t, maxsplit=1)[0] for t in imdb[N:]],
    }


@pytest.fixture(scope="module")
def release_dir() -> Path:
    model_dir = Path(bentoml.models.get(SETTINGS.bento_model_tag).path)
    assert (model_dir / PROFILE_FILE).exists(), "the export writes the reference profile (make export)"
    return model_dir


def test_in_distribution_stays_under_the_alert_and_shifted_traffic_crosses_it(release_dir, traffic):
    router = HybridRouter(release_dir)
    transformer, _ = load_classifier(release_dir, SelfCheckLimits())
    statistics = TextStatistics.for_model(release_dir)
    scores = {}
    for kind, texts in traffic.items():
        probabilities, _ = router.classify_in_process(texts, router.policy, transformer)
        monitor = DriftMonitor.for_model(release_dir, window=N)
        monitor.observe(statistics(texts) | answer_statistics(probabilities))
        scores[kind] = monitor.scores()
    assert set(scores["imdb"]) == set(FEATURES)
    assert max(scores["imdb"].values()) < PSI_ALERT / 2, scores["imdb"]
    for kind in ("ag_news", "sms", "one_line_reviews"):
        assert scores[kind]["tokens"] > PSI_ALERT, (kind, scores[kind])


def test_drift_shows_in_metrics_and_health(server, traffic):
    assert requests.get(f"{server}/health").json()["drift"]["status"].startswith("collecting")
    send(server, traffic["imdb"])
    health = settled_drift(server)
    assert health["status"] == "ok" and max(health["psi"].values()) < PSI_ALERT, health
    metrics = requests.get(f"{server}/metrics").text
    assert all(psi_metric(metrics, feature) == pytest.approx(health["psi"][feature]) for feature in FEATURES)
    assert re.search(r"^sentiment_tokens_count \d+", metrics, re.M) and "sentiment_truncated_texts_total" in metrics

    send(server, traffic["ag_news"])
    health = settled_drift(server)
    assert health["status"] == "drift" and "tokens" in health["drifting"], health
    assert psi_metric(requests.get(f"{server}/metrics").text, "tokens") > PSI_ALERT

    exported = set(re.findall(r"^(\w+?)(?:_bucket|_count|_sum|_total)?[{ ]", metrics, re.M))
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())["groups"][0]["rules"]
    for rule in rules:
        used = set(re.findall(r"\b((?:sentiment|bentoml)_\w+?)(?:_bucket|_count|_sum|_total)?\b", rule["expr"]))
        assert used and used <= exported, (rule["alert"], used - exported)


def send(server: str, texts: list[str]) -> None:
    for start in range(0, len(texts), SETTINGS.max_batch_texts):
        batch = [t for t in texts[start : start + SETTINGS.max_batch_texts] if t.strip()]
        response = requests.post(f"{server}/predict_batch", json={"texts": batch}, timeout=60)
        assert response.status_code == 200, response.text


def settled_drift(server: str, timeout_s: float = 30) -> dict:
    """/health's drift once every answered text is in the window (the service adds them in batches, off the
    request path)."""
    deadline = time.time() + timeout_s
    while (drift := requests.get(f"{server}/health").json()["drift"])["pending"] and time.time() < deadline:
        time.sleep(0.2)
    assert drift["pending"] == 0, drift
    return drift


def psi_metric(metrics: str, feature: str) -> float:
    """The gauge's value (BentoML's multiprocess metrics may add labels, e.g. the worker's pid)."""
    return float(re.search(rf'^sentiment_drift_psi{{[^}}]*feature="{feature}"[^}}]*}} (\S+)', metrics, re.M)[1])
