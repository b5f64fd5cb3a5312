"""The hybrid model: a lexical TF-IDF model beside the transformer, combined as an ensemble or a confidence cascade.

One implementation of the decision, used where the policy is chosen (`training/lexical.py`), scored
(`training/evaluate.py`) and served (`serving/gateway.py`): the ensemble averages the two models' log-probabilities
with the lexical weight `weight`; the cascade lets the lexical model answer alone when its top-two probability margin
is at least `threshold` and sends every other text to the ensemble. With a student (a smaller transformer distilled
from the teacher), the cascade has three tiers: the texts sent onward meet the lexical + student ensemble first, which
answers those whose margin reaches `student_threshold`; only the rest reach the teacher's ensemble.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np

from serving.core.runtime import OnnxTextClassifier, softmax, top_two_margin
from serving.core.text import clean_text

LEXICAL_FILE, POLICY_FILE = "lexical.onnx.gz", "hybrid.json"  # gzip: its vocabulary compresses 2.4x
Mode = Literal["transformer", "ensemble", "cascade"]
Route = Literal["lexical", "student", "ensemble", "transformer"]
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
    """How the served answer is made: `mode`, the ensemble's lexical `weight` and the cascade's margin `threshold`;
    with a student, its ensemble's lexical weight and the margin at which that ensemble answers (cascade only)."""

    weight: float
    threshold: float
    mode: Mode = "cascade"
    student_weight: float | None = None
    student_threshold: float | None = None

    @property
    def uses_student(self) -> bool:
        return self.mode == "cascade" and self.student_threshold is not None

    def student_sure(self, lexical: np.ndarray, student: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The lexical + student ensemble's probabilities for texts sent onward, and which of them it answers."""
        probs = ensemble(lexical, student, self.student_weight or 0.0)
        return probs, top_two_margin(probs) >= (self.student_threshold or 0.0)

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

    def merge_student(
        self, lexical: np.ndarray, student: np.ndarray, onward: np.ndarray, n_texts: int
    ) -> tuple[np.ndarray, list[Route], np.ndarray]:
        """The answers so far, given the student's probabilities for the `onward` texts: those its ensemble is sure
        of answered (path `student`), and the indices the teacher must still see."""
        probs, routes = lexical.copy(), ["lexical"] * n_texts
        answered, sure = self.student_sure(lexical[onward], student)
        probs[onward[sure]] = answered[sure]
        for i in onward[sure]:
            routes[i] = "student"
        return probs, routes, onward[~sure]  # type: ignore[return-value]

    def decide(self, lexical: np.ndarray, transformer: np.ndarray, student: np.ndarray | None = None) -> np.ndarray:
        """Offline: every text's served probabilities, given every model's probabilities for all of them."""
        return self.decide_with_routes(lexical, transformer, student)[0]

    def decide_with_routes(
        self, lexical: np.ndarray, transformer: np.ndarray, student: np.ndarray | None = None
    ) -> tuple[np.ndarray, list[Route]]:
        onward = self.onward(lexical, len(lexical))
        if not self.uses_student or student is None:
            return self.merge(lexical, transformer[onward], onward, len(lexical))
        probs, routes, teacher = self.merge_student(lexical, student[onward], onward, len(lexical))
        return self.merge_teacher(probs, routes, lexical, transformer[teacher], teacher)

    def merge_teacher(
        self, probs: np.ndarray, routes: list[Route], lexical: np.ndarray, transformer: np.ndarray, teacher: np.ndarray
    ) -> tuple[np.ndarray, list[Route]]:
        """The three-tier answers completed with the teacher's probabilities for the texts the student left it."""
        served, teacher_routes = self.merge(lexical, transformer, teacher, len(probs))
        probs[teacher] = served[teacher]
        for i in teacher:
            routes[i] = teacher_routes[i]
        return probs, routes

    def with_mode(self, mode: Mode) -> HybridPolicy:
        return replace(self, mode=mode)

    def save(self, path: Path, **record) -> None:
        path.write_text(json.dumps(asdict(self) | record, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> HybridPolicy:
        saved = json.loads(Path(path).read_text())
        student = {key: saved.get(key) for key in ("student_weight", "student_threshold")}
        return cls(saved["weight"], saved["threshold"], saved["mode"], **student)


def named_student(model_dir: str | Path) -> dict[str, str] | None:
    """The student (`model_dir`, `bento_model`) a model's policy puts in its cascade (`make tiers`), if it has one."""
    path = Path(model_dir) / POLICY_FILE
    policy = json.loads(path.read_text()) if path.exists() else {}
    return policy["student"] if policy.get("student_threshold") is not None else None


TRANSFORMER_ONLY = HybridPolicy(weight=0.0, threshold=1.0, mode="transformer")  # an export without the lexical half
Transformer = Callable[[list[str]], Awaitable[list[list[float]]]]  # the batched classifier, texts in, probs out


class HybridRouter:
    """The hybrid as the API process runs it: the lexical model answers here, only the texts its policy sends onward
    reach the (batched, out-of-process) transformer, and every answer keeps its input position and its path."""

    def __init__(self, model_dir: str | Path, mode: str = "", with_student: bool = True):
        """`with_student=False`: two tiers even when the policy has a student's (its model is not at hand)."""
        model_dir = Path(model_dir)
        has_lexical = (model_dir / LEXICAL_FILE).exists()
        self.lexical = LexicalModel(model_dir / LEXICAL_FILE) if has_lexical else None
        self.policy = HybridPolicy.load(model_dir / POLICY_FILE) if has_lexical else TRANSFORMER_ONLY
        if not with_student:
            self.policy = replace(self.policy, student_weight=None, student_threshold=None)
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
        self, texts: list[str], policy: HybridPolicy, transformer: Transformer, student: Transformer | None = None
    ) -> tuple[np.ndarray, list[Route]]:
        """Lexical here; texts sent onward go to the `student` first (three tiers), the rest to the `transformer`."""
        lexical, onward = self.route(texts, policy)
        if policy.uses_student and student is not None and len(onward):
            answered = np.array(await student([texts[i] for i in onward]))
            probs, routes, teacher = policy.merge_student(lexical, answered, onward, len(texts))
            scores = np.array(await transformer([texts[i] for i in teacher])) if len(teacher) else answered[:0]
            return policy.merge_teacher(probs, routes, lexical, scores, teacher)
        scores = await transformer([texts[i] for i in onward]) if len(onward) else []
        return policy.merge(lexical, np.array(scores), onward, len(texts))

    def classify_in_process(
        self,
        texts: list[str],
        policy: HybridPolicy,
        transformer: OnnxTextClassifier,
        progress: str | None = None,
        student: OnnxTextClassifier | None = None,
    ) -> tuple[np.ndarray, list[Route]]:
        """The same decision with the transformers in this process: for explanations and offline (Spark) scoring;
        with `progress`, each transformer's share under a progress bar of that name."""
        lexical, onward = self.route(texts, policy)
        if policy.uses_student and student is not None and len(onward):
            answered = student.predict_proba([texts[i] for i in onward], progress and f"{progress} (student)")
            probs, routes, teacher = policy.merge_student(lexical, answered, onward, len(texts))
            scores = transformer.predict_proba([texts[i] for i in teacher], progress)
            return policy.merge_teacher(probs, routes, lexical, scores, teacher)
        onward_probs = transformer.predict_proba([texts[i] for i in onward], progress)
        return policy.merge(lexical, onward_probs, onward, len(texts))

    def describe(self) -> dict:
        return asdict(self.policy) | {"lexical_model": self.lexical is not None}
