"""Export of a tiny registered model: ONNX parity with PyTorch, the refusal of a damaged model, the CLI import."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from export.export import ExportConfig, ParityError, RegistryModel, check_parity, export_onnx
from export.runtime import OnnxTextClassifier, micro_batches
from tests.test_training_pipeline import tiny_config
from training.modeling import load_tokenizer, merged_from_adapter, predict_proba
from training.train import run

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["A wonderful, moving film.", "Dull. " * 300, "ok", "I hated every minute of it, truly awful acting."]


@pytest.fixture(scope="module")
def tiny_registered(tiny_checkpoint, data_dir, tmp_path_factory):
    """A tiny LoRA model trained for 2 steps and registered in a throwaway MLflow store."""
    tmp = tmp_path_factory.mktemp("export")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        config = tiny_config(tiny_checkpoint, data_dir, tmp, **{"train.max_steps": 2})
        run(config)
    finally:
        os.chdir(cwd)
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI")
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous
    model = merged_from_adapter(Path(config.models_dir) / config.name, tiny_checkpoint, ["neg", "pos"])
    return {"config": config, "model": model, "tokenizer": load_tokenizer(tiny_checkpoint), "tmp": tmp, "uri": uri}


def test_onnx_matches_pytorch_on_padded_batches(tiny_registered, tmp_path):
    t = tiny_registered
    onnx_dir = export_onnx(t["model"], t["tokenizer"], t["config"], tmp_path / "onnx")
    reference = predict_proba(t["model"], t["tokenizer"], TEXTS, t["config"].encoding)
    runtime = OnnxTextClassifier(onnx_dir)
    np.testing.assert_allclose(runtime.predict_proba(TEXTS), reference, atol=1e-5)
    np.testing.assert_allclose(runtime.predict_proba(TEXTS[:1]), reference[:1], atol=1e-5)  # single-item path
    assert runtime.label_names == ["neg", "pos"]


def test_damaged_model_is_refused(tiny_registered, tmp_path):
    t = tiny_registered
    onnx_dir = export_onnx(t["model"], t["tokenizer"], t["config"], tmp_path / "onnx")
    graph = onnx.load(onnx_dir / "model.onnx")
    # Negate the weights and bias of the affine layer that produces the logits (its initializers may be renamed by
    # the exporter), so every logit changes sign: a damaged model that loads and runs but answers wrongly.
    producers = {output: node for node in graph.graph.node for output in node.output}
    initializers = {i.name: i for i in graph.graph.initializer}
    damaged, pending = [], [producers["logits"]]
    while pending:
        node = pending.pop()
        for name in node.input:
            if name in initializers:
                initializers[name].CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(initializers[name]), name))
                damaged.append(name)
            elif node.op_type == "Add" and name in producers and producers[name].op_type in ("MatMul", "Gemm"):
                pending.append(producers[name])
    assert len(damaged) == 2, damaged  # weight and bias
    onnx.save(graph, onnx_dir / "model.onnx")
    registry = RegistryModel("tiny", "1", "run", {}, t["config"])
    with pytest.raises(ParityError, match="fp32: agreement"):
        check_parity(t["model"], t["tokenizer"], onnx_dir, registry, ExportConfig(parity_samples=32), ("fp32",))


def test_cli_exports_and_imports_into_the_bentoml_store(tiny_registered, tmp_path):
    env = os.environ | {
        "MLFLOW_TRACKING_URI": tiny_registered["uri"],
        "BENTOML_HOME": str(tmp_path / "bentoml"),
        "PYTHONPATH": str(ROOT),
    }
    command = [
        sys.executable,
        "-m",
        "export.export",
        "--model-uri",
        "models:/tiny-sentiment@champion",
        "--bento-model",
        "tiny-onnx",
        "--variant",
        "fp32",
        "--parity-samples",
        "32",
    ]
    result = subprocess.run(command, env=env, cwd=tiny_registered["tmp"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    (model_yaml,) = (tmp_path / "bentoml" / "models" / "tiny-onnx").glob("*/model.yaml")
    files = {p.name for p in model_yaml.parent.iterdir()}
    assert {"model.onnx", "tokenizer.json", "classifier.json"} <= files
    metadata = model_yaml.read_text()
    assert "mlflow_version: '1'" in metadata and "agreement: 1.0" in metadata
    info = json.loads((model_yaml.parent / "classifier.json").read_text())
    assert info["encoding"]["truncation"] == "head_tail"
    again = subprocess.run(
        [*command, "--if-missing"], env=env, cwd=tiny_registered["tmp"], capture_output=True, text=True, check=False
    )
    assert again.returncode == 0 and "skipping export" in again.stdout


def test_micro_batches_bound_padding():
    lengths = [10, 200, 12, 190, 11, 100, 256]
    groups = micro_batches(lengths, max_size=8, max_padding=0.15)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for group in groups:
        padded = max(lengths[i] for i in group) * len(group)
        assert 1 - sum(lengths[i] for i in group) / padded <= 0.15
    assert [10, 11, 12] in [sorted(lengths[i] for i in g) for g in groups]
