"""The inference core of an API worker (one per worker, as TEI's `Infer`): a request's texts in, `Prediction`s out.

    answer(texts, mode, caller):
        the A/B arm of the request's sticky key (`ab.Allocation`)
        predict(texts, arm, mode):
            that arm's export, fixed for the whole request, and its policy in `mode`
            the lexical model answers here; the cascade says which texts go onward (`core.hybrid.Cascade`, pure)
            each tier it names (the student, then the teacher) answers its texts: admission, then the classifier
                process (`classifier_client.ClassifierClient`)
            the merge: a `Prediction` per text, in input order
        the request log, metrics and drift (`telemetry`); in shadow rollout, a copy for the challenger (`shadow`)

The core is the only owner of the served exports: a reload hands it a new one whole (`use`), between requests.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from serving import errors
from serving.ab import CHALLENGER, CHAMPION, Allocation, Arm
from serving.classifier_client import ClassifierClient
from serving.core.hybrid import HybridPolicy, Mode
from serving.exports import ServedExport
from serving.schemas import Prediction
from serving.settings import ServiceSettings
from serving.shadow import Shadows
from serving.telemetry import RequestRecord, RequestTelemetry


@dataclass(frozen=True)
class Caller:
    """Who asks: the request id, the sticky A/B key (`x-user-id`, else the request id) and the front door used."""

    request_id: str
    key: str
    endpoint: str


class Inference:
    def __init__(
        self,
        classifier: ClassifierClient,
        exports: dict[Arm, ServedExport],
        telemetry: RequestTelemetry,
        settings: ServiceSettings,
    ):
        self.classifier, self.telemetry = classifier, telemetry
        self.exports = dict(exports)
        self.allocation = Allocation(settings.ab_rollout, settings.challenger_share, CHALLENGER in exports)  # type: ignore[arg-type]
        self.shadows = Shadows(self, telemetry, settings.max_shadow_in_flight)

    async def answer(self, texts: list[str], mode: Mode | None, caller: Caller) -> list[Prediction]:
        """One request as every front door answers it (the API's routes and the web UI)."""
        arm = self.allocation.assign(caller.key)
        record = RequestRecord(caller.request_id, caller.endpoint, caller.key, arm, time.perf_counter())
        predictions = await self.predict(texts, record.arm, mode)
        self.telemetry.record(record, texts, predictions)
        if self.allocation.shadows:
            self.shadows.send(record, texts, mode)
        return predictions

    async def predict(self, texts: list[str], arm: Arm, mode: Mode | None) -> list[Prediction]:
        export = self.exports[arm]  # one export answers the whole request, however long it takes
        cascade = export.hybrid.cascade(texts, self.policy(export, mode))
        while step := cascade.next_tier():
            tier, onward = step
            with errors.classifier_call():  # down, restarting, refusing or past the deadline: 503
                answered = await self.classifier.classify([texts[i] for i in onward], export.tags[tier])
            cascade.answer(np.array(answered))
        probabilities, routes = cascade.result
        return [Prediction.of(p, route, export) for p, route in zip(probabilities, routes, strict=True)]

    @staticmethod
    def policy(export: ServedExport, mode: Mode | None) -> HybridPolicy:
        """The export's policy in `mode` (None: its default); 422 when the export cannot answer in that mode."""
        try:
            return export.hybrid.policy_for(mode)
        except ValueError as error:
            raise errors.ApiError(422, f"{error} ({export.tag})") from error

    def use(self, export: ServedExport) -> None:
        """`export` answers for its arm from the next request on (the requests in flight keep theirs)."""
        self.exports = self.exports | {export.arm: export}

    async def describe(self) -> dict:
        """The champion, the classifier's self-check and batches, the hybrid, the A/B arms, drift."""
        with errors.classifier_call("the classifier's status"):
            check = await self.classifier.status()
        champion, ab = self.exports[CHAMPION], self.allocation.describe()
        if CHALLENGER in self.exports:
            ab["challenger"] = self.exports[CHALLENGER].registry_version
        return {
            "status": "ok",
            "model": champion.tag,
            "version": champion.registry_version,
            "gate_reviews": champion.gate_reviews,
            "selfcheck": check,
            "hybrid": champion.hybrid.describe(),
            "ab": ab,
            "drift": self.telemetry.drift_status(),
            "warning": None if check["passed"] else f"int8 is not served: {check['detail']}",
        }
