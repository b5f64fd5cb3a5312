"""Fine-tune an encoder (LoRA or full) with the HF Trainer, tracked in MLflow; ends at `models/<name>/`.

    python -m training.train --config training/configs/imdb-minilm-lora.yaml train.epochs=2
    torchrun --nproc_per_node 2 -m training.train --config ...   # data-parallel (DDP: gloo on CPU, NCCL on GPUs)

Writes the adapter (or full model), `config.yaml` and `metrics.json` (validation scores, wall time summed across
resumes). Scoring the test split is `training.evaluate`'s job, registering is `training.registry`'s.
Killed runs resume from their last checkpoint (and the same MLflow run) when started again.
"""

from __future__ import annotations

import json
import subprocess
from contextlib import nullcontext
from pathlib import Path

import mlflow
import yaml
from transformers import set_seed

from serving.core.text import encode, without_truncation
from training.config import RELEASE_CONFIG, ExperimentConfig, command_line, flatten
from training.data import LoadedData, load_data
from training.distill import student_loss, with_teacher_probabilities
from training.fit import fit, hardware, is_main_process, world_size
from training.modeling import (
    PARITY_SAMPLE,
    build_model,
    load_tokenizer,
    load_trained,
    save_parity_sample,
    save_trained,
)
from training.registry import setup_tracking


def git_commit() -> str:
    result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    return result.stdout.strip() or "unknown"


def tokenize(data: LoadedData, config: ExperimentConfig, tokenizer) -> dict:
    """Train and validation splits as token ids at the training length (training never touches the test split)."""
    backend = without_truncation(tokenizer.backend_tokenizer)

    def encode_batch(batch: dict) -> dict:
        ids = encode(batch["text"], backend, config.encoding.for_training())
        return {"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids]}

    return {
        split: data.splits[split].map(encode_batch, batched=True, remove_columns=["text"], desc=f"tokenizing {split}")
        for split in ("train", "validation")
    }


def run(config: ExperimentConfig) -> dict:
    """Train with MLflow tracking, save the model to `models/<name>/`, return its summary.

    Under torchrun / accelerate launch every process runs this (DDP): all train and evaluate their shard, rank 0
    alone owns the MLflow run and writes the model."""
    data = load_data(config.data)
    tokenizer = load_tokenizer(config.model.checkpoint)
    tokenized = tokenize(data, config, tokenizer)
    if config.model.teacher:
        tokenized = with_teacher_probabilities(tokenized, data, config)
    main = is_main_process()
    if main:
        setup_tracking(config.dataset)
        config.run_dir.mkdir(parents=True, exist_ok=True)
    run_id_file = config.run_dir / "mlflow_run_id"
    resuming = any(config.run_dir.glob("checkpoint-*")) and run_id_file.exists()
    run_id = run_id_file.read_text().strip() if resuming else None
    with mlflow.start_run(run_id=run_id, run_name=config.name) if main else nullcontext() as active:
        if main:
            run_id_file.write_text(active.info.run_id)
        if main and run_id is None:
            mlflow.log_params(flatten(config.to_dict(), "cfg."))
            mlflow.log_params(
                {
                    "data.source": data.source,
                    "data.fingerprint": data.fingerprint,
                    **{f"data.n_{s}": len(d) for s, d in data.splits.items()},
                }
            )
            mlflow.set_tags({"git_commit": git_commit(), "hardware": hardware(), "world_size": world_size()})
            if config.model.teacher:
                mlflow.set_tag("teacher", config.model.teacher)  # lineage: the model folder it was distilled from
            mlflow.log_text(yaml.safe_dump(config.to_dict(), sort_keys=False), "config.yaml")

        set_seed(config.train.seed)  # the new classifier head's initialisation
        model = build_model(config.model, data.label_names)
        student = config.model.teacher is not None
        result = fit(
            config,
            model,
            tokenizer,
            tokenized["train"],
            tokenized["validation"],
            report_to=["mlflow"],
            **(student_loss(config.model) if student else {}),
        )
        sizes = {split: len(data.splits[split]) for split in ("train", "validation")}
        summary = result.summary(config, data.label_names, sizes)
        if not main:
            return summary
        summary |= {"mlflow_run_id": active.info.run_id, "data_fingerprint": data.fingerprint}
        model_dir = Path(config.models_dir) / config.name
        save_trained(result.model, config, model_dir)
        validation = data.splits["validation"]
        merged = load_trained(model_dir, config, data.label_names)  # as the registry and the export rebuild it
        save_parity_sample(
            validation["text"], validation["label"], tokenizer, config.encoding, merged, model_dir / PARITY_SAMPLE
        )
        (model_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
        mlflow.log_metrics(
            {"validation_accuracy": summary["validation_accuracy"], "train_wall_time_s": result.wall_time_s}
        )
        mlflow.log_dict(summary, "metrics.json")
    print(json.dumps(summary, indent=2))
    return summary


def main() -> None:
    config, _ = command_line(ExperimentConfig, __doc__, default=RELEASE_CONFIG)
    run(config)


if __name__ == "__main__":
    main()
