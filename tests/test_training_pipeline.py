"""A tiny random BERT trained for a few steps on real IMDb reviews, end to end: LoRA -> adapter -> lexical half ->
evaluate -> register (MLflow run + registry, alias rules) -> rebuild from the adapter; resume after a kill with wall
time summed."""

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from transformers import TrainerCallback

import training.fit as fit_module
from serving.core.hybrid import LEXICAL_FILE, POLICY_FILE
from training import lexical
from training.config import load_config
from training.data import load_data
from training.evaluate import evaluate
from training.fit import WALL_TIME_FILE
from training.modeling import PARITY_SAMPLE, load_tokenizer, merged_from_adapter, predict_proba
from training.registry import HYBRID_DIR, assign_alias, register, validation_accuracy
from training.remote import finish, pack
from training.train import run, tokenize

pytestmark = pytest.mark.timeout(600)
RELEASE_CONFIG = Path(__file__).resolve().parents[1] / "training" / "configs" / "imdb-minilm-lora.yaml"


def tiny_overrides(tiny_checkpoint, data_dir, tmp_path, **overrides) -> list[str]:
    """`key=value` overrides of the release config: the tiny model, a few real reviews, a few steps."""
    values = {
        "name": "tiny",
        "registered_model": "tiny-sentiment",
        "output_dir": str(tmp_path / "runs"),
        "models_dir": str(tmp_path / "models"),
        "reports_dir": str(tmp_path / "reports"),
        "data.data_dir": str(data_dir),
        "data.max_train_samples": 64,
        "data.max_validation_samples": 32,
        "data.max_test_samples": 32,
        "model.checkpoint": tiny_checkpoint,
        "model.lora_r": 4,
        "train.batch_size": 8,
        "train.eval_batch_size": 32,
        "train.max_steps": 4,
        "train.eval_steps": 2,
        "train.logging_steps": 1,
        "encoding.max_length": 48,
        "encoding.train_max_length": 32,  # trained on fewer tokens than it reads when it predicts
    } | overrides
    return [f"{k}={v}" for k, v in values.items()]


def tiny_config(tiny_checkpoint, data_dir, tmp_path, **overrides):
    return load_config(RELEASE_CONFIG, tiny_overrides(tiny_checkpoint, data_dir, tmp_path, **overrides))


def test_train_evaluate_register_and_rebuild(tiny_checkpoint, data_dir, tmp_path, tracking_uri):
    config = tiny_config(tiny_checkpoint, data_dir, tmp_path)
    summary = run(config)
    model_dir = Path(config.models_dir) / "tiny"
    assert {"adapter_config.json", "adapter_model.safetensors", "config.yaml", "metrics.json", PARITY_SAMPLE} <= {
        p.name for p in model_dir.iterdir()
    }
    adapter_config = json.loads((model_dir / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == tiny_checkpoint
    assert "test_accuracy" not in summary and summary["n_validation"] == 32  # train never looks at the test split
    parity_sample = np.load(model_dir / PARITY_SAMPLE)
    assert parity_sample["labels"].shape == (32,)
    assert np.diff(parity_sample["offsets"]).max() == 48  # encoded as the model reads when it predicts
    trained_on = tokenize(load_data(config.data), config, load_tokenizer(tiny_checkpoint))
    assert max(len(ids) for split in trained_on.values() for ids in split["input_ids"]) == 32

    client = MlflowClient(tracking_uri)
    mlflow_run = client.get_run(summary["mlflow_run_id"])
    assert mlflow_run.data.params["cfg.model.lora_r"] == "4"
    assert mlflow_run.data.params["data.fingerprint"] == summary["data_fingerprint"]
    assert "validation_accuracy" in mlflow_run.data.metrics and "git_commit" in mlflow_run.data.tags
    history = client.get_metric_history(summary["mlflow_run_id"], "eval_accuracy")
    assert len(history) >= 2  # evaluated during training, not only at the end

    hybrid = lexical.run(model_dir, config)  # the lexical half and the policy, chosen on validation
    assert {LEXICAL_FILE, POLICY_FILE} <= {p.name for p in model_dir.iterdir()}
    assert hybrid["mode"] in ("cascade", "ensemble") and 0 <= hybrid["weight"] <= 1
    assert client.get_run(summary["mlflow_run_id"]).data.metrics["hybrid_threshold"] == hybrid["threshold"]

    test_scores = evaluate(model_dir, config)
    assert test_scores["n_test"] == 32
    assert {"test_accuracy_lexical", "test_accuracy_ensemble", "test_accuracy_cascade"} <= set(test_scores)
    assert json.loads((model_dir / "metrics.json").read_text())["test_accuracy"] == test_scores["test_accuracy"]
    assert (Path(config.reports_dir) / "tiny" / "confusion_matrix.png").exists()

    version, alias = register(model_dir, config)
    assert (version, alias) == ("1", "champion")
    registered_run = client.get_run(client.get_model_version("tiny-sentiment", "1").run_id)
    assert {"config.yaml", "evaluation", PARITY_SAMPLE, HYBRID_DIR} <= {
        a.path for a in client.list_artifacts(registered_run.info.run_id)
    }
    assert registered_run.data.metrics["test_accuracy"] == test_scores["test_accuracy"]

    # The registered model and the one rebuilt from base + committed adapter are the same model.
    label_names = ["neg", "pos"]
    texts = ["A wonderful, moving film.", "Dull and far too long. " * 40]
    rebuilt = merged_from_adapter(model_dir, tiny_checkpoint, label_names)
    tokenizer = load_tokenizer(tiny_checkpoint)
    registered = mlflow.transformers.load_model("models:/tiny-sentiment@champion", return_type="components")
    np.testing.assert_allclose(
        predict_proba(rebuilt, tokenizer, texts, config.encoding),
        predict_proba(registered["model"], tokenizer, texts, config.encoding),
        atol=1e-6,
    )
    # as a pyfunc (mlflow models serve, a Spark UDF) the transformers flavor cuts a long review instead of crashing
    long_review = "The plot wanders, the acting is wooden, and the score is relentless. " * 80  # > 512 tokens
    answers = mlflow.pyfunc.load_model("models:/tiny-sentiment@champion").predict([long_review, texts[0]])
    assert len(answers) == 2 and set(answers["label"]) <= set(label_names)


def test_champion_moves_only_on_better_validation_or_a_cheaper_tie(tracking_uri):
    client = MlflowClient(tracking_uri)
    client.create_registered_model("m")
    for _ in range(5):
        client.create_model_version("m", source="file:///nowhere")
    assert assign_alias(client, "m", "1", 0.80, "data:1000") == "champion"
    assert assign_alias(client, "m", "2", 0.79, "data:1000") == "challenger"  # worse: champion stays on 1
    assert str(client.get_model_version_by_alias("m", "champion").version) == "1"
    assert assign_alias(client, "m", "3", 0.81, "data:1000", transformer_share=0.6) == "champion"
    assert str(client.get_model_version_by_alias("m", "champion").version) == "3"
    # a tie on accuracy: only a lower share of reviews sent to the transformer wins it
    assert assign_alias(client, "m", "4", 0.81, "data:1000", transformer_share=0.6) == "challenger"
    assert assign_alias(client, "m", "5", 0.81, "data:1000", transformer_share=0.3) == "champion"
    assert str(client.get_model_version_by_alias("m", "champion").version) == "5"


def test_a_challenger_measured_on_another_split_is_compared_on_its_own(
    tiny_checkpoint, data_dir, tmp_path, tracking_uri
):
    """The champion's tag names a different validation split: it is re-scored on the challenger's before comparing."""
    first = tiny_config(tiny_checkpoint, data_dir, tmp_path / "a", **{"data.max_validation_samples": 16})
    run(first)
    assert register(Path(first.models_dir) / "tiny", first) == ("1", "champion")
    second = tiny_config(tiny_checkpoint, data_dir, tmp_path / "b", **{"train.max_steps": 1})
    model_dir = Path(second.models_dir) / "tiny"
    run(second)
    champion_on_this_split = validation_accuracy("models:/tiny-sentiment/1", model_dir / PARITY_SAMPLE)
    metrics = json.loads((model_dir / "metrics.json").read_text())
    expected = "champion" if metrics["validation_accuracy"] > champion_on_this_split else "challenger"
    assert register(model_dir, second) == ("2", expected)


class KillAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt("simulated kill")


def test_resumes_from_last_checkpoint_in_the_same_mlflow_run(
    tiny_checkpoint, data_dir, tmp_path, tracking_uri, monkeypatch
):
    config = tiny_config(tiny_checkpoint, data_dir, tmp_path, registered_model=None)
    original = fit_module.Trainer

    def killed_trainer(*args, **kwargs):
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), KillAt(3)]
        return original(*args, **kwargs)

    monkeypatch.setattr(fit_module, "Trainer", killed_trainer)
    with pytest.raises(KeyboardInterrupt):
        run(config)
    monkeypatch.setattr(fit_module, "Trainer", original)
    first_run_id = (config.run_dir / "mlflow_run_id").read_text()
    assert (config.run_dir / "checkpoint-2").exists() and not (config.run_dir / "checkpoint-4").exists()
    first_segment_s = json.loads((config.run_dir / "checkpoint-2" / WALL_TIME_FILE).read_text())["wall_time_s"]

    summary = run(config)
    assert summary["mlflow_run_id"] == first_run_id and summary["resumed_from_step"] == 2
    state = json.loads((config.run_dir / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert summary["train_wall_time_s"] >= first_segment_s > 0  # the first segment's time is counted too
    assert torch.cuda.is_available() or "CPU" in summary["hardware"]


def test_gpu_bundle_path_trains_the_same_loop_without_datasets_or_mlflow(
    tiny_checkpoint, data_dir, tmp_path, tracking_uri
):
    """pack (here) -> train (where only torch/transformers/peft exist) -> finish (here): a model dir like `train`'s,
    with its MLflow run. The remote side is run in a subprocess that cannot import datasets or mlflow."""
    config = tiny_config(tiny_checkpoint, data_dir, tmp_path, registered_model=None)
    bundle, out = tmp_path / "bundle", tmp_path / "out"
    pack(config, bundle)
    blocker = "import sys; sys.modules['datasets'] = sys.modules['mlflow'] = None; "
    code = (
        f"from training.remote import train; from pathlib import Path; train(Path({str(bundle)!r}), Path({str(out)!r}))"
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run(
        [sys.executable, "-c", blocker + code], check=True, cwd=root, env=os.environ | {"PYTHONPATH": str(root)}
    )
    finish(out, Path(config.models_dir))
    model_dir = Path(config.models_dir) / "tiny"
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["n_train"] == 64 and metrics["train_wall_time_s"] > 0
    assert {"adapter_model.safetensors", "config.yaml", PARITY_SAMPLE} <= {p.name for p in model_dir.iterdir()}
    history = MlflowClient(tracking_uri).get_metric_history(metrics["mlflow_run_id"], "eval_accuracy")
    assert len(history) >= 2
