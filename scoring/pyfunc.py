"""The served model as an MLflow pyfunc: the export registers it beside the transformer it came from (`export/
served.py`), so `mlflow.pyfunc.load_model("models:/imdb-sentiment-served@champion").predict(frame)`, an MLflow Spark
UDF or `mlflow models serve` answer as the service does: the same ONNX files, text pipeline, lexical model, policy
and file choice on this CPU.

Loaded from the registry with only `serving/` and `scoring/` (its code paths) and the serve extra's packages.
"""

from __future__ import annotations

import os
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
import yaml

from scoring.executor import ServedModel
from serving.core.selfcheck import SelfCheckLimits

TEXT_COLUMN = "text"


class ServedPyfunc(mlflow.pyfunc.PythonModel):
    """`predict(DataFrame with a text column)`: per text the label, its id and probability, every class's
    probability (label order), the path that answered, the ONNX file served and the registry version."""

    def __init__(self, limits: SelfCheckLimits, model_version: str):
        self.limits, self.model_version = limits, model_version

    def __getstate__(self) -> dict:
        """What is pickled into the registry: the settings, never the loaded sessions (MLflow loads the model once
        to check the input example before it saves it)."""
        return {"limits": self.limits, "model_version": self.model_version}

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        """The store model's folder, with its label names from its own metadata (`model.yaml`), as the API reads
        them."""
        folder = context.artifacts["model"]
        label_names = yaml.safe_load((Path(folder) / "model.yaml").read_text())["metadata"]["label_names"]
        self.model = ServedModel(folder, "", self.limits, label_names, os.cpu_count() or 1)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        return self.model.score(model_input[TEXT_COLUMN], self.model_version).reset_index(drop=True)
