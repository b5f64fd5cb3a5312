"""Build, rebuild and run the sequence classifier (PyTorch side)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import yaml
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from serving.core.text import EncodingConfig, encode, pack_ids, without_truncation
from training.config import ExperimentConfig, ModelConfig, hub_id, load_config, resolve_checkpoint


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
        dtype=torch.float32,  # also when the checkpoint is stored in fp16 (the GPU bundle's copy)
    )


def student_start(config: ModelConfig, label_names: list[str]) -> PreTrainedModel:
    """The teacher's merged model cut to the encoder layers `student_layers`: the student starts from the teacher's
    own layers, embeddings and head, so only a small adapter on top of them needs storing."""
    teacher_dir = Path(config.teacher)
    teacher_config = load_config(teacher_dir / "config.yaml")
    model = load_trained(teacher_dir, teacher_config, label_names)
    encoder = getattr(model, model.base_model_prefix).encoder
    encoder.layer = torch.nn.ModuleList(encoder.layer[i] for i in config.student_layers)
    model.config.num_hidden_layers = len(config.student_layers)
    return model


def starting_model(config: ModelConfig, label_names: list[str]) -> PreTrainedModel:
    """What training starts from and what an adapter is applied to: the base encoder with a fresh classification
    head, or for a student its teacher cut to fewer layers."""
    if config.teacher:
        return student_start(config, label_names)
    return load_base_model(config.checkpoint, label_names)


def build_model(config: ModelConfig, label_names: list[str]) -> PreTrainedModel:
    """The starting model, wrapped in LoRA unless `method` is `full`."""
    model = starting_model(config, label_names)
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
    """Save the LoRA adapter naming its base as the Hub knows it (no machine path in a committed file)."""
    model.save_pretrained(directory)
    (directory / "README.md").unlink(missing_ok=True)  # peft's empty card template; `make report` renders ours
    config_path = directory / "adapter_config.json"
    adapter_config = json.loads(config_path.read_text())
    adapter_config["base_model_name_or_path"] = hub_id(checkpoint)
    config_path.write_text(json.dumps(adapter_config, indent=2) + "\n")


def save_trained(model: PreTrainedModel, config: ExperimentConfig, model_dir: Path) -> None:
    """`models/<name>/`: the LoRA adapter (or the full model) and the config that rebuilds it."""
    model_dir.mkdir(parents=True, exist_ok=True)
    if config.model.method == "lora":
        save_adapter(model, model_dir, config.model.checkpoint)
    else:
        model.save_pretrained(model_dir)
    (model_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def merged_from_adapter(adapter_dir: Path, checkpoint: str, label_names: list[str]) -> PreTrainedModel:
    """Rebuild the merged model exactly: base weights + committed adapter, LoRA folded in."""
    base = load_base_model(checkpoint, label_names)
    return PeftModel.from_pretrained(base, adapter_dir).merge_and_unload().eval()


def load_trained(model_dir: Path, config: ExperimentConfig, label_names: list[str]) -> PreTrainedModel:
    """What `save_trained` wrote, ready to predict: base + adapter merged (LoRA) or the full model."""
    if config.model.method == "lora":
        start = starting_model(config.model, label_names)
        return PeftModel.from_pretrained(start, model_dir).merge_and_unload().eval()
    return AutoModelForSequenceClassification.from_pretrained(model_dir).eval()


@torch.inference_mode()
def predict_ids(
    model: PreTrainedModel,
    ids: list[list[int]],
    pad_token_id: int,
    batch_size: int = 64,
    progress: str | None = None,
    on: torch.device | None = None,
) -> np.ndarray:
    """Class probabilities for encoded texts, batching length-sorted sequences so padding costs little; with
    `progress`, under a progress bar of that name; on `on` (default: the GPU if there is one)."""
    on = on or device()
    model = model.to(on).eval()
    order = np.argsort([len(x) for x in ids])
    probs = np.zeros((len(ids), model.config.num_labels), dtype=np.float32)
    bar = tqdm(total=len(ids), desc=progress, unit="review", disable=progress is None)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(ids[i]) for i in chunk)
        input_ids = torch.full((len(chunk), width), pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
            attention_mask[row, : len(ids[i])] = 1
        logits = model(input_ids=input_ids.to(on), attention_mask=attention_mask.to(on)).logits.float()
        probs[chunk] = torch.softmax(logits, dim=-1).cpu().numpy()
        bar.update(len(chunk))
    bar.close()
    return probs


def predict_proba(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    encoding: EncodingConfig,
    batch_size: int = 64,
    progress: str | None = None,
) -> np.ndarray:
    """Class probabilities for `texts`, encoded exactly as the service encodes them."""
    ids = encode(texts, without_truncation(tokenizer.backend_tokenizer), encoding)
    return predict_ids(model, ids, tokenizer.pad_token_id, batch_size, progress)


PARITY_SAMPLE = "parity_sample.npz"


def stored_or_predicted(
    model: PreTrainedModel,
    ids: list[list[int]],
    pad_token_id: int,
    stored: np.ndarray | None,
    spot_check: int = 64,
    tolerance: float = 1e-4,
) -> np.ndarray:
    """`model`'s probabilities on `ids` (fp32, CPU): the `stored` ones (a parity sample's `reference`) when the model
    here reproduces them within `tolerance` on `spot_check` random rows, else computed here on all of them."""
    cpu = torch.device("cpu")
    if stored is not None and len(stored) == len(ids):
        rows = np.random.default_rng(0).choice(len(ids), min(spot_check, len(ids)), replace=False)
        drift = float(np.abs(predict_ids(model, [ids[i] for i in rows], pad_token_id, on=cpu) - stored[rows]).max())
        if drift <= tolerance:
            print(f"PyTorch reference: the stored one, reproduced here on {len(rows)} reviews (max |dp| {drift:.1e})")
            return stored
        print(f"WARNING: the stored PyTorch reference is not this model's (max |dp| {drift:.1e}): computing it here")
    return predict_ids(model, ids, pad_token_id, progress="PyTorch reference", on=cpu)


def save_parity_sample(
    texts: list[str],
    labels: list[int],
    tokenizer: PreTrainedTokenizerBase,
    encoding: EncodingConfig,
    model: PreTrainedModel,
    path: Path,
) -> None:
    """The validation split as token ids beside the model, with the (merged) model's own probabilities on it in fp32
    on CPU: the export's parity gate needs no dataset, and no pass of PyTorch over it (it spot-checks them)."""
    ids = encode(texts, without_truncation(tokenizer.backend_tokenizer), encoding)
    reference = predict_ids(model, ids, tokenizer.pad_token_id, progress="PyTorch reference", on=torch.device("cpu"))
    np.savez_compressed(path, **pack_ids(ids), labels=np.asarray(labels, dtype=np.int8), reference=reference)
