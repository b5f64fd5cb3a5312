import os
import subprocess
import sys
from pathlib import Path

import pytest

from serving.settings import BENTO_MODEL, ServiceSettings
from training.config import RELEASE_CONFIG, flatten, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_release_config_loads_with_overrides():
    config = load_config("training/configs/imdb-minilm-lora.yaml", ["train.learning_rate=1e-4", "model.lora_r=8"])
    assert config.train.learning_rate == 1e-4 and config.model.lora_r == 8
    assert config.encoding.truncation == "head_tail" and config.data.label_names == ["neg", "pos"]
    assert flatten(config.to_dict())["model.lora_r"] == 8


def test_unknown_keys_and_bad_overrides_are_rejected():
    with pytest.raises(ValueError, match="unknown TrainConfig keys"):
        load_config(None, ["train.learnin_rate=1"])
    with pytest.raises(ValueError, match="key=value"):
        load_config(None, ["train.epochs"])


COMMANDS = {
    "training.train": "train.learning_rate",
    "training.lexical": "hybrid.max_cascade_loss",
    "training.eda": "data.name",
    "training.evaluate": "data.max_test_samples",
    "training.registry": "registered_model",
    "export.export": "min_agreement",
    "export.retrain": "max_class_regression",
    "export.beside": "min_agreement",
    "loadtests.reload": "swaps",
    "loadtests.beside": "seconds",
    "reporting.ab": "alpha",
    "loadtests.ab_traffic": "users",
}


@pytest.mark.parametrize("module", COMMANDS)
def test_every_command_has_one_surface_and_lists_its_fields(module):
    result = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, check=True)
    assert "key=value" in result.stdout and f"  {COMMANDS[module]}:" in result.stdout


def test_service_settings_come_from_the_environment_in_one_place():
    settings = ServiceSettings.from_env({"MAX_TEXT_CHARS": "100", "ADAPTIVE_BATCHING": "0", "MAX_BATCH_TEXTS": "80"})
    assert settings.max_text_chars == 100 and settings.adaptive_batching is False
    assert settings.max_batch_size == 80  # a batch must hold the largest /predict_batch request
    assert ServiceSettings.from_env({}) == ServiceSettings()
    ab = ServiceSettings.from_env({"CHALLENGER_SHARE": "0.25", "AB_MODE": "shadow", "MODEL_POLL_S": "0"})
    assert (ab.challenger_share, ab.ab_rollout, ab.model_poll_s) == (0.25, "shadow", 0.0)  # AB_MODE: the old name
    assert ServiceSettings.from_env({"AB_ROLLOUT": "shadow", "AB_MODE": "split"}).ab_rollout == "shadow"


def test_each_stage_name_follows_the_config_and_the_release_keeps_its_own():
    release = load_config(RELEASE_CONFIG).stage_names()
    assert release == {
        "MODEL_DIR": "models/imdb-minilm-lora",
        "MODEL_URI": "models:/imdb-sentiment@champion",
        "BENTO_MODEL": BENTO_MODEL,  # what tests, alerts, dashboards, compose and Kubernetes read
        "EXPORT_REPORT": "reports/export/parity.json",  # the committed report the docs link
        "IMAGE_TAG": "imdb-sentiment:latest",
        "BUILD_DIR": "build",
    }
    other = load_config(RELEASE_CONFIG, ["name=sms", "registered_model=sms-spam"]).stage_names()
    assert other["EXPORT_REPORT"] == "reports/sms/export/parity.json" and other["BUILD_DIR"] == "build/sms"
    assert other["IMAGE_TAG"] == "sms-spam:latest"
    made = subprocess.run(["make", "-n", "serve"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert f"model_uri={release['MODEL_URI']} bento_model={BENTO_MODEL}" in made


def test_plain_bentoml_in_a_fresh_shell_uses_the_projects_store():
    """`make install` makes ./.bentoml the venv's default BENTOML_HOME (.ci/bentoml_home.py): `bentoml serve` and
    `bentoml build` from the project root find what `make` exported."""
    env = {key: value for key, value in os.environ.items() if key != "BENTOML_HOME"}
    home = subprocess.run(
        [sys.executable, "-c", "import os; print(os.environ['BENTOML_HOME'])"], env=env, capture_output=True, text=True
    )
    assert home.stdout.strip() == str(ROOT / ".bentoml"), home.stderr
