"""The transformer's BentoML service: the ONNX export(s) in one worker, behind BentoML's adaptive batching (which
sends a batch as soon as the previous one is done: `serving/compat.py`).

Every text sent to `classify` names the model version (store tag) that must answer it, so an answer never mixes the
transformer of one export with the lexical half, policy or labels of another: the API side picks one version per
request (`inference.py`). The classifier keeps each version asked for loaded until the API retires it after a reload.
Each version serves its fp32 file at once and, once the self-check on this CPU has scored and timed its int8 files,
the one it chose, checked in the background so that start does not wait for it (`selfcheck.CheckedModel`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import defaultdict

import bentoml
from pydantic import BaseModel

from serving.ab import CHALLENGER, CHAMPION, Arm
from serving.core.runtime import freeze_startup_objects, release_memory
from serving.core.selfcheck import CheckedModel, StoredModel
from serving.exports import student_tag
from serving.settings import SETTINGS
from serving.telemetry import SelfCheckGauges

# The models served, declared once: the API service reads the lexical half and the drift profile from the same ones.
MODEL = bentoml.models.BentoModel(SETTINGS.bento_model_tag)
CHALLENGER_MODEL = bentoml.models.BentoModel(SETTINGS.challenger_model_tag) if SETTINGS.challenger_model_tag else None
# The champion's student (its cascade's middle tier), loaded and self-checked beside it, when its policy names one.
STUDENT_TAG = student_tag(bentoml.models.get(SETTINGS.bento_model_tag))
STUDENT_MODEL = bentoml.models.BentoModel(STUDENT_TAG) if STUDENT_TAG else None
log = logging.getLogger(__name__)


class Ask(BaseModel):
    """One text to classify, the model version (store tag) that must answer it, and when it was sent (epoch s)."""

    model: str
    text: str
    sent: float


class Answer(BaseModel):
    """One text's class probabilities, how long it waited before its batch started, and its batch: how long it ran and
    how many texts it held (the queue it met: the wait, and the batch's time on other requests' texts)."""

    probabilities: list[float]
    waited_ms: float
    batch_ms: float
    batch_texts: int


def checked_model(tag: str) -> CheckedModel:
    """A store model ready to serve, its int8 file chosen on this CPU (seconds: the self-check runs)."""
    return CheckedModel.load(bentoml.models.get(tag), SETTINGS.workers, SETTINGS.lone_text_spinning)


BATCHED = {
    "batchable": SETTINGS.adaptive_batching,
    "max_batch_size": SETTINGS.max_batch_size,
    "max_latency_ms": SETTINGS.max_latency_ms,
}


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
    student = STUDENT_MODEL

    def __init__(self) -> None:
        self.gauges = SelfCheckGauges()
        self.versions: dict[str, CheckedModel] = {}  # by store tag: every version a request may still name
        self.serving: dict[Arm, str] = {}  # the tag each A/B arm serves (status, gauges)
        self.loading = threading.Lock()
        self.calls = self.texts = 0
        served = [(name, model) for name, model in ((CHAMPION, self.model), (CHALLENGER, self.challenger)) if model]
        for name, model in served:
            self.serve(name, CheckedModel.reference(model, SETTINGS.workers, SETTINGS.lone_text_spinning))
        models = [model for _, model in served]
        if self.student:  # asked for by its tag, as any version; no arm of its own
            student = CheckedModel.reference(self.student, SETTINGS.workers, SETTINGS.lone_text_spinning)
            self.versions[student.tag] = student
            models.append(self.student)
        threading.Thread(target=self.check_int8, args=(models,), name="int8-selfcheck", daemon=True).start()

    def check_int8(self, models: list[StoredModel]) -> None:
        """The int8 file chosen on this CPU takes over from fp32; fp32 stays, with the reason, if none is chosen."""
        for model in models:
            tag, reference = str(model.info.tag), self.versions[str(model.info.tag)]
            try:
                checked = reference.checked(model, SETTINGS.workers)
            except Exception as error:
                log.exception("the int8 self-check of %s could not run; fp32 stays", tag)
                checked = reference.failed(f"the int8 self-check could not run: {error!r}")
            with self.loading:
                if tag in self.versions:  # not retired meanwhile
                    self.versions[tag] = checked
            self.publish()
        freeze_startup_objects()  # started: every file this worker serves is chosen

    def serve(self, arm: Arm, model: CheckedModel) -> None:
        """`model` loaded beside the versions already there, and served as `arm` from now on."""
        with self.loading:
            self.versions[model.tag] = model
            self.serving[arm] = model.tag
        self.publish()

    def publish(self) -> None:
        self.gauges.publish(self.versions[self.serving[CHAMPION]].check)

    def version(self, tag: str) -> CheckedModel:
        """A loaded version; one not loaded (this worker restarted since the API chose it) is loaded now."""
        if (loaded := self.versions.get(tag)) is None:
            with self.loading:
                if (loaded := self.versions.get(tag)) is None:
                    log.warning("loading %s: a reload or a request names it and this worker had not loaded it", tag)
                    loaded = self.versions[tag] = checked_model(tag)
        return loaded

    @bentoml.api(**BATCHED)
    def classify(self, asks: list[Ask]) -> list[Answer]:
        """Class probabilities per text (label order as in its model's `label_names`), from the version it names."""
        started = time.time()
        self.calls, self.texts = self.calls + 1, self.texts + len(asks)
        by_version: dict[str, list[int]] = defaultdict(list)
        for i, ask in enumerate(asks):
            by_version[ask.model].append(i)
        probabilities: list[list[float]] = [[] for _ in asks]
        for tag, positions in by_version.items():
            answered = self.version(tag).runtime.predict_proba([asks[i].text for i in positions])
            for i, row in zip(positions, answered.tolist(), strict=True):
                probabilities[i] = row
        ran_ms = 1000 * (time.time() - started)
        return [
            Answer(
                probabilities=row,
                waited_ms=max(1000 * (started - ask.sent), 0.0),
                batch_ms=ran_ms,
                batch_texts=len(asks),
            )
            for row, ask in zip(probabilities, asks, strict=True)
        ]

    @bentoml.api
    async def load(self, tag: str) -> dict:
        """The store's model `tag` loaded (and self-checked) beside the exports loaded; no arm serves it yet. In a
        thread of its own: BentoML runs this service's sync APIs one at a time (its `threads`, 1), so a sync `load`
        would hold every `classify` batch until it is done. At the worker's own priority, unlike the API side's build:
        the sessions made here keep their threads' priority, and they serve afterwards."""
        return (await asyncio.to_thread(self.version, tag)).describe()

    @bentoml.api
    async def switch(self, arm: str, tag: str) -> dict:
        """The loaded export `tag` served as `arm` from now on (what status and the gauges report)."""
        self.serve(arm, self.versions[tag])  # type: ignore[arg-type]
        return self.versions[tag].describe()

    @bentoml.api
    async def retire(self, tag: str) -> list[str]:
        """Unload version `tag` once no request names it any more (unless an arm serves it); the versions kept."""
        return await asyncio.to_thread(self.unload, tag)

    def unload(self, tag: str) -> list[str]:
        """In a thread: freeing a version's sessions (hundreds of MB, their threads joined) holds the GIL a while."""
        with self.loading:
            unloaded = self.versions.pop(tag, None) if tag not in self.serving.values() else None
            kept = sorted(self.versions)
        del unloaded  # the last reference: its sessions are freed here
        release_memory()
        return kept

    @bentoml.api
    async def status(self) -> dict:  # async: answered on the event loop, never queued behind `classify`
        """The champion's file served and its self-check on this CPU (the challenger's beside), and the batches run."""
        status = self.versions[self.serving[CHAMPION]].describe()
        status |= {"classify_calls": self.calls, "classified_texts": self.texts, "loaded": sorted(self.versions)}
        if CHALLENGER in self.serving:
            status[CHALLENGER] = self.versions[self.serving[CHALLENGER]].describe()
        return status
