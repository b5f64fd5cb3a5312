"""What the API records per request: one JSON log line and Prometheus counters (labels, paths, texts per request)."""

from __future__ import annotations

import logging
import sys
import time

import bentoml
from pythonjsonlogger.json import JsonFormatter

from serving.schemas import Prediction
from serving.selfcheck import SelfCheck


class RequestTelemetry:
    """Created once per API worker (BentoML's metrics must exist before the first request)."""

    def __init__(self, model_version: str, log_text: bool):
        self.model_version, self.log_text = model_version, log_text
        self.log = logging.getLogger("sentiment.requests")
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(message)s", rename_fields={"asctime": "time"}))
        self.log.handlers, self.log.propagate = [handler], False
        self.log.setLevel(logging.INFO)
        self.predictions = bentoml.metrics.Counter(
            name="sentiment_predictions", documentation="Predictions served, by label", labelnames=["label"]
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

    def record(
        self, request_id: str, endpoint: str, texts: list[str], predictions: list[Prediction], started: float
    ) -> None:
        for prediction in predictions:
            self.predictions.labels(label=prediction.label).inc()
            self.routed.labels(path=prediction.path).inc()
        self.request_texts.labels(endpoint=endpoint).observe(len(texts))
        record = {
            "request_id": request_id,
            "endpoint": endpoint,
            "batch_size": len(texts),
            "latency_ms": round(1000 * (time.perf_counter() - started), 2),
            "labels": [p.label for p in predictions],
            "paths": [p.path for p in predictions],
            "model_version": self.model_version,
        }
        self.log.info("prediction", extra=record | ({"texts": texts} if self.log_text else {}))


def publish_selfcheck(check: SelfCheck) -> None:
    """The classifier's gauges: what the int8 self-check measured on this CPU, and the variant it chose."""
    bentoml.metrics.Gauge(
        name="sentiment_int8_selfcheck_agreement",
        documentation="int8 vs fp32 argmax agreement on the golden set, measured at start on this CPU",
    ).set(check.agreement if check.agreement is not None else -1)
    bentoml.metrics.Gauge(
        name="sentiment_served_variant", documentation="1 for the variant served", labelnames=["variant"]
    ).labels(variant=check.served).set(1)
