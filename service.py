"""BentoML service: sentiment of English movie reviews from the ONNX export of the registered model.

`SentimentAPI` is the public API on port 3000: FastAPI routes with strict validation, one JSON error shape and an
OpenAPI document that states every limit. It calls `OnnxClassifier`, whose `classify` BentoML batches adaptively.
Settings: `serving/settings.py` (environment variables); the int8 self-check: `serving/selfcheck.py`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import asdict
from pathlib import Path

import bentoml
import numpy as np
from fastapi import Depends, FastAPI, Request, Response

from serving import errors
from serving.hybrid import LEXICAL_FILE, POLICY_FILE, HybridPolicy, LexicalModel, Mode
from serving.schemas import SETTINGS, BatchPrediction, BatchRequest, ModeQuery, Prediction, PredictRequest
from serving.selfcheck import SelfCheckLimits, load_classifier
from serving.telemetry import RequestTelemetry

MODEL = bentoml.models.BentoModel(SETTINGS.bento_model_tag)
HEALTH_TIMEOUT_S = 2.0
TRANSFORMER_ONLY = HybridPolicy(weight=0.0, threshold=1.0, mode="transformer")  # a model exported without hybrid

# Serving image: a slim Python base and requirements-serve.txt only (no torch). distro="none" skips BentoML's
# default system-package step (build-essential, git: ~640 MB) that nothing here needs; the installer (uv) and its
# cache are removed after the install (they shrink the image where the build squashes its layers).
IMAGE = (
    bentoml.images.Image(
        base_image="python:3.11-slim", distro="none", python_version="3.11", lock_python_packages=False
    )
    .requirements_file("requirements-serve.txt")
    .run("rm -rf /root/.cache /usr/local/bin/uv /usr/local/bin/uvx")
)


# runner_connection: BentoML (since 1.4.31) replaces the caller's HTTP session to this service every 100 requests
# and closes the old one under requests still in flight on it, which then fail with 500s under load
# (bentoml/BentoML#5540, "Server disconnected"). A local socket never needs that refresh.
@bentoml.service(
    name="onnx-classifier",
    workers=1,
    traffic={"timeout": 60},
    runner_connection={"max_requests": 2**31 - 1, "max_age": 365 * 24 * 3600.0},
)
class OnnxClassifier:
    model = MODEL

    def __init__(self) -> None:
        limits = SelfCheckLimits(**self.model.info.metadata["selfcheck"])
        self.runtime, self.check = load_classifier(self.model.path, limits, SETTINGS.workers)
        self.calls = self.texts = 0
        bentoml.metrics.Gauge(
            name="sentiment_int8_selfcheck_agreement",
            documentation="int8 vs fp32 argmax agreement on the golden set, measured at start on this CPU",
        ).set(self.check.agreement if self.check.agreement is not None else -1)
        bentoml.metrics.Gauge(
            name="sentiment_served_variant", documentation="1 for the variant served", labelnames=["variant"]
        ).labels(variant=self.check.served).set(1)

    @bentoml.api(
        batchable=SETTINGS.adaptive_batching,
        max_batch_size=SETTINGS.max_batch_size,
        max_latency_ms=SETTINGS.max_latency_ms,
    )
    def classify(self, texts: list[str]) -> list[list[float]]:
        """Class probabilities per text (label order as in the model's `label_names`)."""
        self.calls, self.texts = self.calls + 1, self.texts + len(texts)
        return self.runtime.predict_proba(texts).tolist()

    @bentoml.api
    async def status(self) -> dict:  # async: answered on the event loop, never queued behind `classify`
        """The variant served, what the int8 self-check measured on this CPU, and the batches run so far."""
        return asdict(self.check) | {"classify_calls": self.calls, "classified_texts": self.texts}


app = FastAPI(title="imdb-sentiment", description=__doc__)
errors.install(app, max_body_bytes=SETTINGS.max_batch_texts * SETTINGS.max_text_chars * 4 + 4096)
JSON_ONLY = {"dependencies": [Depends(errors.require_json)], "responses": errors.ERROR_RESPONSES}


@bentoml.asgi_app(app, path="/")
@bentoml.service(name="sentiment-api", image=IMAGE, workers=1, traffic={"timeout": 60, "max_concurrency": 512})
class SentimentAPI:
    classifier = bentoml.depends(OnnxClassifier)
    model = MODEL  # its metadata: label names and version

    def __init__(self) -> None:
        info = self.model.info
        self.label_names: list[str] = info.metadata["label_names"]
        self.model_version = f"{info.metadata['mlflow_model']}:{info.metadata['mlflow_version']}"
        self.model_tag = str(info.tag)
        self.in_flight = 0
        path = Path(self.model.path)
        self.lexical = LexicalModel(path / LEXICAL_FILE) if (path / LEXICAL_FILE).exists() else None
        self.policy = HybridPolicy.load(path / POLICY_FILE) if self.lexical else TRANSFORMER_ONLY
        self.policy = self._policy(SETTINGS.hybrid_mode or self.policy.mode)
        # the batching deadline plus the time to run a full batch: past it the classifier is not coming back soon
        self.deadline_s = SETTINGS.max_latency_ms / 1000 + SETTINGS.classify_timeout_s
        self.telemetry = RequestTelemetry(self.model_version, SETTINGS.log_text)

    def _prediction(self, probabilities: np.ndarray, path: str) -> Prediction:
        best = int(probabilities.argmax())
        return Prediction(
            label=self.label_names[best],
            label_id=best,
            score=float(probabilities[best]),
            scores=dict(zip(self.label_names, probabilities.tolist(), strict=True)),
            path=path,
            model_version=self.model_version,
        )

    def _policy(self, mode: Mode | None) -> HybridPolicy:
        if mode and mode != "transformer" and self.lexical is None:
            raise errors.ApiError(422, f"mode {mode!r} needs the hybrid's lexical model, which {self.model_tag} lacks")
        return self.policy.with_mode(mode) if mode else self.policy

    async def _classify(self, texts: list[str], policy: HybridPolicy) -> list[Prediction]:
        """The cascade: the lexical model answers here the texts it is sure of; the rest go to the batched
        transformer (and are combined with the lexical probabilities outside the transformer-only mode)."""
        lexical = self.lexical.predict_proba(texts) if policy.mode != "transformer" else None
        onward = policy.onward(lexical, len(texts))
        transformer = []
        if len(onward):
            call = self.classifier.to_async.classify([texts[i] for i in onward])
            transformer = await asyncio.wait_for(call, self.deadline_s)
        probs, routes = policy.merge(lexical, np.array(transformer), onward, len(texts))
        return [self._prediction(p, route) for p, route in zip(probs, routes, strict=True)]

    async def _predict(
        self, texts: list[str], mode: Mode | None, request: Request, response: Response
    ) -> list[Prediction]:
        """Admission control first: past `max_in_flight` requests the answer is a fast 503, not a long queue."""
        policy = self._policy(mode)
        if self.in_flight >= SETTINGS.max_in_flight:
            raise errors.ApiError(503, f"over {SETTINGS.max_in_flight} requests in flight; retry shortly")
        started = time.perf_counter()
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        response.headers["x-request-id"] = request_id
        self.in_flight += 1
        try:
            predictions = await self._classify(texts, policy)
        except Exception as error:  # the classifier is down or restarting, or the batch deadline passed
            raise errors.ApiError(503, f"the classifier is unavailable ({type(error).__name__})") from error
        finally:
            self.in_flight -= 1
        self.telemetry.record(request_id, request.url.path, texts, predictions, started)
        return predictions

    @app.post("/predict", **JSON_ONLY)
    async def predict(
        self, body: PredictRequest, request: Request, response: Response, mode: ModeQuery = None
    ) -> Prediction:
        """Classify one review."""
        (prediction,) = await self._predict([body.text], mode, request, response)
        return prediction

    @app.post("/predict_batch", **JSON_ONLY)
    async def predict_batch(
        self, body: BatchRequest, request: Request, response: Response, mode: ModeQuery = None
    ) -> BatchPrediction:
        """Classify 1 to `max_batch_texts` reviews; predictions come back in input order."""
        predictions = await self._predict(body.texts, mode, request, response)
        return BatchPrediction(predictions=predictions, model_version=self.model_version)

    @app.get("/health", responses={503: errors.ERROR_RESPONSES[503]})
    async def health(self) -> dict:
        """200 once the classifier has its model loaded (with the variant it serves), 503 before or when down."""
        try:
            check = await asyncio.wait_for(self.classifier.to_async.status(), HEALTH_TIMEOUT_S)
        except Exception as error:
            raise errors.ApiError(503, f"the classifier is not ready ({type(error).__name__})") from error
        warning = None if check["passed"] else f"int8 is not served: {check['detail']}"
        return {
            "status": "ok",
            "model": self.model_tag,
            "version": self.model_version,
            "selfcheck": check,
            "hybrid": asdict(self.policy) | {"lexical_model": self.lexical is not None},
            "warning": warning,
        }
