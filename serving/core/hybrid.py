"""The hybrid model: a lexical TF-IDF model beside the transformer, combined as an ensemble or a confidence cascade.

One implementation of the decision, used where the policy is chosen (`training/lexical.py`), scored
(`training/evaluate.py`) and served (`serving/inference.py`): the ensemble averages the two models' log-probabilities
with the lexical weight `weight`; the cascade lets the lexical model answer alone when its top-two probability margin
is at least `threshold` and sends every other text to the ensemble. With a student (a smaller transformer distilled
from the teacher), the cascade has three tiers: the texts sent onward meet the lexical + student ensemble first, which
answers those whose margin reaches `student_threshold`; only the rest reach the teacher's ensemble.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np

from serving.core.runtime import OnnxTextClassifier, softmax, top_two_margin
from serving.core.text import clean_text

LEXICAL_FILE, POLICY_FILE = "lexical.onnx.gz", "hybrid.json"  # gzip: its vocabulary compresses well
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
        options.intra_op_num_threads = 1  # little work per text: threads would cost more than they save
        graph = gzip.decompress(Path(path).read_bytes())
        self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])

    def predict_proba(self, texts: list[str], chunk: int = 256) -> np.ndarray:
        """Probabilities of one or more texts, in chunks: ONNX Runtime's TF-IDF output is dense (one row as wide as
        the vocabulary per text)."""
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
Tier = Literal["student", "teacher"]


class Cascade:
    """One request's texts through the tiers, a step at a time, with no model call of its own: `next_tier` names the
    transformer that must see which texts next, `answer` takes its probabilities for them, and `result` is every
    text's answer and path. The caller runs the models (out of process in the service, in process offline), so the
    decision stays one pure implementation."""

    def __init__(self, policy: HybridPolicy, lexical: np.ndarray | None, n_texts: int, with_student: bool):
        self.policy, self.lexical, self.n_texts = policy, lexical, n_texts
        self.onward = policy.onward(lexical, n_texts)
        self.after_student: tuple[np.ndarray, list[Route]] | None = None
        self.tier: Tier | None = None
        self.answers: tuple[np.ndarray, list[Route]] | None = None
        if len(self.onward):
            self.tier = "student" if with_student and policy.uses_student else "teacher"
        else:  # the lexical model answered every text
            self.answers = policy.merge(lexical, np.empty((0, lexical.shape[1])), self.onward, n_texts)  # type: ignore[union-attr]

    def next_tier(self) -> tuple[Tier, np.ndarray] | None:
        """The tier to ask next and the indices of the texts it must answer; None once every text has its answer."""
        return (self.tier, self.onward) if self.tier else None

    def answer(self, probabilities: np.ndarray) -> None:
        """The asked tier's probabilities for the texts `next_tier` named, in that order."""
        if self.tier == "student":
            probs, routes, teacher = self.policy.merge_student(self.lexical, probabilities, self.onward, self.n_texts)  # type: ignore[arg-type]
            if len(teacher):
                self.after_student, self.onward, self.tier = (probs, routes), teacher, "teacher"
            else:
                self.answers, self.tier = (probs, routes), None
            return
        if self.after_student:
            self.answers = self.policy.merge_teacher(*self.after_student, self.lexical, probabilities, self.onward)  # type: ignore[arg-type]
        else:
            self.answers = self.policy.merge(self.lexical, probabilities, self.onward, self.n_texts)
        self.tier = None

    @property
    def result(self) -> tuple[np.ndarray, list[Route]]:
        """Every text's probabilities and path, once no tier is waiting."""
        if self.answers is None:
            raise RuntimeError(f"the cascade still waits for its {self.tier}")
        return self.answers


class HybridRouter:
    """A model version's hybrid: its lexical model and policy. `cascade` runs the lexical model on a request's texts;
    only the texts its policy sends onward reach a transformer, and every answer keeps its input position and path."""

    def __init__(self, model_dir: str | Path, mode: str = "", with_student: bool = True):
        """`with_student=False`: two tiers even when the policy has a student's (its model is not at hand)."""
        model_dir = Path(model_dir)
        has_lexical = (model_dir / LEXICAL_FILE).exists()
        self.lexical = LexicalModel(model_dir / LEXICAL_FILE) if has_lexical else None
        self.policy = HybridPolicy.load(model_dir / POLICY_FILE) if has_lexical else TRANSFORMER_ONLY
        self.with_student = with_student
        if not with_student:
            self.policy = replace(self.policy, student_weight=None, student_threshold=None)
        self.policy = self.policy_for(mode or self.policy.mode)  # type: ignore[arg-type]

    def policy_for(self, mode: Mode | None) -> HybridPolicy:
        """The served policy in `mode` (None: the default); ValueError when the mode needs a missing lexical model."""
        if mode and mode != "transformer" and self.lexical is None:
            raise ValueError(f"mode {mode!r} needs the hybrid's lexical model, which this export lacks")
        return self.policy.with_mode(mode) if mode else self.policy

    def cascade(self, texts: list[str], policy: HybridPolicy, with_student: bool = True) -> Cascade:
        """`texts` after the lexical model (none in transformer mode): what the transformers must still answer
        (`with_student=False`: two tiers, the student's model is not at hand)."""
        lexical = self.lexical.predict_proba(texts) if policy.mode != "transformer" else None
        return Cascade(policy, lexical, len(texts), self.with_student and with_student)

    def classify_in_process(
        self,
        texts: list[str],
        policy: HybridPolicy,
        transformer: OnnxTextClassifier,
        progress: str | None = None,
        student: OnnxTextClassifier | None = None,
    ) -> tuple[np.ndarray, list[Route]]:
        """The served decision with the transformers in this process: for explanations and offline (Spark) scoring;
        with `progress`, each transformer's share under a progress bar of that name."""
        cascade = self.cascade(texts, policy, with_student=student is not None)
        models = {"teacher": transformer, "student": student}
        while step := cascade.next_tier():
            tier, indices = step
            label = progress and (f"{progress} ({tier})" if tier == "student" else progress)
            cascade.answer(models[tier].predict_proba([texts[i] for i in indices], label))  # type: ignore[union-attr]
        return cascade.result

    def describe(self) -> dict:
        return asdict(self.policy) | {"lexical_model": self.lexical is not None}
