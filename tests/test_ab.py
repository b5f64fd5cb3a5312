"""A/B testing for real: two registered tiny models exported into a store of the test's own, served side by side by
`bentoml serve` (a sticky split, then a shadow copy), the prediction log read back by `make ab-report` with real
labels, and a new export under the champion's tag picked up while requests keep coming (none dropped)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import requests

from loadtests.common import bentoml_serve, running, sample_labelled
from reporting.ab import ABReportConfig
from reporting.ab import run as ab_report
from serving.ab import Allocation, bucket
from serving.settings import ServiceSettings
from tests.conftest import free_port
from tests.test_training_pipeline import tiny_config
from training import lexical
from training.registry import register
from training.train import run as train

pytestmark = pytest.mark.timeout(600)
ROOT = Path(__file__).resolve().parents[1]
CHAMPION_TAG, CHALLENGER_TAG = "tiny-onnx:latest", "tiny-onnx-challenger:latest"
SMALL_EXPORT = {"search_samples": 8, "golden_size": 8, "profile_texts": 0, "timing_samples": 4}


def export(env: dict[str, str], cwd: Path, *models: tuple[str, str]) -> None:
    """`export.export.run` per (registry URI, BentoML model name) into the test's store, in one process (its imports
    take seconds)."""
    configs = [
        json.dumps({"model_uri": uri, "bento_model": bento_model, "report": str(cwd / "parity.json")} | SMALL_EXPORT)
        for uri, bento_model in models
    ]
    script = "import json, sys; from export.export import ExportConfig, run\n"
    script += "for config in sys.argv[1:]: run(ExportConfig(**json.loads(config)))"
    result = subprocess.run([sys.executable, "-c", script, *configs], env=env, cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_split_sends_its_share_of_users_and_shadow_sends_none():
    keys = [f"user-{i}" for i in range(20_000)]
    split = Allocation("split", 0.1, has_challenger=True)
    share = sum(split.assign(k) == "challenger" for k in keys) / len(keys)
    assert abs(share - 0.1) < 0.01  # sha256 spreads keys evenly; a sample of 20,000 is within 0.6 points (3 sigma)
    assert all(split.assign(k) == split.assign(k) for k in keys[:100])  # sticky
    assert {Allocation("shadow", 0.1, True).assign(k) for k in keys} == {"champion"}
    assert {Allocation("split", 1.0, has_challenger=False).assign(k) for k in keys} == {"champion"}
    with pytest.raises(ValueError):
        Allocation("canary", 0.1, True)


@pytest.fixture(scope="module")
def store(tiny_checkpoint, data_dir, tmp_path_factory):
    """Two versions of a tiny model (1 and 6 training steps, lexical halves of other strengths: they answer
    differently), registered with their hybrid policies, version 1 exported as the champion and version 2 as the
    challenger, in an MLflow store and a BentoML store of this module's own."""
    tmp = tmp_path_factory.mktemp("ab")
    env = os.environ | {
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
        "BENTOML_HOME": str(tmp / "bentoml"),
        "PYTHONPATH": str(ROOT),
    }
    previous, cwd = os.environ.get("MLFLOW_TRACKING_URI"), os.getcwd()
    os.environ["MLFLOW_TRACKING_URI"] = env["MLFLOW_TRACKING_URI"]
    os.chdir(tmp)
    try:
        for steps, strength in ((1, 8.0), (6, 0.05)):  # transformers and lexical halves that answer differently
            overrides = {"train.max_steps": steps, "hybrid.C": strength}
            config = tiny_config(tiny_checkpoint, data_dir, tmp / f"steps-{steps}", **overrides)
            train(config)
            lexical.run(Path(config.models_dir) / config.name, config)
            register(Path(config.models_dir) / config.name, config)
    finally:
        os.chdir(cwd)
        os.environ.pop("MLFLOW_TRACKING_URI") if previous is None else os.environ.update(MLFLOW_TRACKING_URI=previous)
    export(env, tmp, ("models:/tiny-sentiment/1", "tiny-onnx"), ("models:/tiny-sentiment/2", "tiny-onnx-challenger"))
    return {"env": env, "tmp": tmp}


@pytest.fixture(scope="module")
def reviews(tmp_path_factory) -> tuple[list[str], Path]:
    """Real labelled test reviews, and the same as the labels file fed back to the report."""
    texts, labels = sample_labelled(60, seed=3)
    path = tmp_path_factory.mktemp("labels") / "labels.parquet"
    pd.DataFrame({"text": texts, "label": labels}).to_parquet(path)
    return texts, path


def serve(store: dict, log: Path, **settings: str):
    port = free_port()
    env = {
        "BENTOML_HOME": store["env"]["BENTOML_HOME"],
        "BENTO_MODEL_TAG": CHAMPION_TAG,
        "CHALLENGER_MODEL_TAG": CHALLENGER_TAG,
        "PREDICTION_LOG": str(log),
    } | settings
    return f"http://127.0.0.1:{port}", running(bentoml_serve(port), f"http://127.0.0.1:{port}/health", env)


@pytest.fixture(scope="module")
def split_server(store, tmp_path_factory):
    """Half the users on the challenger; the store is polled every second (the reload test exports into it)."""
    log = tmp_path_factory.mktemp("split") / "predictions.jsonl"
    url, server = serve(store, log, AB_ROLLOUT="split", CHALLENGER_SHARE="0.5", MODEL_POLL_S="1")
    with server:
        yield url, log


def log_lines(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_a_sticky_split_answers_each_user_with_one_variant_and_the_report_compares_them(
    split_server, reviews, tmp_path
):
    texts, labels_file = reviews
    url, log = split_server
    health = requests.get(f"{url}/health").json()
    assert health["ab"] == {"rollout": "split", "challenger_share": 0.5, "challenger": "tiny-sentiment:2"}
    answers = []
    for i, text in enumerate(texts):
        user = f"user-{i % 20}"  # 20 users, 3 reviews each
        response = requests.post(f"{url}/predict", json={"text": text}, headers={"x-user-id": user})
        assert response.status_code == 200, response.text
        body = response.json()
        assert response.headers["x-model-variant"] == body["variant"]
        expected_version = {"champion": "tiny-sentiment:1", "challenger": "tiny-sentiment:2"}[body["variant"]]
        assert body["model_version"] == expected_version
        answers.append((user, body["variant"], body["label"], text))
    by_user = {}
    for user, variant, _, _ in answers:
        by_user.setdefault(user, set()).add(variant)
    assert all(len(variants) == 1 for variants in by_user.values()), by_user  # sticky
    assert {v for (v,) in by_user.values()} == {"champion", "challenger"}
    # without x-user-id the request id is the key: a batch request says which variant answered it as a whole
    batch = requests.post(f"{url}/predict_batch", json={"texts": texts[:3]}).json()
    assert {p["variant"] for p in batch["predictions"]} == {batch["variant"]}
    answers += [("batch", p["variant"], p["label"], text) for p, text in zip(batch["predictions"], texts, strict=False)]
    metrics = requests.get(f"{url}/metrics").text
    for variant in ("champion", "challenger"):
        assert f'sentiment_ab_requests_total{{shadow="false",variant="{variant}"}}' in metrics
        assert f'sentiment_ab_latency_seconds_count{{shadow="false",variant="{variant}"}}' in metrics
        assert f'sentiment_confidence_count{{variant="{variant}"}}' in metrics

    report = ab_report(ABReportConfig(log=str(log), labels=str(labels_file), out_dir=str(tmp_path / "report")))
    truth = dict(zip(texts, pd.read_parquet(labels_file).label.map({0: "neg", 1: "pos"}), strict=True))
    for variant in ("champion", "challenger"):
        mine = [(user, label == truth[text]) for user, v, label, text in answers if v == variant]
        measured = report["split"]["variants"][variant]
        assert measured["labelled"] == len(mine) and measured["users"] == len({user for user, _ in mine})
        assert measured["accuracy"] == pytest.approx(sum(right for _, right in mine) / len(mine))
    assert 0 <= report["split"]["accuracy_test"]["p_value"] <= 1 and "verdict" in report["split"]
    assert {p.name for p in (tmp_path / "report").iterdir()} == {"ab.json", "AB.md", "ab.png"}


def test_a_new_export_is_swapped_in_as_one_version_without_dropping_requests(split_server, store):
    """Under /predict, /predict_batch and /explain load, a new export under the champion's tag: no failure, and
    every answer comes whole from the version it names (the same text always gets the same scores from one
    version, and the two versions differ), no /explain refused while the new explainer warms up."""
    url, _ = split_server
    user = {"x-user-id": next(f"user-{i}" for i in range(100) if bucket(f"user-{i}") >= 0.5)}  # on the champion
    text, answers, explained, stop = "A fine, moving film.", [], [], threading.Event()

    def predict() -> None:
        while not stop.is_set():
            single = requests.post(f"{url}/predict", json={"text": text}, headers=user, timeout=30)
            batch = requests.post(f"{url}/predict_batch", json={"texts": [text, text]}, headers=user, timeout=30)
            answers.append((single.status_code, single.json()))
            answers.extend((batch.status_code, p) for p in batch.json().get("predictions", [batch.json()]))

    def explain() -> None:
        while not stop.is_set():
            explained.append(requests.post(f"{url}/explain", json={"text": text}, timeout=60).status_code)

    before = requests.get(f"{url}/health").json()["model"]
    threads = [threading.Thread(target=predict), threading.Thread(target=explain)]
    for thread in threads:
        thread.start()
    try:
        export(store["env"], store["tmp"], ("models:/tiny-sentiment/2", "tiny-onnx"))  # as a promotion would
        stalls_before = loop_stalls(url)  # from here on, only the reload (the export's own CPU load is over)
        deadline = time.time() + 60
        while requests.get(f"{url}/health").json()["model"] == before and time.time() < deadline:
            time.sleep(0.5)
        time.sleep(1)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    health = requests.get(f"{url}/health").json()
    assert health["model"] != before and health["version"] == "tiny-sentiment:2"
    assert health["selfcheck"]["model"] == health["model"]  # the classifier serves the new file too
    assert {status for status, _ in answers} == {200}, [a for a in answers if a[0] != 200][:3]
    assert set(explained) == {200}, explained
    stalls = {le: count - stalls_before[le] for le, count in loop_stalls(url).items()}
    print("event-loop timer lags over each bound during the reload:", stalls)
    assert stalls["0.1"] == 0, stalls  # the version loads off the event loop (bound: twice the 50 ms target)
    scores = {}
    for _, answer in answers:
        scores.setdefault(answer["model_version"], set()).add(round(answer["scores"]["pos"], 6))
    assert set(scores) == {"tiny-sentiment:1", "tiny-sentiment:2"}, scores
    assert all(len(seen) == 1 for seen in scores.values()), scores  # one version, one answer: nothing mixed
    assert scores["tiny-sentiment:1"] != scores["tiny-sentiment:2"]
    settings = ServiceSettings.from_env()
    time.sleep(settings.max_latency_ms / 1000 + settings.classify_timeout_s + 2)  # past every request's deadline
    loaded = requests.get(f"{url}/health").json()["selfcheck"]["loaded"]
    assert health["model"] in loaded and before not in loaded, loaded  # the old version is unloaded


def loop_stalls(url: str) -> dict[str, float]:
    """How many of the API worker's event-loop probes ran later than each bound, so far (from its histogram)."""
    metrics = requests.get(f"{url}/metrics").text
    bucket_line = r'^sentiment_event_loop_lag_seconds_bucket\{[^}]*le="([^"]+)"[^}]*\} (\S+)'
    buckets = dict(re.findall(bucket_line, metrics, re.M))
    total = float(buckets["+Inf"])
    return {le: total - float(count) for le, count in buckets.items() if le in ("0.05", "0.1")}


def test_a_broken_export_leaves_the_served_one_whole(split_server, store):
    """A broken export under the champion's tag (its lexical half unreadable) while requests come: no error, every
    answer from the export served before, `/health` names the one that failed and why, and it is tried again later
    (less often each time); once the store's tag names the served export again, the warning goes."""
    url, _ = split_server
    served = requests.get(f"{url}/health").json()
    script = (
        "import bentoml, shutil, sys\n"
        "good = bentoml.models.get('tiny-onnx:latest')\n"
        "with bentoml.models.create('tiny-onnx', metadata=good.info.metadata) as broken:\n"
        "    shutil.copytree(good.path, broken.path, dirs_exist_ok=True)\n"
        "    open(broken.path_of('lexical.onnx.gz'), 'wb').write(b'not a model')\n"
        "print(broken.tag)"
    )
    made = subprocess.run([sys.executable, "-c", script], env=store["env"], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr[-2000:]
    broken = made.stdout.strip().splitlines()[-1]
    answers, deadline = [], time.time() + 60
    try:
        while time.time() < deadline:
            answer = requests.post(f"{url}/predict", json={"text": "A fine film."}, headers={"x-user-id": "u"})
            answers.append((answer.status_code, answer.json().get("model_version")))
            health = requests.get(f"{url}/health").json()
            if health["reload"].get("champion", {}).get("tries", 0) >= 2:
                break
            time.sleep(0.2)
        assert health["model"] == served["model"] and health["version"] == served["version"]
        failed = health["reload"]["champion"]
        assert failed["tag"] == broken and failed["error"] and failed["retry_in_s"] > 0
        assert broken in health["warning"]
        assert {status for status, _ in answers} == {200}
        assert {version for _, version in answers} <= {served["version"], served["ab"].get("challenger")}
    finally:
        remove = f"import bentoml; bentoml.models.delete({broken!r})"
        subprocess.run([sys.executable, "-c", remove], env=store["env"], check=True)
    time.sleep(3)
    health = requests.get(f"{url}/health").json()
    assert health["model"] == served["model"] and health["reload"] == {} and broken not in (health["warning"] or "")


def test_shadow_copies_reach_the_challenger_unseen_and_are_dropped_first_while_texts_queue(store, reviews, tmp_path):
    """Shadow rollout with the queue's target at 0 ms (every text that waited at all is over it) and an interval no
    test reaches (no user is ever refused for it): a copy sent while no user's texts are in flight is answered by the
    challenger and logged, never returned; copies sent while users' texts are in flight are dropped and counted."""
    texts, _ = reviews
    log = tmp_path / "predictions.jsonl"
    settings = {"AB_ROLLOUT": "shadow", "QUEUE_TARGET_MS": "0", "QUEUE_INTERVAL_MS": "600000", "MAX_CONCURRENCY": "64"}
    url, server = serve(store, log, **settings)
    with server:
        for n, text in enumerate(texts[:5], start=1):  # one at a time, each copy answered before the next request
            answer = requests.post(f"{url}/predict", json={"text": text, "mode": "transformer"}, timeout=30)
            assert answer.status_code == 200 and answer.json()["variant"] == "champion"
            deadline = time.time() + 30
            while len(copies := [line for line in log_lines(log) if line["shadow"]]) < n and time.time() < deadline:
                time.sleep(0.1)
            assert len(copies) == n and {line["variant"] for line in copies} == {"challenger"}

        statuses: list[int] = []

        def user(n: int) -> None:
            with requests.Session() as session:
                for text in texts[n::8]:
                    body = {"text": text, "mode": "transformer"}
                    statuses.append(session.post(f"{url}/predict", json=body, timeout=30).status_code)

        users = [threading.Thread(target=user, args=(n,)) for n in range(8)]
        for thread in users:
            thread.start()
        for thread in users:
            thread.join()
        assert statuses == [200] * len(texts)  # no user refused
        skipped = re.search(
            r"^sentiment_ab_shadow_skipped_total(?:\{[^}]*\})? (\S+)", requests.get(f"{url}/metrics").text, re.M
        )
        assert skipped and float(skipped.group(1)) > 0
