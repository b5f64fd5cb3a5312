"""The parity gate: every file (fp32 and each int8 candidate) scored and timed against PyTorch on the parity sample,
the int8 files that ship, and the table (PARITY.md) that shows why."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from export.quantize import RECIPES, quantize
from serving.core.runtime import OnnxTextClassifier, ms_per_review, top_two_margin
from serving.core.selfcheck import FP32_FILE, Int8File, int8_runtime

if TYPE_CHECKING:
    from export.export import ExportConfig

MIN_GATE_REVIEWS = 2000  # below this, one review is over 0.05% of the gate: the report and /health say so


class ParityError(RuntimeError):
    """The fp32 export disagrees with the PyTorch model: the export is broken, nothing is imported."""


def gate_size_note(export: ExportConfig, reviews: int) -> str | None:
    if export.gate_samples >= MIN_GATE_REVIEWS:
        return None
    return (
        f"the parity gate judged {export.gate_samples} reviews (of a parity sample of {reviews}; "
        f"{MIN_GATE_REVIEWS} or more make one review at most 0.05%)"
    )


def parity_report(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    reference_accuracy = float((reference.argmax(1) == labels).mean())
    accuracy = float((candidate.argmax(1) == labels).mean())
    difference = np.abs(reference - candidate)
    return {
        "agreement": float((reference.argmax(1) == candidate.argmax(1)).mean()),
        "accuracy": accuracy,
        "reference_accuracy": reference_accuracy,
        "accuracy_drop": reference_accuracy - accuracy,
        "mean_abs_prob_diff": float(difference.mean()),
        "max_abs_prob_diff": float(difference.max()),
        "n": len(labels),
    }


def gate_failures(file: str, report: dict[str, float], export: ExportConfig) -> list[str]:
    """fp32 must reproduce PyTorch's probabilities and labels (else the export is broken); int8 must agree closely."""
    if file == "fp32":
        failures = []
        if report["max_abs_prob_diff"] > export.fp32_max_abs_diff:
            failures.append(f"max |dp| {report['max_abs_prob_diff']:.2g} > {export.fp32_max_abs_diff}")
        if report["agreement"] < export.fp32_min_agreement:
            failures.append(f"agreement {report['agreement']:.4f} < {export.fp32_min_agreement}")
        return failures
    failures = []
    if report["agreement"] < export.min_agreement:
        failures.append(f"agreement {report['agreement']:.4f} < {export.min_agreement}")
    if report["accuracy_drop"] > export.max_accuracy_drop:
        failures.append(
            f"accuracy drop {100 * report['accuracy_drop']:.2f} points > {100 * export.max_accuracy_drop:.2f}"
        )
    return failures


def rescore_margin(reference: np.ndarray, candidate: np.ndarray, step: float) -> float:
    """The smallest multiple of `step` above the top-two margin of every answer `candidate` flipped."""
    flipped = candidate.argmax(1) != reference.argmax(1)
    worst = float(top_two_margin(candidate)[flipped].max(initial=0.0))
    return round((np.floor(worst / step) + 1) * step, 6)


def evaluate_files(
    onnx_dir: Path, reference: np.ndarray, ids: list[list[int]], labels: np.ndarray, export: ExportConfig
) -> dict[str, dict]:
    """Parity and speed of fp32 and every int8 candidate; each entry says whether it passed the gate."""
    held_out = len(ids) - export.search_samples
    gated, search = slice(0, min(export.gate_samples or held_out, held_out)), slice(held_out, len(ids))
    fp32 = OnnxTextClassifier(onnx_dir, FP32_FILE)
    runtimes, results = {"fp32": fp32}, {}
    for name in ["fp32", *export.int8_candidates]:
        runtime, report = fp32, {"file": FP32_FILE}
        if name != "fp32":
            recipe, report = RECIPES[name], {"file": f"{name}.onnx"}
            quantize(recipe, onnx_dir / FP32_FILE, onnx_dir / report["file"], ids[search])
            runtime = OnnxTextClassifier(onnx_dir, report["file"])
            if recipe.rescore_uncertain:  # the margin from the held-out reviews, then the file as the service runs it
                searched = runtime.predict_ids(ids[search], progress=f"{name}: margin search")
                margin = rescore_margin(reference[search], searched, export.rescore_step)
                runtime = int8_runtime(onnx_dir, Int8File(name, report["file"], margin), fp32)
        probabilities = runtime.predict_ids(ids[gated], progress=f"{name}: parity gate")
        report |= parity_report(reference[gated], probabilities, labels[gated])
        if runtime.rescorer is not None:
            report["rescore_below"] = runtime.rescore_below
            report["rescored_share"] = float((top_two_margin(probabilities) < runtime.rescore_below).mean())
        report["size_mb"] = round((onnx_dir / report["file"]).stat().st_size / 1e6, 1)
        report["failures"] = gate_failures(name, report, export)
        runtimes[name], results[name] = runtime, report
        status = "passed" if not report["failures"] else "FAILED: " + "; ".join(report["failures"])
        print(
            f"{name}: agreement {report['agreement']:.4f}, accuracy {report['accuracy']:.4f} "
            f"(PyTorch {report['reference_accuracy']:.4f}), {status}",
            flush=True,
        )
    timed = ms_per_review(runtimes, ids[: export.timing_samples], export.timing_rounds)
    for name, report in results.items():
        report["ms_per_review"], report["x_fp32"] = timed[name], timed[name] / timed["fp32"]
        print(f"{name}: {timed[name]:.1f} ms/review ({report['x_fp32']:.2f}x fp32)")
    return results


def choose(results: dict[str, dict]) -> tuple[list[str], str | None]:
    """The int8 files to ship: the fastest that passed and, if another, the one that passed with the highest
    agreement (none: fp32 is served), and a warning when int8 was refused."""
    if results["fp32"]["failures"]:
        raise ParityError("fp32 export disagrees with PyTorch: " + "; ".join(results["fp32"]["failures"]))
    passed = [name for name, r in results.items() if name != "fp32" and not r["failures"]]
    if passed:
        fastest = min(passed, key=lambda name: results[name]["ms_per_review"])
        faithful = max(passed, key=lambda name: results[name]["agreement"])
        return list(dict.fromkeys([fastest, faithful])), None
    refused = "; ".join(f"{n}: {', '.join(r['failures'])}" for n, r in results.items() if n != "fp32")
    return [], f"no int8 file passed the parity gate on this CPU, fp32 is served ({refused})"


def shipped_files(results: dict[str, dict], names: list[str]) -> list[Int8File]:
    return [
        Int8File(name, results[name]["file"], results[name].get("rescore_below", 0.0), results[name]["agreement"])
        for name in names
    ]


def parity_table(report: dict) -> str:
    """reports/export/PARITY.md: the per-recipe table that chose the files shipped."""
    rows = [
        "| file | agreement | accuracy (PyTorch) | drop, points | mean abs dp | ms/review | x fp32 | MB | gate |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in report["files"].items():
        verdict = "passed" if not r["failures"] else "failed: " + "; ".join(r["failures"])
        shipped = " (shipped)" if name in report["shipped"] else ""
        rescored = ""
        if "rescore_below" in r:
            rescored = f", fp32 below margin {r['rescore_below']:g} ({100 * r['rescored_share']:.1f}%)"
        rows.append(
            f"| {name}{shipped}{rescored} | {r['agreement']:.4f} | {r['accuracy']:.4f} ({r['reference_accuracy']:.4f}) "
            f"| {100 * r['accuracy_drop']:.2f} | {r['mean_abs_prob_diff']:.4f} | {r['ms_per_review']:.1f} "
            f"| {r['x_fp32']:.2f} | {r['size_mb']} | {verdict} |"
        )
    gate = report["gate"]
    return (
        f"# Export parity: {report['model']}\n\nGenerated by `make export` (`export/export.py`) on a CPU with "
        f"`{report['cpu']}`. Each file scored against PyTorch fp32 on {r['n']} validation reviews (the "
        f"{report['search_samples']} after them are held out: calibration and rescoring margins are chosen there); "
        f"int8 gate: agreement >= {gate['min_agreement']}, accuracy drop <= {100 * gate['max_accuracy_drop']:.1f} "
        f"point. ms/review: one review at a time on all cores, the median of {report['timing_rounds']} interleaved "
        f"passes over {report['timing_samples']} reviews. Rescored files answer in fp32 where their top-two margin "
        f"is below the margin (share of the gated reviews in brackets). The service re-checks the shipped files on its "
        f"own CPU and serves one of them (`/health` `selfcheck`).\n\n"
        + "\n".join(rows)
        + "\n"
        + (f"\n**Warning**: {report['warning']}\n" if report["warning"] else "")
    )
