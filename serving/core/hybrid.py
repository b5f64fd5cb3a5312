"""The hybrid model: a lexical TF-IDF model beside the transformer, combined as an ensemble or a confidence cascade.

One implementation of the decision, used where the policy is chosen (`training/lexical.py`), scored
(`training/evaluate.py`) and served (`service.py`): the ensemble averages the two models' log-probabilities with the
lexical weight `weight`; the cascade lets the lexical model answer alone when its top-two probability margin is at
least `threshold` and sends every other text to the ensemble.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from serving.core.runtime import OnnxTextClassifier, softmax, top_two_margin
from serving.core.text import clean_text

LEXICAL_FILE, POLICY_FILE = "lexical.onnx.gz", "hybrid.json"  # gzip: its vocabulary compresses 2.4x
Mode = Literal["transformer", "ensemble", "cascade"]
Route = Literal["lexical", "ensemble", "transformer"]
# Words as the lexical model sees them, in a regex that Python (scikit-learn) and RE2 (ONNX Runtime) read alike.
TOKEN_PATTERN = r"[a-z0-9_]{2,}"


def lexical_text(text: str) -> str:
    """Cleaned and lower-cased in Python, so training and serving fold case the same way."""
    return clean_text(text).lower()


class LexicalModel:
    """The lexical model as the service runs it: its ONNX export (skl2onnx), texts in, class probabilities out."""

    def __init__(self, path: str | Path):
        import onnxruntime as ort  # here: BentoML's arbiter imports this module and never runs a model

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # a few microseconds of work: threads would cost more than they save
        graph = gzip.decompress(Path(path).read_bytes())
        self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])

    def predict_proba(self, texts: list[str], chunk: int = 256) -> np.ndarray:
        """Probabilities of one or more texts, in chunks: ONNX Runtime's TF-IDF output is dense (~0.6 MB per text)."""
        column = np.array([lexical_text(t) for t in texts], dtype=object).reshape(-1, 1)
        parts = [
            self.session.run(["probabilities"], {"text": column[start : start + chunk]})[0]
            for start in range(0, len(column), chunk)
        ]
        return np.concatenate(parts).astype(np.float64)


def ensemble(lexical: np.ndarray, transformer: np.ndarray, weight: float) -> np.ndarray:
    """Weighted average of log-probabilities (a product of experts), renormalised."""
    eps = np.finfo(np.float64).tiny
    logits = weight * np.log(np.maximum(lexical, eps)) + (1 - weight) * np.log(np.maximum(transformer, eps))
    return softmax(logits)


@dataclass(frozen=True)
class HybridPolicy:
    """How the served answer is made: `mode`, the ensemble's lexical `weight` and the cascade's margin `threshold`."""

    weight: float
    threshold: float
    mode: Mode = "cascade"

    def onward(self, lexical: np.ndarray | None, n_texts: int) -> np.ndarray:
        """Indices of the texts the transformer must see: all of them, except in the cascade where the lexical model
        answers those whose top-two margin reaches the threshold."""
        if self.mode != "cascade":
            return np.arange(n_texts)
        return np.flatnonzero(top_two_margin(lexical) < self.threshold)

    def merge(
        self, lexical: np.ndarray | None, transformer: np.ndarray, onward: np.ndarray, n_texts: int
    ) -> tuple[np.ndarray, list[Route]]:
        """Every text's probabilities and path, given the transformer's probabilities for the `onward` texts."""
        probs = lexical.copy() if lexical is not None else np.zeros((n_texts, transformer.shape[1]))
        routes: list[Route] = ["lexical"] * n_texts
        route: Route = "transformer" if self.mode == "transformer" else "ensemble"
        if len(onward):
            probs[onward] = (
                transformer if route == "transformer" else ensemble(lexical[onward], transformer, self.weight)
            )
            for i in onward:
                routes[i] = route
        return probs, routes

    def decide(self, lexical: np.ndarray, transformer: np.ndarray) -> np.ndarray:
        """Offline: every text's served probabilities, given both models' probabilities for all of them."""
        onward = self.onward(lexical, len(lexical))
        return self.merge(lexical, transformer[onward], onward, len(lexical))[0]

    def with_mode(self, mode: Mode) -> HybridPolicy:
        return HybridPolicy(self.weight, self.threshold, mode)

    def save(self, path: Path, **record) -> None:
        path.write_text(json.dumps(asdict(self) | record, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> HybridPolicy:
        saved = json.loads(Path(path).read_text())
        return cls(saved["weight"], saved["threshold"], saved["mode"])


TRANSFORMER_ONLY = HybridPolicy(weight=0.0, threshold=1.0, mode="transformer")  # an export without the lexical half
Transformer = Callable[[list[str]], Awaitable[list[list[float]]]]  # the batched classifier, texts in, probs out


class HybridRouter:
    """The hybrid as the API process runs it: the lexical model answers here, only the texts its policy sends onward
    reach the (batched, out-of-process) transformer, and every answer keeps its input position and its path."""

    def __init__(self, model_dir: str | Path, mode: str = ""):
        model_dir = Path(model_dir)
        has_lexical = (model_dir / LEXICAL_FILE).exists()
        self.lexical = LexicalModel(model_dir / LEXICAL_FILE) if has_lexical else None
        self.policy = HybridPolicy.load(model_dir / POLICY_FILE) if has_lexical else TRANSFORMER_ONLY
        self.policy = self.policy_for(mode or self.policy.mode)  # type: ignore[arg-type]

    def policy_for(self, mode: Mode | None) -> HybridPolicy:
        """The served policy in `mode` (None: the default); ValueError when the mode needs a missing lexical model."""
        if mode and mode != "transformer" and self.lexical is None:
            raise ValueError(f"mode {mode!r} needs the hybrid's lexical model, which this export lacks")
        return self.policy.with_mode(mode) if mode else self.policy

    def route(self, texts: list[str], policy: HybridPolicy) -> tuple[np.ndarray | None, np.ndarray]:
        """The lexical model's probabilities (None in transformer mode) and the indices the transformer must see."""
        lexical = self.lexical.predict_proba(texts) if policy.mode != "transformer" else None
        return lexical, policy.onward(lexical, len(texts))

    async def classify(
        self, texts: list[str], policy: HybridPolicy, transformer: Transformer
    ) -> tuple[np.ndarray, list[Route]]:
        lexical, onward = self.route(texts, policy)
        scores = await transformer([texts[i] for i in onward]) if len(onward) else []
        return policy.merge(lexical, np.array(scores), onward, len(texts))

    def classify_in_process(
        self, texts: list[str], policy: HybridPolicy, transformer: OnnxTextClassifier, progress: str | None = None
    ) -> tuple[np.ndarray, list[Route]]:
        """The same decision with the transformer in this process: for explanations and offline (Spark) scoring;
        with `progress`, the transformer's share under a progress bar of that name."""
        lexical, onward = self.route(texts, policy)
        onward_probs = transformer.predict_proba([texts[i] for i in onward], progress)
        return policy.merge(lexical, onward_probs, onward, len(texts))

    def describe(self) -> dict:
        return asdict(self.policy) | {"lexical_model": self.lexical is not None}
