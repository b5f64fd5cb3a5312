"""Fine-tune an encoder (LoRA or full) with the HF Trainer, tracked in MLflow, evaluated and registered.

    python -m training.train --config training/configs/imdb-minilm-lora.yaml train.epochs=2

Killed runs resume from their last checkpoint (and the same MLflow run) when started again.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

import mlflow
import numpy as np
import torch
import yaml
from transformers import (
    DataCollatorWithPadding,
    EarlyStoppingCallback,
    EvalPrediction,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

from training.config import ExperimentConfig, flatten, load_config
from training.data import LoadedData, load_data
from training.evaluate import load_baseline, write_report
from training.metrics import classification_metrics, scalar_metrics
from training.modeling import build_model, load_tokenizer, predict_proba, save_adapter
from training.registry import log_and_register, setup_tracking
from training.text import encode, without_truncation


def hardware() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (CUDA, bf16)"
    return f"CPU {platform.machine()}, {torch.get_num_threads()} threads"


def git_commit() -> str:
    result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    return result.stdout.strip() or "unknown"


def tokenize(data: LoadedData, config: ExperimentConfig, tokenizer) -> dict:
    backend = without_truncation(tokenizer.backend_tokenizer)

    def encode_batch(batch: dict) -> dict:
        ids = encode(batch["text"], backend, config.encoding)
        return {"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids], "length": [len(x) for x in ids]}

    return data.splits.map(encode_batch, batched=True, remove_columns=["text"], desc="tokenizing")


def training_arguments(config: ExperimentConfig) -> TrainingArguments:
    train = config.train
    strategy = "steps" if train.eval_steps else "epoch"
    return TrainingArguments(
        output_dir=str(config.run_dir),
        # a fixed path (the default has a timestamp): a resumed run logs the same params to its MLflow run
        logging_dir=str(config.run_dir / "logs"),
        learning_rate=train.learning_rate,
        num_train_epochs=train.epochs,
        max_steps=train.max_steps,
        per_device_train_batch_size=train.batch_size,
        per_device_eval_batch_size=train.eval_batch_size,
        warmup_ratio=train.warmup_ratio,
        weight_decay=train.weight_decay,
        eval_strategy=strategy,
        save_strategy=strategy,
        eval_steps=train.eval_steps,
        save_steps=train.eval_steps,
        save_total_limit=2,
        load_best_model_at_end=True,
        metric_for_best_model="accuracy",
        group_by_length=True,  # similar lengths per batch: far less padding on 256-token reviews
        logging_steps=train.logging_steps,
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        seed=train.seed,
        label_names=["labels"],
        report_to=["mlflow"],
    )


class EvaluateAtEnd(TrainerCallback):
    """Evaluate and save after the last step too, so the fully trained model competes for "best" checkpoint."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_evaluate = control.should_save = True
        return control


def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
    preds = prediction.predictions.argmax(-1)
    labels = prediction.label_ids
    metrics = classification_metrics(labels, preds, [str(i) for i in range(prediction.predictions.shape[-1])])
    return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}


def run(config: ExperimentConfig, config_path: Path | None = None) -> dict:
    """Train, evaluate on the test split, save the adapter, log everything and register the merged model."""
    set_seed(config.train.seed)
    data = load_data(config.data)
    tokenizer = load_tokenizer(config.model.checkpoint)
    tokenized = tokenize(data, config, tokenizer)
    setup_tracking(config.data.name)

    config.run_dir.mkdir(parents=True, exist_ok=True)
    run_id_file = config.run_dir / "mlflow_run_id"
    checkpoint = get_last_checkpoint(str(config.run_dir))
    run_id = run_id_file.read_text().strip() if checkpoint and run_id_file.exists() else None
    with mlflow.start_run(run_id=run_id, run_name=config.name) as active:
        run_id_file.write_text(active.info.run_id)
        if run_id is None:
            mlflow.log_params(flatten(config.to_dict(), "cfg."))
            mlflow.log_params(
                {
                    "data.source": data.source,
                    "data.fingerprint": data.fingerprint,
                    **{f"data.n_{s}": len(d) for s, d in data.splits.items()},
                }
            )
            mlflow.set_tags({"git_commit": git_commit(), "hardware": hardware()})
            mlflow.log_text(yaml.safe_dump(config.to_dict(), sort_keys=False), "config.yaml")

        model = build_model(config.model, data.label_names)
        trainer = Trainer(
            model=model,
            args=training_arguments(config),
            train_dataset=tokenized["train"],
            eval_dataset=tokenized["validation"],
            data_collator=DataCollatorWithPadding(tokenizer),
            compute_metrics=compute_metrics,
            callbacks=[EarlyStoppingCallback(config.train.early_stopping_patience), EvaluateAtEnd()],
        )
        started = time.time()
        train_output = trainer.train(resume_from_checkpoint=checkpoint)
        validation = trainer.evaluate()  # the best checkpoint, reloaded by load_best_model_at_end
        model = trainer.model

        model_dir = Path(config.models_dir) / config.name
        model_dir.mkdir(parents=True, exist_ok=True)
        if config.model.method == "lora":
            save_adapter(model, model_dir, config.model.checkpoint)
            model = model.merge_and_unload()
        else:
            model.save_pretrained(model_dir)
        (model_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))

        test = data.splits["test"]
        probs = predict_proba(model, tokenizer, test["text"], config.encoding, config.train.eval_batch_size)
        report_dir = Path(config.reports_dir) / config.name
        baseline = load_baseline(Path(config.reports_dir), config.data.name)
        test_metrics = write_report(
            config.name, test["text"], np.array(test["label"]), probs, data.label_names, report_dir, baseline
        )
        summary = {
            "name": config.name,
            "base_model": config.model.checkpoint,
            "method": config.model.method,
            "label_names": data.label_names,
            "validation_accuracy": validation["eval_accuracy"],
            "validation_macro_f1": validation["eval_macro_f1"],
            "n_validation": len(data.splits["validation"]),
            "test_accuracy": test_metrics["accuracy"],
            "test_macro_f1": test_metrics["macro_f1"],
            "n_test": test_metrics["n"],
            "n_train": len(data.splits["train"]),
            "train_runtime_s": round(time.time() - started, 1),  # this session's only, when resumed
            "resumed_from_step": int(Path(checkpoint).name.rsplit("-", 1)[-1]) if checkpoint else 0,
            "train_samples_per_second": train_output.metrics.get("train_samples_per_second"),
            "hardware": hardware(),
            "mlflow_run_id": active.info.run_id,
            "data_fingerprint": data.fingerprint,
        }
        mlflow.log_metrics(
            scalar_metrics(test_metrics, "test") | {"validation_accuracy": summary["validation_accuracy"]}
        )
        mlflow.log_artifacts(str(report_dir), "evaluation")
        if config.registered_model:
            version, alias = log_and_register(
                model, tokenizer, config.registered_model, summary["validation_accuracy"], test["text"][0]
            )
            summary |= {"registered_model": config.registered_model, "registered_version": version, "alias": alias}
        (model_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
        mlflow.log_dict(summary, "metrics.json")
    if config_path:
        print(f"config: {config_path}")
    print(json.dumps(summary, indent=2))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("training/configs/imdb-minilm-lora.yaml"))
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.learning_rate=3e-4")
    args = parser.parse_args()
    run(load_config(args.config, args.overrides), args.config)


if __name__ == "__main__":
    main()
