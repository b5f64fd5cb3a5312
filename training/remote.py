"""Train on a lent GPU machine that has torch, transformers and peft, but no `datasets`, no `mlflow`, no network.

    python -m training.remote pack [--config ...] [key=value ...]   # here: build/remote/, small enough to travel
    python -m training.remote train build/remote OUT                # there: the same `fit` as `make train`
    python -m training.remote finish OUT                            # here: models/<name>/ and its MLflow run

`pack` tokenizes the splits with the project's own encoding (head+tail), so the GPU trains on exactly the ids
`make train` would, and stores the base model in fp16 (half the bytes; it is loaded back as fp32 there).
Checkpoints land in OUT/runs/<name>/: `train` resumes from them when OUT/runs is carried back.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import torch
import yaml
from transformers import AutoModel, set_seed

from serving.core.text import encode, pack_ids, unpack_ids, without_truncation
from training.config import RELEASE_CONFIG, ExperimentConfig, config_from_dict, load_config, resolve_checkpoint
from training.fit import fit
from training.modeling import build_model, load_tokenizer, save_trained

SPLITS = ("train", "validation")
BUNDLE = Path("build/remote")


class TokenDataset(torch.utils.data.Dataset):
    """Encoded texts and labels, served as the dicts the Trainer collates."""

    def __init__(self, ids: list[list[int]], labels: np.ndarray):
        self.ids, self.labels = ids, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "attention_mask": [1] * len(self.ids[i]), "label": int(self.labels[i])}


def pack(config: ExperimentConfig, bundle: Path) -> None:
    from training.data import load_data

    data = load_data(config.data)
    tokenizer = load_tokenizer(config.model.checkpoint)
    backend = without_truncation(tokenizer.backend_tokenizer)
    arrays = {}
    for split in SPLITS:
        packed = pack_ids(encode(data.splits[split]["text"], backend, config.encoding.for_training()))
        arrays |= {f"{split}_{key}": value for key, value in packed.items()}
        arrays[f"{split}_labels"] = np.array(data.splits[split]["label"], dtype=np.int64)
    shutil.rmtree(bundle, ignore_errors=True)
    (bundle / "base").mkdir(parents=True)
    np.savez_compressed(bundle / "tokens.npz", **arrays)
    base = AutoModel.from_pretrained(resolve_checkpoint(config.model.checkpoint))
    base.half().save_pretrained(bundle / "base")
    tokenizer.save_pretrained(bundle / "base")
    info = {"config": config.to_dict(), "label_names": data.label_names, "data_fingerprint": data.fingerprint}
    (bundle / "bundle.json").write_text(json.dumps(info, indent=2) + "\n")
    size = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
    print(f"{bundle}: {size / 2**20:.1f} MiB, " + ", ".join(f"{s}: {len(arrays[f'{s}_labels'])}" for s in SPLITS))


def train(bundle: Path, out: Path) -> None:
    info = json.loads((bundle / "bundle.json").read_text())
    config = config_from_dict(info["config"])
    remote_config = dataclasses.replace(config, output_dir=str(out / "runs"))
    tokens = np.load(bundle / "tokens.npz")
    datasets = {
        s: TokenDataset(unpack_ids(tokens[f"{s}_ids"], tokens[f"{s}_offsets"]), tokens[f"{s}_labels"]) for s in SPLITS
    }
    local_base = dataclasses.replace(config.model, checkpoint=str(bundle / "base"))
    set_seed(config.train.seed)
    model = build_model(local_base, info["label_names"])
    tokenizer = load_tokenizer(str(bundle / "base"))
    result = fit(remote_config, model, tokenizer, datasets["train"], datasets["validation"], report_to=[])
    model_dir = out / "models" / config.name
    save_trained(result.model, config, model_dir)  # the adapter names the original base (config.model.checkpoint)
    summary = result.summary(config, info["label_names"], {s: len(d) for s, d in datasets.items()})
    summary |= {"data_fingerprint": info["data_fingerprint"], "torch": torch.__version__}
    (model_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    (model_dir / "log_history.json").write_text(json.dumps(result.log_history) + "\n")
    print(json.dumps(summary, indent=2))


def finish(out: Path, models_dir: Path) -> None:
    """Copy the trained model into `models/` and record the remote run in MLflow like a local one."""
    import mlflow

    from training.config import flatten
    from training.parity import write_parity_sample
    from training.registry import setup_tracking
    from training.train import git_commit

    (trained,) = (out / "models").iterdir()
    config = load_config(trained / "config.yaml")
    summary = json.loads((trained / "metrics.json").read_text())
    history = json.loads((trained / "log_history.json").read_text())
    target = models_dir / config.name
    target.mkdir(parents=True, exist_ok=True)
    for name in ("adapter_config.json", "adapter_model.safetensors", "config.yaml"):
        shutil.copy(trained / name, target / name)
    write_parity_sample(config, target)
    setup_tracking(config.dataset)
    with mlflow.start_run(run_name=config.name) as active:
        mlflow.log_params(flatten(config.to_dict(), "cfg."))
        mlflow.set_tags({"git_commit": git_commit(), "hardware": summary["hardware"], "trained_on": "remote GPU"})
        mlflow.log_text(yaml.safe_dump(config.to_dict(), sort_keys=False), "config.yaml")
        for entry in history:
            step = entry.get("step", 0)
            mlflow.log_metrics(
                {k: v for k, v in entry.items() if isinstance(v, float | int) and k != "step"}, step=step
            )
        summary["mlflow_run_id"] = active.info.run_id
        mlflow.log_metrics(
            {"validation_accuracy": summary["validation_accuracy"], "train_wall_time_s": summary["train_wall_time_s"]}
        )
        mlflow.log_dict(summary, "metrics.json")
    (target / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{target}: validation accuracy {summary['validation_accuracy']:.4f}, run {summary['mlflow_run_id']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    pack_cmd = commands.add_parser("pack", help="tokenized splits + fp16 base model -> build/remote/")
    pack_cmd.add_argument("--config", type=Path, default=RELEASE_CONFIG)
    pack_cmd.add_argument("--bundle", type=Path, default=BUNDLE)
    pack_cmd.add_argument("overrides", nargs="*")
    train_cmd = commands.add_parser("train", help="train from a bundle (on the GPU machine)")
    train_cmd.add_argument("bundle", type=Path)
    train_cmd.add_argument("out", type=Path)
    finish_cmd = commands.add_parser("finish", help="bring a remote run into models/ and MLflow")
    finish_cmd.add_argument("out", type=Path)
    finish_cmd.add_argument("--models-dir", type=Path, default=Path("models"))
    args = parser.parse_args()
    if args.command == "pack":
        pack(load_config(args.config, args.overrides), args.bundle)
    elif args.command == "train":
        train(args.bundle, args.out)
    else:
        finish(args.out, args.models_dir)


if __name__ == "__main__":
    main()
