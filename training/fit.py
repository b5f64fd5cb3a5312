"""The training loop: HF Trainer + peft, best checkpoint by validation accuracy, resumable, wall time summed.

Imports only torch, transformers and numpy (no `datasets`, no `mlflow`), so the very same loop runs on a lent GPU
machine that has neither (`training/remote.py`) and under `make train`.
"""

from __future__ import annotations

import inspect
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    DataCollatorWithPadding,
    EarlyStoppingCallback,
    EvalPrediction,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.trainer_utils import get_last_checkpoint

from training.config import ExperimentConfig

WALL_TIME_FILE = "wall_time.json"


def world_size() -> int:
    """Processes training together: 1, or what torchrun / accelerate launch set (data-parallel, DDP)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0 alone logs to MLflow, saves and registers; every rank trains and evaluates its shard."""
    return int(os.environ.get("RANK", "0")) == 0


def hardware() -> str:
    processes = f" x {world_size()} processes (DDP)" if world_size() > 1 else ""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (CUDA, bf16){processes}"
    return f"CPU {platform.machine()}, {torch.get_num_threads()} threads{processes}"


def _for_installed_transformers(arguments: dict[str, Any]) -> dict[str, Any]:
    """transformers 5 (the lent GPU machine's) renamed or dropped some of what the lock file's 4.57 accepts."""
    accepted = inspect.signature(TrainingArguments.__init__).parameters
    if "warmup_ratio" not in accepted:
        arguments["warmup_steps"] = arguments.pop("warmup_ratio")  # a float below 1 is a ratio there
    if "group_by_length" not in accepted:
        arguments["train_sampling_strategy"] = "group_by_length" if arguments.pop("group_by_length") else "random"
    for name in ("logging_dir", "use_cpu"):
        if name not in accepted:
            del arguments[name]
    return arguments


def training_arguments(config: ExperimentConfig, report_to: list[str]) -> TrainingArguments:
    train = config.train
    strategy = "steps" if train.eval_steps else "epoch"
    arguments = dict(
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
        use_cpu=not torch.cuda.is_available(),  # also what makes several CPU processes one DDP job (gloo)
        seed=train.seed,
        label_names=["labels"],
        remove_unused_columns=False,  # a student's `teacher_probs` reach its loss (tokenizing keeps only the inputs)
        report_to=report_to,
    )
    return TrainingArguments(**_for_installed_transformers(arguments))


class EvaluateAtEnd(TrainerCallback):
    """Evaluate and save after the last step too, so the fully trained model competes for "best" checkpoint."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_evaluate = control.should_save = True
        return control


class WallClock(TrainerCallback):
    """Writes the training wall time so far into every checkpoint, so a resumed run adds to it."""

    def __init__(self, already_spent_s: float):
        self.already_spent_s = already_spent_s
        self.started = time.monotonic()

    @property
    def total_s(self) -> float:
        return self.already_spent_s + time.monotonic() - self.started

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:  # rank 0 writes the checkpoint
            return
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        (checkpoint / WALL_TIME_FILE).write_text(json.dumps({"wall_time_s": round(self.total_s, 1)}) + "\n")


def spent_before(checkpoint: str | None) -> float:
    path = Path(checkpoint or "") / WALL_TIME_FILE
    return json.loads(path.read_text())["wall_time_s"] if checkpoint and path.exists() else 0.0


def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
    """Accuracy and macro F1 in numpy (the lent GPU machine has no scikit-learn)."""
    preds, labels = prediction.predictions.argmax(-1), prediction.label_ids
    f1s = []
    for c in range(prediction.predictions.shape[-1]):
        tp = np.sum((preds == c) & (labels == c))
        denominator = np.sum(preds == c) + np.sum(labels == c)
        f1s.append(2 * tp / denominator if denominator else 0.0)
    return {"accuracy": float(np.mean(preds == labels)), "macro_f1": float(np.mean(f1s))}


@dataclass
class FitResult:
    model: PreTrainedModel  # the best checkpoint's model (still a PeftModel for LoRA)
    validation: dict[str, float]  # eval_accuracy, eval_macro_f1, ... of that model
    wall_time_s: float  # summed across resumes
    resumed_from_step: int
    steps: int  # optimizer steps in all, resumed segments included
    samples_per_second: float | None  # this segment's
    log_history: list[dict[str, Any]]

    def summary(self, config: ExperimentConfig, label_names: list[str], sizes: dict[str, int]) -> dict[str, Any]:
        """What `models/<name>/metrics.json` holds after training; `training.evaluate` adds the test scores."""
        return {
            "name": config.name,
            "base_model": config.model.checkpoint,
            "method": config.model.method,
            "label_names": label_names,
            "validation_accuracy": self.validation["eval_accuracy"],
            "validation_macro_f1": self.validation["eval_macro_f1"],
            "n_validation": sizes["validation"],
            "n_train": sizes["train"],
            "epochs": config.train.epochs,
            "world_size": world_size(),
            "global_batch_size": config.train.batch_size * world_size(),
            "optimizer_steps": self.steps,
            "train_wall_time_s": self.wall_time_s,
            "resumed_from_step": self.resumed_from_step,
            "train_samples_per_second": self.samples_per_second,
            "hardware": hardware(),
        }


def fit(
    config: ExperimentConfig,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train_dataset,
    eval_dataset,
    report_to: list[str],
    trainer_class: type[Trainer] | None = None,
    **trainer_options: Any,
) -> FitResult:
    """Train (resuming from the last checkpoint in `config.run_dir` if any) and reload the best checkpoint;
    `trainer_class` and `trainer_options`: another loss (a student's)."""
    checkpoint = get_last_checkpoint(str(config.run_dir)) if config.run_dir.exists() else None
    clock = WallClock(spent_before(checkpoint))
    trainer = (trainer_class or Trainer)(
        model=model,
        args=training_arguments(config, report_to),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics,
        callbacks=[
            EarlyStoppingCallback(config.train.early_stopping_patience),
            EvaluateAtEnd(),
            clock,
        ],
        **trainer_options,
    )
    output = trainer.train(resume_from_checkpoint=checkpoint)
    validation = trainer.evaluate()  # the best checkpoint, reloaded by load_best_model_at_end
    return FitResult(
        model=trainer.model,
        validation=validation,
        wall_time_s=round(clock.total_s, 1),
        resumed_from_step=int(Path(checkpoint).name.rsplit("-", 1)[-1]) if checkpoint else 0,
        steps=trainer.state.global_step,
        samples_per_second=output.metrics.get("train_samples_per_second"),
        log_history=trainer.state.log_history,
    )
