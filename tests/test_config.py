import subprocess
import sys

import pytest

from serving.settings import ServiceSettings
from training.config import flatten, load_config


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
