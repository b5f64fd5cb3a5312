"""The served model in this process, scoring rows: on the Spark executors (loaded once per Python worker) and as the
registry's MLflow pyfunc (`scoring/pyfunc.py`).

Imports only the `serving` package (shipped to the executors beside this module), never `training`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd

from serving.core.hybrid import HybridRouter
from serving.core.runtime import OnnxTextClassifier
from serving.core.selfcheck import SelfCheckLimits, load_classifier
from serving.core.text import readable

PREDICTION_SCHEMA = (
    "predicted_label string, predicted_label_id int, score double, probabilities array<double>, path string, "
    "file string, model_version string"
)
PREDICTION_COLUMNS = [column.split()[0] for column in PREDICTION_SCHEMA.split(", ")]


class ServedModel:
    """The hybrid as the service runs it, with the file the service would choose on this CPU, or, given `recipe`
    (a Spark driver's choice; "fp32": fp32), that file if it passes the self-check on this CPU, else fp32.
    `label_names`: the store model's, as the API names its answers (the executors have the folder, not the store)."""

    def __init__(
        self,
        folder: str,
        mode: str,
        limits: SelfCheckLimits,
        label_names: Sequence[str],
        threads: int,
        recipe: str | None = None,
    ):
        self.router = HybridRouter(folder, mode)
        self.label_names = label_names
        self.transformer: OnnxTextClassifier
        self.transformer, check = load_classifier(folder, limits, workers=threads, recipe=recipe)
        self.file = check.recipe or "fp32"  # the ONNX file answering: an int8 recipe, or fp32

    def score(self, texts: pd.Series, model_version: str) -> pd.DataFrame:
        """One row of predictions per text; a blank or missing text gets nulls (the API would refuse it)."""
        texts = texts.fillna("").astype(str)
        rows = np.flatnonzero(texts.map(readable).to_numpy())
        columns: dict[str, list] = {name: [None] * len(texts) for name in PREDICTION_COLUMNS}
        probs, paths = self.router.classify_in_process(texts.iloc[rows].tolist(), self.router.policy, self.transformer)
        for row, p, path in zip(rows, probs, paths, strict=True):
            best = int(p.argmax())
            values = (self.label_names[best], best, float(p[best]), p.tolist(), path, self.file)
            for name, value in zip(PREDICTION_COLUMNS, (*values, model_version), strict=True):
                columns[name][row] = value
        return pd.DataFrame(columns, index=texts.index)


@functools.cache
def executor_model(
    folder: str, mode: str, limits: SelfCheckLimits, label_names: tuple[str, ...], threads: int, recipe: str
) -> ServedModel:
    """Once per Python worker (Spark reuses workers across tasks), not once per batch."""
    return ServedModel(folder, mode, limits, label_names, threads, recipe)


def score_batches(
    batches: Iterator[pd.DataFrame],
    folder_name: str,
    mode: str,
    limits: SelfCheckLimits,
    label_names: tuple[str, ...],
    recipe: str,
    text_column: str,
    model_version: str,
) -> Iterator[pd.DataFrame]:
    """`mapInPandas`'s function: every batch of rows with its predictions added. `limits`: the self-check's, as the
    export stored them with the model (the service reads the same); `label_names`: the store model's; `recipe`: the
    file the driver chose."""
    from pyspark import SparkFiles, TaskContext

    model = executor_model(SparkFiles.get(folder_name), mode, limits, label_names, TaskContext.get().cpus(), recipe)
    for frame in batches:
        yield pd.concat([frame, model.score(frame[text_column], model_version)], axis=1)
