"""Export a registered model to ONNX (fp32 + dynamic int8), gate on parity, import into the BentoML store.

    python -m export.export --model-uri models:/imdb-sentiment@champion --variant int8

Refuses to import (exit code 2) when a variant's argmax agreement with PyTorch is under `min_agreement` or its
validation accuracy drops by more than `max_accuracy_drop`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import bentoml
import bentoml.exceptions
import mlflow
import numpy as np
import yaml
from mlflow import MlflowClient
from onnxruntime.quantization import QuantType, quantize_dynamic
from optimum.exporters.onnx import main_export
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from export.runtime import CONFIG_FILE, MODEL_FILE, TOKENIZER_FILE, OnnxTextClassifier
from training.config import ExperimentConfig, config_from_dict
from training.data import load_data
from training.modeling import predict_proba
from training.registry import SELECTION_METRIC, setup_tracking

VARIANT_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx"}
PARITY_REPORT = Path("reports/export/parity.json")


class ParityError(RuntimeError):
    """An exported variant disagrees with the PyTorch model beyond the gate's limits."""


@dataclass
class ExportConfig:
    model_uri: str = "models:/imdb-sentiment@champion"
    bento_model: str = "imdb-sentiment-onnx"
    variant: str = "int8"
    parity_samples: int = 1000
    min_agreement: float = 0.99
    max_accuracy_drop: float = 0.003
    work_dir: str = "build/onnx"


@dataclass
class RegistryModel:
    name: str
    version: str
    run_id: str
    metrics: dict[str, float]
    config: ExperimentConfig


def resolve(model_uri: str) -> RegistryModel:
    """Registry name/version, the training run's metrics and its experiment config, for a `models:/` URI."""
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


def export_onnx(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, config: ExperimentConfig, out_dir: Path
) -> Path:
    """Write model.onnx (fp32), model.int8.onnx, tokenizer.json and classifier.json into `out_dir`."""
    shutil.rmtree(out_dir, ignore_errors=True)
    with tempfile.TemporaryDirectory() as hf_dir:
        model.save_pretrained(hf_dir)
        tokenizer.save_pretrained(hf_dir)
        main_export(hf_dir, out_dir, task="text-classification", do_validation=False)
    quantize_dynamic(
        out_dir / VARIANT_FILES["fp32"], out_dir / VARIANT_FILES["int8"], weight_type=QuantType.QInt8, per_channel=True
    )
    info = {
        "label_names": [model.config.id2label[i] for i in range(model.config.num_labels)],
        "encoding": asdict(config.encoding),
        "pad_token_id": tokenizer.pad_token_id,
    }
    (out_dir / CONFIG_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return out_dir


def parity_report(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    reference_accuracy = float((reference.argmax(1) == labels).mean())
    accuracy = float((candidate.argmax(1) == labels).mean())
    return {
        "agreement": float((reference.argmax(1) == candidate.argmax(1)).mean()),
        "accuracy": accuracy,
        "reference_accuracy": reference_accuracy,
        "accuracy_drop": reference_accuracy - accuracy,
        "max_abs_prob_diff": float(np.abs(reference - candidate).max()),
        "n": len(labels),
    }


def check_parity(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    onnx_dir: Path,
    registry: RegistryModel,
    export: ExportConfig,
    variants: tuple[str, ...],
) -> dict[str, dict]:
    """Compare each ONNX variant with PyTorch on validation reviews; raise `ParityError` past the limits."""
    validation = load_data(registry.config.data).splits["validation"]
    validation = validation.select(range(min(export.parity_samples, len(validation))))
    texts, labels = validation["text"], np.array(validation["label"])
    reference = predict_proba(model, tokenizer, texts, registry.config.encoding)
    reports = {}
    for variant in variants:
        runtime = OnnxTextClassifier(onnx_dir, model_file=VARIANT_FILES[variant])
        reports[variant] = parity_report(reference, runtime.predict_proba(texts), labels)
    print(json.dumps(reports, indent=2))
    failures = [
        f"{v}: agreement {r['agreement']:.4f} < {export.min_agreement}"
        for v, r in reports.items()
        if r["agreement"] < export.min_agreement
    ]
    failures += [
        f"{v}: accuracy drop {100 * r['accuracy_drop']:.2f} points > {100 * export.max_accuracy_drop:.2f}"
        for v, r in reports.items()
        if r["accuracy_drop"] > export.max_accuracy_drop
    ]
    if failures:
        raise ParityError("parity gate failed, model not imported: " + "; ".join(failures))
    return reports


def import_to_bentoml(
    onnx_dir: Path, registry: RegistryModel, export: ExportConfig, parity: dict[str, dict]
) -> bentoml.Model:
    """Copy the chosen variant with its tokenizer and label names into the BentoML model store."""
    info = json.loads((onnx_dir / CONFIG_FILE).read_text())
    metadata = {
        "mlflow_model": registry.name,
        "mlflow_version": registry.version,
        "mlflow_run_id": registry.run_id,
        "variant": export.variant,
        "label_names": info["label_names"],
        "max_length": info["encoding"]["max_length"],
        "truncation": info["encoding"]["truncation"],
        "validation_accuracy": registry.metrics.get(SELECTION_METRIC),
        "test_accuracy": registry.metrics.get("test_accuracy"),
        "test_macro_f1": registry.metrics.get("test_macro_f1"),
        "parity": parity,
    }
    labels = {"mlflow_model": registry.name, "mlflow_version": registry.version, "variant": export.variant}
    with bentoml.models.create(export.bento_model, labels=labels, metadata=metadata) as bento_model:
        target = Path(bento_model.path)
        shutil.copy(onnx_dir / VARIANT_FILES[export.variant], target / MODEL_FILE)
        shutil.copy(onnx_dir / TOKENIZER_FILE, target / TOKENIZER_FILE)
        shutil.copy(onnx_dir / CONFIG_FILE, target / CONFIG_FILE)
    return bento_model


def run(export: ExportConfig) -> bentoml.Model:
    registry = resolve(export.model_uri)
    components = mlflow.transformers.load_model(export.model_uri, return_type="components")
    model, tokenizer = components["model"].eval(), components["tokenizer"]
    onnx_dir = export_onnx(model, tokenizer, registry.config, Path(export.work_dir))
    variants = tuple(dict.fromkeys(("fp32", export.variant)))
    parity = check_parity(model, tokenizer, onnx_dir, registry, export, variants)
    bento_model = import_to_bentoml(onnx_dir, registry, export, parity)
    PARITY_REPORT.parent.mkdir(parents=True, exist_ok=True)
    PARITY_REPORT.write_text(
        json.dumps(
            {
                "model": f"{registry.name}:{registry.version}",
                "bento_model": str(bento_model.tag),
                "variant": export.variant,
                "parity": parity,
                "sizes_mb": {v: round((onnx_dir / f).stat().st_size / 1e6, 1) for v, f in VARIANT_FILES.items()},
            },
            indent=2,
        )
        + "\n"
    )
    print(f"imported {bento_model.tag} from {registry.name} v{registry.version} ({export.variant})")
    return bento_model


def in_store(name: str) -> bool:
    try:
        return bool(bentoml.models.list(name))
    except bentoml.exceptions.NotFound:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = ExportConfig()
    parser.add_argument("--model-uri", default=defaults.model_uri)
    parser.add_argument("--bento-model", default=defaults.bento_model)
    parser.add_argument("--variant", choices=sorted(VARIANT_FILES), default=defaults.variant)
    parser.add_argument("--parity-samples", type=int, default=defaults.parity_samples)
    parser.add_argument("--if-missing", action="store_true", help="do nothing when the BentoML store has the model")
    args = parser.parse_args()
    if args.if_missing and in_store(args.bento_model):
        print(f"{args.bento_model} already in the BentoML store; skipping export")
        return
    setup_tracking()
    export = ExportConfig(
        model_uri=args.model_uri, bento_model=args.bento_model, variant=args.variant, parity_samples=args.parity_samples
    )
    try:
        run(export)
    except ParityError as error:
        print(f"REFUSED: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
