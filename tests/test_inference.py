"""The inference core without HTTP: `Inference` driven with the release's export and a transformer in this process
(the export's fp32 ONNX file behind the classifier's interface). It asks the transformer for exactly the texts the
cascade sends onward, answers as the offline decision does, and refuses a mode the export cannot answer in.

Needs the model in the BentoML store (`make model`, which `make test` runs first)."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import time
from types import SimpleNamespace

import bentoml
import numpy as np
import pytest

from loadtests.common import sample_reviews
from serving.ab import CHAMPION
from serving.admission import StandingQueue
from serving.classifier_client import ClassifierClient
from serving.core.runtime import OnnxTextClassifier
from serving.core.selfcheck import FP32_FILE
from serving.errors import ApiError
from serving.exports import ServedExport
from serving.inference import Caller, Inference
from serving.settings import SETTINGS
from serving.telemetry import RequestTelemetry


class InProcessClassifier:
    """The classifier service's `classify`, in this process: each text answered by the store model it names."""

    def __init__(self) -> None:
        self.runtimes: dict[str, OnnxTextClassifier] = {}
        self.asked: list[str] = []

    async def classify(self, asks: list[dict]) -> list[SimpleNamespace]:
        self.asked += [ask["text"] for ask in asks]
        started, rows = time.perf_counter(), []
        for ask in asks:
            if ask["model"] not in self.runtimes:
                self.runtimes[ask["model"]] = OnnxTextClassifier(bentoml.models.get(ask["model"]).path, FP32_FILE)
            rows += self.runtimes[ask["model"]].predict_proba([ask["text"]]).tolist()
        batch = {"waited_ms": 0.0, "batch_ms": 1000 * (time.perf_counter() - started), "batch_texts": len(asks)}
        return [SimpleNamespace(probabilities=row, **batch) for row in rows]


@pytest.fixture(scope="module")
def core() -> tuple[Inference, InProcessClassifier, ServedExport]:
    stored = bentoml.models.get(SETTINGS.bento_model_tag)
    export = ServedExport.of(CHAMPION, stored, "")
    transformer = InProcessClassifier()
    client = ClassifierClient(transformer, StandingQueue(SETTINGS.queue_target_ms, SETTINGS.queue_interval_ms), 60)
    settings = dataclasses.replace(SETTINGS, challenger_model_tag="")
    return Inference(client, {CHAMPION: export}, RequestTelemetry(settings, stored.path), settings), transformer, export


def test_the_core_sends_onward_only_what_the_cascade_does_and_answers_as_offline(core):
    inference, transformer, export = core
    texts = sample_reviews(24, seed=5)
    transformer.asked.clear()
    predictions = asyncio.run(inference.answer(texts, None, Caller("r1", "user", "/predict_batch")))
    offline_probs, offline_routes = export.hybrid.classify_in_process(
        texts, export.hybrid.policy, OnnxTextClassifier(export.directory, FP32_FILE)
    )
    assert [p.path for p in predictions] == offline_routes
    assert transformer.asked == [t for t, route in zip(texts, offline_routes, strict=True) if route != "lexical"]
    served = np.array([[p.scores[name] for name in export.label_names] for p in predictions])
    np.testing.assert_allclose(served, offline_probs, atol=1e-5)
    assert {(p.model_version, p.variant) for p in predictions} == {(export.registry_version, CHAMPION)}


def test_the_transformer_mode_asks_for_every_text_and_a_missing_mode_is_a_422(core):
    inference, transformer, export = core
    texts = sample_reviews(5, seed=6)
    transformer.asked.clear()
    predictions = asyncio.run(inference.predict(texts, CHAMPION, "transformer"))
    assert transformer.asked == texts and {p.path for p in predictions} == {"transformer"}
    lexical_less = dataclasses.replace(export, hybrid=copy.copy(export.hybrid))
    lexical_less.hybrid.lexical = None  # an export without its lexical half
    with pytest.raises(ApiError) as refused:
        Inference.policy(lexical_less, "cascade")
    assert refused.value.status == 422
