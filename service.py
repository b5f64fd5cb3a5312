"""BentoML service: sentiment predictions from the ONNX export of the registered model.

Two services: `SentimentAPI` (public HTTP API on port 3000: validation, response shapes, logs, metrics) calls
`OnnxClassifier`, whose `classify` is adaptively batched by BentoML: concurrent requests are merged into one
call, which the runtime length-sorts into low-padding micro-batches (see `export/runtime.py`).
"""

from __future__ import annotations

import logging
import os
import sys
import time
import uuid
from typing import Annotated

import bentoml
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, Field
from pythonjsonlogger.json import JsonFormatter

from export.runtime import OnnxTextClassifier

MODEL_TAG = os.environ.get("BENTO_MODEL_TAG", "imdb-sentiment-onnx:latest")
MAX_TEXT_CHARS = int(os.environ.get("MAX_TEXT_CHARS", "50000"))
MAX_BATCH_TEXTS = int(os.environ.get("MAX_BATCH_TEXTS", "64"))
LOG_TEXT = os.environ.get("LOG_TEXT", "0") == "1"
# Adaptive batching (see loadtests/benchmark.py): up to 64 texts per call. max_latency_ms is the deadline after
# which BentoML answers 503, so it sits well above the 100 ms target instead of at it.
# A /predict_batch call is one item of MAX_BATCH_TEXTS texts, so a batch must hold at least that many, else
# BentoML can never schedule it.
MAX_BATCH_SIZE = max(int(os.environ.get("MAX_BATCH_SIZE", "64")), MAX_BATCH_TEXTS)
MAX_LATENCY_MS = int(os.environ.get("MAX_LATENCY_MS", "2000"))
ADAPTIVE_BATCHING = os.environ.get("ADAPTIVE_BATCHING", "1") == "1"  # 0: one call per request (benchmark only)


# Serving image: a slim Python base and requirements-serve.txt only (no torch). distro="none" skips BentoML's
# default system-package step (build-essential, git: ~640 MB) that nothing here needs; the installer (uv) and its
# cache are removed after the install (they shrink the image where the build squashes its layers).
IMAGE = (
    bentoml.images.Image(
        base_image="python:3.11-slim", distro="none", python_version="3.11", lock_python_packages=False
    )
    .requirements_file("requirements-serve.txt")
    .run("rm -rf /root/.cache /usr/local/bin/uv /usr/local/bin/uvx")
)


def _request_logger() -> logging.Logger:
    """One JSON line per request on stdout; no raw text unless LOG_TEXT=1."""
    logger = logging.getLogger("sentiment.requests")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(message)s", rename_fields={"asctime": "time"}))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("text must contain at least one non-whitespace character")
    return text


Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS, description="A review to classify"), AfterValidator(_not_blank)]


class Prediction(BaseModel):
    label: str = Field(description="The most likely class")
    label_id: int
    score: float = Field(description="Probability of `label`")
    scores: dict[str, float] = Field(description="Probability of every class, summing to 1")
    model_version: str


class BatchPrediction(BaseModel):
    predictions: list[Prediction] = Field(description="One prediction per input text, in input order")
    model_version: str


# runner_connection: BentoML (since 1.4.31) replaces the caller's HTTP session to this service every 100 requests
# by default and closes the old one under requests still in flight on it, which then fail with 500s under load
# (bentoml/BentoML#5540, "Server disconnected"). A local socket never needs that refresh.
@bentoml.service(
    name="onnx-classifier",
    workers=1,
    traffic={"timeout": 60},
    runner_connection={"max_requests": 2**31 - 1, "max_age": 365 * 24 * 3600.0},
)
class OnnxClassifier:
    model = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        self.runtime = OnnxTextClassifier(self.model.path)

    @bentoml.api(batchable=ADAPTIVE_BATCHING, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS)
    def classify(self, texts: list[str]) -> list[list[float]]:
        """Class probabilities per text (label order as in the model's `label_names`)."""
        return self.runtime.predict_proba(texts).tolist()

    @bentoml.api
    def ready(self) -> bool:
        """Answers once the model is loaded; `/health` of the public service asks this."""
        return True


health_app = FastAPI()


@bentoml.asgi_app(health_app, path="/")
@bentoml.service(name="sentiment-api", image=IMAGE, workers=1, traffic={"timeout": 60, "max_concurrency": 512})
class SentimentAPI:
    classifier = bentoml.depends(OnnxClassifier)
    model = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        info = self.model.info
        self.label_names: list[str] = info.metadata["label_names"]
        self.model_version = f"{info.metadata['mlflow_model']}:{info.metadata['mlflow_version']}"
        self.model_tag = str(info.tag)
        self.log = _request_logger()
        self.predictions = bentoml.metrics.Counter(
            name="sentiment_predictions", documentation="Predictions served, by label", labelnames=["label"]
        )
        self.request_texts = bentoml.metrics.Histogram(
            name="sentiment_request_texts",
            documentation="Texts per request",
            labelnames=["endpoint"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
        )

    def _prediction(self, probabilities: list[float]) -> Prediction:
        best = max(range(len(probabilities)), key=probabilities.__getitem__)
        return Prediction(
            label=self.label_names[best],
            label_id=best,
            score=probabilities[best],
            scores=dict(zip(self.label_names, probabilities, strict=True)),
            model_version=self.model_version,
        )

    async def _predict(self, texts: list[str], endpoint: str, ctx: bentoml.Context) -> list[Prediction]:
        started = time.perf_counter()
        request_id = ctx.request.headers.get("x-request-id") or uuid.uuid4().hex
        ctx.response.headers["x-request-id"] = request_id
        predictions = [self._prediction(p) for p in await self.classifier.to_async.classify(texts)]
        for prediction in predictions:
            self.predictions.labels(label=prediction.label).inc()
        self.request_texts.labels(endpoint=endpoint).observe(len(texts))
        record = {
            "request_id": request_id,
            "endpoint": endpoint,
            "batch_size": len(texts),
            "latency_ms": round(1000 * (time.perf_counter() - started), 2),
            "labels": [p.label for p in predictions],
            "model_version": self.model_version,
        }
        if LOG_TEXT:
            record["texts"] = texts
        self.log.info("prediction", extra=record)
        return predictions

    @bentoml.api(route="/predict")
    async def predict(self, text: Text, ctx: bentoml.Context) -> Prediction:
        """Classify one text."""
        (prediction,) = await self._predict([text], "/predict", ctx)
        return prediction

    @bentoml.api(route="/predict_batch")
    async def predict_batch(
        self, texts: Annotated[list[Text], Field(min_length=1, max_length=MAX_BATCH_TEXTS)], ctx: bentoml.Context
    ) -> BatchPrediction:
        """Classify 1 to MAX_BATCH_TEXTS texts; predictions come back in input order."""
        predictions = await self._predict(texts, "/predict_batch", ctx)
        return BatchPrediction(predictions=predictions, model_version=self.model_version)

    @health_app.get("/health")
    async def health(self) -> JSONResponse:
        """200 once the classifier has its model loaded, 503 before (or when it is down)."""
        try:
            await self.classifier.to_async.ready()
        except Exception as error:
            return JSONResponse({"status": "unavailable", "detail": type(error).__name__}, status_code=503)
        return JSONResponse({"status": "ok", "model": self.model_tag, "version": self.model_version})
