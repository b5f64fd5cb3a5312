"""The API process's side of every request: A/B assignment, admission control, the hybrid split between the lexical
fast path and the batched transformer, shadow copies, telemetry, explanations, and new models from the store.

`service.py` declares the routes and calls this. `classifier()` returns the client of the `OnnxClassifier`
service in `serving/classifier.py` (async `classify` of texts that each name their model version, `status`, `reload`,
`retire`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import bentoml
from fastapi import Request, Response

from serving import errors
from serving.admission import TransformerAdmission
from serving.batching import dispatch_problem
from serving.explain import Explainer, Explanation
from serving.hybrid import HybridPolicy, Mode
from serving.schemas import Prediction
from serving.settings import ServiceSettings
from serving.supervision import worker_check_problem
from serving.telemetry import RequestRecord, RequestTelemetry
from serving.variants import CHALLENGER, CHAMPION, Split, StoredModel, Variant, VariantName, current_tag

HEALTH_TIMEOUT_S = 2.0
CONNECTION_RETRIES = 3  # stale pooled connections a call may meet before it reaches the classifier
log = logging.getLogger("sentiment.service")


class Gateway:
    """Created once per API worker, with the models the service declares (champion, and a challenger if any)."""

    def __init__(
        self, classifier: Callable[[], Any], models: dict[VariantName, StoredModel], settings: ServiceSettings
    ):
        self.classifier, self.settings = classifier, settings
        self.variants = {name: Variant.of(name, model, settings.hybrid_mode) for name, model in models.items()}
        self.split = Split(settings.ab_mode, settings.challenger_share, CHALLENGER in self.variants)  # type: ignore[arg-type]
        self.explaining = 0
        self.admission = TransformerAdmission(settings.max_queue_ms, settings.max_in_flight)
        self.shadows: set[asyncio.Task] = set()  # shadow copies in flight (held here: the loop keeps weak references)
        # the batching deadline plus the time to run a full batch: past it the classifier is not coming back soon
        self.deadline_s = settings.max_latency_ms / 1000 + settings.classify_timeout_s
        self.telemetry = RequestTelemetry(settings, models[CHAMPION].path)
        # the private BentoML behaviour the service patches, checked as it is built (a BentoML upgrade may void it)
        self.internals = [p for p in (worker_check_problem(settings.worker_check_s), dispatch_problem()) if p]
        for problem in self.internals:
            log.error("a patch of BentoML's internals no longer takes effect: %s", problem)

    async def _transformer(self, texts: list[str], variant: Variant) -> list[list[float]]:
        client = self.classifier()
        asks = [{"model": variant.tag, "text": text} for text in texts]  # answered by this version and no other

        async def classify() -> list[list[float]]:
            for _ in range(CONNECTION_RETRIES):
                try:
                    return await client.classify(asks)
                except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
                    # A pooled connection the classifier had closed (its server drops idle keep-alive connections
                    # after 5 s, the client keeps them 15 s, and a pool can hold several; BentoML exposes neither),
                    # or a restarting worker: `classify` is pure, send it again (within the deadline).
                    pass
            return await client.classify(asks)

        with self.admission.admit(len(texts)):  # a fast 503 when these texts would wait too long
            return await asyncio.wait_for(classify(), self.deadline_s)

    def _policy(self, variant: Variant, mode: Mode | None) -> HybridPolicy:
        try:
            return variant.hybrid.policy_for(mode)
        except ValueError as error:
            raise errors.ApiError(422, f"{error} ({variant.tag})") from error

    async def _answer(self, texts: list[str], mode: Mode | None, name: VariantName) -> list[Prediction]:
        variant = self.variants[name]  # one version answers the whole request, however long it takes
        policy = self._policy(variant, mode)
        probs, paths = await variant.hybrid.classify(texts, policy, lambda onward: self._transformer(onward, variant))
        return [Prediction.of(p, path, variant) for p, path in zip(probs, paths, strict=True)]

    async def predict(
        self, texts: list[str], mode: Mode | None, request: Request, response: Response
    ) -> list[Prediction]:
        """An API route's answer: keyed by `x-user-id` (else the request id), both named in the response headers."""
        request_id = errors.request_id(request)
        key = request.headers.get("x-user-id") or request_id
        predictions = await self.answer(texts, mode, request_id, key, request.url.path)
        response.headers["x-request-id"], response.headers["x-model-variant"] = request_id, predictions[0].variant
        return predictions

    async def answer(
        self, texts: list[str], mode: Mode | None, request_id: str, key: str, endpoint: str
    ) -> list[Prediction]:
        """One request as every front door answers it (the API's routes and the web UI): the A/B variant `key` is
        assigned, admission to the transformer for the texts the lexical model cannot answer alone, the request log,
        metrics and drift, and a shadow copy to the challenger if asked for."""
        record = RequestRecord(request_id, endpoint, key, self.split.assign(key), time.perf_counter())
        with errors.classifier_call():  # down, restarting or past the deadline: 503; a bug goes on to be a 500
            predictions = await self._answer(texts, mode, record.variant)
        self.telemetry.record(record, texts, predictions)
        if self.split.shadows:
            self._shadow(record, texts, mode)
        return predictions

    def _shadow(self, record: RequestRecord, texts: list[str], mode: Mode | None) -> None:
        """A copy to the challenger, answered in the background and only logged; skipped when too many are pending."""
        if len(self.shadows) >= self.settings.max_shadow_in_flight:
            self.telemetry.shadow_skipped.inc()
            return
        task = asyncio.create_task(self._answer_shadow(record, texts, mode))
        self.shadows.add(task)
        task.add_done_callback(self.shadows.discard)

    async def _answer_shadow(self, record: RequestRecord, texts: list[str], mode: Mode | None) -> None:
        shadow = dataclasses.replace(record, variant=CHALLENGER, shadow=True, started=time.perf_counter())
        try:
            self.telemetry.record(shadow, texts, await self._answer(texts, mode, CHALLENGER))
        except Exception as error:
            log.warning("shadow copy of %s failed: %r", record.request_id, error)

    def start(self) -> None:
        """The explainer (SHAP compiles its kernels on first use: seconds, and readiness must not wait for it), the
        drift monitor's batches, the event loop's lag and, unless MODEL_POLL_S=0, the watch on the store."""
        self.explainer = asyncio.create_task(self._load_explainer())
        self.drift_watch = asyncio.create_task(self.telemetry.watch_drift())
        self.loop_watch = asyncio.create_task(self.telemetry.watch_loop())
        if self.settings.model_poll_s > 0:
            self.watcher = asyncio.create_task(self._watch_store())

    async def _load_explainer(self) -> Explainer:
        while True:  # the file served (an int8 recipe or fp32) is the classifier's choice, final once its check is
            try:
                served = await asyncio.wait_for(self.classifier().status(), HEALTH_TIMEOUT_S)
                if served["finished"]:
                    break
            except Exception:
                pass
            await asyncio.sleep(0.5)
        return await asyncio.to_thread(self._explainer_of, self.variants[CHAMPION], served["recipe"])

    def _explainer_of(self, variant: Variant, recipe: str) -> Explainer:
        return Explainer(variant.path, recipe, variant.hybrid, self.settings.workers)

    async def _watch_store(self) -> None:
        """Picks up a new export under a served tag (`name:latest` after `make retrain` promoted a champion): the
        classifier loads and self-checks it beside the old model, then new requests go to it; none is dropped."""
        wanted = {CHAMPION: self.settings.bento_model_tag, CHALLENGER: self.settings.challenger_model_tag}
        while True:
            await asyncio.sleep(self.settings.model_poll_s)
            for name, variant in list(self.variants.items()):
                try:
                    tag = await asyncio.to_thread(current_tag, wanted[name])
                    if tag != variant.tag:
                        await self._reload(name, tag)
                except Exception as error:
                    log.warning("could not reload the %s from %s: %r", name, wanted[name], error)

    async def _reload(self, name: VariantName, tag: str) -> None:
        """A new version loaded whole beside the old one, off the event loop (the classifier's files and self-check,
        the lexical model, policy, labels, and for the champion its drift profile and explainer), then swapped in one
        step: every answer comes from one version, and the old explainer serves until then. The classifier unloads
        the old version once the requests that chose it are past their deadline."""
        old = self.variants[name]
        checked = await self.classifier().reload(variant=name, tag=tag)
        model = await asyncio.to_thread(bentoml.models.get, tag)
        variant = await asyncio.to_thread(Variant.of, name, model, self.settings.hybrid_mode)
        if name == CHAMPION:
            profile = await asyncio.to_thread(self.telemetry.profile_of, model.path)
            explainer = asyncio.get_running_loop().create_future()
            explainer.set_result(await asyncio.to_thread(self._explainer_of, variant, checked["recipe"]))
            self.telemetry.use_profile(profile)
            self.explainer = explainer
        self.variants[name] = variant
        log.warning("the %s is now %s (%s)", name, tag, variant.model_version)
        await asyncio.sleep(self.deadline_s)
        await self.classifier().retire(tag=old.tag)

    async def explain_text(self, text: str, mode: Mode | None = None) -> Explanation:
        """On its own ONNX session and concurrency limit: explanations never queue in the predict path."""
        policy = self._policy(self.variants[CHAMPION], mode)
        if (state := self.explainer_state()) != "ready":
            raise errors.ApiError(503, f"the explainer is {state}; retry shortly")
        if self.explaining >= self.settings.max_explain_in_flight:
            raise errors.ApiError(
                503, f"over {self.settings.max_explain_in_flight} explanations in flight; retry shortly"
            )
        self.explaining += 1
        try:
            explainer = self.explainer.result()
            return await asyncio.to_thread(explainer.explain, text, policy, self.settings.explain_max_evals)
        finally:
            self.explaining -= 1

    def explainer_state(self) -> str:
        """`ready`, `warming up`, or `unavailable (...)` when loading it failed."""
        if not self.explainer.done():
            return "warming up"
        if self.explainer.cancelled():
            return "unavailable"
        error = self.explainer.exception()
        return "ready" if error is None else f"unavailable ({error!r})"

    async def health(self) -> dict:
        """The champion, the classifier's self-check and batches, the hybrid, the A/B split, the explainer, drift."""
        with errors.classifier_call("the classifier's status"):
            check = await asyncio.wait_for(self.classifier().status(), HEALTH_TIMEOUT_S)
        champion, ab = self.variants[CHAMPION], self.split.describe()
        if CHALLENGER in self.variants:
            ab["challenger"] = self.variants[CHALLENGER].model_version
        return {
            "status": "ok",
            "model": champion.tag,
            "version": champion.model_version,
            "selfcheck": check,
            "hybrid": champion.hybrid.describe(),
            "ab": ab,
            "explainer": self.explainer_state(),
            "admission": self.admission.describe(),
            "drift": self.telemetry.drift_status(),
            "internals": self.internals or "as patched",
            "warning": "; ".join(
                ([] if check["passed"] else [f"int8 is not served: {check['detail']}"])
                + [f"BentoML patch voided: {problem}" for problem in self.internals]
            )
            or None,
        }
