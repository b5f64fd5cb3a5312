"""Retraining on a tiny hybrid champion and 60 real IMDb train reviews: a killed retraining resumes its training run;
a challenger the gate refuses stays `challenger` and goes to the store as `<bento>-challenger`; the same data with
the gate opened reuses that version and promotes it (the store's new latest); the gate on hand-made metrics."""

import json
from dataclasses import replace
from pathlib import Path

import bentoml
import numpy as np
import pandas as pd
import pytest
from bentoml._internal.configuration.containers import BentoMLContainer
from bentoml._internal.models import ModelStore
from mlflow import MlflowClient

import training.fit as fit_module
from export.retrain import HELD_OUT_PART, TRAIN_PART, RetrainConfig, gate, run
from export.store import in_store
from tests.test_training_pipeline import RELEASE_CONFIG, KillAt, tiny_config, tiny_overrides
from training import lexical
from training.config import DataConfig, build
from training.data import DataSourceError, load_data
from training.metrics import classification_metrics
from training.registry import register
from training.train import run as train

pytestmark = pytest.mark.timeout(600)
EXPORT = {  # the tiny-model settings of tests/test_export.py: int8 may flip a near-random model's labels
    "bento_model": "tiny-onnx",
    "search_samples": 8,
    "golden_size": 8,
    "timing_samples": 4,
    "profile_texts": 0,
    "min_agreement": 0.0,
    "max_accuracy_drop": 1.0,
}


@pytest.fixture
def champion(tiny_checkpoint, data_dir, tmp_path, tracking_uri):
    """A tiny hybrid (transformer + lexical half) registered as v1 `champion` in the test's own MLflow store, with a
    BentoML store of the test's own."""
    config = tiny_config(tiny_checkpoint, data_dir, tmp_path, **{"train.max_steps": 2})
    train(config)
    model_dir = Path(config.models_dir) / config.name
    lexical.run(model_dir, config)
    assert register(model_dir, config) == ("1", "champion")
    (tmp_path / "bentoml" / "models").mkdir(parents=True)
    with BentoMLContainer.model_store.patch(ModelStore(tmp_path / "bentoml" / "models")):
        yield MlflowClient(tracking_uri)


@pytest.fixture
def new_data(data_dir, tmp_path) -> Path:
    """60 IMDb *train* reviews (never the test split), labelled by name."""
    frame = pd.read_parquet(data_dir / "imdb" / "train.parquet").groupby("label").sample(30, random_state=0)
    path = tmp_path / "new.parquet"
    frame.assign(label=frame.label.map({0: "neg", 1: "pos"})).to_parquet(path)
    return path


def retrain_config(tiny_checkpoint, data_dir, tmp_path, new_data, **values) -> RetrainConfig:
    """As the command line builds it: the release recipe made tiny by its overrides."""
    overrides = tiny_overrides(tiny_checkpoint, data_dir, tmp_path, **{"train.max_steps": 4})
    return build(
        RetrainConfig,
        {
            "new_data": str(new_data),
            "experiment": str(RELEASE_CONFIG),
            "experiment_overrides": overrides,
            "export": EXPORT,
        }
        | values,
    )


def test_refused_then_promoted_and_resumable(champion, tiny_checkpoint, data_dir, tmp_path, new_data, monkeypatch):
    client = champion
    refuse = retrain_config(tiny_checkpoint, data_dir, tmp_path, new_data, margin=1.0)
    original = fit_module.Trainer
    monkeypatch.setattr(
        fit_module, "Trainer", lambda *a, **kw: original(*a, **kw | {"callbacks": [*kw["callbacks"], KillAt(3)]})
    )
    with pytest.raises(KeyboardInterrupt):
        run(refuse)
    monkeypatch.setattr(fit_module, "Trainer", original)
    (run_dir,) = (tmp_path / "runs").glob("retrain-*")
    killed_run_id = (run_dir / "mlflow_run_id").read_text()

    refused = run(refuse)  # the same command: resumes the killed training run
    work = tmp_path / "build" / "retrain" / refused["id"]
    assert run_dir.name == f"retrain-{refused['id']}" and refused["training_run_id"] == killed_run_id
    assert (run_dir / "checkpoint-4").exists()
    trained_on = client.get_run(killed_run_id).data.params["cfg.data.extra_train"]
    assert f"build/retrain/{refused['id']}/{TRAIN_PART}" in trained_on  # the new data's train part
    assert not refused["promoted"] and refused["challenger_version"] == "2"
    assert refused["new_rows"] == {"train": 48, "held_out": 12}
    assert pd.read_parquet(work / TRAIN_PART).shape[0] == 48 and pd.read_parquet(work / HELD_OUT_PART).shape[0] == 12
    assert any(r.startswith("test split: accuracy") and "margin 1" in r for r in refused["reasons"])
    assert any(r.startswith("held-out new data: accuracy") for r in refused["reasons"])
    assert str(client.get_model_version_by_alias("tiny-sentiment", "champion").version) == "1"
    version = client.get_model_version_by_alias("tiny-sentiment", "challenger")
    assert str(version.version) == "2" and version.tags["retrain_verdict"] == "refused"
    assert version.tags["retrain_reasons"] == "; ".join(refused["reasons"])
    report = tmp_path / "reports" / "retrain" / refused["id"]
    assert json.loads((report / "retrain.json").read_text()) == refused
    assert "**Refused**" in (report / "RETRAIN.md").read_text()
    assert refused["scores"]["champion"]["test split"]["n"] == 32  # the experiment's fixed test split
    challenger_bento = bentoml.models.get("tiny-onnx-challenger:latest")
    assert str(challenger_bento.tag) == refused["bento_model"] and challenger_bento.info.labels["mlflow_version"] == "2"
    assert {"lexical.onnx.gz", "hybrid.json"} <= {p.name for p in Path(challenger_bento.path).iterdir()}
    assert not in_store("tiny-onnx")  # the champion's name is untouched

    promote = retrain_config(tiny_checkpoint, data_dir, tmp_path, new_data, margin=-1.0, max_class_regression=1.0)
    promoted = run(promote)  # the same data: the same id, training run and version, scored again
    assert (promoted["id"], promoted["challenger_version"]) == (refused["id"], "2")
    assert promoted["training_run_id"] == killed_run_id and promoted["scores"] == refused["scores"]
    assert promoted["promoted"] and promoted["reasons"] == []
    version = client.get_model_version("tiny-sentiment", "2")
    assert version.aliases == ["champion"] and version.tags["retrain_verdict"] == "promoted"
    bento = bentoml.models.get("tiny-onnx:latest")
    assert str(bento.tag) == promoted["bento_model"] and bento.info.labels["mlflow_version"] == "2"
    assert run(promote) == promoted  # already champion: nothing more to do
    assert len(client.search_model_versions("name = 'tiny-sentiment'")) == 2


def metrics(labels: list[int], predicted: list[int]) -> dict:
    return classification_metrics(np.array(labels), np.array(predicted), ["neg", "pos"])


def test_the_gate_refuses_a_class_regression_even_when_accuracy_improves():
    truth = [0] * 10 + [1] * 10
    champion = {"test split": metrics(truth, [0] * 9 + [1] + [1] * 6 + [0] * 4)}  # 0.75: recalls 0.9, 0.6
    better = {"test split": metrics(truth, [0] * 8 + [1] * 2 + [1] * 9 + [0])}  # 0.85: recalls 0.8, 0.9
    verdict = gate(champion, better, margin=0.002, max_class_regression=0.005)
    assert not verdict.promote
    assert verdict.reasons == ["test split: recall of 'neg' fell 0.1000 (0.9000 -> 0.8000), more than 0.005"]
    assert gate(champion, better, margin=0.002, max_class_regression=0.1).promote
    worse = gate(champion, champion, margin=0.002, max_class_regression=0.005)
    assert worse.reasons == ["test split: accuracy 0.7500 < the champion's 0.7500 + margin 0.002"]


def test_extra_train_files_join_the_train_split_and_the_fingerprint(data_dir, tmp_path, new_data):
    imdb = DataConfig(name="imdb", data_dir=str(data_dir), label_names=["neg", "pos"])
    base = load_data(imdb)
    frame = pd.read_parquet(new_data)
    frame.assign(label=frame.label.map({"neg": 0, "pos": 1})).to_csv(tmp_path / "ids.csv", index=False)
    extra = load_data(replace(imdb, extra_train=[str(new_data), str(tmp_path / "ids.csv")]))
    grown = {split: len(extra.splits[split]) - len(base.splits[split]) for split in ("train", "validation", "test")}
    assert sum(grown.values()) == 120 and grown["test"] == 0 and extra.fingerprint != base.fingerprint
    frame.assign(label=2).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataSourceError, match="do not fit the 2 classes"):
        load_data(replace(imdb, extra_train=[str(tmp_path / "bad.csv")]))
