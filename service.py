"""BentoML service: a text classifier from the ONNX export of the registered model (the one the store serves).

`SentimentAPI` is the public API on port 3000: strict validation with one JSON error shape and an OpenAPI document
that states every limit, `/explain` (SHAP) and the web UI at `/ui` (Gradio). A request's path through the API process
(the A/B arm, admission control, the lexical fast path, telemetry) is `serving/gateway.py`; the transformer runs in
`OnnxClassifier` (`serving/classifier.py`), batched adaptively. Optional API keys: `serving/access.py`. Settings:
`serving/settings.py`.
"""

from __future__ import annotations

import asyncio

import bentoml
from fastapi import Depends, FastAPI, Request, Response

from serving import errors
from serving.ab import CHALLENGER, CHAMPION
from serving.access import ApiKeys
from serving.admission import Door
from serving.classifier import CHALLENGER_MODEL, MODEL, OnnxClassifier
from serving.deferred import DeferredApp
from serving.explain import Explanation
from serving.gateway import Gateway
from serving.intake import Intake
from serving.schemas import BatchPrediction, BatchRequest, ModeQuery, Prediction, PredictRequest
from serving.settings import SETTINGS
from serving.supervision import check_workers_every

# A slim Python base and requirements-serve.txt only (no torch). distro="none" skips BentoML's system packages
# (build-essential, git: ~640 MB); the installer (uv) and its cache are removed after the install. BentoML's home
# folders are made here, so the root filesystem can be read-only.
IMAGE = (
    bentoml.images.Image(
        base_image="python:3.11-slim", distro="none", python_version="3.11", lock_python_packages=False
    )
    .requirements_file("requirements-serve.txt")
    .run("rm -rf /root/.cache /usr/local/bin/uv /usr/local/bin/uvx")
    .run("cd /home/bentoml && mkdir -p bentos models envs tmp && chown -R bentoml:bentoml bentos models envs tmp")
)

check_workers_every(SETTINGS.worker_check_s)  # a killed worker is back in seconds (BentoML's default: 10 s)
# BentoML's own middleware traces and meters every request: FastAPI's native telemetry would do it a second time
SERVED = bentoml.models.get(SETTINGS.bento_model_tag).info.metadata  # the OpenAPI document names what is served
app = FastAPI(
    title=SERVED["mlflow_model"],
    description=f"Classifies a text as one of {', '.join(SERVED['label_names'])} (`{SERVED['mlflow_model']}`, "
    f"trained on {SERVED.get('dataset', 'its dataset')}).\n\n{__doc__}",
    telemetry={"tracing": False, "metrics": False, "logs": False},
)
errors.install(app)
DOOR = Door(SETTINGS.max_loop_lag_ms, SETTINGS.max_concurrency, SETTINGS.queue_interval_ms)  # the worker behind
app.add_middleware(  # outermost: a request counts as inside once its body is in
    Intake, max_body_bytes=SETTINGS.max_body_bytes, body_timeout_s=SETTINGS.body_timeout_s, door=DOOR
)
UI = DeferredApp("the web UI")  # Gradio, built after start: its import alone takes seconds
app.mount("/ui", UI)
KEYS = ApiKeys.of(SETTINGS)  # off unless API_KEYS or API_KEYS_FILE is set
GUARDED = [Depends(KEYS.require)] if KEYS.enabled else []
JSON_ONLY = {
    "dependencies": [*GUARDED, Depends(errors.require_json)],
    "responses": errors.ERROR_RESPONSES | (errors.UNAUTHORIZED if KEYS.enabled else {}),
}


def build_ui() -> FastAPI:
    from serving.ui import ui_app  # imports Gradio: in the API worker only, after start

    return ui_app(app.title, SERVED["label_names"], login=KEYS.ui_login if KEYS.enabled else None)


@bentoml.asgi_app(app, path="/")
@bentoml.service(name="sentiment-api", image=IMAGE, workers=1, traffic={"timeout": 60})
class SentimentAPI:
    classifier = bentoml.depends(OnnxClassifier)
    model, challenger = MODEL, CHALLENGER_MODEL

    def __init__(self) -> None:
        models = {CHAMPION: self.model} | ({CHALLENGER: self.challenger} if self.challenger else {})
        self.gateway = Gateway(lambda: self.classifier.to_async, models, SETTINGS, DOOR)

    @bentoml.on_startup
    async def _start_background(self) -> None:
        self.gateway.start()  # the explainer warms up; the store is watched for new exports
        self.ui_build = asyncio.create_task(UI.build(build_ui))  # held: the loop keeps weak references

    @bentoml.on_shutdown
    async def _stop_background(self) -> None:
        await UI.close()

    @app.post("/predict", **JSON_ONLY)
    async def predict(
        self, body: PredictRequest, request: Request, response: Response, mode: ModeQuery = None
    ) -> Prediction:
        """Classify one review."""
        (prediction,) = await self.gateway.predict([body.text], mode, request, response)
        return prediction

    @app.post("/predict_batch", **JSON_ONLY)
    async def predict_batch(
        self, body: BatchRequest, request: Request, response: Response, mode: ModeQuery = None
    ) -> BatchPrediction:
        """Classify 1 to `max_batch_texts` reviews; predictions come back in input order."""
        predictions = await self.gateway.predict(body.texts, mode, request, response)
        return BatchPrediction.of(predictions)

    @app.post("/explain", **JSON_ONLY)
    async def explain(self, body: PredictRequest, mode: ModeQuery = None) -> Explanation:
        """Why: per-word SHAP attributions of the served decision on the words the transformer reads."""
        return await self.gateway.explain_text(body.text, mode)

    @app.get("/health", responses={code: errors.ERROR_RESPONSES[code] for code in (500, 503)})
    async def health(self) -> dict:
        """200 once the classifier has its model loaded (with the variant it serves), 503 before or when down."""
        return await self.gateway.health() | {"ui": UI.state()}
