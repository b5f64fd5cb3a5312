"""The committed model as the Hugging Face Hub would show it: a card named README.md beside the adapter, with Hub
metadata rendered from the measured files, and an adapter whose config names its real base, loadable with peft's own
`PeftModel.from_pretrained` from the bundled copy of that base (no network)."""

import json
from pathlib import Path

import numpy as np
import yaml
from peft import PeftModel

from serving.core.text import unpack_ids
from training.config import BUNDLED_HUB_ID, RELEASE_MODEL_DIR, hub_id, load_config
from training.modeling import PARITY_SAMPLE, load_base_model, merged_from_adapter, predict_ids

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / RELEASE_MODEL_DIR


def front_matter(card: Path) -> dict:
    _, header, _ = card.read_text().split("---\n", 2)
    return yaml.safe_load(header)


def test_the_card_carries_hub_metadata_from_the_measured_files():
    card, metrics = front_matter(MODEL_DIR / "README.md"), json.loads((MODEL_DIR / "metrics.json").read_text())
    assert (card["library_name"], card["pipeline_tag"]) == ("peft", "text-classification")
    assert card["base_model"] == BUNDLED_HUB_ID
    assert card["datasets"] == ["stanfordnlp/imdb"] and set(card["metrics"]) == {"accuracy", "f1"}
    (result,) = card["model-index"][0]["results"]
    measured = {(m["type"], m["name"]): m["value"] for m in result["metrics"]}
    assert measured["accuracy", "test accuracy (the merged transformer)"] == round(metrics["test_accuracy"], 4)
    assert measured["f1", "test macro F1 (the merged transformer)"] == round(metrics["test_macro_f1"], 4)


def test_the_adapter_names_its_real_base_and_loads_with_peft_from_the_bundled_copy():
    config = load_config(MODEL_DIR / "config.yaml")
    adapter_config = json.loads((MODEL_DIR / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == hub_id(config.model.checkpoint) == BUNDLED_HUB_ID  # digest
    label_names = config.data.label_names
    adapter = PeftModel.from_pretrained(load_base_model(config.model.checkpoint, label_names), MODEL_DIR)
    sample = np.load(MODEL_DIR / PARITY_SAMPLE)  # validation reviews, encoded as the model reads them
    ids, pad = unpack_ids(sample["ids"], sample["offsets"])[:64], adapter.config.pad_token_id or 0
    probabilities = predict_ids(adapter, ids, pad)
    merged = merged_from_adapter(MODEL_DIR, config.model.checkpoint, label_names)
    np.testing.assert_allclose(probabilities, predict_ids(merged, ids, pad), atol=1e-4)  # unmerged = what is served
    assert (probabilities.argmax(1) == sample["labels"][:64]).mean() >= 0.85  # and it reads IMDb reviews
