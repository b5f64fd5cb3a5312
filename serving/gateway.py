"""One request's path through the API worker, and what it is made of (one piece each):

    A/B arm (`ab.Allocation`) -> the arm's model version (`versions.ModelVersion`) -> the hybrid's route between
    the lexical fast path and the transformer (`core.hybrid.HybridRouter`) -> for the texts sent onward, admission
    and the classifier call naming that version (`classifier_client`) -> the answer -> the request log, metrics
    and drift (`telemetry`) -> a shadow copy to the challenger, if that is the rollout (`shadow`).

Beside the path: explanations (`explain.Explanations`), new versions from the store (`reloads`), and `/health`.
`service.py` declares the routes and the web UI (`ui.py`) calls `answer` as they do.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from fastapi import Request, Response

from serving import errors
from serving.ab import CHALLENGER, CHAMPION, Allocation, Arm
from serving.admission import Door, StandingQueue
from serving.batching import dispatch_problem
from serving.classifier_client import ClassifierClient
from serving.core.hybrid import HybridPolicy, Mode
from serving.core.selfcheck import StoredModel
from serving.explain import Explanation, Explanations
from serving.reloads import Reloads
from serving.schemas import Prediction
from serving.settings import ServiceSettings
from serving.shadow import Shadows
from serving.supervision import worker_check_problem
from serving.telemetry import RequestRecord, RequestTelemetry
from serving.versions import ModelVersion

log = logging.getLogger("sentiment.service")


class Gateway:
    """Created once per API worker, with the models the service declares (champion, and a challenger if any)."""

    def __init__(
        self, classifier: Callable[[], Any], models: dict[Arm, StoredModel], settings: ServiceSettings, door: Door
    ):
        self.settings = settings
        self.versions = {arm: ModelVersion.of(arm, model, settings.hybrid_mode) for arm, model in models.items()}
        self.allocation = Allocation(settings.ab_rollout, settings.challenger_share, CHALLENGER in self.versions)  # type: ignore[arg-type]
        self.door, self.queue = door, StandingQueue(settings.queue_target_ms, settings.queue_interval_ms)
        # the batching deadline plus the time to run a full batch: past it the classifier is not coming back soon
        deadline_s = settings.max_latency_ms / 1000 + settings.classify_timeout_s
        self.classifier = ClassifierClient(classifier, self.queue, deadline_s)
        self.telemetry = RequestTelemetry(settings, models[CHAMPION].path)
        self.shadows = Shadows(self._answer, self.telemetry, settings.max_shadow_in_flight)
        self.explanations = Explanations(settings.workers, settings.max_explain_in_flight, settings.explain_max_evals)
        self.reloads = Reloads(self.versions, self.classifier, self.telemetry, self.explanations, settings.hybrid_mode)
        # the private BentoML behaviour the service patches, checked as it is built (a BentoML upgrade may void it)
        self.internals = [p for p in (worker_check_problem(settings.worker_check_s), dispatch_problem()) if p]
        for problem in self.internals:
            log.error("a patch of BentoML's internals no longer takes effect: %s", problem)

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
        """One request as every front door answers it (the API's routes and the web UI)."""
        record = RequestRecord(request_id, endpoint, key, self.allocation.assign(key), time.perf_counter())
        with errors.classifier_call():  # down, restarting or past the deadline: 503; a bug goes on to be a 500
            predictions = await self._answer(texts, mode, record.arm)
        self.telemetry.record(record, texts, predictions)
        if self.allocation.shadows:
            self.shadows.send(record, texts, mode)
        return predictions

    async def _answer(self, texts: list[str], mode: Mode | None, arm: Arm) -> list[Prediction]:
        version = self.versions[arm]  # one version answers the whole request, however long it takes
        policy = self._policy(version, mode)
        transformer = partial(self.classifier.classify, tag=version.tag)  # the texts sent onward, to this version
        student = partial(self.classifier.classify, tag=version.student_tag) if version.student_tag else None
        probs, paths = await version.hybrid.classify(texts, policy, transformer, student)
        return [Prediction.of(p, path, version) for p, path in zip(probs, paths, strict=True)]

    def _policy(self, version: ModelVersion, mode: Mode | None) -> HybridPolicy:
        try:
            return version.hybrid.policy_for(mode)
        except ValueError as error:
            raise errors.ApiError(422, f"{error} ({version.tag})") from error

    async def explain_text(self, text: str, mode: Mode | None = None) -> Explanation:
        """The champion's decision on `text`, word by word."""
        return await self.explanations.explain(text, self._policy(self.versions[CHAMPION], mode))

    def start(self) -> None:
        """The background work: the first explainer (once the classifier has chosen its file), the drift monitor's
        batches, the event loop's lag and, unless MODEL_POLL_S=0, the watch on the store."""
        self.explanations.load_in_background(self._first_explained())
        self.drift_watch = asyncio.create_task(self.telemetry.watch_drift())
        self.loop_watch = asyncio.create_task(self.door.watch_loop(self.telemetry.loop_lag))
        if self.settings.model_poll_s > 0:
            wanted = {CHAMPION: self.settings.bento_model_tag, CHALLENGER: self.settings.challenger_model_tag}
            self.store_watch = asyncio.create_task(self.reloads.watch(wanted, self.settings.model_poll_s))

    async def _first_explained(self) -> tuple[ModelVersion, str | None]:
        """The champion and the file its classifier serves (an int8 recipe or fp32), final once its check is."""
        while True:
            try:
                served = await self.classifier.status()
                if served["finished"]:
                    return self.versions[CHAMPION], served["recipe"]
            except Exception:
                pass
            await asyncio.sleep(0.5)

    async def health(self) -> dict:
        """The champion, the classifier's self-check and batches, the hybrid, the A/B arms, the explainer, drift."""
        with errors.classifier_call("the classifier's status"):
            check = await self.classifier.status()
        champion, ab = self.versions[CHAMPION], self.allocation.describe()
        if CHALLENGER in self.versions:
            ab["challenger"] = self.versions[CHALLENGER].model_version
        return {
            "status": "ok",
            "model": champion.tag,
            "version": champion.model_version,
            "gate_reviews": champion.gate_reviews,
            "selfcheck": check,
            "hybrid": champion.hybrid.describe(),
            "ab": ab,
            "explainer": self.explanations.state(),
            "admission": {"door": self.door.describe(), "queue": self.queue.describe()},
            "drift": self.telemetry.drift_status(),
            "internals": self.internals or "as patched",
            "warning": "; ".join(
                ([] if check["passed"] else [f"int8 is not served: {check['detail']}"])
                + [f"BentoML patch voided: {problem}" for problem in self.internals]
            )
            or None,
        }
