"""What runs on the Spark executors: the served model, loaded once per Python worker, scoring batches of rows.

Imports only the `serving` package (shipped to the executors beside this module), never `training`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np
import pandas as pd

from serving.core.hybrid import HybridRouter
from serving.core.runtime import OnnxTextClassifier
from serving.core.selfcheck import SelfCheckLimits, load_classifier

PREDICTION_SCHEMA = (
    "predicted_label string, predicted_label_id int, score double, probabilities array<double>, path string, "
    "file string, model_version string"
)
PREDICTION_COLUMNS = [column.split()[0] for column in PREDICTION_SCHEMA.split(", ")]


class ExecutorModel:
    """The hybrid as the service runs it, with the file the driver chose (`recipe`; "fp32": fp32) if it passes the
    self-check on this executor's own CPU, else fp32."""

    def __init__(self, folder: str, mode: str, limits: SelfCheckLimits, threads: int, recipe: str):
        self.router = HybridRouter(folder, mode)
        self.transformer: OnnxTextClassifier
        self.transformer, check = load_classifier(folder, limits, workers=threads, recipe=recipe)
        self.file = check.served

    def score(self, texts: pd.Series, model_version: str) -> pd.DataFrame:
        """One row of predictions per text; a blank or missing text gets nulls (the API would refuse it)."""
        texts = texts.fillna("").astype(str)
        rows = np.flatnonzero(texts.str.strip().ne("").to_numpy())
        columns: dict[str, list] = {name: [None] * len(texts) for name in PREDICTION_COLUMNS}
        probs, paths = self.router.classify_in_process(texts.iloc[rows].tolist(), self.router.policy, self.transformer)
        for row, p, path in zip(rows, probs, paths, strict=True):
            best = int(p.argmax())
            values = (self.transformer.label_names[best], best, float(p[best]), p.tolist(), path, self.file)
            for name, value in zip(PREDICTION_COLUMNS, (*values, model_version), strict=True):
                columns[name][row] = value
        return pd.DataFrame(columns, index=texts.index)


@functools.cache
def executor_model(folder: str, mode: str, limits: SelfCheckLimits, threads: int, recipe: str) -> ExecutorModel:
    """Once per Python worker (Spark reuses workers across tasks), not once per batch."""
    return ExecutorModel(folder, mode, limits, threads, recipe)


def score_batches(
    batches: Iterator[pd.DataFrame],
    folder_name: str,
    mode: str,
    limits: SelfCheckLimits,
    recipe: str,
    text_column: str,
    model_version: str,
) -> Iterator[pd.DataFrame]:
    """`mapInPandas`'s function: every batch of rows with its predictions added. `limits`: the self-check's, as the
    export stored them with the model (the service reads the same); `recipe`: the file the driver chose."""
    from pyspark import SparkFiles, TaskContext

    model = executor_model(SparkFiles.get(folder_name), mode, limits, TaskContext.get().cpus(), recipe)
    for frame in batches:
        yield pd.concat([frame, model.score(frame[text_column], model_version)], axis=1)
