"""The MLflow registry: the only writer of model versions and their champion/challenger aliases.

    python -m training.registry --model-dir models/imdb-minilm-lora [--if-missing]

Rebuilds the merged model from base + the committed adapter, logs it with its config, metrics, evaluation report,
parity sample and (when `make lexical` made them) the lexical model and hybrid policy, and registers it: one
version. A new version becomes `challenger`; it is promoted to `champion` only if what it serves beats the champion on
the same validation split (the champion's transformer is re-scored when its tag names another split), or ties it while
sending fewer reviews to the transformer (the same answers for less compute).
`export.retrain` registers with that gate off and applies its own verdict here (`settle`).
"""

from __future__ import annotations

import json
import os
from importlib.metadata import version
from pathlib import Path

import mlflow
import numpy as np
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from serving.core.hybrid import LEXICAL_FILE, POLICY_FILE
from serving.core.text import unpack_ids
from training.config import RELEASE_MODEL_DIR, ExperimentConfig, command_line, flatten
from training.modeling import PARITY_SAMPLE, load_tokenizer, load_trained, predict_ids

CHAMPION, CHALLENGER = "champion", "challenger"
SELECTION_METRIC, SELECTION_SET = "validation_accuracy", "validation_set"
SHARE_METRIC = "validation_transformer_share"  # the tie-break: a version without it sends every review (1.0)
HYBRID_DIR = "hybrid"  # run artifact folder of the lexical model and the hybrid policy


def setup_tracking(experiment: str | None = None) -> None:
    """Local sqlite store unless `MLFLOW_TRACKING_URI` says otherwise; one experiment per dataset."""
    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"))
    if experiment:
        mlflow.set_experiment(experiment)


def champion_version(client: MlflowClient, name: str):
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def validation_accuracy(model_uri: str, sample: Path) -> float:
    """Accuracy of a registered model on a parity sample (token ids + labels of a validation split)."""
    components = mlflow.transformers.load_model(model_uri, return_type="components")
    data = np.load(sample)
    ids = unpack_ids(data["ids"], data["offsets"])
    probs = predict_ids(components["model"], ids, components["tokenizer"].pad_token_id)
    return float((probs.argmax(1) == data["labels"]).mean())


def champion_score(client: MlflowClient, name: str, validation_set: str, sample: Path | None) -> tuple[float, float]:
    """The champion's validation accuracy on `validation_set` (re-scored from `sample`, transformer alone, when it was
    measured on another) and the share it sends to the transformer; (-inf, 1) without a champion."""
    champion = champion_version(client, name)
    if champion is None:
        return float("-inf"), 1.0
    if champion.tags.get(SELECTION_SET) == validation_set or sample is None:
        return float(champion.tags.get(SELECTION_METRIC, "-inf")), float(champion.tags.get(SHARE_METRIC, 1.0))
    best = validation_accuracy(f"models:/{name}/{champion.version}", sample)
    print(f"champion v{champion.version} re-scored on this validation set: {best:.4f}")
    return best, 1.0


def assign_alias(
    client: MlflowClient,
    name: str,
    version: str,
    accuracy: float,
    validation_set: str,
    sample: Path | None = None,
    gate: bool = True,
    transformer_share: float = 1.0,
) -> str:
    """Tag `version` with its validation accuracy and transformer share; `champion` moves to it only if it beats the
    champion's accuracy on the same validation set, or ties it with a lower share, else `challenger`. `gate=False`:
    always `challenger` (a gate of its own decides later)."""
    client.set_model_version_tag(name, version, SELECTION_METRIC, f"{accuracy:.6f}")
    client.set_model_version_tag(name, version, SELECTION_SET, validation_set)
    client.set_model_version_tag(name, version, SHARE_METRIC, f"{transformer_share:.6f}")
    best, best_share = champion_score(client, name, validation_set, sample)
    promote = gate and (accuracy, -transformer_share) > (best, -best_share)
    alias = CHAMPION if promote else CHALLENGER
    client.set_registered_model_alias(name, alias, version)
    return alias


def settle(client: MlflowClient, name: str, version: str, promote: bool, tags: dict[str, str]) -> str:
    """Apply an outside gate's verdict (`export.retrain`'s) on a `challenger`: its tags on the version, and
    `champion` moved to it when promoted (`challenger` then leaves it); returns the version's alias."""
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    if not promote:
        return CHALLENGER
    client.set_registered_model_alias(name, CHAMPION, version)
    if CHALLENGER in client.get_model_version(name, version).aliases:
        client.delete_registered_model_alias(name, CHALLENGER)
    return CHAMPION


def tagged_version(client: MlflowClient, name: str, key: str, value: str) -> str | None:
    """The newest version of `name` tagged `key=value` (None: none is)."""
    versions = client.search_model_versions(f"name = '{name}' and tags.{key} = '{value}'")
    return str(max(int(v.version) for v in versions)) if versions else None


def registered_with_hybrid(run_id: str) -> bool:
    """Whether the version registered by `run_id` carries the hybrid's lexical model and policy."""
    return bool(MlflowClient().list_artifacts(run_id, HYBRID_DIR))


def served_validation_score(model_dir: Path, summary: dict) -> tuple[float, float]:
    """What the gate compares: the validation accuracy of what the version serves and the share of reviews it sends
    to the transformer (the hybrid's chosen mode when `make lexical` ran, else the transformer alone)."""
    if not (model_dir / POLICY_FILE).exists():
        return summary["validation_accuracy"], 1.0
    hybrid = json.loads((model_dir / POLICY_FILE).read_text())
    return hybrid["validation_accuracy"][hybrid["mode"]], hybrid["validation_transformer_share"]


def log_and_register(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, registered_name: str, example_text: str
) -> str:
    """Log the merged model to the active run (transformers flavor) and register it; returns the version."""
    info = mlflow.transformers.log_model(
        transformers_model={"model": model, "tokenizer": tokenizer},
        task="text-classification",
        name="model",
        input_example=[example_text],
        registered_model_name=registered_name,
        pip_requirements=[f"{package}=={version(package)}" for package in ("torch", "transformers", "tokenizers")],
        # the pipeline cuts a text at the model's limit (else a long review crashes it); head-only, so it may differ
        # from the service's head+tail reading: `<name>-served` (export/served.py) answers as the service does
        model_config={"truncation": True, "max_length": model.config.max_position_embeddings},
    )
    return str(info.registered_model_version)


def register(
    model_dir: Path, config: ExperimentConfig, gate: bool = True, tags: dict[str, str] | None = None
) -> tuple[str, str]:
    """Register `models/<name>/` (adapter, config, metrics, parity sample) with version `tags`; returns the version
    and its alias (`gate=False`: `challenger`, whatever it scores)."""
    summary = json.loads((model_dir / "metrics.json").read_text())
    model = load_trained(model_dir, config, summary["label_names"])
    setup_tracking(config.dataset)
    with mlflow.start_run(run_name=f"register-{config.name}"):
        mlflow.log_params(flatten(config.to_dict(), "cfg."))
        mlflow.log_metrics({k: v for k, v in summary.items() if k.startswith(("test_", "validation_"))})
        mlflow.set_tags(
            {
                "source": f"rebuilt from {model_dir}",
                "trained_run_id": summary.get("mlflow_run_id", ""),
                "hardware": summary["hardware"],
            }
        )
        mlflow.log_text(yaml.safe_dump(config.to_dict(), sort_keys=False), "config.yaml")
        mlflow.log_artifact(str(model_dir / PARITY_SAMPLE))
        for name in (LEXICAL_FILE, POLICY_FILE):  # the hybrid's half, registered with the transformer as one version
            if (model_dir / name).exists():
                mlflow.log_artifact(str(model_dir / name), HYBRID_DIR)
        report_dir = Path(config.reports_dir) / config.name
        if report_dir.exists():
            mlflow.log_artifacts(str(report_dir), "evaluation")
        version = log_and_register(
            model, load_tokenizer(config.model.checkpoint), config.registered_model, "A moving, beautifully acted film."
        )
    client = MlflowClient()
    if config.model.teacher:  # lineage: a student names the model folder it was distilled from
        tags = (tags or {}) | {"teacher": config.model.teacher}
    for key, value in (tags or {}).items():
        client.set_model_version_tag(config.registered_model, version, key, value)
    validation_set = f"{summary['data_fingerprint']}:{summary['n_validation']}"
    accuracy, share = served_validation_score(model_dir, summary)
    alias = assign_alias(
        client, config.registered_model, version, accuracy, validation_set, model_dir / PARITY_SAMPLE, gate, share
    )
    return version, alias


def main() -> None:
    config, args = command_line(
        ExperimentConfig,
        __doc__,
        source="--model-dir",
        default=RELEASE_MODEL_DIR,
        flags={"--if-missing": "skip when the registry already has a champion"},
    )
    setup_tracking()
    if args.if_missing and champion_version(MlflowClient(), config.registered_model):
        print(f"{config.registered_model}@{CHAMPION} exists; skipping")
        return
    version, alias = register(args.source, config)
    print(f"registered {config.registered_model} v{version} as {alias}")


if __name__ == "__main__":
    main()
