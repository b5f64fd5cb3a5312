import pytest

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
