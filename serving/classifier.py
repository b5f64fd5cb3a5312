"""The transformer's BentoML service: the ONNX export(s) in one worker, behind BentoML's adaptive batching (which
sends a batch as soon as the previous one is done: `serving/batching.py`).

`classify` answers for the champion and `classify_challenger` for an A/B challenger (each batched on its own queue);
each model serves its fp32 file at once and, once the self-check on this CPU has scored and timed its int8 files, the
one it chose, checked in the background so that start does not wait for it (`selfcheck.CheckedModel`). The API
service calls it through `serving/gateway.py`.
"""

from __future__ import annotations

import logging
import threading

import bentoml

from serving.batching import dispatch_when_free
from serving.schemas import SETTINGS
from serving.selfcheck import CheckedModel
from serving.telemetry import SelfCheckGauges
from serving.variants import CHALLENGER, CHAMPION, StoredModel, VariantName

# The models served, declared once: the API service reads the lexical half and the drift profile from the same ones.
MODEL = bentoml.models.BentoModel(SETTINGS.bento_model_tag)
CHALLENGER_MODEL = bentoml.models.BentoModel(SETTINGS.challenger_model_tag) if SETTINGS.challenger_model_tag else None
log = logging.getLogger(__name__)
dispatch_when_free()  # a batch leaves as soon as the classifier is free, without waiting for batch-mates
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

    def __init__(self) -> None:
        self.gauges = SelfCheckGauges()
        self.loaded: dict[str, CheckedModel] = {}
        self.swapping = threading.Lock()
        self.calls = self.texts = 0
        served = [(name, model) for name, model in ((CHAMPION, self.model), (CHALLENGER, self.challenger)) if model]
        for name, model in served:
            self.use(name, CheckedModel.reference(model, SETTINGS.workers, SETTINGS.lone_text_spinning))
        threading.Thread(target=self.check_int8, args=(served,), name="int8-selfcheck", daemon=True).start()

    def check_int8(self, served: list[tuple[VariantName, StoredModel]]) -> None:
        """The int8 file chosen on this CPU takes over from fp32; fp32 stays, with the reason, if none is chosen."""
        for name, model in served:
            if self.loaded[name].check.finished:
                continue
            try:
                checked = self.loaded[name].checked(model, SETTINGS.workers)
            except Exception as error:
                log.exception("the int8 self-check of %s could not run; fp32 stays", model.info.tag)
                checked = self.loaded[name].failed(f"the int8 self-check could not run: {error!r}")
            self.use(name, checked, unless_replaced=True)

    def use(self, variant: VariantName, model: CheckedModel, unless_replaced: bool = False) -> None:
        """Swap in a loaded model: batches in flight finish on the old one. `unless_replaced`: only if the model in
        use is still the same export (a reload during the int8 check wins)."""
        with self.swapping:
            if unless_replaced and self.loaded[variant].tag != model.tag:
                return
            self.loaded[variant] = model
            if variant == CHAMPION:
                self.gauges.publish(model.check)

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
        loaded = CheckedModel.load(bentoml.models.get(tag), SETTINGS.workers, SETTINGS.lone_text_spinning)
        self.use(variant, loaded)  # type: ignore[arg-type]
        return self.loaded[variant].describe()

    @bentoml.api
    async def status(self) -> dict:  # async: answered on the event loop, never queued behind `classify`
        """The champion's file served and its self-check on this CPU (the challenger's beside), and the batches run."""
        status = self.loaded[CHAMPION].describe() | {"classify_calls": self.calls, "classified_texts": self.texts}
        if CHALLENGER in self.loaded:
            status[CHALLENGER] = self.loaded[CHALLENGER].describe()
        return status
