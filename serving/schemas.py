"""The public API's bodies: every limit is in the schema, so the OpenAPI document is the contract."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from serving.ab import Arm
from serving.core.hybrid import Mode, Route
from serving.core.text import VISIBLE
from serving.exports import ServedExport
from serving.settings import SETTINGS

SAMPLE = "A moving, beautifully acted film: I loved every minute of it."  # Swagger's sample input

# Non-blank = at least one visible character (`core.text.VISIBLE`): the same rule in JSON Schema, Python and pydantic.
Text = Annotated[
    str,
    Field(min_length=1, max_length=SETTINGS.max_text_chars, pattern=VISIBLE, description="A review: visible text"),
]


ModeField = Field(
    None,
    description="Who answers: `cascade` (the lexical model alone when it is confident, else the ensemble), "
    "`ensemble` (lexical + transformer for every text) or `transformer` (alone). Default: the service's mode "
    "(`/health` says which), chosen on validation at export",
)


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {"text": SAMPLE}})
    text: Text
    mode: Mode = ModeField  # absent: the default mode (null is refused, as the OpenAPI document says)


class BatchRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"example": {"texts": [SAMPLE, "Dull, predictable and far too long."]}}
    )
    texts: list[Text] = Field(min_length=1, max_length=SETTINGS.max_batch_texts)
    mode: Mode = ModeField


class HealthRequest(BaseModel):
    """`/health` takes nothing (BentoML's clients send `{}`; a GET is the same call)."""

    model_config = ConfigDict(extra="forbid")


class Prediction(BaseModel):
    label: str = Field(description="The most likely class")
    label_id: int
    score: float = Field(description="Probability of `label`")
    scores: dict[str, float] = Field(description="Probability of every class, summing to 1")
    path: Route = Field(
        description="What answered: the lexical model alone (confident cascade fast path), the lexical + student "
        "ensemble (the cascade's middle tier, when the served model has a student), the lexical + transformer "
        "ensemble, or the transformer alone"
    )
    model_version: str = Field(description="The registered model (name:version) that answered")
    variant: Arm = Field(description="The A/B variant that answered (`champion` unless a challenger is served)")

    @classmethod
    def of(cls, probabilities: np.ndarray, path: Route, export: ServedExport) -> Prediction:
        best, label_names = int(probabilities.argmax()), export.label_names
        return cls(
            label=label_names[best],
            label_id=best,
            score=float(probabilities[best]),
            scores=dict(zip(label_names, probabilities.tolist(), strict=True)),
            path=path,
            model_version=export.registry_version,
            variant=export.arm,
        )


class BatchPrediction(BaseModel):
    predictions: list[Prediction] = Field(description="One prediction per input text, in input order")
    model_version: str
    variant: Arm

    @classmethod
    def of(cls, predictions: list[Prediction]) -> BatchPrediction:
        """One request goes to one A/B arm, so the first prediction names the batch's model."""
        return cls(predictions=predictions, model_version=predictions[0].model_version, variant=predictions[0].variant)
