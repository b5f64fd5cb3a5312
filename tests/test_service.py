"""The release model behind the real BentoML service, over real HTTP (`bentoml serve` in a subprocess).

Needs the model in the BentoML store: `make model` (which `make test` runs first) registers and exports it.
"""

import concurrent.futures
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from serving.core.hybrid import LEXICAL_FILE, HybridPolicy, LexicalModel
from serving.settings import SETTINGS

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "models" / "imdb-minilm-lora"
pytestmark = pytest.mark.timeout(900)


def test_health_and_bentoml_endpoints(server):
    health = requests.get(f"{server}/health").json()
    assert health["status"] == "ok" and health["model"].startswith("imdb-sentiment-onnx:")
    assert re.fullmatch(r"imdb-sentiment:\d+", health["version"])
    check = health["selfcheck"]  # int8 re-checked on this CPU at start, or fp32 with the reason
    assert check["served"] in ("int8", "fp32") and (check["passed"] == (check["served"] == "int8"))
    assert (health["warning"] is None) == check["passed"]
    print(f"served {check['served']}: {check['detail']}")
    for path in ("/livez", "/readyz", "/metrics", "/"):  # "/": BentoML's Swagger UI
        assert requests.get(f"{server}{path}").status_code == 200, path
    spec = requests.get(f"{server}/docs.json").json()
    assert {"/predict", "/predict_batch"} <= set(spec["paths"])


def test_predict_shape_label_order_and_scores(server):
    body = requests.post(f"{server}/predict", json={"text": "An absolute masterpiece, I loved every minute."}).json()
    assert set(body) == {"label", "label_id", "score", "scores", "path", "model_version", "variant"}
    assert body["variant"] == "champion"  # no challenger served
    assert body["path"] in ("lexical", "ensemble")  # the release serves the cascade
    assert list(body["scores"]) == ["neg", "pos"]
    assert body["label"] == "pos" and body["label_id"] == 1
    assert sum(body["scores"].values()) == pytest.approx(1.0, abs=1e-5)
    assert body["score"] == max(body["scores"].values())
    negative = requests.post(f"{server}/predict", json={"text": "Boring, badly acted, a waste of time."}).json()
    assert negative["label"] == "neg"


def test_batch_keeps_order_and_matches_single_predictions(server):
    texts = ["Terrible.", "Wonderful film!<br />Go see it.", "It was fine, I guess. " * 50, "Worst movie ever."]
    batch = requests.post(f"{server}/predict_batch", json={"texts": texts}).json()
    singles = [requests.post(f"{server}/predict", json={"text": t}).json() for t in texts]
    assert len(batch["predictions"]) == len(texts)
    for from_batch, single in zip(batch["predictions"], singles, strict=True):
        assert from_batch["label"] == single["label"]
        assert from_batch["score"] == pytest.approx(single["score"], abs=1e-4)
    assert batch["model_version"] == singles[0]["model_version"]


JSON = "application/json"
BAD_INPUTS = {
    "empty text": ("/predict", b'{"text": ""}', JSON, 422),
    "whitespace text": ("/predict", b'{"text": "  \\n\\t "}', JSON, 422),
    "no-break spaces only": ("/predict", b'{"text": "\\u00a0\\u00a0"}', JSON, 422),
    "zero-width spaces only": ("/explain", b'{"text": "\\u200b\\u200b"}', JSON, 422),
    "a NUL only": ("/predict", b'{"text": "\\u0000"}', JSON, 422),
    "control characters only": ("/explain", b'{"text": "\\u0001\\u007f\\u0085"}', JSON, 422),
    "an invisible batch item": ("/predict_batch", b'{"texts": ["good", "\\u2060\\ufeff"]}', JSON, 422),
    "text over the limit": ("/predict", b'{"text": "' + b"a" * 50_001 + b'"}', JSON, 422),
    "missing field": ("/predict", b'{"txt": "good"}', JSON, 422),
    "unknown field": ("/predict", b'{"text": "good", "lang": "en"}', JSON, 422),
    "wrong type": ("/predict", b'{"text": 42}', JSON, 422),
    "not an object": ("/predict", b'["good"]', JSON, 422),
    "malformed json": ("/predict", b'{"text": "good"', JSON, 400),
    "invalid utf-8": ("/predict", b'{"text": "\xff\xfe bad bytes"}', JSON, 400),
    "multipart without boundary": ("/predict", b"text=good", "multipart/form-data", 415),
    "plain text": ("/predict_batch", b"good", "text/plain", 415),
    "no content type": ("/predict", b'{"text": "good"}', "", 415),
    "unknown mode": ("/predict", b'{"text": "good", "mode": "fastest"}', JSON, 422),
    "null mode": ("/explain", b'{"text": "good", "mode": null}', JSON, 422),
    "mode as a query parameter": ("/predict?mode=transformer", b'{"text": "good"}', JSON, 422),
    "empty batch": ("/predict_batch", b'{"texts": []}', JSON, 422),
    "oversize batch": ("/predict_batch", b'{"texts": [' + b",".join([b'"a"'] * 65) + b"]}", JSON, 422),
    "non-string item": ("/predict_batch", b'{"texts": ["good", 3]}', JSON, 422),
    "blank item": ("/predict_batch", b'{"texts": ["good", " "]}', JSON, 422),
    "texts not a list": ("/predict_batch", b'{"texts": "good"}', JSON, 422),
    "body over the limit": ("/predict_batch", b'{"texts": ["' + b"a" * SETTINGS.max_body_bytes + b'"]}', JSON, 413),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_gets_the_declared_4xx_json_error(server, case):
    path, payload, content_type, status = BAD_INPUTS[case]
    headers = {"content-type": content_type} if content_type else {}
    response = requests.post(f"{server}{path}", data=payload, headers=headers)
    assert response.status_code == status, response.text[:300]
    body = response.json()
    assert set(body) == {"error", "detail"} and body["error"] and "Traceback" not in response.text
    assert body["detail"] is None or all({"loc", "msg", "type"} == set(d) for d in body["detail"])
    if case == "an invisible batch item":
        assert [d["loc"] for d in body["detail"]] == [["body", "texts", 1]]  # which item, by its index
    declared = requests.get(f"{server}/docs.json").json()["paths"][path.split("?")[0]]["post"]["responses"]
    assert str(status) in declared  # the OpenAPI document names every status the API answers
    assert requests.get(f"{server}/health").status_code == 200  # still serving


def test_openapi_states_the_limits_and_samples(server):
    spec = requests.get(f"{server}/docs.json").json()
    schemas = spec["components"]["schemas"]
    text = schemas["PredictRequestIODescriptor"]["properties"]["text"]
    assert text["maxLength"] == 50_000 and text["minLength"] == 1 and "pattern" in text
    texts = schemas["BatchRequestIODescriptor"]["properties"]["texts"]
    assert (texts["minItems"], texts["maxItems"]) == (1, 64)
    for path in ("/predict", "/predict_batch"):  # Swagger's "try it out" sends these as shipped
        example = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["example"]
        assert requests.post(f"{server}{path}", json=example).status_code == 200
    assert "ErrorBody" in schemas and schemas["ErrorBody"]["properties"]["detail"]["anyOf"][0]["type"] == "array"
    for path in ("/predict", "/predict_batch", "/explain", "/health"):  # a bug's 500 is declared, as sent
        responses = next(iter(spec["paths"][path].values()))["responses"]
        assert {"500", "503"} <= set(responses), (path, sorted(responses))


@pytest.mark.parametrize(
    ("sent", "echoed"),
    [("order-17.retry:2_a", True), ("x" * 129, False), ("a b", False), ("<script>", False), ("é", False)],
)
def test_request_id_is_echoed_only_when_it_is_a_plain_id(server, sent, echoed):
    headers = {"x-request-id": sent.encode().decode("latin-1")}
    response = requests.post(f"{server}/predict", json={"text": "Great film."}, headers=headers)
    assert response.status_code == 200
    returned = response.headers["x-request-id"]
    assert (returned == sent) is echoed and re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", returned)


def test_cascade_answers_confident_reviews_without_the_transformer(server):
    """The release serves the cascade: confident reviews answered by the lexical model in the API process, the rest
    by the ensemble of the lexical model and the batched transformer, in input order."""
    texts = pd.read_parquet(ROOT.parent / "shared/data/imdb/test.parquet").text.sample(64, random_state=5).tolist()
    policy = requests.get(f"{server}/health").json()["hybrid"]
    assert policy["mode"] == "cascade" and policy["lexical_model"]
    before = requests.get(f"{server}/health").json()["selfcheck"]["classified_texts"]
    cascade = requests.post(f"{server}/predict_batch", json={"texts": texts}).json()["predictions"]
    sent = requests.get(f"{server}/health").json()["selfcheck"]["classified_texts"] - before
    paths = [p["path"] for p in cascade]
    assert {"lexical", "ensemble"} == set(paths), paths
    assert sent == paths.count("ensemble")  # only the uncertain reviews reached the transformer

    lexical = LexicalModel(MODEL_DIR / LEXICAL_FILE).predict_proba(texts)
    transformer = requests.post(f"{server}/predict_batch", json={"texts": texts, "mode": "transformer"}).json()
    transformer = np.array([[p["scores"]["neg"], p["scores"]["pos"]] for p in transformer["predictions"]])
    served = np.array([[p["scores"]["neg"], p["scores"]["pos"]] for p in cascade])
    expected = HybridPolicy(policy["weight"], policy["threshold"], "cascade").decide(lexical, transformer)
    np.testing.assert_allclose(served, expected, atol=1e-4)
    ensemble = requests.post(f"{server}/predict_batch", json={"texts": texts[:4], "mode": "ensemble"}).json()
    assert {p["path"] for p in ensemble["predictions"]} == {"ensemble"}
    assert 'sentiment_routed_total{path="lexical"}' in requests.get(f"{server}/metrics").text
    assert requests.post(f"{server}/predict", json={"text": "Fine.", "mode": "fastest"}).status_code == 422


def test_concurrent_requests_are_batched(server):
    texts = pd.read_parquet(ROOT.parent / "shared/data/imdb/test.parquet").text.sample(64, random_state=1).tolist()

    def batches() -> tuple[int, int]:  # what the classifier ran, as it reports through /health
        check = requests.get(f"{server}/health").json()["selfcheck"]
        return check["classified_texts"], check["classify_calls"]

    texts_before, calls_before = batches()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        responses = list(
            pool.map(lambda t: requests.post(f"{server}/predict", json={"text": t, "mode": "transformer"}), texts)
        )
    statuses = [r.status_code for r in responses]
    assert statuses == [200] * len(texts), {s: statuses.count(s) for s in set(statuses)}
    texts_after, calls_after = batches()
    assert texts_after - texts_before == 64  # every request went through the batched method
    assert calls_after - calls_before < 64  # ...in fewer calls than requests: batch size > 1 happened
    assert 'sentiment_predictions_total{label="pos",variant="champion"}' in requests.get(f"{server}/metrics").text


def test_sustained_concurrent_load_has_no_errors(server):
    """Past BentoML's default 100-request refresh of the session to the batched service (bentoml/BentoML#5540),
    which used to close connections under in-flight requests and turn them into 500s."""
    texts = [f"Review {i}: the plot was {'great' if i % 2 else 'dull'} and the acting {i}." for i in range(300)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda t: requests.post(f"{server}/predict", json={"text": t}).status_code, texts))
    assert statuses.count(200) == len(texts), {s: statuses.count(s) for s in set(statuses)}


def test_release_model_accuracy_over_http(server):
    """A fixed stratified sample of 2,000 real IMDb test reviews, through /predict_batch."""
    test = pd.read_parquet(ROOT.parent / "shared/data/imdb/test.parquet")
    sample = test.groupby("label", group_keys=False).sample(1000, random_state=0)
    predictions = []
    for start in range(0, len(sample), 64):
        chunk = sample.text.iloc[start : start + 64].tolist()
        response = requests.post(f"{server}/predict_batch", json={"texts": chunk}, timeout=120)
        assert response.status_code == 200, (start, response.status_code, response.text[:500])
        predictions += [p["label_id"] for p in response.json()["predictions"]]
    accuracy = float((np.array(predictions) == sample.label.to_numpy()).mean())
    print(f"HTTP accuracy on 2,000 stratified IMDb test reviews: {accuracy:.4f}")
    assert accuracy > 0.90


def test_served_model_agrees_with_pytorch(server):
    from training.config import load_config
    from training.modeling import load_tokenizer, merged_from_adapter, predict_proba

    config = load_config(MODEL_DIR / "config.yaml")
    texts = pd.read_parquet(ROOT.parent / "shared/data/imdb/test.parquet").text.sample(64, random_state=2).tolist()
    model = merged_from_adapter(MODEL_DIR, config.model.checkpoint, ["neg", "pos"])
    reference = predict_proba(model, load_tokenizer(config.model.checkpoint), texts, config.encoding)
    served = requests.post(f"{server}/predict_batch", json={"texts": texts, "mode": "transformer"}).json()[
        "predictions"
    ]
    served_probs = np.array([[p["scores"]["neg"], p["scores"]["pos"]] for p in served])
    # int8 (or the fp32 fallback) vs PyTorch fp32: agreement and the mean difference, as the self-check measures.
    assert (served_probs.argmax(1) == reference.argmax(1)).mean() >= 0.98
    assert np.abs(served_probs - reference).mean() < 0.02


def test_a_prediction_does_not_depend_on_its_batch_mates(server):
    """The same review alone, and inside adaptive batches of concurrent requests, gets the same probabilities."""
    texts = pd.read_parquet(ROOT.parent / "shared/data/imdb/test.parquet").text.sample(48, random_state=4).tolist()
    alone = [requests.post(f"{server}/predict", json={"text": t}).json()["scores"]["pos"] for t in texts[:8]]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda t: requests.post(f"{server}/predict", json={"text": t}), texts))
    assert [r.status_code for r in responses] == [200] * len(texts), [r.text[:200] for r in responses][:3]
    crowded = [r.json() for r in responses]
    batched = requests.post(f"{server}/predict_batch", json={"texts": texts[:8][::-1]}).json()["predictions"][::-1]
    np.testing.assert_allclose([r["scores"]["pos"] for r in crowded[:8]], alone, atol=1e-4)
    np.testing.assert_allclose([p["scores"]["pos"] for p in batched], alone, atol=1e-4)


def test_benchmark_naive_peer_serves_the_same_model(server):
    """The benchmark's FastAPI + transformers.pipeline peer serves the same model: on reviews short enough that
    its plain truncation and the service's head+tail cut see the same tokens, answers match (int8 vs fp32 aside)."""
    from fastapi.testclient import TestClient

    from loadtests.naive_server import create_app

    reviews = pd.read_parquet(ROOT.parent / "shared/data/imdb/test.parquet").text
    texts = reviews[reviews.str.len() < 600].sample(16, random_state=3).tolist()
    naive = TestClient(create_app(MODEL_DIR))
    naive_labels = [naive.post("/predict", json={"text": t}).json()["label"] for t in texts]
    served = requests.post(f"{server}/predict_batch", json={"texts": texts, "mode": "transformer"}).json()[
        "predictions"
    ]
    assert sum(a == p["label"] for a, p in zip(naive_labels, served, strict=True)) >= 15


def test_every_metric_the_grafana_dashboard_queries_is_exported(server):
    requests.post(f"{server}/predict", json={"text": "Fine."})
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/imdb-sentiment.json").read_text())
    queried = {
        m
        for p in dashboard["panels"]
        for t in p["targets"]
        for m in re.findall(r"\b(?:bentoml|sentiment)_\w+", t["expr"])
    }
    exported = requests.get(f"{server}/metrics").text
    assert queried and all(re.search(rf"^{name}\{{", exported, re.MULTILINE) for name in queried), queried
    assert 'runner_name="sentiment-api"' in exported and 'endpoint="/predict"' in exported


def test_explain_points_to_the_words_that_decided(server):
    """Per-word SHAP attributions of the served decision: additive, and the strongly negative words lead."""
    before = requests.get(f"{server}/health").json()["selfcheck"]["classified_texts"]
    text = "The acting was awful and the plot was boring."
    body = requests.post(f"{server}/explain", json={"text": text}).json()
    assert body["label"] == "neg" and body["explained_text"] == text and not body["truncated"]
    toward_neg = {w["word"]: w["attributions"]["neg"] for w in body["words"]}
    assert set(toward_neg) == set(re.findall(r"\w+", text))
    assert max(toward_neg, key=toward_neg.get) in {"awful", "boring"}
    for label in ("neg", "pos"):  # SHAP's additivity: base + attributions = the explained decision
        total = body["base_scores"][label] + sum(w["attributions"][label] for w in body["words"])
        assert total == pytest.approx(body["scores"][label], abs=0.02)
    predicted = requests.post(f"{server}/predict", json={"text": text}).json()
    assert body["scores"] == pytest.approx(predicted["scores"], abs=1e-4)
    after = requests.get(f"{server}/health").json()["selfcheck"]["classified_texts"]
    # the /predict's text at most: explanations never enter the batched classifier's queue
    assert after - before == (predicted["path"] != "lexical")


def test_explain_reads_what_the_transformer_reads(server):
    text = "An opening line that sets the scene. " + "Filler about the plot. " * 400 + "Overall a wonderful film."
    body = requests.post(f"{server}/explain", json={"text": text}).json()
    assert body["truncated"] and len(body["explained_text"]) < len(text) / 4
    assert body["explained_text"].startswith("An opening line") and body["explained_text"].endswith("wonderful film.")
    for word in body["words"]:
        assert body["explained_text"][word["start"] : word["end"]] == word["word"]
    for short in ("Superb", "!!!", "0"):  # under two words SHAP's text clustering has nothing to split
        body = requests.post(f"{server}/explain", json={"text": short, "mode": "transformer"}).json()
        assert [w["word"] for w in body["words"]] == re.findall(r"\w+", short), body
    for bad, status in (({"text": " "}, 422), ({"text": "a" * 50_001}, 422), ({"texts": ["good"]}, 422)):
        response = requests.post(f"{server}/explain", json=bad)
        assert response.status_code == status and set(response.json()) == {"error", "detail"}
    assert requests.post(f"{server}/explain", data=b"good", headers={"content-type": "text/plain"}).status_code == 415


def test_the_registered_served_model_answers_as_the_service(server):
    """The export's MLflow pyfunc of the served artefact, loaded from the registry by its alias, on 200 real test
    reviews: the labels, paths and probabilities (within 1e-4) the service gives over HTTP on this machine."""
    import mlflow.pyfunc

    from loadtests.common import sample_reviews
    from training.registry import setup_tracking

    setup_tracking()  # the project's store (MLFLOW_TRACKING_URI), whatever an earlier test in this process set
    model = mlflow.pyfunc.load_model("models:/imdb-sentiment-served@champion")
    assert model.metadata.signature is not None and model.metadata.get_input_schema().input_names() == ["text"]
    texts = sample_reviews(200, seed=11)
    local = model.predict(pd.DataFrame({"text": texts}))
    served = []
    for start in range(0, len(texts), SETTINGS.max_batch_texts):
        batch = {"texts": texts[start : start + SETTINGS.max_batch_texts]}
        served += requests.post(f"{server}/predict_batch", json=batch, timeout=120).json()["predictions"]
    assert local.predicted_label.tolist() == [p["label"] for p in served]
    assert local.path.tolist() == [p["path"] for p in served]
    assert set(local.model_version) == {served[0]["model_version"]}
    probabilities = np.array([[p["scores"][name] for name in ("neg", "pos")] for p in served])
    np.testing.assert_allclose(np.stack(local.probabilities), probabilities, atol=1e-4)


def test_unknown_paths_are_404s_that_add_no_metric_series(server):
    """A scanner's 1,000 distinct unknown paths: each a 404 in the error shape, and `/metrics` holds as many series
    afterwards as before (BentoML labels its request metrics with the path: here, with the route). The front door
    answers them before BentoML's middleware, and counts them itself."""

    def samples() -> dict[str, float]:
        lines = requests.get(f"{server}/metrics").text.splitlines()
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines if line[:1] not in "#"}

    def total(metric: str, *labels: str) -> float:
        return sum(v for k, v in samples().items() if k.startswith(metric) and all(x in k for x in labels))

    requests.get(f"{server}/no/such/path-warmup")  # the `unknown` label's own series, once
    requests.post(f"{server}/predict", json={"text": "A fine film."})  # one request BentoML's metrics count
    before = samples()
    door = "sentiment_door_answers_total", 'route="unknown"', 'status="404"'
    bentoml_404 = "bentoml_service_request_total", 'http_response_code="404"'
    assert total("bentoml_service_request_total", 'endpoint="/predict"') > 0
    counted, bentoml_counted = total(*door), total(*bentoml_404)
    with requests.Session() as session:
        for n in range(1000):
            answer = session.get(f"{server}/scan/{n}/admin.php", params={"id": n})
            assert answer.status_code == 404 and set(answer.json()) == {"error", "detail"}
    new = {s for s in set(samples()) - set(before) if "scan" in s or "admin" in s}
    assert not new, sorted(new)[:5]
    assert not [s for s in samples() if 'endpoint="/scan' in s]
    assert total(*door) == counted + 1000
    assert total(*bentoml_404) == bentoml_counted
