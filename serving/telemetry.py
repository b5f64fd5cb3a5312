"""What the API records per request: one JSON log line, Prometheus counters (labels, paths, texts per request), and
the drift statistics of its texts and answers (histograms, and each feature's PSI against the reference profile)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import bentoml
import numpy as np
from pythonjsonlogger.json import JsonFormatter

from serving.ab import CHAMPION, Arm
from serving.admission import LOOP_PROBE_S
from serving.core.drift import FEATURES, PSI_ALERT, DriftMonitor, TextStatistics, answer_statistics
from serving.core.selfcheck import SelfCheck
from serving.schemas import Prediction
from serving.settings import ServiceSettings


def digest(value: str) -> str:
    """A short, stable stand-in for a text or a user id in the logs: labels fed back later join on it, no raw text."""
    return hashlib.sha256(value.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RequestRecord:
    """Who asked, where, when it started and which A/B arm answered (shadow: a copy the user never saw)."""

    request_id: str
    endpoint: str
    key: str  # the sticky A/B key: the x-user-id header, else the request id
    arm: Arm  # logged and metered as `variant`, the API's name for it
    started: float
    shadow: bool = False

    def log_fields(self, texts: list[str], predictions: list[Prediction], latency_s: float) -> dict:
        return {
            "request_id": self.request_id,
            "endpoint": self.endpoint,
            "user": digest(self.key),
            "variant": self.arm,
            "shadow": self.shadow,
            "batch_size": len(texts),
            "latency_ms": round(1000 * latency_s, 2),
            "labels": [p.label for p in predictions],
            "scores": [round(p.score, 6) for p in predictions],
            "paths": [p.path for p in predictions],
            "text_sha256": [digest(text) for text in texts],
            "model_version": predictions[0].model_version,  # a request has at least one text
        }


log = logging.getLogger(__name__)
DRIFT_INTERVAL_S = 1.0  # how often the texts answered since are added to the drift window


class RequestTelemetry:
    """Created once per API worker (BentoML's metrics must exist before the first request)."""

    def __init__(self, settings: ServiceSettings, model_dir: str):
        self.log_text, self.drift_window = settings.log_text, settings.drift_window
        # the champion's answers not yet in the drift window: only the newest `drift_window` requests wait (the
        # window keeps no more texts than that anyway)
        self.unobserved: deque[tuple[list[str], list[Prediction]]] = deque(maxlen=settings.drift_window)
        self.observing = 0  # texts taken from `unobserved` and still being tokenized
        self.use_profile(self.profile_of(model_dir))
        self.log = logging.getLogger("sentiment.requests")
        formatter = JsonFormatter("%(asctime)s %(levelname)s %(message)s", rename_fields={"asctime": "time"})
        handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
        if settings.prediction_log:
            Path(settings.prediction_log).parent.mkdir(parents=True, exist_ok=True)
            handlers.append(logging.FileHandler(settings.prediction_log))
        for handler in handlers:
            handler.setFormatter(formatter)
        self.log.handlers, self.log.propagate = handlers, False
        self.log.setLevel(logging.INFO)
        self.predictions = bentoml.metrics.Counter(
            name="sentiment_predictions",
            documentation="Predictions served, by label and A/B variant (shadow answers included)",
            labelnames=["label", "variant"],
        )
        self.requests = bentoml.metrics.Counter(
            name="sentiment_ab_requests",
            documentation="Requests answered per A/B variant; shadow=true: copies the challenger answered unseen",
            labelnames=["variant", "shadow"],
        )
        self.latency = bentoml.metrics.Histogram(
            name="sentiment_ab_latency_seconds",
            documentation="Time to answer a request, per A/B variant",
            labelnames=["variant", "shadow"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        self.confidence = bentoml.metrics.Histogram(
            name="sentiment_confidence",
            documentation=FEATURES["confidence"].description + ", per A/B variant",
            labelnames=["variant"],
            buckets=FEATURES["confidence"].edges,
        )
        self.shadow_skipped = bentoml.metrics.Counter(
            name="sentiment_ab_shadow_skipped",
            documentation="Shadow copies skipped: too many in flight, or the transformer queueing",
        )
        self.routed = bentoml.metrics.Counter(
            name="sentiment_routed",
            documentation="Texts answered, by path (lexical, ensemble, transformer)",
            labelnames=["path"],
        )
        self.request_texts = bentoml.metrics.Histogram(
            name="sentiment_request_texts",
            documentation="Texts per request",
            labelnames=["endpoint"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
        )
        self.histograms = {
            name: bentoml.metrics.Histogram(
                name=f"sentiment_{name}", documentation=FEATURES[name].description, buckets=FEATURES[name].edges
            )
            for name in ("tokens", "oov_rate")
        }
        self.truncated = bentoml.metrics.Counter(
            name="sentiment_truncated_texts", documentation=FEATURES["truncated"].description
        )
        self.loop_lag = bentoml.metrics.Histogram(
            name="sentiment_event_loop_lag_seconds",
            documentation=f"How late the API worker's event loop ran a timer due every {LOOP_PROBE_S} s (a stall)",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )
        self.psi = bentoml.metrics.Gauge(
            name="sentiment_drift_psi",
            documentation=f"PSI per feature, last {self.drift_window} texts vs the reference profile (> {PSI_ALERT}: "
            "drift)",
            labelnames=["feature"],
        )

    def profile_of(self, model_dir: str) -> tuple[TextStatistics, DriftMonitor]:
        """A version's tokenizer statistics and its drift monitor over its reference profile (seconds: load it off the
        event loop)."""
        return TextStatistics.for_model(model_dir), DriftMonitor.for_model(model_dir, self.drift_window)

    def use_profile(self, profile: tuple[TextStatistics, DriftMonitor]) -> None:
        """The champion's (again when a new champion is served: a fresh window)."""
        self.statistics, self.drift = profile
        self.unobserved.clear()

    def record(self, request: RequestRecord, texts: list[str], predictions: list[Prediction]) -> None:
        """Metrics and the log line of one answered request, written on the event loop's next turn, once the answer
        has gone out: no client waits for them. Call from the event loop."""
        latency_s = time.perf_counter() - request.started
        asyncio.get_running_loop().call_soon(self._write, request, texts, predictions, latency_s)

    def _write(self, request: RequestRecord, texts: list[str], predictions: list[Prediction], latency_s: float) -> None:
        """The drift monitor sees the champion's answers only (its reference profile is the champion's)."""
        arm, shadow = request.arm, str(request.shadow).lower()
        self.requests.labels(variant=arm, shadow=shadow).inc()  # `variant`: the arm's name in the metrics
        self.latency.labels(variant=arm, shadow=shadow).observe(latency_s)
        for prediction in predictions:
            self.predictions.labels(label=prediction.label, variant=arm).inc()
            self.confidence.labels(variant=arm).observe(prediction.score)
        extra = {}
        if not request.shadow:
            for prediction in predictions:
                self.routed.labels(path=prediction.path).inc()
            self.request_texts.labels(endpoint=request.endpoint).observe(len(texts))
            if arm == CHAMPION:
                self.unobserved.append((texts, predictions))
            extra = {"texts": texts} if self.log_text else {}
        self.log.info("prediction", extra=request.log_fields(texts, predictions, latency_s) | extra)

    async def watch_drift(self) -> None:
        """The drift features of the answered texts, in batches, off the request path: tokenized one request at a
        time, they cost every answer the time of a full tokenization in the API process."""
        while True:
            await asyncio.sleep(DRIFT_INTERVAL_S)
            try:
                await self.observe_unobserved()
            except Exception:
                log.exception("drift statistics failed; the next batch is tried")

    async def observe_unobserved(self) -> None:
        batch = [self.unobserved.popleft() for _ in range(len(self.unobserved))]
        texts = [text for request, _ in batch for text in request]
        if not texts:
            return
        self.observing = len(texts)
        try:
            statistics = await asyncio.to_thread(self.statistics, texts)  # tokenizing: the loop keeps answering
        finally:
            self.observing = 0
        self.watch(statistics, [prediction for _, answers in batch for prediction in answers])

    def watch(self, text_statistics: dict[str, np.ndarray], predictions: list[Prediction]) -> None:
        """Each text's drift features into the histograms and the window; each feature's PSI into its gauge."""
        answers = answer_statistics(np.array([list(p.scores.values()) for p in predictions]))
        statistics = text_statistics | answers
        for name, histogram in self.histograms.items():
            for value in statistics[name]:
                histogram.observe(value)
        self.truncated.inc(int(statistics["truncated"].sum()))
        if self.drift:
            self.drift.observe(statistics)
            for feature, value in self.drift.scores().items():
                self.psi.labels(feature=feature).set(value)

    def drift_status(self) -> dict:
        """The monitor's status, and how many answered texts are not in its window yet (`pending`)."""
        if not self.drift:
            return {"status": "off: the model has no reference profile (export it again)"}
        pending = self.observing + sum(len(texts) for texts, _ in self.unobserved)
        return self.drift.status() | {"pending": pending}


class SelfCheckGauges:
    """The classifier's gauges: what the champion's self-check measured on this CPU for each file, and the file it
    serves (set again when a new champion is loaded)."""

    def __init__(self) -> None:
        self.agreement = bentoml.metrics.Gauge(
            name="sentiment_int8_selfcheck_agreement",
            documentation="The served int8 file vs fp32: argmax agreement on the golden set, measured on this CPU",
        )
        self.served = bentoml.metrics.Gauge(
            name="sentiment_served_variant",
            documentation="1 for the precision of the file served (int8 or fp32)",
            labelnames=["precision"],
        )
        self.served_file = bentoml.metrics.Gauge(
            name="sentiment_served_file",
            documentation="1 for the file served (int8 recipe or fp32)",
            labelnames=["file"],
        )
        self.file_agreement = bentoml.metrics.Gauge(
            name="sentiment_file_selfcheck_agreement",
            documentation="Each shipped int8 file vs fp32: argmax agreement on the golden set, on this CPU",
            labelnames=["file"],
        )
        self.file_speed = bentoml.metrics.Gauge(
            name="sentiment_file_ms_per_review",
            documentation="Each faithful file's median ms per review on this CPU, timed at the self-check",
            labelnames=["file"],
        )

    def publish(self, check: SelfCheck) -> None:
        self.agreement.set(check.agreement if check.agreement is not None else -1)
        for precision in ("int8", "fp32"):  # the older gauge: int8 or fp32, whatever the recipe
            self.served.labels(precision=precision).set(int(precision == check.served))
        served = check.recipe or "fp32"
        for file, measured in ({"fp32": {}} | check.files).items():
            self.served_file.labels(file=file).set(int(file == served))
            if "agreement" in measured:
                self.file_agreement.labels(file=file).set(measured["agreement"])
            if "ms_per_review" in measured:
                self.file_speed.labels(file=file).set(measured["ms_per_review"])
