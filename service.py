"""BentoML service: sentiment of English movie reviews from the ONNX export of the registered model.

`SentimentAPI` is the public API on port 3000: FastAPI routes with strict validation, one JSON error shape and an
OpenAPI document that states every limit, `/explain` (SHAP) and the web UI at `/ui` (Gradio). It calls
`OnnxClassifier`, whose `classify` BentoML batches adaptively.
Settings: `serving/settings.py` (environment variables); the int8 self-check: `serving/selfcheck.py`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import asdict

import aiohttp
import bentoml
from fastapi import Depends, FastAPI, Request, Response

from serving import errors
from serving.explain import Explainer, Explanation
from serving.hybrid import HybridPolicy, HybridRouter, Mode
from serving.schemas import SETTINGS, BatchPrediction, BatchRequest, ModeQuery, Prediction, PredictRequest
from serving.selfcheck import VARIANT_FILES, SelfCheckLimits, load_classifier
from serving.telemetry import RequestTelemetry, publish_selfcheck

MODEL = bentoml.models.BentoModel(SETTINGS.bento_model_tag)
HEALTH_TIMEOUT_S = 2.0

# Serving image: a slim Python base and requirements-serve.txt only (no torch). distro="none" skips BentoML's
# default system-package step (build-essential, git: ~640 MB) that nothing here needs; the installer (uv) and its
# cache are removed after the install (they shrink the image where the build squashes its layers). BentoML creates
# its home's folders at start: made here, so the root filesystem can be read-only.
IMAGE = (
    bentoml.images.Image(
        base_image="python:3.11-slim", distro="none", python_version="3.11", lock_python_packages=False
    )
    .requirements_file("requirements-serve.txt")
    .run("rm -rf /root/.cache /usr/local/bin/uv /usr/local/bin/uvx")
    .run("cd /home/bentoml && mkdir -p bentos models envs tmp && chown -R bentoml:bentoml bentos models envs tmp")
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
        publish_selfcheck(self.check)

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
        self.hybrid = HybridRouter(self.model.path, SETTINGS.hybrid_mode)
        self.in_flight = self.explaining = 0
        # the batching deadline plus the time to run a full batch: past it the classifier is not coming back soon
        self.deadline_s = SETTINGS.max_latency_ms / 1000 + SETTINGS.classify_timeout_s
        self.telemetry = RequestTelemetry(self.model_version, SETTINGS.log_text, self.model.path, SETTINGS.drift_window)
        # Gradio is imported here, so the classifier's worker (which imports this file too) never pays for it; mounted
        # in __init__, before the app's lifespan, where Gradio starts its queue.
        from serving.ui import mount_ui

        mount_ui(app, path="/ui")

    async def _transformer(self, texts: list[str]) -> list[list[float]]:
        async def classify() -> list[list[float]]:
            try:
                return await self.classifier.to_async.classify(texts)
            except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
                # A pooled connection the classifier had just closed (its server drops idle keep-alive connections
                # after 5 s, the client keeps them 15 s; BentoML exposes neither): `classify` is pure, send it again.
                return await self.classifier.to_async.classify(texts)

        return await asyncio.wait_for(classify(), self.deadline_s)

    def _mode(self, mode: Mode | None) -> HybridPolicy:
        try:
            return self.hybrid.policy_for(mode)
        except ValueError as error:
            raise errors.ApiError(422, f"{error} ({self.model_tag})") from error

    async def classify_texts(self, texts: list[str], mode: Mode | None = None) -> list[Prediction]:
        """Admission control first: past `max_in_flight` requests the answer is a fast 503, not a long queue."""
        policy = self._mode(mode)
        if self.in_flight >= SETTINGS.max_in_flight:
            raise errors.ApiError(503, f"over {SETTINGS.max_in_flight} requests in flight; retry shortly")
        self.in_flight += 1
        try:
            probs, paths = await self.hybrid.classify(texts, policy, self._transformer)
        except Exception as error:  # the classifier is down or restarting, or the batch deadline passed
            raise errors.ApiError(503, f"the classifier is unavailable ({type(error).__name__})") from error
        finally:
            self.in_flight -= 1
        return [
            Prediction.of(p, path, self.label_names, self.model_version) for p, path in zip(probs, paths, strict=True)
        ]

    async def _predict(
        self, texts: list[str], mode: Mode | None, request: Request, response: Response
    ) -> list[Prediction]:
        started = time.perf_counter()
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        response.headers["x-request-id"] = request_id
        predictions = await self.classify_texts(texts, mode)
        self.telemetry.record(request_id, request.url.path, texts, predictions, started)
        return predictions

    @bentoml.on_startup
    async def _start_explainer(self) -> None:
        """In the background: SHAP compiles its kernels on first use (seconds), and readiness must not wait for it."""
        self.explainer = asyncio.create_task(self._load_explainer())

    async def _load_explainer(self) -> Explainer:
        while True:  # the variant served (int8 or fp32) is the classifier's choice, known once it is up
            try:
                served = await asyncio.wait_for(self.classifier.to_async.status(), HEALTH_TIMEOUT_S)
                break
            except Exception:
                await asyncio.sleep(1.0)
        variant = VARIANT_FILES[served["served"]]
        return await asyncio.to_thread(Explainer, self.model.path, variant, self.hybrid, SETTINGS.workers)

    async def explain_text(self, text: str, mode: Mode | None = None) -> Explanation:
        """On its own ONNX session and concurrency limit: explanations never queue in the predict path."""
        policy = self._mode(mode)
        if (state := self._explainer_state()) != "ready":
            raise errors.ApiError(503, f"the explainer is {state}; retry shortly")
        if self.explaining >= SETTINGS.max_explain_in_flight:
            raise errors.ApiError(503, f"over {SETTINGS.max_explain_in_flight} explanations in flight; retry shortly")
        self.explaining += 1
        try:
            explainer = self.explainer.result()
            return await asyncio.to_thread(explainer.explain, text, policy, SETTINGS.explain_max_evals)
        finally:
            self.explaining -= 1

    def _explainer_state(self) -> str:
        """`ready`, `warming up`, or `unavailable (...)` when loading it failed."""
        if not self.explainer.done():
            return "warming up"
        if self.explainer.cancelled():
            return "unavailable"
        error = self.explainer.exception()
        return "ready" if error is None else f"unavailable ({error!r})"

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

    @app.post("/explain", **JSON_ONLY)
    async def explain(self, body: PredictRequest, mode: ModeQuery = None) -> Explanation:
        """Why: per-word SHAP attributions of the served decision on the words the transformer reads."""
        return await self.explain_text(body.text, mode)

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
            "hybrid": self.hybrid.describe(),
            "explainer": self._explainer_state(),
            "drift": self.telemetry.drift_status(),
            "warning": warning,
        }
