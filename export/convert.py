"""The registered model, as the export starts from it: its registry entry, its ONNX fp32 file, its parity sample with
PyTorch's probabilities on it (the gate's yardstick), and the hybrid's lexical half registered with it."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import numpy as np
import yaml
from mlflow import MlflowClient
from optimum.exporters.onnx import main_export
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from serving.core.hybrid import LEXICAL_FILE, POLICY_FILE, HybridPolicy
from serving.core.runtime import CONFIG_FILE
from serving.core.text import unpack_ids
from training.config import ExperimentConfig, config_from_dict
from training.modeling import PARITY_SAMPLE, stored_or_predicted
from training.registry import HYBRID_DIR, SELECTION_METRIC, registered_with_hybrid

if TYPE_CHECKING:
    from export.export import ExportConfig


@dataclass
class RegistryModel:
    name: str
    version: str
    run_id: str
    metrics: dict[str, float]
    config: ExperimentConfig


def resolve(model_uri: str) -> RegistryModel:
    """Registry name/version, the run's metrics and its experiment config, for a `models:/` URI."""
    client = MlflowClient()
    name, _, ref = model_uri.removeprefix("models:/").partition("@")
    if ref:
        version = client.get_model_version_by_alias(name, ref)
    else:
        name, _, number = model_uri.removeprefix("models:/").partition("/")
        version = client.get_model_version(name, number)
    run = client.get_run(version.run_id)
    config = config_from_dict(yaml.safe_load(mlflow.artifacts.load_text(f"runs:/{version.run_id}/config.yaml")))
    metrics = dict(run.data.metrics) | {SELECTION_METRIC: float(version.tags.get(SELECTION_METRIC, "nan"))}
    return RegistryModel(name, str(version.version), version.run_id, metrics, config)


@dataclass
class ParitySample:
    ids: list[list[int]]
    labels: np.ndarray
    stored_reference: np.ndarray | None  # PyTorch's probabilities, written with it (None: an older sample)


def load_parity_sample(run_id: str) -> ParitySample:
    sample = np.load(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/{PARITY_SAMPLE}"))
    reference = sample.get("reference")
    return ParitySample(unpack_ids(sample["ids"], sample["offsets"]), sample["labels"].astype(np.int64), reference)


def pytorch_reference(
    model: PreTrainedModel, pad_token_id: int, sample: ParitySample, export: ExportConfig
) -> np.ndarray:
    """PyTorch's probabilities on the parity sample: the stored ones when PyTorch here reproduces them on a random
    spot check (they are the gate's yardstick, so they must come from this model), else computed here on all."""
    stored, spot_check, tolerance = sample.stored_reference, export.reference_spot_check, export.reference_tolerance
    return stored_or_predicted(model, sample.ids, pad_token_id, stored, spot_check, tolerance)


def download_hybrid(run_id: str, out_dir: Path) -> HybridPolicy | None:
    """The lexical model and hybrid policy registered with the version, into `out_dir` (None: transformer only)."""
    if not registered_with_hybrid(run_id):
        return None
    mlflow.artifacts.download_artifacts(f"runs:/{run_id}/{HYBRID_DIR}", dst_path=str(out_dir))
    for name in (LEXICAL_FILE, POLICY_FILE):
        shutil.move(out_dir / HYBRID_DIR / name, out_dir / name)
    return HybridPolicy.load(out_dir / POLICY_FILE)


def export_onnx(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, config: ExperimentConfig, out_dir: Path
) -> Path:
    """Write the fp32 model, tokenizer.json and classifier.json into `out_dir`."""
    shutil.rmtree(out_dir, ignore_errors=True)
    with tempfile.TemporaryDirectory() as hf_dir:
        model.save_pretrained(hf_dir)
        tokenizer.save_pretrained(hf_dir)
        main_export(hf_dir, out_dir, task="text-classification", do_validation=False)
    info = {
        "label_names": [model.config.id2label[i] for i in range(model.config.num_labels)],
        "encoding": asdict(config.encoding),
    }
    (out_dir / CONFIG_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return out_dir
