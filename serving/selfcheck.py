"""Parity checked on the CPU that serves: int8 kernels (and so int8 numerics) differ between CPU families.

The export ships the fp32 file, the int8 file that passed its gate, and a golden set (token ids of validation
reviews with the fp32 probabilities). The service starts on fp32, the reference (ready in a fraction of a second),
and meanwhile scores the golden set with int8 on its own CPU: within the limits int8 takes over; below them it logs
an error and fp32 stays.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from serving.runtime import OnnxTextClassifier, cpu_flags
from serving.text import pack_ids, unpack_ids
from serving.variants import StoredModel

FP32_FILE, INT8_FILE, GOLDEN_FILE = "model.onnx", "model.int8.onnx", "golden.npz"
VARIANT_FILES = {"int8": INT8_FILE, "fp32": FP32_FILE}
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SelfCheckLimits:
    """How far int8 may stray from fp32 on the golden set (64 reviews: one flipped label is 1.6%)."""

    min_agreement: float = 0.98
    max_mean_abs_diff: float = 0.01


@dataclass(frozen=True)
class SelfCheck:
    served: str  # "int8" or "fp32"
    agreement: float | None  # int8 vs fp32 on the golden set, None when no int8 file shipped
    mean_abs_diff: float | None
    n: int
    passed: bool
    detail: str
    finished: bool = True  # False while fp32 serves and the int8 check runs
    cpu: str = field(default_factory=cpu_flags)  # the flags that decide ORT's int8 kernels on this machine


def save_golden(path: Path, ids: list[list[int]], fp32_probabilities: np.ndarray) -> None:
    np.savez_compressed(path, **pack_ids(ids), probabilities=fp32_probabilities.astype(np.float32))


def load_classifier(
    model_dir: str | Path, limits: SelfCheckLimits, workers: int | None = None
) -> tuple[OnnxTextClassifier, SelfCheck]:
    """int8 if it ships and matches fp32 on this CPU, else fp32; and what the check measured."""
    model_dir = Path(model_dir)
    if not (model_dir / INT8_FILE).exists():
        fp32 = OnnxTextClassifier(model_dir, FP32_FILE, workers)
        return fp32, SelfCheck("fp32", None, None, 0, False, "no int8 file passed the export's parity gate")
    int8, check = check_int8(model_dir, limits, workers)
    return (int8 if int8 is not None else OnnxTextClassifier(model_dir, FP32_FILE, workers)), check


def check_int8(
    model_dir: Path, limits: SelfCheckLimits, workers: int | None = None
) -> tuple[OnnxTextClassifier | None, SelfCheck]:
    """The int8 file scored on the golden set on this CPU: its runtime if within `limits` (else None), and what the
    check measured."""
    golden = np.load(model_dir / GOLDEN_FILE)
    int8 = OnnxTextClassifier(model_dir, INT8_FILE, workers)
    reference = golden["probabilities"]
    probabilities = int8.predict_ids(unpack_ids(golden["ids"], golden["offsets"]))
    agreement = float((probabilities.argmax(1) == reference.argmax(1)).mean())
    mean_abs_diff = float(np.abs(probabilities - reference).mean())
    passed = agreement >= limits.min_agreement and mean_abs_diff <= limits.max_mean_abs_diff
    measured = f"agreement {agreement:.4f} (min {limits.min_agreement}), mean |dp| {mean_abs_diff:.4f} "
    measured += f"(max {limits.max_mean_abs_diff}) on {len(reference)} golden reviews"
    check = SelfCheck("int8" if passed else "fp32", agreement, mean_abs_diff, len(reference), passed, measured)
    if passed:
        return int8, check
    log.error("int8 self-check failed on this CPU, serving fp32: %s", measured)
    return None, check


@dataclass(frozen=True)
class CheckedModel:
    """A store model ready to serve: its tag, the runtime its self-check chose on this CPU, and what it measured."""

    tag: str
    runtime: OnnxTextClassifier
    check: SelfCheck

    @classmethod
    def load(cls, model: StoredModel, workers: int | None = None) -> CheckedModel:
        limits = SelfCheckLimits(**model.info.metadata["selfcheck"])
        return cls(str(model.info.tag), *load_classifier(model.path, limits, workers))

    @classmethod
    def reference(cls, model: StoredModel, workers: int | None = None) -> CheckedModel:
        """The fp32 file, to serve while int8 is checked (`load`): no golden set scored, so ready at once."""
        if not (Path(model.path) / INT8_FILE).exists():
            return cls.load(model, workers)  # fp32 is final: nothing to check
        running = "the int8 self-check is running: fp32 serves until then"
        check = SelfCheck("fp32", None, None, 0, False, running, finished=False)
        return cls(str(model.info.tag), OnnxTextClassifier(model.path, FP32_FILE, workers), check)

    def checked(self, model: StoredModel, workers: int | None = None) -> CheckedModel:
        """This fp32 reference (`reference`) with the int8 check's verdict: int8 if it passed on this CPU, else this
        same fp32 runtime (not a second one)."""
        limits = SelfCheckLimits(**model.info.metadata["selfcheck"])
        int8, check = check_int8(Path(model.path), limits, workers)
        return replace(self, runtime=int8 if int8 is not None else self.runtime, check=check)

    def failed(self, reason: str) -> CheckedModel:
        """This reference model as final: its int8 check could not run."""
        return replace(self, check=replace(self.check, finished=True, detail=reason))

    def describe(self) -> dict:
        return asdict(self.check) | {"model": self.tag}
