"""The BentoML model store: what one export imports into it (the files that ship, with the metadata the service and
its /health read) and the drift monitor's reference profile that ships with them."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import bentoml
import bentoml.exceptions

from export.convert import RegistryModel
from serving.core.drift import PROFILE_FILE, TextStatistics, answer_statistics, build_profile
from serving.core.hybrid import LEXICAL_FILE, POLICY_FILE, HybridPolicy, HybridRouter
from serving.core.runtime import CONFIG_FILE, TOKENIZER_FILE, OnnxTextClassifier, cpu_flags
from serving.core.selfcheck import FP32_FILE, GOLDEN_FILE, INT8_MANIFEST, Int8File
from training.config import ExperimentConfig
from training.data import DataSourceError, load_data
from training.registry import SELECTION_METRIC

if TYPE_CHECKING:
    from export.export import ExportConfig


def in_store(name: str) -> bool:
    try:
        return bool(bentoml.models.list(name))
    except bentoml.exceptions.NotFound:
        return False


def reference_profile(
    config: ExperimentConfig, onnx_dir: Path, transformer: OnnxTextClassifier, n_texts: int
) -> dict | None:
    """What the served model sees and answers on the validation split: the drift monitor's reference."""
    if not n_texts:
        return None
    try:
        validation = load_data(config.data).splits["validation"]
    except (DataSourceError, OSError, ValueError) as error:  # no local copy and no hub: the service runs without
        print(f"WARNING: no drift reference profile ({error})", file=sys.stderr)
        return None
    texts = validation["text"][:n_texts]
    router = HybridRouter(onnx_dir)
    probabilities, _ = router.classify_in_process(texts, router.policy, transformer, progress="drift profile")
    statistics = TextStatistics(transformer.tokenizer, transformer.encoding)(texts) | answer_statistics(probabilities)
    described = f"{config.dataset} validation split, {len(texts)} texts, {transformer.model_file}"
    return build_profile(statistics, described)


def import_to_bentoml(
    onnx_dir: Path,
    registry: RegistryModel,
    export: ExportConfig,
    results: dict,
    int8: list[Int8File],
    warning: str | None,
    hybrid: HybridPolicy | None,
) -> bentoml.Model:
    """The fp32 file, the int8 files that ship (if any) and their manifest, tokenizer, label names, golden set and
    the hybrid's lexical model and policy (if registered) into the BentoML store."""
    info = json.loads((onnx_dir / CONFIG_FILE).read_text())
    recipe = int8[0].recipe if int8 else "fp32"  # the export's choice; the service chooses again on its own CPU
    metadata = {
        "mlflow_model": registry.name,
        "mlflow_version": registry.version,
        "mlflow_run_id": registry.run_id,
        "recipe": recipe,
        "int8_recipe": recipe if int8 else None,
        "int8_files": [f.recipe for f in int8] or None,
        "int8_refused": warning,
        "label_names": info["label_names"],
        "dataset": registry.config.dataset,
        "max_length": info["encoding"]["max_length"],
        "truncation": info["encoding"]["truncation"],
        "validation_accuracy": registry.metrics.get(SELECTION_METRIC),
        "test_accuracy": registry.metrics.get("test_accuracy"),
        "parity": {name: {k: v for k, v in r.items() if k != "failures"} for name, r in results.items()},
        "export_cpu": cpu_flags(),
        "selfcheck": asdict(export.selfcheck),
        "hybrid": {key: value for key, value in asdict(hybrid).items() if value is not None} if hybrid else None,
        "gate_reviews": export.gate_samples,
    }
    metadata = {key: value for key, value in metadata.items() if value is not None}  # BentoML refuses None
    labels = {"mlflow_model": registry.name, "mlflow_version": registry.version, "recipe": recipe}
    with bentoml.models.create(export.bento_model, labels=labels, metadata=metadata) as bento_model:
        target = Path(bento_model.path)
        for name in (FP32_FILE, TOKENIZER_FILE, CONFIG_FILE, GOLDEN_FILE):
            shutil.copy(onnx_dir / name, target / name)
        for name in [f.file for f in int8] + ([INT8_MANIFEST] if int8 else []):
            shutil.copy(onnx_dir / name, target / name)
        if hybrid:
            for name in (LEXICAL_FILE, POLICY_FILE):
                shutil.copy(onnx_dir / name, target / name)
        if (onnx_dir / PROFILE_FILE).exists():
            shutil.copy(onnx_dir / PROFILE_FILE, target / PROFILE_FILE)
    return bento_model
