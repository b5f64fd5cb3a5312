"""BentoML service: sentiment of English movie reviews from the ONNX export of the registered model.

`SentimentAPI` is the public API on port 3000: FastAPI routes with strict validation, one JSON error shape and an
OpenAPI document that states every limit, `/explain` (SHAP) and the web UI at `/ui` (Gradio). What a request goes
through in the API process (A/B assignment, admission control, the hybrid split, shadow copies, telemetry, new models
from the store) is `serving/gateway.py`; the transformer runs in `OnnxClassifier`, whose `classify` (the champion)
and `classify_challenger` (an A/B challenger, when one is served) BentoML batches adaptively.
Settings: `serving/settings.py` (environment variables); the int8 self-check: `serving/selfcheck.py`.
"""

from __future__ import annotations

import uuid

import bentoml
from fastapi import Depends, FastAPI, Request, Response

from serving import errors
from serving.explain import Explanation
from serving.gateway import Gateway
from serving.hybrid import Mode
from serving.schemas import SETTINGS, BatchPrediction, BatchRequest, ModeQuery, Prediction, PredictRequest
from serving.selfcheck import CheckedModel
from serving.telemetry import SelfCheckGauges
from serving.variants import CHALLENGER, CHAMPION, StoredModel, VariantName

MODEL = bentoml.models.BentoModel(SETTINGS.bento_model_tag)
CHALLENGER_MODEL = bentoml.models.BentoModel(SETTINGS.challenger_model_tag) if SETTINGS.challenger_model_tag else None
BATCHED = {  # adaptive batching of the classifier's methods
    "batchable": SETTINGS.adaptive_batching,
    "max_batch_size": SETTINGS.max_batch_size,
    "max_latency_ms": SETTINGS.max_latency_ms,
}

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
    challenger = CHALLENGER_MODEL

    def __init__(self) -> None:
        self.gauges = SelfCheckGauges()
        self.loaded: dict[str, CheckedModel] = {}
        for name, model in ((CHAMPION, self.model), (CHALLENGER, self.challenger)):
            if model is not None:
                self.load(name, model)
        self.calls = self.texts = 0

    def load(self, variant: VariantName, model: StoredModel) -> None:
        """Load and self-check beside the model in use, then swap: batches in flight finish on the old one."""
        self.loaded[variant] = CheckedModel.load(model, SETTINGS.workers)
        if variant == CHAMPION:
            self.gauges.publish(self.loaded[variant].check)

    def _classify(self, variant: VariantName, texts: list[str]) -> list[list[float]]:
        self.calls, self.texts = self.calls + 1, self.texts + len(texts)
        return self.loaded[variant].runtime.predict_proba(texts).tolist()

    @bentoml.api(**BATCHED)
    def classify(self, texts: list[str]) -> list[list[float]]:
        """The champion's class probabilities per text (label order as in the model's `label_names`)."""
        return self._classify(CHAMPION, texts)

    @bentoml.api(**BATCHED)
    def classify_challenger(self, texts: list[str]) -> list[list[float]]:
        """The A/B challenger's, batched on its own."""
        return self._classify(CHALLENGER, texts)

    @bentoml.api
    def reload(self, variant: str, tag: str) -> dict:  # sync: loads in a worker thread while batches keep running
        """Serve the store's model `tag` as `variant` from now on."""
        self.load(variant, bentoml.models.get(tag))  # type: ignore[arg-type]
        return self.loaded[variant].describe()

    @bentoml.api
    async def status(self) -> dict:  # async: answered on the event loop, never queued behind `classify`
        """The champion's file served and int8 self-check on this CPU (the challenger's beside), and the batches run."""
        status = self.loaded[CHAMPION].describe() | {"classify_calls": self.calls, "classified_texts": self.texts}
        if CHALLENGER in self.loaded:
            status[CHALLENGER] = self.loaded[CHALLENGER].describe()
        return status


app = FastAPI(title="imdb-sentiment", description=__doc__)
errors.install(app, max_body_bytes=SETTINGS.max_batch_texts * SETTINGS.max_text_chars * 4 + 4096)
JSON_ONLY = {"dependencies": [Depends(errors.require_json)], "responses": errors.ERROR_RESPONSES}


@bentoml.asgi_app(app, path="/")
@bentoml.service(name="sentiment-api", image=IMAGE, workers=1, traffic={"timeout": 60, "max_concurrency": 512})
class SentimentAPI:
    classifier = bentoml.depends(OnnxClassifier)
    model, challenger = MODEL, CHALLENGER_MODEL

    def __init__(self) -> None:
        models = {CHAMPION: self.model} | ({CHALLENGER: self.challenger} if self.challenger else {})
        self.gateway = Gateway(lambda: self.classifier.to_async, models, SETTINGS)
        # Gradio is imported here, so the classifier's worker (which imports this file too) never pays for it; mounted
        # in __init__, before the app's lifespan, where Gradio starts its queue.
        from serving.ui import mount_ui

        mount_ui(app, path="/ui")

    @bentoml.on_startup
    async def _start_background(self) -> None:
        """The explainer warms up and, unless MODEL_POLL_S=0, the store is watched for new exports."""
        self.gateway.start()

    async def _predict(
        self, texts: list[str], mode: Mode | None, request: Request, response: Response
    ) -> list[Prediction]:
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        key = request.headers.get("x-user-id") or request_id  # the A/B split's sticky key
        predictions = await self.gateway.predict(texts, mode, request_id, key, request.url.path)
        response.headers["x-request-id"], response.headers["x-model-variant"] = request_id, predictions[0].variant
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
        first = predictions[0]
        return BatchPrediction(predictions=predictions, model_version=first.model_version, variant=first.variant)

    @app.post("/explain", **JSON_ONLY)
    async def explain(self, body: PredictRequest, mode: ModeQuery = None) -> Explanation:
        """Why: per-word SHAP attributions of the served decision on the words the transformer reads."""
        return await self.gateway.explain_text(body.text, mode)

    @app.get("/health", responses={503: errors.ERROR_RESPONSES[503]})
    async def health(self) -> dict:
        """200 once the classifier has its model loaded (with the variant it serves), 503 before or when down."""
        return await self.gateway.health()
