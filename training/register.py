"""Rebuild the MLflow registry from what is committed: base model + `models/<name>/` adapter -> merged model.

    python -m training.register [--model-dir models/imdb-minilm-lora] [--if-missing]

Each committed model gets a run of its own (config, metrics and evaluation artifacts) and a registry version;
the champion/challenger rule applies as for a fresh training run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import mlflow
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from training.config import flatten, load_config
from training.modeling import load_tokenizer, merged_from_adapter
from training.registry import CHAMPION, log_and_register, setup_tracking


def has_champion(name: str) -> bool:
    try:
        MlflowClient().get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return False
    return True


def register(model_dir: Path) -> tuple[str, str]:
    config = load_config(model_dir / "config.yaml")
    summary = json.loads((model_dir / "metrics.json").read_text())
    model = merged_from_adapter(model_dir, config.model.checkpoint, summary["label_names"])
    setup_tracking(config.data.name)
    with mlflow.start_run(run_name=f"register-{config.name}"):
        mlflow.log_params(flatten(config.to_dict(), "cfg."))
        mlflow.log_metrics({k: v for k, v in summary.items() if k.startswith(("test_", "validation_"))})
        mlflow.set_tags(
            {
                "source": f"rebuilt from {model_dir}",
                "trained_run_id": summary["mlflow_run_id"],
                "hardware": summary["hardware"],
            }
        )
        mlflow.log_text(yaml.safe_dump(config.to_dict(), sort_keys=False), "config.yaml")
        report_dir = Path(config.reports_dir) / config.name
        if report_dir.exists():
            mlflow.log_artifacts(str(report_dir), "evaluation")
        return log_and_register(
            model,
            load_tokenizer(config.model.checkpoint),
            config.registered_model,
            summary["validation_accuracy"],
            "A moving, beautifully acted film.",
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=Path("models/imdb-minilm-lora"))
    parser.add_argument("--if-missing", action="store_true", help="skip when the registry already has a champion")
    args = parser.parse_args()
    config = load_config(args.model_dir / "config.yaml")
    setup_tracking()
    if args.if_missing and has_champion(config.registered_model):
        print(f"{config.registered_model}@{CHAMPION} exists; skipping")
        return
    version, alias = register(args.model_dir)
    print(f"registered {config.registered_model} v{version} as {alias}")


if __name__ == "__main__":
    main()
