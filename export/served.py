"""The registry holds what is served: after each export, the served artefact (the BentoML model folder: ONNX files,
tokenizer, lexical model, policy, golden set) is logged as an MLflow pyfunc (`scoring/pyfunc.py`) and registered as a
version of `<transformer's registered model>-served`, tagged with the transformer version it came from and given the
same alias. `make register` stays the only writer of the transformer's own registered model.
"""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient

from scoring.pyfunc import TEXT_COLUMN, ServedPyfunc
from serving.core.selfcheck import SelfCheckLimits, StoredModel
from serving.schemas import SAMPLE

ROOT = Path(__file__).resolve().parents[1]
SERVED_SUFFIX = "-served"
# what loading it needs, pinned at the versions this export ran with (the serve extra's, no torch)
REQUIREMENTS = ("mlflow", "onnxruntime", "tokenizers", "numpy", "pandas", "pydantic")


def served_name(transformer_name: str) -> str:
    return transformer_name + SERVED_SUFFIX


def register_served(stored: StoredModel, name: str, model_version: str, alias: str | None) -> str:
    """Log and register the served pyfunc of the store model `stored`, exported from registry version
    `name:model_version`, with its self-check limits; returns its version in `<name>-served`."""
    example = pd.DataFrame({TEXT_COLUMN: [SAMPLE]})
    with mlflow.start_run(run_name=f"served-{name}-{model_version}"):
        info = mlflow.pyfunc.log_model(
            name="served",
            python_model=ServedPyfunc(SelfCheckLimits.of(stored), f"{name}:{model_version}"),
            artifacts={"model": stored.path},
            code_paths=[str(ROOT / "serving"), str(ROOT / "scoring")],
            input_example=example,
            pip_requirements=[f"{package}=={version(package)}" for package in REQUIREMENTS],
            registered_model_name=served_name(name),
        )
    served = str(info.registered_model_version)
    client = MlflowClient()
    client.set_model_version_tag(served_name(name), served, "transformer", f"{name}:{model_version}")
    if alias:
        client.set_registered_model_alias(served_name(name), alias, served)
    return served


def is_registered(transformer_uri: str) -> bool:
    """Whether the served pyfunc of `transformer_uri`'s model (`models:/name@alias` or `models:/name/version`) is
    in the registry: under the same alias, or any version."""
    name, _, alias = transformer_uri.removeprefix("models:/").partition("@")
    client, served = MlflowClient(), served_name(name.split("/")[0])
    try:
        if alias:
            return bool(client.get_model_version_by_alias(served, alias))
        return bool(client.search_model_versions(f"name = '{served}'", max_results=1))
    except mlflow.exceptions.MlflowException:
        return False
