"""The serving CPU picks the transformer file: int8 kernels (and so int8 speed and numerics) differ between CPU
families.

The export ships the fp32 file, at most two int8 files that passed its gate (the fastest and the most faithful,
listed in `int8.json`) and a golden set (token ids of validation reviews with the fp32 probabilities). The service
starts on fp32, the reference (ready at once: nothing to check), and meanwhile, on its own CPU, scores the golden set
with each int8 file and times the files that stay within the limits, interleaved, against fp32. It serves the most
faithful of them, or a faster one when that is at least `min_speedup` faster; fp32 stays, with the reason, when no
int8 file is both faithful and faster here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from serving.core.runtime import OnnxTextClassifier, cpu_flags, ms_per_review
from serving.core.text import pack_ids, unpack_ids


class StoredModel(Protocol):
    """What a BentoML model offers, whether declared in the service (`BentoModel`) or read from the store."""

    @property
    def path(self) -> str: ...

    @property
    def info(self): ...


FP32_FILE, GOLDEN_FILE, INT8_MANIFEST = "model.onnx", "golden.npz", "int8.json"
NO_INT8 = "no int8 file passed the export's parity gate"
# Where a self-check's verdict is kept, per store model and CPU: a writable path (the image's root is read-only).
VERDICTS = Path(tempfile.gettempdir()) / "sentiment-selfcheck"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SelfCheckLimits:
    """How far int8 may stray from fp32 on the golden set (a small set: `min_agreement` allows only a few flipped
    labels), and how much faster a file must run on this CPU to be preferred to a more faithful one."""

    min_agreement: float = 0.98
    max_mean_abs_diff: float = 0.01
    min_speedup: float = 0.10
    timing_reviews: int = 24  # golden reviews timed per pass (3 interleaved passes), while fp32 serves

    @classmethod
    def of(cls, model: StoredModel) -> SelfCheckLimits:
        """The limits the export stored with `model`: every consumer checks its int8 files as the service does."""
        return cls(**model.info.metadata["selfcheck"])


@dataclass(frozen=True)
class Int8File:
    """An int8 file that passed the export's gate; fp32 re-scores its answers with a top-two margin below
    `rescore_below` (0: never)."""

    recipe: str
    file: str
    rescore_below: float = 0.0
    export_agreement: float | None = None  # with PyTorch, on the export's gated reviews


@dataclass(frozen=True)
class SelfCheck:
    served: str  # "int8" or "fp32"
    agreement: float | None  # the served int8 file vs fp32 on the golden set, None when int8 is not served
    mean_abs_diff: float | None
    n: int
    passed: bool  # an int8 file serves
    detail: str
    finished: bool = True  # False while fp32 serves and the int8 check runs
    cpu: str = field(default_factory=cpu_flags)  # the flags that decide ORT's int8 kernels on this machine
    recipe: str | None = None  # the int8 recipe served
    files: dict[str, dict] = field(default_factory=dict)  # per file: agreement, mean |dp|, ms/review on this CPU


def save_golden(path: Path, ids: list[list[int]], fp32_probabilities: np.ndarray) -> None:
    np.savez_compressed(path, **pack_ids(ids), probabilities=fp32_probabilities.astype(np.float32))


def save_int8_files(path: Path, files: list[Int8File]) -> None:
    path.write_text(json.dumps([asdict(f) for f in files], indent=2) + "\n")


def int8_files(model_dir: Path) -> list[Int8File]:
    manifest = model_dir / INT8_MANIFEST
    return [Int8File(**f) for f in json.loads(manifest.read_text())] if manifest.exists() else []


def int8_runtime(
    model_dir: Path, int8: Int8File, fp32: OnnxTextClassifier | None, workers: int | None = None
) -> OnnxTextClassifier:
    """The int8 file as served: with `fp32` re-scoring the answers it is unsure of, where its recipe says so, and
    threaded as `fp32` is."""
    rescorer = fp32.quiet() if fp32 is not None and int8.rescore_below > 0 else None
    spin = fp32.spin if fp32 is not None else True
    return OnnxTextClassifier(
        model_dir, int8.file, workers, rescorer=rescorer, rescore_below=int8.rescore_below, spin=spin
    )


def served_runtime(model_dir: str | Path, recipe: str | None, workers: int | None = None) -> OnnxTextClassifier:
    """The runtime of the file a self-check chose (`SelfCheck.recipe`; None: fp32), built again in another process
    (the explainer beside the classifier)."""
    model_dir = Path(model_dir)
    int8 = next((f for f in int8_files(model_dir) if f.recipe == recipe), None)
    fp32 = OnnxTextClassifier(model_dir, FP32_FILE, workers) if int8 is None or int8.rescore_below > 0 else None
    return int8_runtime(model_dir, int8, fp32, workers) if int8 else fp32


def load_classifier(
    model_dir: str | Path, limits: SelfCheckLimits, workers: int | None = None, recipe: str | None = None
) -> tuple[OnnxTextClassifier, SelfCheck]:
    """The file the service would serve on this CPU, and what the check measured (evaluation, benchmark); with
    `recipe`, that file if it is faithful on this CPU, else fp32, timing nothing (Spark executors serve the file
    their driver chose: their timings would differ)."""
    fp32 = OnnxTextClassifier(model_dir, FP32_FILE, workers)
    return choose_on_this_cpu(Path(model_dir), limits, fp32, workers, recipe)


def choose_on_this_cpu(
    model_dir: Path,
    limits: SelfCheckLimits,
    fp32: OnnxTextClassifier,
    workers: int | None = None,
    recipe: str | None = None,
) -> tuple[OnnxTextClassifier, SelfCheck]:
    """Each shipped int8 file (or only `recipe`) scored on the golden set here; those within `limits` timed against
    `fp32`; the most faithful one served unless another is `min_speedup` faster; `fp32` itself when none is faithful
    and faster. A `recipe` given is served if faithful, untimed."""
    shipped = [f for f in int8_files(model_dir) if recipe in (None, f.recipe)]
    if not shipped:
        return fp32, SelfCheck("fp32", None, None, 0, False, NO_INT8)
    golden = np.load(model_dir / GOLDEN_FILE)
    ids, reference = unpack_ids(golden["ids"], golden["offsets"]), golden["probabilities"]
    runtimes, files = {}, {}
    for int8 in shipped:
        runtime = int8_runtime(model_dir, int8, fp32, workers)
        probabilities = runtime.predict_ids(ids)
        agreement = float((probabilities.argmax(1) == reference.argmax(1)).mean())
        mean_abs_diff = float(np.abs(probabilities - reference).mean())
        faithful = agreement >= limits.min_agreement and mean_abs_diff <= limits.max_mean_abs_diff
        files[int8.recipe] = {"agreement": agreement, "mean_abs_diff": mean_abs_diff, "faithful": faithful}
        if faithful:
            runtimes[int8.recipe] = runtime
    if recipe is not None:
        timed, served = {}, recipe if recipe in runtimes else "fp32"
    else:
        timed = ms_per_review({"fp32": fp32} | runtimes, ids[: limits.timing_reviews]) if runtimes else {}
        served = prefer(files, timed, limits.min_speedup)
    for name, ms in timed.items():
        files.setdefault(name, {})["ms_per_review"] = ms
    summary = "; ".join(
        f"{r}: agreement {f['agreement']:.4f}, mean |dp| {f['mean_abs_diff']:.4f}"
        + (f", {f['ms_per_review']:.1f} ms/review" if "ms_per_review" in f else "")
        for r, f in files.items()
        if r != "fp32"
    )
    measured = f"{summary} on {len(reference)} golden reviews"
    if "fp32" in timed:
        measured += f" (fp32 {timed['fp32']:.1f} ms/review)"
    if served == "fp32":
        why = "no int8 file within the limits" if not runtimes else f"no int8 file {limits.min_speedup:.0%} faster"
        log.error("int8 self-check on this CPU: %s, serving fp32: %s", why, measured)
        return fp32, SelfCheck("fp32", None, None, len(reference), False, f"{why}: {measured}", files=files)
    chosen = files[served]
    check = SelfCheck(
        "int8", chosen["agreement"], chosen["mean_abs_diff"], len(reference), True, measured, recipe=served, files=files
    )
    return runtimes[served], check


def prefer(files: dict[str, dict], ms_per_review: dict[str, float], min_speedup: float) -> str:
    """fp32, or the most faithful timed int8 file, or a less faithful one that is `min_speedup` faster than it."""
    served = "fp32"
    for recipe in sorted(set(ms_per_review) - {"fp32"}, key=lambda r: -files[r]["agreement"]):
        if ms_per_review[recipe] <= (1 - min_speedup) * ms_per_review[served]:
            served = recipe
    return served


@dataclass(frozen=True)
class CheckedModel:
    """A store model ready to serve: its tag, the runtime its self-check chose on this CPU, and what it measured."""

    tag: str
    runtime: OnnxTextClassifier
    check: SelfCheck

    @classmethod
    def load(cls, model: StoredModel, workers: int | None = None, spin: bool = True) -> CheckedModel:
        return cls.reference(model, workers, spin).checked(model, workers)

    @classmethod
    def reference(cls, model: StoredModel, workers: int | None = None, spin: bool = True) -> CheckedModel:
        """The fp32 file, to serve while int8 is checked (`checked`): no golden set scored, so ready at once. The int8
        files checked later are threaded as it is."""
        fp32 = OnnxTextClassifier(model.path, FP32_FILE, workers, spin=spin)
        if not int8_files(Path(model.path)):  # the export says why (refused by its gate, or still being gated)
            why = model.info.metadata.get("int8_refused", NO_INT8)
            return cls(str(model.info.tag), fp32, SelfCheck("fp32", None, None, 0, False, why))
        running = "the int8 self-check is running: fp32 serves until then"
        return cls(str(model.info.tag), fp32, SelfCheck("fp32", None, None, 0, False, running, finished=False))

    def checked(self, model: StoredModel, workers: int | None = None, verdicts: Path = VERDICTS) -> CheckedModel:
        """This fp32 reference (`reference`) with the check's verdict: the int8 file chosen on this CPU, or this same
        fp32 runtime (not a second one). A verdict already reached for this model on a CPU with the same flags is
        kept (`verdicts`) and served again without scoring or timing anything."""
        if self.check.finished:
            return self
        kept = verdicts / f"{self.tag.replace(':', '-')}-{hashlib.sha256(cpu_flags().encode()).hexdigest()[:16]}.json"
        if kept.exists():
            check = SelfCheck(**json.loads(kept.read_text()))
            int8 = next((f for f in int8_files(Path(model.path)) if f.recipe == check.recipe), None)
            runtime = int8_runtime(Path(model.path), int8, self.runtime, workers) if int8 else self.runtime
            return replace(self, runtime=runtime, check=replace(check, detail=f"{check.detail} (kept from before)"))
        runtime, check = choose_on_this_cpu(Path(model.path), SelfCheckLimits.of(model), self.runtime, workers)
        try:
            kept.parent.mkdir(parents=True, exist_ok=True)
            kept.write_text(json.dumps(asdict(check)))
        except OSError as error:
            log.warning("the self-check's verdict could not be kept (%s): the next load checks again", error)
        return replace(self, runtime=runtime, check=check)

    def failed(self, reason: str) -> CheckedModel:
        """This reference model as final: its int8 check could not run."""
        return replace(self, check=replace(self.check, finished=True, detail=reason))

    def describe(self) -> dict:
        return asdict(self.check) | {"model": self.tag}
