"""Build, rebuild and run the sequence classifier (PyTorch side)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from training.config import ModelConfig, resolve_checkpoint
from training.text import EncodingConfig, encode, without_truncation


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_tokenizer(checkpoint: str) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(resolve_checkpoint(checkpoint))


def load_base_model(checkpoint: str, label_names: list[str]) -> PreTrainedModel:
    return AutoModelForSequenceClassification.from_pretrained(
        resolve_checkpoint(checkpoint),
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)},
    )


def build_model(config: ModelConfig, label_names: list[str]) -> PreTrainedModel:
    """The base encoder with a fresh classification head, wrapped in LoRA unless `method` is `full`."""
    model = load_base_model(config.checkpoint, label_names)
    if config.method == "full":
        return model
    if config.method != "lora":
        raise ValueError(f"model.method must be 'lora' or 'full', not {config.method!r}")
    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS,  # also keeps the new classifier head trainable and saved with the adapter
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.lora_target_modules,
    )
    return get_peft_model(model, lora)


def save_adapter(model: PeftModel, directory: Path, checkpoint: str) -> None:
    """Save the LoRA adapter with a portable base reference (no machine path in a committed file)."""
    model.save_pretrained(directory)
    (directory / "README.md").unlink(missing_ok=True)  # peft's empty model-card template; MODEL_CARD.md is ours
    config_path = directory / "adapter_config.json"
    adapter_config = json.loads(config_path.read_text())
    adapter_config["base_model_name_or_path"] = checkpoint
    config_path.write_text(json.dumps(adapter_config, indent=2) + "\n")


def merged_from_adapter(adapter_dir: Path, checkpoint: str, label_names: list[str]) -> PreTrainedModel:
    """Rebuild the merged model exactly: base weights + committed adapter, LoRA folded in."""
    base = load_base_model(checkpoint, label_names)
    return PeftModel.from_pretrained(base, adapter_dir).merge_and_unload().eval()


@torch.inference_mode()
def predict_proba(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    encoding: EncodingConfig,
    batch_size: int = 64,
) -> np.ndarray:
    """Class probabilities for `texts`, batching length-sorted texts so padding costs little."""
    model = model.to(device()).eval()
    ids = encode(texts, without_truncation(tokenizer.backend_tokenizer), encoding)
    order = np.argsort([len(x) for x in ids])
    probs = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = tokenizer.pad({"input_ids": [ids[i] for i in chunk]}, return_tensors="pt").to(device())
        logits = model(**batch).logits.float()
        probs[chunk] = torch.softmax(logits, dim=-1).cpu().numpy()
    return probs
