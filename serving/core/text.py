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
# A character a reader sees: not whitespace, not a control character, not one of Unicode's invisible fillers,
# joiners, marks or format characters. A text needs one to be read at all; the API's schema, the web UI and Spark
# scoring use this one rule. Written with \uXXXX escapes so JSON Schema (ECMA), Python and pydantic (Rust) read it
# alike.
VISIBLE = (
    r"[^\s\u0000-\u001f\u007f-\u00a0\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u2000-\u200f"
    r"\u2028-\u202f\u205f-\u206f\u3000\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufffb]"
)
_VISIBLE = re.compile(VISIBLE)


def readable(text: str) -> bool:
    """Whether `text` has at least one visible character (`VISIBLE`)."""
    return _VISIBLE.search(text) is not None


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


def special_ids(tokenizer: Tokenizer) -> list[int]:
    """The ids the model's template puts around a text, e.g. [CLS] [SEP] or <s> </s>."""
    return tokenizer.encode("", add_special_tokens=True).ids


def token_budget(tokenizer: Tokenizer, config: EncodingConfig) -> int:
    """How many of a text's own tokens `encode` keeps: `max_length` less the model's special tokens. Computed here
    only, so that the encoding, the explained text and the drift monitor's truncation count never disagree."""
    return config.max_length - len(special_ids(tokenizer))


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
    specials = special_ids(tokenizer)
    prefix, suffix = specials[:1], specials[1:]
    budget = token_budget(tokenizer, config)
    encodings = tokenizer.encode_batch([clean_text(t) for t in texts], add_special_tokens=False)
    return [prefix + _truncate(e.ids, budget, config) + suffix for e in encodings]


def visible_text(text: str, tokenizer: Tokenizer, config: EncodingConfig) -> tuple[str, bool]:
    """The cleaned text cut to what `encode` keeps (head and tail joined by a space), and whether anything was cut:
    what an explanation of the transformer should show."""
    cleaned = clean_text(text)
    offsets = tokenizer.encode(cleaned, add_special_tokens=False).offsets
    kept = _truncate(list(range(len(offsets))), token_budget(tokenizer, config), config)
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
