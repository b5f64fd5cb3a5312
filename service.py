"""BentoML service: sentiment of English movie reviews from the ONNX export of the registered model.

`SentimentAPI` is the public API on port 3000: FastAPI routes with strict validation, one JSON error shape and an
OpenAPI document that states every limit, `/explain` (SHAP) and the web UI at `/ui` (Gradio). It calls
`OnnxClassifier`, whose `classify` BentoML batches adaptively. A/B testing: a challenger's export can answer beside
the champion's (a sticky split or a shadow copy, `serving/variants.py`), and a new export under a served tag is picked
up while the service runs. Settings: `serving/settings.py` (environment variables); the int8 self-check:
`serving/selfcheck.py`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid

import aiohttp
import bentoml
from fastapi import Depends, FastAPI, Request, Response

from serving import errors
from serving.explain import Explainer, Explanation
from serving.hybrid import HybridPolicy, Mode
from serving.schemas import SETTINGS, BatchPrediction, BatchRequest, ModeQuery, Prediction, PredictRequest
from serving.selfcheck import VARIANT_FILES, CheckedModel
from serving.telemetry import RequestRecord, RequestTelemetry, SelfCheckGauges
from serving.variants import CHALLENGER, CHAMPION, Split, StoredModel, Variant, VariantName, current_tag

MODEL = bentoml.models.BentoModel(SETTINGS.bento_model_tag)
CHALLENGER_MODEL = bentoml.models.BentoModel(SETTINGS.challenger_model_tag) if SETTINGS.challenger_model_tag else None
HEALTH_TIMEOUT_S = 2.0
BATCHED = {  # adaptive batching of the classifier's methods
    "batchable": SETTINGS.adaptive_batching,
    "max_batch_size": SETTINGS.max_batch_size,
    "max_latency_ms": SETTINGS.max_latency_ms,
}
log = logging.getLogger("sentiment.service")

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
        self.variants = {
            name: Variant.of(name, model, SETTINGS.hybrid_mode)
            for name, model in ((CHAMPION, self.model), (CHALLENGER, self.challenger))
            if model is not None
        }
        self.split = Split(SETTINGS.ab_mode, SETTINGS.challenger_share, CHALLENGER in self.variants)  # type: ignore[arg-type]
        self.in_flight = self.explaining = self.shadowing = 0
        self.shadows: set[asyncio.Task] = set()  # shadow copies in flight (the loop keeps only weak references)
        # the batching deadline plus the time to run a full batch: past it the classifier is not coming back soon
        self.deadline_s = SETTINGS.max_latency_ms / 1000 + SETTINGS.classify_timeout_s
        self.telemetry = RequestTelemetry(SETTINGS, self.model.path)
        # Gradio is imported here, so the classifier's worker (which imports this file too) never pays for it; mounted
        # in __init__, before the app's lifespan, where Gradio starts its queue.
        from serving.ui import mount_ui

        mount_ui(app, path="/ui")

    async def _transformer(self, texts: list[str], variant: VariantName) -> list[list[float]]:
        client = self.classifier.to_async
        batched = client.classify if variant == CHAMPION else client.classify_challenger

        async def classify() -> list[list[float]]:
            try:
                return await batched(texts)
            except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
                # A pooled connection the classifier had just closed (its server drops idle keep-alive connections
                # after 5 s, the client keeps them 15 s; BentoML exposes neither): `classify` is pure, send it again.
                return await batched(texts)

        return await asyncio.wait_for(classify(), self.deadline_s)

    def _policy(self, variant: Variant, mode: Mode | None) -> HybridPolicy:
        try:
            return variant.hybrid.policy_for(mode)
        except ValueError as error:
            raise errors.ApiError(422, f"{error} ({variant.tag})") from error

    async def _answer(self, texts: list[str], mode: Mode | None, name: VariantName) -> list[Prediction]:
        variant = self.variants[name]
        policy = self._policy(variant, mode)
        probs, paths = await variant.hybrid.classify(texts, policy, lambda onward: self._transformer(onward, name))
        return [Prediction.of(p, path, variant) for p, path in zip(probs, paths, strict=True)]

    async def classify_texts(
        self, texts: list[str], mode: Mode | None = None, variant: VariantName = CHAMPION
    ) -> list[Prediction]:
        """Admission control first: past `max_in_flight` requests the answer is a fast 503, not a long queue."""
        if self.in_flight >= SETTINGS.max_in_flight:
            raise errors.ApiError(503, f"over {SETTINGS.max_in_flight} requests in flight; retry shortly")
        self.in_flight += 1
        try:
            return await self._answer(texts, mode, variant)
        except errors.ApiError:
            raise
        except Exception as error:  # the classifier is down or restarting, or the batch deadline passed
            raise errors.ApiError(503, f"the classifier is unavailable ({type(error).__name__})") from error
        finally:
            self.in_flight -= 1

    async def _predict(
        self, texts: list[str], mode: Mode | None, request: Request, response: Response
    ) -> list[Prediction]:
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        key = request.headers.get("x-user-id") or request_id
        record = RequestRecord(request_id, request.url.path, key, self.split.assign(key), time.perf_counter())
        predictions = await self.classify_texts(texts, mode, record.variant)
        response.headers["x-request-id"], response.headers["x-model-variant"] = request_id, record.variant
        self.telemetry.record(record, texts, predictions)
        if self.split.shadows:
            self._shadow(record, texts, mode)
        return predictions

    def _shadow(self, record: RequestRecord, texts: list[str], mode: Mode | None) -> None:
        """A copy to the challenger, answered in the background and only logged; skipped when too many are pending."""
        if self.shadowing >= SETTINGS.max_shadow_in_flight:
            self.telemetry.shadow_skipped.inc()
            return
        task = asyncio.create_task(self._answer_shadow(record, texts, mode))
        self.shadows.add(task)
        task.add_done_callback(self.shadows.discard)

    async def _answer_shadow(self, record: RequestRecord, texts: list[str], mode: Mode | None) -> None:
        self.shadowing += 1
        shadow = dataclasses.replace(record, variant=CHALLENGER, shadow=True, started=time.perf_counter())
        try:
            self.telemetry.record(shadow, texts, await self._answer(texts, mode, CHALLENGER))
        except Exception as error:
            log.warning("shadow copy of %s failed: %r", record.request_id, error)
        finally:
            self.shadowing -= 1

    @bentoml.on_startup
    async def _start_background(self) -> None:
        """The explainer (SHAP compiles its kernels on first use: seconds, and readiness must not wait for it) and,
        unless MODEL_POLL_S=0, the watch on the store."""
        self.explainer = asyncio.create_task(self._load_explainer())
        if SETTINGS.model_poll_s > 0:
            self.watcher = asyncio.create_task(self._watch_store())

    async def _load_explainer(self) -> Explainer:
        while True:  # the variant served (int8 or fp32) is the classifier's choice, known once it is up
            try:
                served = await asyncio.wait_for(self.classifier.to_async.status(), HEALTH_TIMEOUT_S)
                break
            except Exception:
                await asyncio.sleep(1.0)
        champion = self.variants[CHAMPION]
        file = VARIANT_FILES[served["served"]]
        return await asyncio.to_thread(Explainer, champion.path, file, champion.hybrid, SETTINGS.workers)

    async def _watch_store(self) -> None:
        """Picks up a new export under a served tag (`name:latest` after `make retrain` promoted a champion): the
        classifier loads and self-checks it beside the old model, then new requests go to it; none is dropped."""
        wanted = {CHAMPION: SETTINGS.bento_model_tag, CHALLENGER: SETTINGS.challenger_model_tag}
        while True:
            await asyncio.sleep(SETTINGS.model_poll_s)
            for name, variant in list(self.variants.items()):
                try:
                    tag = await asyncio.to_thread(current_tag, wanted[name])
                    if tag != variant.tag:
                        await self._reload(name, tag)
                except Exception as error:
                    log.warning("could not reload the %s from %s: %r", name, wanted[name], error)

    async def _reload(self, name: VariantName, tag: str) -> None:
        await self.classifier.to_async.reload(variant=name, tag=tag)
        model = await asyncio.to_thread(bentoml.models.get, tag)
        self.variants[name] = Variant.of(name, model, SETTINGS.hybrid_mode)
        if name == CHAMPION:
            self.telemetry.use_model(model.path)
            self.explainer = asyncio.create_task(self._load_explainer())
        log.warning("the %s is now %s (%s)", name, tag, self.variants[name].model_version)

    async def explain_text(self, text: str, mode: Mode | None = None) -> Explanation:
        """On its own ONNX session and concurrency limit: explanations never queue in the predict path."""
        policy = self._policy(self.variants[CHAMPION], mode)
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
        first = predictions[0]
        return BatchPrediction(predictions=predictions, model_version=first.model_version, variant=first.variant)

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
        champion = self.variants[CHAMPION]
        ab = self.split.describe()
        if CHALLENGER in self.variants:
            ab["challenger"] = self.variants[CHALLENGER].model_version
        return {
            "status": "ok",
            "model": champion.tag,
            "version": champion.model_version,
            "selfcheck": check,
            "hybrid": champion.hybrid.describe(),
            "ab": ab,
            "explainer": self._explainer_state(),
            "drift": self.telemetry.drift_status(),
            "warning": warning,
        }
