"""MLflow tracking setup, model logging/registration, and the champion/challenger alias rule."""

from __future__ import annotations

import os

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from transformers import PreTrainedModel, PreTrainedTokenizerBase

CHAMPION, CHALLENGER = "champion", "challenger"
SELECTION_METRIC = "validation_accuracy"


def setup_tracking(experiment: str | None = None) -> None:
    """Local sqlite store unless `MLFLOW_TRACKING_URI` says otherwise; one experiment per dataset."""
    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"))
    if experiment:
        mlflow.set_experiment(experiment)


def log_and_register(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    registered_name: str,
    validation_accuracy: float,
    example_text: str,
) -> tuple[str, str]:
    """Log the merged model to the active run (transformers flavor), register it and set its alias.

    Returns the new version and the alias it received.
    """
    info = mlflow.transformers.log_model(
        transformers_model={"model": model, "tokenizer": tokenizer},
        task="text-classification",
        name="model",
        input_example=[example_text],
        registered_model_name=registered_name,
        pip_requirements=["torch", "transformers", "tokenizers"],
    )
    version = str(info.registered_model_version)
    return version, assign_alias(MlflowClient(), registered_name, version, validation_accuracy)


def assign_alias(client: MlflowClient, name: str, version: str, validation_accuracy: float) -> str:
    """Tag `version` with its validation accuracy; `champion` moves to it only if that beats the current
    champion's, otherwise it becomes `challenger`."""
    client.set_model_version_tag(name, version, SELECTION_METRIC, f"{validation_accuracy:.6f}")
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
        best = float(champion.tags.get(SELECTION_METRIC, "-inf"))
    except MlflowException:
        best = float("-inf")
    alias = CHAMPION if validation_accuracy > best else CHALLENGER
    client.set_registered_model_alias(name, alias, version)
    return alias
