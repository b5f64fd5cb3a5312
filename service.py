"""BentoML service: a text classifier from the ONNX export of the registered model (the one the store serves).

`SentimentAPI` is the public API on port 3000, as BentoML APIs that its clients call by name: `predict`,
`predict_batch`, `explain` (SHAP) and `health`, with the web UI at `/ui` (Gradio). A request passes the front door
(`serving/intake.py`: body, JSON, API key, admission, schema), then its API here, then the inference core
(`serving/inference.py`); the transformer runs in `OnnxClassifier` (`serving/classifier.py`), batched adaptively.
Settings: `serving/settings.py`.
"""

from __future__ import annotations

import asyncio
from functools import partial

import bentoml

from serving import compat, errors
from serving.ab import CHALLENGER, CHAMPION
from serving.access import ApiKeys
from serving.admission import Door, StandingQueue, Streams
from serving.classifier import CHALLENGER_MODEL, MODEL, OnnxClassifier
from serving.classifier_client import ClassifierClient
from serving.core.hybrid import Mode
from serving.core.runtime import cap_malloc_arenas, freeze_startup_objects
from serving.deferred import DeferredApp
from serving.explain import Explanation, Explanations
from serving.exports import ServedExport
from serving.inference import Caller, Inference
from serving.intake import Intake, route_of
from serving.reloads import Reloads
from serving.schemas import BatchPrediction, BatchRequest, HealthRequest, Prediction, PredictRequest
from serving.settings import SETTINGS
from serving.telemetry import RequestTelemetry

# A slim Python base and requirements-serve.txt only (no torch). distro="none" skips BentoML's system packages
# (build-essential, git); the installer (uv) and its cache are removed after the install. BentoML's home folders are
# made here, so the root filesystem can be read-only.
IMAGE = (
    bentoml.images.Image(
        base_image="python:3.11-slim", distro="none", python_version="3.11", lock_python_packages=False
    )
    .requirements_file("requirements-serve.txt")
    .run("rm -rf /root/.cache /usr/local/bin/uv /usr/local/bin/uvx")
    .run("cd /home/bentoml && mkdir -p bentos models envs tmp && chown -R bentoml:bentoml bentos models envs tmp")
)
cap_malloc_arenas()  # in each worker before its threads start: memory flat across reloads
SERVED = bentoml.models.get(SETTINGS.bento_model_tag).info.metadata  # the OpenAPI document names what is served
DOOR = Door(SETTINGS.max_loop_lag_ms, SETTINGS.max_concurrency, SETTINGS.queue_interval_ms)  # the worker behind
STREAMS = Streams(SETTINGS.ui_max_connections, SETTINGS.ui_max_per_client)  # the web UI's connections, apart
KEYS = ApiKeys.of(SETTINGS)  # off unless API_KEYS or API_KEYS_FILE is set
UI = DeferredApp("the web UI")  # Gradio, built after start: its import alone takes seconds


@bentoml.service(name="sentiment-api", image=IMAGE, workers=1, traffic={"timeout": 60})
class SentimentAPI:
    classifier = bentoml.depends(OnnxClassifier)
    model, challenger = MODEL, CHALLENGER_MODEL

    def __init__(self) -> None:
        models = {CHAMPION: self.model} | ({CHALLENGER: self.challenger} if self.challenger else {})
        exports = {arm: ServedExport.of(arm, model, SETTINGS.hybrid_mode) for arm, model in models.items()}
        # the batching deadline plus the time to run a full batch: past it the classifier is not coming back soon
        deadline_s = SETTINGS.max_latency_ms / 1000 + SETTINGS.classify_timeout_s
        queue = StandingQueue(SETTINGS.queue_target_ms, SETTINGS.queue_interval_ms)
        transformer = ClassifierClient(self.classifier.to_async, queue, deadline_s)
        self.core = Inference(transformer, exports, RequestTelemetry(SETTINGS, self.model.path), SETTINGS)
        self.explanations = Explanations(SETTINGS.workers, SETTINGS.max_explain_in_flight, SETTINGS.explain_max_evals)
        self.reloads = Reloads(self.core, self.explanations, SETTINGS.hybrid_mode)

    @bentoml.api(input_spec=PredictRequest)
    @errors.in_error_shape
    async def predict(self, text: str, mode: Mode | None, ctx: bentoml.Context) -> Prediction:
        """Classify one review."""
        (prediction,) = await self.answer([text], mode, ctx)
        return prediction

    @bentoml.api(input_spec=BatchRequest)
    @errors.in_error_shape
    async def predict_batch(self, texts: list[str], mode: Mode | None, ctx: bentoml.Context) -> BatchPrediction:
        """Classify 1 to `max_batch_texts` reviews; predictions come back in input order."""
        return BatchPrediction.of(await self.answer(texts, mode, ctx))

    async def answer(self, texts: list[str], mode: Mode | None, ctx: bentoml.Context) -> list[Prediction]:
        """The core's answer to this request: its sticky A/B key is `x-user-id` (else the request id)."""
        request_id = errors.request_id(ctx.request.scope)
        caller = Caller(request_id, ctx.request.headers.get("x-user-id") or request_id, ctx.request.url.path)
        predictions = await self.core.answer(texts, mode, caller)
        ctx.response.headers["x-model-variant"] = predictions[0].variant
        return predictions

    @bentoml.api(input_spec=PredictRequest)
    @errors.in_error_shape
    async def explain(self, text: str, mode: Mode | None, ctx: bentoml.Context) -> Explanation:
        """Why: per-word SHAP attributions of the champion's decision on the words the transformer reads."""
        return await self.explained(text, mode)

    async def explained(self, text: str, mode: Mode | None) -> Explanation:
        """The champion's decision on `text`, word by word (for the API and the web UI)."""
        return await self.explanations.explain(text, self.core.policy(self.core.exports[CHAMPION], mode))

    @bentoml.api(input_spec=HealthRequest)
    @errors.in_error_shape
    async def health(self, ctx: bentoml.Context) -> dict:
        """200 once the classifier has its model loaded (with the file it serves), 503 before or when down."""
        queue = self.core.classifier.queue.describe()
        admission = {"door": DOOR.describe(), "queue": queue, "ui_connections": STREAMS.describe()}
        state = {"admission": admission, "explainer": self.explanations.state(), "ui": UI.state()}
        health = await self.core.describe() | state | {"reload": self.reloads.describe()}
        failed = [f"the {arm} stays: {f['tag']} failed to load ({f['error']})" for arm, f in health["reload"].items()]
        health["warning"] = "; ".join(filter(None, [health["warning"], *failed])) or None
        return health

    @bentoml.on_startup
    async def start_background(self) -> None:
        """The first explainer (once the classifier has chosen its file), the web UI, the drift monitor, the event
        loop's lag, the watch on the store (unless MODEL_POLL_S=0), and the start's objects frozen once built."""
        telemetry = self.core.telemetry
        self.background = set()  # the tasks, held: the event loop keeps only weak references
        self.explanations.load_in_background(self.first_explained())
        ui = asyncio.create_task(UI.build(build_ui))
        for job in (telemetry.watch_drift(), DOOR.watch_loop(telemetry.loop_lag), self.started(ui)):
            self.background.add(asyncio.create_task(job))
        self.background.add(ui)
        if SETTINGS.model_poll_s > 0:
            wanted = {CHAMPION: SETTINGS.bento_model_tag, CHALLENGER: SETTINGS.challenger_model_tag}
            self.background.add(asyncio.create_task(self.reloads.watch(wanted, SETTINGS.model_poll_s)))

    async def started(self, ui: asyncio.Task) -> None:
        """Once the first explainer and the web UI are built, what the start made is frozen out of the garbage
        collector's scans (`freeze_startup_objects`)."""
        await asyncio.wait([self.explanations.explainer, ui])
        freeze_startup_objects()

    async def first_explained(self) -> tuple[ServedExport, str | None]:
        """The champion and the file its classifier serves (an int8 recipe or fp32), final once its check is."""
        while True:
            try:
                served = await self.core.classifier.status()
                if served["finished"]:
                    return self.core.exports[CHAMPION], served["recipe"]
            except Exception:
                pass
            await asyncio.sleep(0.5)

    @bentoml.on_shutdown
    async def stop_background(self) -> None:
        await UI.close()


def build_ui():
    from serving.ui import ui_app  # imports Gradio: in the API worker only, after start

    return ui_app(INFO["title"], SERVED["label_names"], login=KEYS.ui_login if KEYS.enabled else None)


INFO = {
    "title": SERVED["mlflow_model"],
    "description": f"Classifies a text as one of {', '.join(SERVED['label_names'])} (`{SERVED['mlflow_model']}`, "
    f"trained on {SERVED.get('dataset', 'its dataset')}).\n\n{__doc__}",
}
SentimentAPI.add_asgi_middleware(errors.Faults)  # outermost of the two: a bug in the front door is a 500 too
SentimentAPI.add_asgi_middleware(
    Intake,
    service=SentimentAPI,
    max_body_bytes=SETTINGS.max_body_bytes,
    body_timeout_s=SETTINGS.body_timeout_s,
    door=DOOR,
    streams=STREAMS,
    client_address_header=SETTINGS.client_address_header,
    keys=KEYS,
    metrics_need_key=SETTINGS.metrics_need_key,
    info=INFO,
)
SentimentAPI.mount_asgi_app(UI, path="/ui")
# before BentoML builds its arbiter, batching dispatchers and metrics middleware
compat.apply(SETTINGS.worker_check_s, partial(route_of, frozenset(api.route for api in SentimentAPI.apis.values())))
