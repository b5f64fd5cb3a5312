"""Any dataset by its config alone: a tiny slice of AG News (4 classes, the test-only offline copy split into its own
train/validation/test) goes through the Makefile's own verbs, train -> lexical -> evaluate -> register -> export ->
serve, with nothing but CONFIG: the model folder, registry model and BentoML model all follow from the config."""

import os
import subprocess

import pytest
import requests
import yaml

from loadtests.common import ROOT, running
from tests.conftest import free_port
from tests.test_training_pipeline import tiny_overrides
from training.config import apply_overrides, load_config

pytestmark = pytest.mark.timeout(900)
AG_NEWS = ROOT / "training" / "configs" / "agnews-minilm-lora.yaml"
TOPICS = ["World", "Sports", "Business", "Sci/Tech"]


def test_a_four_class_config_trains_registers_exports_and_serves_under_its_own_names(
    tiny_checkpoint, data_dir, tmp_path, monkeypatch
):
    values = yaml.safe_load(AG_NEWS.read_text())
    tiny = tiny_overrides(tiny_checkpoint, data_dir, tmp_path, name="agnews-tiny", registered_model="agnews-tiny")
    tiny += ["data.max_train_samples=160", "data.max_validation_samples=40", "data.max_test_samples=40"]
    config_file = tmp_path / "agnews-tiny.yaml"
    config_file.write_text(yaml.safe_dump(apply_overrides(values, tiny)))
    config = load_config(config_file)
    assert config.data.label_names == TOPICS and config.stage_names()["BENTO_MODEL"] == "agnews-tiny-onnx"

    stores = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "BENTOML_HOME": str(tmp_path / "bentoml")}
    monkeypatch.delenv("BENTO_MODEL_TAG", raising=False)  # as in a fresh shell (`make test` exports the release's)
    env = os.environ | stores
    small_export = "search_samples=8 golden_size=8 profile_texts=0 timing_samples=4"
    small_export += f" work_dir={tmp_path / 'onnx'} report={tmp_path / 'parity.json'}"  # not the release's report
    for verb, args in (("train", ""), ("lexical", ""), ("evaluate", ""), ("register", ""), ("export", small_export)):
        made = subprocess.run(
            ["make", verb, f"CONFIG={config_file}", f"ARGS={args}"], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert made.returncode == 0, (verb, made.stdout[-2000:], made.stderr[-3000:])
    assert (config.model_dir / "lexical.onnx.gz").exists()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with running(["make", "serve", f"CONFIG={config_file}", f"PORT={port}"], f"{url}/health", env):
        health = requests.get(f"{url}/health").json()
        assert health["model"].startswith("agnews-tiny-onnx:") and health["version"] == "agnews-tiny:1"
        answer = requests.post(f"{url}/predict", json={"text": "Stocks rallied as the central bank held rates."})
        assert answer.status_code == 200, answer.text
        assert list(answer.json()["scores"]) == TOPICS and answer.json()["label"] in TOPICS
