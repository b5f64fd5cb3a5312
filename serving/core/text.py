"""Text cleaning and token encoding shared by training and serving.

Only `tokenizers` is imported here, so the serving image can use the exact same code without torch
or transformers. Training passes `AutoTokenizer(...).backend_tokenizer`, serving loads `tokenizer.json`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
from tokenizers import Tokenizer

Truncation = Literal["head", "tail", "head_tail"]

_LINE_BREAK_TAGS = re.compile(r"<br\s*/?>", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")


def clean_text(text: str) -> str:
    """Drop IMDb's `<br />` tags and collapse whitespace (C1 characters become spaces or are kept as is)."""
    return _WHITESPACE.sub(" ", _LINE_BREAK_TAGS.sub(" ", text)).strip()


@dataclass(frozen=True)
class EncodingConfig:
    """How a text becomes at most `max_length` token ids.

    `head_tail` keeps the first `head_fraction` of the budget from the start of the text and the rest
    from its end: long reviews tend to state the verdict in their last sentences (Sun et al., 2019).

    `max_length` is what the model reads when it predicts (the hybrid's choices on validation, evaluation, export,
    serving); `train_max_length`, if set, is what it reads in training, the best checkpoint's validation included. A
    BERT encoder pretrained on 512 positions, fine-tuned on shorter sequences (much cheaper: attention grows with their
    square), still gains from reading more at inference.
    """

    max_length: int = 256
    truncation: Truncation = "head_tail"
    head_fraction: float = 0.25
    train_max_length: int | None = None  # None: as max_length

    def for_training(self) -> EncodingConfig:
        return replace(self, max_length=self.train_max_length or self.max_length, train_max_length=None)


def _truncate(ids: list[int], budget: int, config: EncodingConfig) -> list[int]:
    if len(ids) <= budget:
        return ids
    if config.truncation == "head":
        return ids[:budget]
    if config.truncation == "tail":
        return ids[len(ids) - budget :]
    head = int(budget * config.head_fraction)
    return ids[:head] + ids[len(ids) - (budget - head) :]


def encode(texts: list[str], tokenizer: Tokenizer, config: EncodingConfig) -> list[list[int]]:
    """Clean, tokenize and truncate `texts`; returns input ids with the model's special tokens."""
    specials = tokenizer.encode("", add_special_tokens=True).ids  # e.g. [CLS] [SEP] or <s> </s>
    prefix, suffix = specials[:1], specials[1:]
    budget = config.max_length - len(specials)
    encodings = tokenizer.encode_batch([clean_text(t) for t in texts], add_special_tokens=False)
    return [prefix + _truncate(e.ids, budget, config) + suffix for e in encodings]


def visible_text(text: str, tokenizer: Tokenizer, config: EncodingConfig) -> tuple[str, bool]:
    """The cleaned text cut to what `encode` keeps (head and tail joined by a space), and whether anything was cut:
    what an explanation of the transformer should show."""
    cleaned = clean_text(text)
    offsets = tokenizer.encode(cleaned, add_special_tokens=False).offsets
    budget = config.max_length - len(tokenizer.encode("", add_special_tokens=True).ids)
    kept = _truncate(list(range(len(offsets))), budget, config)
    if len(kept) == len(offsets):
        return cleaned, False
    cut = next((i for i in range(1, len(kept)) if kept[i] != kept[i - 1] + 1), len(kept))
    runs = [kept[:cut], kept[cut:]] if cut < len(kept) else [kept]
    return " ".join(cleaned[offsets[run[0]][0] : offsets[run[-1]][1]] for run in runs if run), True


def without_truncation(tokenizer: Tokenizer) -> Tokenizer:
    """Switch off the tokenizer's own truncation and padding: `encode` truncates, the caller pads."""
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def tokenizer_from_file(path: str | Path) -> Tokenizer:
    """Load a `tokenizer.json` ready for `encode`."""
    return without_truncation(Tokenizer.from_file(str(path)))


def pack_ids(ids: list[list[int]]) -> dict[str, np.ndarray]:
    """Token-id sequences as one flat array plus offsets: compact in .npz files (golden sets, parity samples)."""
    flat = np.concatenate([np.asarray(x, dtype=np.int64) for x in ids]) if ids else np.zeros(0, np.int64)
    dtype = np.uint16 if flat.size == 0 or flat.max() <= np.iinfo(np.uint16).max else np.int32
    return {"ids": flat.astype(dtype), "offsets": np.cumsum([0, *map(len, ids)])}


def unpack_ids(flat: np.ndarray, offsets: np.ndarray) -> list[list[int]]:
    return [flat[offsets[i] : offsets[i + 1]].tolist() for i in range(len(offsets) - 1)]
