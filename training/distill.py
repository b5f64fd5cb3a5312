"""A student distilled from the fine-tuned transformer: fewer of its layers, trained on its probabilities.

    make distill          # python -m training.train --config training/configs/imdb-minilm-student.yaml

`training.train` runs a student as any other model when its config names a `model.teacher`: the student starts from
the teacher's own merged layers (`model.student_layers`), and its loss mixes the KL divergence to the teacher's
tempered probabilities with the cross-entropy on the true labels (Hinton et al., 2015). The teacher's probabilities on
the train split are computed once, in chunks kept under the run folder (a killed run resumes); on validation they are
the teacher's parity sample's reference. Imports only torch, transformers and numpy, as `training.fit` does.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, Trainer

from serving.core.text import encode, without_truncation
from training.config import ExperimentConfig, ModelConfig, load_config
from training.data import LoadedData
from training.modeling import PARITY_SAMPLE, load_tokenizer, load_trained, predict_ids

CHUNK = 1024  # reviews per cached file of teacher probabilities


class Distillation(Trainer):
    """The Trainer with a student's loss: soft labels from `teacher_probs` in each batch, hard labels as usual."""

    def __init__(self, *args, soft_label_weight: float, temperature: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.soft_label_weight = soft_label_weight
        self.temperature = temperature

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        teacher_probs = inputs.pop("teacher_probs")
        outputs = model(**inputs)
        hard = F.cross_entropy(outputs.logits, inputs["labels"])
        t = self.temperature
        teacher = torch.log_softmax(torch.log(teacher_probs.clamp_min(1e-12)) / t, dim=-1)
        student = torch.log_softmax(outputs.logits / t, dim=-1)
        soft = F.kl_div(student, teacher, log_target=True, reduction="batchmean") * t * t  # gradients as at T=1
        loss = self.soft_label_weight * soft + (1 - self.soft_label_weight) * hard
        return (loss, outputs) if return_outputs else loss


def teacher_probabilities(teacher: PreTrainedModel, ids: list[list[int]], pad_token_id: int, cache: Path) -> np.ndarray:
    """The teacher's probabilities on `ids`, chunk by chunk, each chunk saved as it is done under `cache` in a folder
    named by the digest of `ids` (other texts or another encoding never reuse them)."""
    cache = cache / hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]
    cache.mkdir(parents=True, exist_ok=True)
    parts = []
    for number, start in enumerate(range(0, len(ids), CHUNK)):
        path = cache / f"{number:04d}.npy"
        if not path.exists():
            chunk = ids[start : start + CHUNK]
            progress = f"teacher probabilities {start + len(chunk)}/{len(ids)}"
            np.save(path, predict_ids(teacher, chunk, pad_token_id, progress=progress))
        parts.append(np.load(path))
    return np.concatenate(parts)


def with_teacher_probabilities(tokenized: dict, data: LoadedData, config: ExperimentConfig) -> dict:
    """The student's train and validation splits with a `teacher_probs` column: computed here on the train split
    (encoded as the teacher reads), the teacher's stored reference on validation."""
    teacher_dir = Path(config.model.teacher)
    teacher_config = load_config(teacher_dir / "config.yaml")
    sample = np.load(teacher_dir / PARITY_SAMPLE)
    if not np.array_equal(sample["labels"], np.asarray(data.splits["validation"]["label"])):
        raise ValueError(f"{teacher_dir / PARITY_SAMPLE} is not this data's validation split: check data.* settings")
    tokenizer = load_tokenizer(teacher_config.model.checkpoint)
    ids = encode(data.splits["train"]["text"], without_truncation(tokenizer.backend_tokenizer), teacher_config.encoding)
    teacher = load_trained(teacher_dir, teacher_config, data.label_names)
    train_probs = teacher_probabilities(teacher, ids, tokenizer.pad_token_id, config.run_dir / "teacher-probabilities")
    return {
        "train": tokenized["train"].add_column("teacher_probs", train_probs.tolist()),
        "validation": tokenized["validation"].add_column("teacher_probs", sample["reference"].tolist()),
    }


def student_loss(config: ModelConfig) -> dict:
    """What `training.fit.fit` needs to train a student: the Distillation trainer and its two settings."""
    return {
        "trainer_class": Distillation,
        "soft_label_weight": config.soft_label_weight,
        "temperature": config.temperature,
    }
