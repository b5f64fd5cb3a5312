"""Drift: what the service sees and answers, compared with a reference profile of the training data.

Per text: its length in transformer tokens, whether the transformer reads only its head and tail, the share of its
words outside the tokenizer's vocabulary, and the served answer's label and confidence. The export stores each
feature's histogram on the validation split (`reference_profile.json`, with the model); the service keeps the last
`window` texts and reports the population stability index (PSI) of each feature against it. PSI above 0.2 is the
usual sign of a shift worth a look (0.1-0.2: moderate).
"""

from __future__ import annotations

import json
import re
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from serving.core.runtime import CONFIG_FILE, TOKENIZER_FILE
from serving.core.text import EncodingConfig, clean_text, token_budget, tokenizer_from_file

PROFILE_FILE = "reference_profile.json"
WORD = re.compile(r"[^\W\d_]+")  # alphabetic words: the ones a vocabulary can miss
PSI_ALERT = 0.2


@dataclass(frozen=True)
class Feature:
    edges: tuple[float, ...]  # bins: below edges[0], [edges[0], edges[1]), ..., from edges[-1] up
    description: str


FEATURES = {
    "tokens": Feature((32, 64, 128, 192, 256, 384, 512, 768, 1024), "transformer tokens per text, before truncation"),
    "truncated": Feature((0.5,), "1 when the transformer reads only the text's head and tail"),
    "oov_rate": Feature((0.005, 0.01, 0.02, 0.05, 0.1, 0.2), "share of words that are not one vocabulary token"),
    "label": Feature((0.5, 1.5, 2.5, 3.5), "the served label's index"),
    "confidence": Feature((0.6, 0.7, 0.8, 0.9, 0.95, 0.99), "the served probability of that label"),
}


class TextStatistics:
    """The input features of texts, with the model's own tokenizer (the words it knows, the length it reads)."""

    def __init__(self, tokenizer: Tokenizer, encoding: EncodingConfig):
        self.tokenizer = tokenizer  # with no truncation of its own (`tokenizer_from_file`)
        self.vocabulary = set(tokenizer.get_vocab())
        self.readable = token_budget(tokenizer, encoding)

    @classmethod
    def for_model(cls, model_dir: str | Path) -> TextStatistics:
        info = json.loads((Path(model_dir) / CONFIG_FILE).read_text())
        return cls(tokenizer_from_file(Path(model_dir) / TOKENIZER_FILE), EncodingConfig(**info["encoding"]))

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        cleaned = [clean_text(t) for t in texts]
        encodings = self.tokenizer.encode_batch(cleaned, add_special_tokens=False)
        tokens = np.array([len(e.ids) for e in encodings], dtype=float)
        oov = []
        for text in cleaned:
            words = WORD.findall(text.lower())
            oov.append(sum(w not in self.vocabulary for w in words) / len(words) if words else 0.0)
        return {"tokens": tokens, "truncated": (tokens > self.readable).astype(float), "oov_rate": np.array(oov)}


def answer_statistics(probabilities: np.ndarray) -> dict[str, np.ndarray]:
    return {"label": probabilities.argmax(1).astype(float), "confidence": probabilities.max(1)}


def histogram(values: np.ndarray, feature: Feature) -> np.ndarray:
    """Share of `values` in each of the feature's bins."""
    counts = np.bincount(np.searchsorted(feature.edges, values, side="right"), minlength=len(feature.edges) + 1)
    return counts / max(len(values), 1)


def psi(reference: np.ndarray, current: np.ndarray, floor: float = 1e-4) -> float:
    """Population stability index: sum of (current - reference) * ln(current / reference) over the bins."""
    reference, current = np.maximum(reference, floor), np.maximum(current, floor)
    return float(np.sum((current - reference) * np.log(current / reference)))


def build_profile(statistics: dict[str, np.ndarray], source: str) -> dict:
    """The reference histograms, written with the model at export."""
    return {
        "source": source,
        "n": len(statistics["tokens"]),
        "features": {
            name: {"edges": list(f.edges), "shares": histogram(statistics[name], f).tolist()}
            for name, f in FEATURES.items()
        },
    }


def save_profile(profile: dict, path: Path) -> None:
    path.write_text(json.dumps(profile, indent=2) + "\n")


class DriftMonitor:
    """The last `window` texts' features against the reference profile; PSI per feature once `min_texts` are in."""

    def __init__(self, profile: dict, window: int = 500, min_texts: int = 100):
        self.reference = {name: np.array(f["shares"]) for name, f in profile["features"].items()}
        self.recent = {name: deque(maxlen=window) for name in FEATURES}
        self.min_texts = min_texts

    @classmethod
    def for_model(cls, model_dir: str | Path, window: int) -> DriftMonitor | None:
        path = Path(model_dir) / PROFILE_FILE
        return cls(json.loads(path.read_text()), window) if path.exists() else None

    def observe(self, statistics: dict[str, np.ndarray]) -> None:
        for name, values in statistics.items():
            self.recent[name].extend(values.tolist())

    def scores(self) -> dict[str, float]:
        """PSI per feature over the window; empty until `min_texts` texts have been seen."""
        if len(self.recent["tokens"]) < self.min_texts:
            return {}
        return {
            name: psi(self.reference[name], histogram(np.array(self.recent[name]), FEATURES[name])) for name in FEATURES
        }

    def status(self) -> dict:
        """For /health: each feature's PSI and those over the alert level, or how many texts are still missing."""
        scores = self.scores()
        if not scores:
            return {"status": f"collecting: {len(self.recent['tokens'])} of {self.min_texts} texts"}
        drifting = sorted(name for name, value in scores.items() if value > PSI_ALERT)
        return {"status": "drift" if drifting else "ok", "psi": scores, "drifting": drifting}
