"""Export of a tiny registered model: ONNX parity with PyTorch, the refusal of a damaged model, the int8 fallback,
the CLI import with its golden set and int8 files, the serving CPU's choice between them, fp32 rescoring, and
predictions that do not depend on batch-mates."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import requests
from onnx import numpy_helper

from export.convert import ParitySample, export_onnx, pytorch_reference
from export.export import Beside, ExportConfig
from export.gate import ParityError, choose, evaluate_files, rescore_margin
from export.quantize import DEFAULTS
from serving.core.drift import PROFILE_FILE
from serving.core.runtime import OnnxTextClassifier, top_two_margin
from serving.core.selfcheck import (
    FP32_FILE,
    GOLDEN_FILE,
    INT8_MANIFEST,
    CheckedModel,
    Int8File,
    SelfCheckLimits,
    int8_files,
    load_classifier,
    prefer,
    save_golden,
    save_int8_files,
    served_runtime,
)
from tests.test_training_pipeline import tiny_config
from training.modeling import load_tokenizer, merged_from_adapter, predict_ids, predict_proba
from training.registry import register
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
        model_dir = Path(config.models_dir) / config.name
        register(model_dir, config)
    finally:
        os.chdir(cwd)
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI")
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous
    model = merged_from_adapter(model_dir, tiny_checkpoint, ["neg", "pos"])
    tokenizer = load_tokenizer(tiny_checkpoint)
    sample = np.load(model_dir / "parity_sample.npz")
    ids = [sample["ids"][a:b].tolist() for a, b in zip(sample["offsets"][:-1], sample["offsets"][1:], strict=True)]
    return {
        "config": config,
        "model": model,
        "tokenizer": tokenizer,
        "tmp": tmp,
        "uri": uri,
        "ids": ids,
        "labels": sample["labels"].astype(np.int64),
        "reference": predict_ids(model, ids, tokenizer.pad_token_id),
    }


def run_export_cli(tiny_registered, tmp_path, *overrides: str) -> tuple[subprocess.CompletedProcess, dict]:
    """`python -m export.export` on the tiny registered model into a BentoML store of the test's own."""
    env = os.environ | {
        "MLFLOW_TRACKING_URI": tiny_registered["uri"],
        "BENTOML_HOME": str(tmp_path / "bentoml"),
        "PYTHONPATH": str(ROOT),
    }
    command = [
        sys.executable,
        "-m",
        "export.export",
        "model_uri=models:/tiny-sentiment@champion",
        "bento_model=tiny-onnx",
        "search_samples=8",
        "golden_size=8",
        f"report={tmp_path / 'parity.json'}",
        *overrides,
    ]
    result = subprocess.run(command, env=env, cwd=tiny_registered["tmp"], capture_output=True, text=True, check=False)
    return result, env


def test_onnx_matches_pytorch(tiny_registered, tmp_path):
    t = tiny_registered
    onnx_dir = export_onnx(t["model"], t["tokenizer"], t["config"], tmp_path / "onnx")
    reference = predict_proba(t["model"], t["tokenizer"], TEXTS, t["config"].encoding)
    runtime = OnnxTextClassifier(onnx_dir, FP32_FILE)
    np.testing.assert_allclose(runtime.predict_proba(TEXTS), reference, atol=1e-5)
    np.testing.assert_allclose(runtime.predict_proba(TEXTS[:1]), reference[:1], atol=1e-5)  # single-text path
    assert runtime.label_names == ["neg", "pos"]


def test_damaged_model_is_refused(tiny_registered, tmp_path):
    t = tiny_registered
    onnx_dir = export_onnx(t["model"], t["tokenizer"], t["config"], tmp_path / "onnx")
    graph = onnx.load(onnx_dir / FP32_FILE)
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
    onnx.save(graph, onnx_dir / FP32_FILE)
    export = ExportConfig(int8_candidates=[], search_samples=0, timing_samples=4)
    results = evaluate_files(onnx_dir, t["reference"], t["ids"], t["labels"], export)
    with pytest.raises(ParityError, match="fp32 export disagrees"):
        choose(results)


def test_int8_that_misses_the_gate_falls_back_to_fp32(tiny_registered, tmp_path):
    t = tiny_registered
    onnx_dir = export_onnx(t["model"], t["tokenizer"], t["config"], tmp_path / "onnx")
    impossible = ExportConfig(
        int8_candidates=["int8-dynamic", "int8-static-qdq"], min_agreement=1.01, search_samples=8, timing_samples=4
    )
    results = evaluate_files(onnx_dir, t["reference"], t["ids"], t["labels"], impossible)
    assert set(results) == {"fp32", "int8-dynamic", "int8-static-qdq"}
    shipped, warning = choose(results)
    assert shipped == [] and "fp32 is served" in warning and "agreement" in warning
    passing = ExportConfig(int8_candidates=["int8-dynamic"], min_agreement=0.0, max_accuracy_drop=1.0, search_samples=8)
    assert choose(evaluate_files(onnx_dir, t["reference"], t["ids"], t["labels"], passing))[0] == ["int8-dynamic"]


def test_ships_the_fastest_and_the_most_faithful_int8_file():
    ok = {"failures": []}
    results = {
        "fp32": ok | {"ms_per_review": 20.0, "agreement": 1.0},
        "fast": ok | {"ms_per_review": 10.0, "agreement": 0.996},
        "faithful": ok | {"ms_per_review": 15.0, "agreement": 0.999},
        "refused": {"failures": ["agreement"], "ms_per_review": 5.0, "agreement": 0.9},
    }
    assert choose(results) == (["fast", "faithful"], None)
    assert choose({k: v for k, v in results.items() if k != "faithful"}) == (["fast"], None)


def test_rescoring_margin_covers_every_flip_seen_and_fp32_answers_below_it(tiny_registered, tmp_path):
    reference = np.array([[0.9, 0.1], [0.45, 0.55], [0.2, 0.8], [0.6, 0.4]])
    candidate = np.array([[0.8, 0.2], [0.58, 0.42], [0.3, 0.7], [0.35, 0.65]])  # flips 2: margins 0.16 and 0.30
    assert rescore_margin(reference, candidate, step=0.05) == pytest.approx(0.35)
    assert rescore_margin(reference, reference, step=0.05) == pytest.approx(0.05)  # no flip: one step
    t = tiny_registered
    onnx_dir = export_onnx(t["model"], t["tokenizer"], t["config"], tmp_path / "onnx")
    export = ExportConfig(int8_candidates=["int8-fused-rescored"], min_agreement=0.0, search_samples=8)
    results = evaluate_files(onnx_dir, t["reference"], t["ids"], t["labels"], export)
    assert results["int8-fused-rescored"]["rescore_below"] > 0  # chosen on the 8 held-out reviews
    fp32 = OnnxTextClassifier(onnx_dir, FP32_FILE)
    int8 = OnnxTextClassifier(onnx_dir, "int8-fused-rescored.onnx")
    ids = t["ids"][:16]
    for below in (0.0, 0.05, 1.01):  # never, where int8 is unsure, always (a margin is at most 1)
        rescored = OnnxTextClassifier(onnx_dir, int8.model_file, rescorer=fp32, rescore_below=below).predict_ids(ids)
        plain = int8.predict_ids(ids)
        unsure = top_two_margin(plain) < below
        np.testing.assert_allclose(rescored[unsure], fp32.predict_ids(ids)[unsure], atol=1e-6)
        np.testing.assert_allclose(rescored[~unsure], plain[~unsure], atol=1e-6)


def test_cli_imports_fp32_int8_and_golden_set(tiny_registered, tmp_path):
    result, _ = run_export_cli(tiny_registered, tmp_path, "min_agreement=0.0", "max_accuracy_drop=1.0")
    assert result.returncode == 0, result.stderr[-2000:]
    (model_yaml,) = (tmp_path / "bentoml" / "models" / "tiny-onnx").glob("*/model.yaml")
    files = {p.name for p in model_yaml.parent.iterdir()}
    assert {FP32_FILE, INT8_MANIFEST, GOLDEN_FILE, PROFILE_FILE, "tokenizer.json", "classifier.json"} <= files
    report = json.loads((tmp_path / "parity.json").read_text())
    shipped = [f.recipe for f in int8_files(model_yaml.parent)]
    assert shipped == report["shipped"] and 1 <= len(shipped) <= 2 and set(shipped) <= set(DEFAULTS)
    assert {f"{name}.onnx" for name in shipped} <= files
    profile = json.loads((model_yaml.parent / PROFILE_FILE).read_text())
    assert profile["n"] == 32 and sum(profile["features"]["tokens"]["shares"]) == pytest.approx(1.0)
    metadata = model_yaml.read_text()
    assert "mlflow_version: '1'" in metadata and f"recipe: {shipped[0]}" in metadata
    assert report["served"] == shipped[0] and report["files"]["fp32"]["agreement"] == 1.0
    assert report["files"]["fp32"]["n"] == len(tiny_registered["ids"]) - 8  # the search rows held out
    assert all(r["ms_per_review"] > 0 for r in report["files"].values())
    again, _ = run_export_cli(tiny_registered, tmp_path, "--if-missing")
    assert again.returncode == 0 and "skipping export" in again.stdout


def test_the_serving_cpu_prefers_the_most_faithful_file_unless_another_is_enough_faster():
    files = {"faithful": {"agreement": 1.0}, "fast": {"agreement": 0.99}}
    assert prefer(files, {"fp32": 20, "faithful": 12, "fast": 11}, 0.10) == "faithful"  # 8% faster: no switch
    assert prefer(files, {"fp32": 20, "faithful": 12, "fast": 10.8}, 0.10) == "fast"  # 10% faster
    assert prefer(files, {"fp32": 20, "faithful": 19, "fast": 18.5}, 0.10) == "fp32"  # int8 no faster here
    assert prefer(files, {"fp32": 20, "fast": 10}, 0.10) == "fast"  # only timed files compete (faithful strayed)


def test_selfcheck_serves_fp32_first_then_int8_unless_it_strays_on_this_cpu(tiny_registered, tmp_path):
    t = tiny_registered
    onnx_dir = export_onnx(t["model"], t["tokenizer"], t["config"], tmp_path / "onnx")
    export = ExportConfig(int8_candidates=["int8-dynamic"], search_samples=8, timing_samples=4)
    evaluate_files(onnx_dir, t["reference"], t["ids"], t["labels"], export)
    save_int8_files(onnx_dir / INT8_MANIFEST, [Int8File("int8-dynamic", "int8-dynamic.onnx")])
    golden = t["ids"][:16]
    fp32 = OnnxTextClassifier(onnx_dir, FP32_FILE).predict_ids(golden)
    save_golden(onnx_dir / GOLDEN_FILE, golden, fp32)
    # A tiny model's probabilities sit near 0.5, where int8 may flip every label: only the distance is checked; and
    # a tiny model's int8 need not be faster than its fp32, so speed is not asked for (min_speedup: any)
    limits = SelfCheckLimits(min_agreement=0.0, max_mean_abs_diff=0.5, min_speedup=-1e9)
    runtime, check = load_classifier(onnx_dir, limits)
    assert check.passed and (check.served, check.recipe) == ("int8", "int8-dynamic")
    assert runtime.model_file == "int8-dynamic.onnx" and check.files["fp32"]["ms_per_review"] > 0
    assert served_runtime(onnx_dir, check.recipe).model_file == runtime.model_file  # the explainer's copy
    info = SimpleNamespace(tag="tiny-onnx:1", metadata={"selfcheck": asdict(limits)})
    stored = SimpleNamespace(path=str(onnx_dir), info=info)
    at_start = CheckedModel.reference(stored)  # what the classifier answers with while the check runs
    assert at_start.runtime.model_file == FP32_FILE
    assert (at_start.check.served, at_start.check.finished) == ("fp32", False)
    assert at_start.checked(stored).runtime.model_file == "int8-dynamic.onnx"  # what takes over once it has passed
    opposite = np.eye(2)[1 - fp32.argmax(1)]  # a reference this CPU's int8 cannot match
    save_golden(onnx_dir / GOLDEN_FILE, golden, opposite)
    runtime, check = load_classifier(onnx_dir, SelfCheckLimits())
    assert not check.passed and check.served == "fp32" and runtime.model_file == FP32_FILE
    assert check.files["int8-dynamic"]["mean_abs_diff"] > 0.4 and "golden reviews" in check.detail


def test_a_prediction_does_not_depend_on_its_batch_mates(tiny_registered, tmp_path):
    t = tiny_registered
    onnx_dir = export_onnx(t["model"], t["tokenizer"], t["config"], tmp_path / "onnx")
    export = ExportConfig(int8_candidates=["int8-dynamic"], search_samples=8, timing_samples=4)
    evaluate_files(onnx_dir, t["reference"], t["ids"], t["labels"], export)
    for file in (FP32_FILE, "int8-dynamic.onnx"):
        runtime = OnnxTextClassifier(onnx_dir, file, workers=2)
        alone = np.concatenate([runtime.predict_ids([x]) for x in t["ids"][:12]])
        together = runtime.predict_ids(t["ids"][:12])
        shuffled = runtime.predict_ids(t["ids"][:12][::-1] + t["ids"][20:30])[:12][::-1]
        np.testing.assert_allclose(together, alone, atol=1e-4)
        np.testing.assert_allclose(shuffled, alone, atol=1e-4)


def test_a_service_whose_int8_was_refused_serves_fp32_and_says_so(tiny_registered, tmp_path):
    """The whole path: export with a gate no int8 can meet -> import -> `bentoml serve` answers with fp32."""
    from loadtests.common import bentoml_serve, running
    from tests.conftest import free_port

    result, env = run_export_cli(tiny_registered, tmp_path, "min_agreement=1.01")
    assert result.returncode == 0 and "WARNING: no int8 file passed" in result.stderr, result.stderr[-2000:]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve_env = {"BENTOML_HOME": env["BENTOML_HOME"], "BENTO_MODEL_TAG": "tiny-onnx:latest"}
    with running(bentoml_serve(port), f"{url}/health", serve_env):
        health = requests.get(f"{url}/health").json()
        assert health["selfcheck"]["served"] == "fp32" and "parity gate" in health["warning"]
        assert requests.post(f"{url}/predict", json={"text": "A fine film."}).json()["label"] in ("neg", "pos")


def test_the_stored_pytorch_reference_is_used_only_while_pytorch_here_reproduces_it(tiny_registered):
    t, export = tiny_registered, ExportConfig(reference_spot_check=8)
    stored = np.load(t["tmp"] / "models" / t["config"].name / "parity_sample.npz")["reference"]
    np.testing.assert_allclose(stored, t["reference"], atol=1e-5)  # written by training: the merged model on CPU
    sample = ParitySample(t["ids"], t["labels"], stored_reference=stored)
    assert pytorch_reference(t["model"], t["tokenizer"].pad_token_id, sample, export) is stored
    stale = ParitySample(t["ids"], t["labels"], stored_reference=stored[:, ::-1].copy())  # another model's
    recomputed = pytorch_reference(t["model"], t["tokenizer"].pad_token_id, stale, export)
    np.testing.assert_allclose(recomputed, t["reference"], atol=1e-5)


def test_fp32_first_serves_at_once_then_the_int8_files_the_export_beside_it_gated(tiny_registered, tmp_path):
    """`make serve` on an empty store: the fp32 file is imported and served, with the reason; the full export runs
    beside the service, imports a version with int8 files and registers the pyfunc; the service switches to it."""
    from loadtests.common import bentoml_serve, running
    from tests.conftest import free_port

    work_dir = tmp_path / "onnx"
    gate = ("min_agreement=0.0", "max_accuracy_drop=1.0", f"work_dir={work_dir}")
    first, env = run_export_cli(tiny_registered, tmp_path, "--fp32-first", *gate)
    assert first.returncode == 0 and "gated beside the service" in first.stdout, first.stderr[-2000:]
    (model_yaml,) = (tmp_path / "bentoml" / "models" / "tiny-onnx").glob("*/model.yaml")
    assert not (model_yaml.parent / INT8_MANIFEST).exists() and "int8 files pending" in model_yaml.read_text()
    beside = Beside(str(work_dir))
    os.kill(beside.running(), signal.SIGSTOP)  # paused until the service has been seen serving the fp32 version
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve_env = {"BENTOML_HOME": env["BENTOML_HOME"], "BENTO_MODEL_TAG": "tiny-onnx:latest", "MODEL_POLL_S": "1"}
    with running(bentoml_serve(port), f"{url}/health", serve_env):
        health = requests.get(f"{url}/health").json()
        assert health["selfcheck"]["served"] == "fp32" and "int8 files pending" in health["warning"]
        assert requests.post(f"{url}/predict", json={"text": "A fine film."}).status_code == 200
        os.kill(beside.running(), signal.SIGCONT)
        deadline = time.monotonic() + 300
        first_tag = health["model"]
        assert first_tag.endswith(model_yaml.parent.name)
        while (beside.running() or health["model"] == first_tag) and time.monotonic() < deadline:
            time.sleep(1)
            health = requests.get(f"{url}/health").json()
        assert not beside.running(), beside.log.read_text()[-2000:]
        assert "imported tiny-onnx" in beside.log.read_text()
        versions = {p.name for p in model_yaml.parent.parent.iterdir() if p.is_dir()}
        assert len(versions) == 2 and health["model"].split(":")[1] in versions - {model_yaml.parent.name}
        while not health["selfcheck"]["finished"] and time.monotonic() < deadline:
            time.sleep(1)
            health = requests.get(f"{url}/health").json()
        assert set(health["selfcheck"]["files"]) >= {"int8-fused-rescored"}, health["selfcheck"]  # checked here
    again, _ = run_export_cli(tiny_registered, tmp_path, "--fp32-first", *gate)
    assert again.returncode == 0 and "skipping export" in again.stdout  # the pyfunc is registered: complete
