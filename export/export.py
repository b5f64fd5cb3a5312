"""Registry model -> ONNX fp32 and int8 candidates -> parity gate -> BentoML model store.

    python -m export.export [--config FILE] [--if-missing | --fp32-first] [model_uri=models:/imdb-sentiment@champion]

Every file is scored against PyTorch on the registered model's parity sample (its validation split as token ids, with
PyTorch's probabilities on it, logged with it at registration: no dataset and no pass of PyTorch needed; a random
spot check here must reproduce those probabilities, else they are computed again). Its last `search_samples` reviews
are held out of the gate: static recipes calibrate on them and rescoring recipes choose their margin on them. fp32
must pass, else nothing is imported (exit 2). Every file is timed (median of interleaved passes); of the int8
candidates that pass, the fastest and, if another, the one with the highest agreement ship; when none passes, fp32 is
imported and served, with a warning here, in the parity report, in the BentoML model's metadata and in the service's
/health. The fp32 file always ships too, with a golden set: the service re-checks and times the int8 files on the CPU
it runs on and picks one there. Where the dataset is at hand, the drift monitor's reference profile ships too (the
validation split through the served model).

`--fp32-first` (what `make serve` runs) is for a store that lacks the model: it imports the fp32 file at once, gated on
`first_gate_samples` reviews, and starts the full export in the background (log: `<work_dir>-beside.log`); that one
imports a new version with the int8 files, and the service switches to it (`serving/reloads.py`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import bentoml
import bentoml.exceptions
import mlflow
import numpy as np
import yaml
from mlflow import MlflowClient
from optimum.exporters.onnx import main_export
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from export.quantize import DEFAULTS, RECIPES, quantize
from export.served import is_registered, register_served, served_name
from serving.core.drift import PROFILE_FILE, TextStatistics, answer_statistics, build_profile, save_profile
from serving.core.hybrid import LEXICAL_FILE, POLICY_FILE, HybridPolicy, HybridRouter
from serving.core.runtime import (
    CONFIG_FILE,
    TOKENIZER_FILE,
    OnnxTextClassifier,
    cpu_flags,
    ms_per_review,
    top_two_margin,
)
from serving.core.selfcheck import (
    FP32_FILE,
    GOLDEN_FILE,
    INT8_MANIFEST,
    Int8File,
    SelfCheckLimits,
    int8_runtime,
    save_golden,
    save_int8_files,
)
from serving.core.text import unpack_ids
from serving.settings import BENTO_MODEL
from training.config import ExperimentConfig, command_line, config_from_dict
from training.data import DataSourceError, load_data
from training.modeling import PARITY_SAMPLE, stored_or_predicted
from training.registry import HYBRID_DIR, SELECTION_METRIC, registered_with_hybrid, setup_tracking

MIN_GATE_REVIEWS = 2000  # below this, one review is over 0.05% of the gate: the report and /health say so


def gate_size_note(export: ExportConfig, reviews: int) -> str | None:
    if export.gate_samples >= MIN_GATE_REVIEWS:
        return None
    return (
        f"the parity gate judged {export.gate_samples} reviews (of a parity sample of {reviews}; "
        f"{MIN_GATE_REVIEWS} or more make one review at most 0.05%)"
    )


class ParityError(RuntimeError):
    """The fp32 export disagrees with the PyTorch model: the export is broken, nothing is imported."""


@dataclass
class ExportConfig:
    """What to export and the gate every file must pass (on >= 2,000 reviews: one review is then 0.05%)."""

    model_uri: str = "models:/imdb-sentiment@champion"
    bento_model: str = BENTO_MODEL
    int8_candidates: list[str] = field(default_factory=lambda: list(DEFAULTS))  # keys of RECIPES
    min_agreement: float = 0.995  # int8: argmax agreement with PyTorch
    max_accuracy_drop: float = 0.002  # int8: 0.2 point
    fp32_max_abs_diff: float = 1e-3  # fp32 must reproduce PyTorch's probabilities: anything more is a broken export
    fp32_min_agreement: float = 0.999  # and its labels (a near-random model's probabilities differ little when wrong)
    search_samples: int = 500  # held out of the gate: static recipes calibrate, rescoring recipes pick their margin
    gate_samples: int = 0  # reviews gated (0: all but the held-out ones)
    first_gate_samples: int = 500  # --fp32-first: the fp32 file served at once is gated on these (a broken export
    # shows on any few; the full export beside the service gates it on all)
    reference_spot_check: int = 64  # reviews on which PyTorch here must reproduce the stored reference
    reference_tolerance: float = 1e-4  # max |dp| allowed there (PyTorch fp32 on another CPU or batch: ~1e-6)
    timing_samples: int = 200
    timing_rounds: int = 3  # interleaved passes over the timing reviews; ms/review is their median
    rescore_step: float = 0.05  # rescoring margins are multiples of it
    golden_size: int = 64  # the service re-scores these at start (sized for a start within 5 s)
    profile_texts: int = 1000  # validation reviews behind the drift reference profile (0: none)
    selfcheck: SelfCheckLimits = field(default_factory=SelfCheckLimits)
    work_dir: str = "build/onnx"
    report: str = "reports/export/parity.json"

    def fitted_to(self, reviews: int) -> ExportConfig:
        """Every sample size within a parity sample of `reviews`: at most a quarter is held out for the search (at
        least one review), the rest is gated; the golden set, timing and drift profile take what there is."""
        search = min(self.search_samples, max(reviews // 4, 1))
        gated = reviews - search
        return replace(
            self,
            search_samples=search,
            gate_samples=min(self.gate_samples or gated, gated),
            first_gate_samples=min(self.first_gate_samples, gated),
            golden_size=min(self.golden_size, gated),
            timing_samples=min(self.timing_samples, reviews),
            profile_texts=min(self.profile_texts, reviews),
        )


@dataclass
class RegistryModel:
    name: str
    version: str
    run_id: str
    metrics: dict[str, float]
    config: ExperimentConfig


def resolve(model_uri: str) -> RegistryModel:
    """Registry name/version, the run's metrics and its experiment config, for a `models:/` URI."""
    client = MlflowClient()
    name, _, ref = model_uri.removeprefix("models:/").partition("@")
    if ref:
        version = client.get_model_version_by_alias(name, ref)
    else:
        name, _, number = model_uri.removeprefix("models:/").partition("/")
        version = client.get_model_version(name, number)
    run = client.get_run(version.run_id)
    config = config_from_dict(yaml.safe_load(mlflow.artifacts.load_text(f"runs:/{version.run_id}/config.yaml")))
    metrics = dict(run.data.metrics) | {SELECTION_METRIC: float(version.tags.get(SELECTION_METRIC, "nan"))}
    return RegistryModel(name, str(version.version), version.run_id, metrics, config)


@dataclass
class ParitySample:
    ids: list[list[int]]
    labels: np.ndarray
    stored_reference: np.ndarray | None  # PyTorch's probabilities, written with it (None: an older sample)


def load_parity_sample(run_id: str) -> ParitySample:
    sample = np.load(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/{PARITY_SAMPLE}"))
    reference = sample.get("reference")
    return ParitySample(unpack_ids(sample["ids"], sample["offsets"]), sample["labels"].astype(np.int64), reference)


def pytorch_reference(
    model: PreTrainedModel, pad_token_id: int, sample: ParitySample, export: ExportConfig
) -> np.ndarray:
    """PyTorch's probabilities on the parity sample: the stored ones when PyTorch here reproduces them on a random
    spot check (they are the gate's yardstick, so they must come from this model), else computed here on all."""
    stored, spot_check, tolerance = sample.stored_reference, export.reference_spot_check, export.reference_tolerance
    return stored_or_predicted(model, sample.ids, pad_token_id, stored, spot_check, tolerance)


def download_hybrid(run_id: str, out_dir: Path) -> HybridPolicy | None:
    """The lexical model and hybrid policy registered with the version, into `out_dir` (None: transformer only)."""
    if not registered_with_hybrid(run_id):
        return None
    mlflow.artifacts.download_artifacts(f"runs:/{run_id}/{HYBRID_DIR}", dst_path=str(out_dir))
    for name in (LEXICAL_FILE, POLICY_FILE):
        shutil.move(out_dir / HYBRID_DIR / name, out_dir / name)
    return HybridPolicy.load(out_dir / POLICY_FILE)


def export_onnx(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, config: ExperimentConfig, out_dir: Path
) -> Path:
    """Write the fp32 model, tokenizer.json and classifier.json into `out_dir`."""
    shutil.rmtree(out_dir, ignore_errors=True)
    with tempfile.TemporaryDirectory() as hf_dir:
        model.save_pretrained(hf_dir)
        tokenizer.save_pretrained(hf_dir)
        main_export(hf_dir, out_dir, task="text-classification", do_validation=False)
    info = {
        "label_names": [model.config.id2label[i] for i in range(model.config.num_labels)],
        "encoding": asdict(config.encoding),
    }
    (out_dir / CONFIG_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return out_dir


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


def reference_profile(
    config: ExperimentConfig, onnx_dir: Path, transformer: OnnxTextClassifier, n_texts: int
) -> dict | None:
    """What the served model sees and answers on the validation split: the drift monitor's reference."""
    if not n_texts:
        return None
    try:
        validation = load_data(config.data).splits["validation"]
    except (DataSourceError, OSError, ValueError) as error:  # no local copy and no hub: the service runs without
        print(f"WARNING: no drift reference profile ({error})", file=sys.stderr)
        return None
    texts = validation["text"][:n_texts]
    router = HybridRouter(onnx_dir)
    probabilities, _ = router.classify_in_process(texts, router.policy, transformer, progress="drift profile")
    statistics = TextStatistics(transformer.tokenizer, transformer.encoding)(texts) | answer_statistics(probabilities)
    described = f"{config.dataset} validation split, {len(texts)} texts, {transformer.model_file}"
    return build_profile(statistics, described)


def import_to_bentoml(
    onnx_dir: Path,
    registry: RegistryModel,
    export: ExportConfig,
    results: dict,
    int8: list[Int8File],
    warning: str | None,
    hybrid: HybridPolicy | None,
) -> bentoml.Model:
    """The fp32 file, the int8 files that ship (if any) and their manifest, tokenizer, label names, golden set and
    the hybrid's lexical model and policy (if registered) into the BentoML store."""
    info = json.loads((onnx_dir / CONFIG_FILE).read_text())
    served = int8[0].recipe if int8 else "fp32"  # the export's choice; the service chooses again on its own CPU
    metadata = {
        "mlflow_model": registry.name,
        "mlflow_version": registry.version,
        "mlflow_run_id": registry.run_id,
        "recipe": served,
        "int8_recipe": served if int8 else None,
        "int8_files": [f.recipe for f in int8] or None,
        "int8_refused": warning,
        "label_names": info["label_names"],
        "dataset": registry.config.dataset,
        "max_length": info["encoding"]["max_length"],
        "truncation": info["encoding"]["truncation"],
        "validation_accuracy": registry.metrics.get(SELECTION_METRIC),
        "test_accuracy": registry.metrics.get("test_accuracy"),
        "parity": {name: {k: v for k, v in r.items() if k != "failures"} for name, r in results.items()},
        "export_cpu": cpu_flags(),
        "selfcheck": asdict(export.selfcheck),
        "hybrid": {key: value for key, value in asdict(hybrid).items() if value is not None} if hybrid else None,
        "gate_reviews": export.gate_samples,
    }
    metadata = {key: value for key, value in metadata.items() if value is not None}  # BentoML refuses None
    labels = {"mlflow_model": registry.name, "mlflow_version": registry.version, "recipe": served}
    with bentoml.models.create(export.bento_model, labels=labels, metadata=metadata) as bento_model:
        target = Path(bento_model.path)
        for name in (FP32_FILE, TOKENIZER_FILE, CONFIG_FILE, GOLDEN_FILE):
            shutil.copy(onnx_dir / name, target / name)
        for name in [f.file for f in int8] + ([INT8_MANIFEST] if int8 else []):
            shutil.copy(onnx_dir / name, target / name)
        if hybrid:
            for name in (LEXICAL_FILE, POLICY_FILE):
                shutil.copy(onnx_dir / name, target / name)
        if (onnx_dir / PROFILE_FILE).exists():
            shutil.copy(onnx_dir / PROFILE_FILE, target / PROFILE_FILE)
    return bento_model


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


def run(export: ExportConfig, int8_pending: str | None = None) -> bentoml.Model:
    """The export; `int8_pending` (from `--fp32-first`) says why this version has no int8 file yet, and leaves the
    served pyfunc to the full export that follows."""
    registry = resolve(export.model_uri)
    components = mlflow.transformers.load_model(export.model_uri, return_type="components")
    model, tokenizer = components["model"].eval(), components["tokenizer"]
    onnx_dir = export_onnx(model, tokenizer, registry.config, Path(export.work_dir))
    sample = load_parity_sample(registry.run_id)
    ids, labels = sample.ids, sample.labels
    export = export.fitted_to(len(ids))  # a small dataset's validation split holds fewer reviews than the defaults
    gate_note = gate_size_note(export, len(ids))
    reference = pytorch_reference(model, tokenizer.pad_token_id, sample, export)
    results = evaluate_files(onnx_dir, reference, ids, labels, export)
    shipped, warning = choose(results)
    warning = int8_pending or warning
    int8 = shipped_files(results, shipped)
    save_int8_files(onnx_dir / INT8_MANIFEST, int8)
    fp32 = OnnxTextClassifier(onnx_dir, model_file=FP32_FILE)
    golden = ids[: export.golden_size]
    save_golden(onnx_dir / GOLDEN_FILE, golden, fp32.predict_ids(golden))
    hybrid = download_hybrid(registry.run_id, onnx_dir)
    served = int8_runtime(onnx_dir, int8[0], fp32) if int8 else fp32  # the export's choice, as a service here would
    profile = reference_profile(registry.config, onnx_dir, served, export.profile_texts)
    if profile:
        save_profile(profile, onnx_dir / PROFILE_FILE)
    bento_model = import_to_bentoml(onnx_dir, registry, export, results, int8, warning, hybrid)
    alias = export.model_uri.partition("@")[2] or None  # the served pyfunc gets the transformer's alias
    served = None
    if not int8_pending:
        served = register_served(bento_model.path, export.selfcheck, registry.name, registry.version, alias)
    report = {
        "model": f"{registry.name}:{registry.version}",
        "bento_model": str(bento_model.tag),
        "registered_served_model": served and f"{served_name(registry.name)}:{served}",
        "served": shipped[0] if shipped else "fp32",
        "shipped": shipped,
        "warning": warning,
        "cpu": cpu_flags(),
        "gate": {"min_agreement": export.min_agreement, "max_accuracy_drop": export.max_accuracy_drop},
        "search_samples": export.search_samples,
        "timing_samples": export.timing_samples,
        "timing_rounds": export.timing_rounds,
        "golden_size": export.golden_size,
        "gate_reviews": export.gate_samples,
        "gate_note": gate_note,
        "files": results,
        "hybrid": asdict(hybrid) if hybrid else None,
    }
    Path(export.report).parent.mkdir(parents=True, exist_ok=True)
    Path(export.report).write_text(json.dumps(report, indent=2) + "\n")
    Path(export.report).with_name("PARITY.md").write_text(parity_table(report))
    if warning:
        print(f"WARNING: {warning}", file=sys.stderr)
    print(f"imported {bento_model.tag} from {registry.name} v{registry.version}, shipping {shipped or ['fp32 only']}")
    return bento_model


def in_store(name: str) -> bool:
    try:
        return bool(bentoml.models.list(name))
    except bentoml.exceptions.NotFound:
        return False


@dataclass
class Beside:
    """The full export running in the background beside the service (`--fp32-first`): its log and pid files."""

    work_dir: str

    @property
    def log(self) -> Path:
        return Path(f"{self.work_dir}-beside.log")

    @property
    def pid_file(self) -> Path:
        return Path(f"{self.work_dir}-beside.pid")

    def start(self) -> None:
        """This command again without its --fp32-first / --if-missing, detached (a stopped `make serve` leaves it to
        finish) and niced (the service comes first)."""
        argv = [a for a in sys.argv[1:] if a not in ("--fp32-first", "--if-missing")]
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("w") as log:
            command = ["nice", "-n", "10", sys.executable, "-m", "export.export", *argv]
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid_file.write_text(str(process.pid))
        print(f"the int8 files are gated beside the service (pid {process.pid}, log {self.log}); it switches to them")

    def running(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text())
            os.kill(pid, 0)
            return pid
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return None

    def wait(self) -> None:
        while pid := self.running():
            print(f"waiting for the export beside the service (pid {pid}, log {self.log})", flush=True)
            time.sleep(10)


def fp32_first(export: ExportConfig, beside: Beside) -> tuple[ExportConfig, str]:
    """What a store without the model serves at once, and why it has no int8 file yet: the fp32 file gated on fewer
    reviews, no int8 candidate, drift profile or committed report (the full export beside the service brings them)."""
    first = replace(
        export,
        int8_candidates=[],
        gate_samples=export.first_gate_samples,
        timing_samples=50,
        timing_rounds=1,
        profile_texts=0,
        report=f"{export.work_dir}-first.json",
    )
    return first, f"int8 files pending: the export beside the service is gating them ({beside.log}); fp32 answers"


def export_what_is_missing(export: ExportConfig, fp32_at_once: bool) -> None:
    """Nothing when the store has the model and the registry its pyfunc; else the export (`fp32_at_once`: on an empty
    store the fp32 version at once and the export beside it, which is started again if it died)."""
    beside = Beside(export.work_dir)
    if not in_store(export.bento_model):
        if fp32_at_once:
            run(*fp32_first(export, beside))
            beside.start()
            return
    elif is_registered(export.model_uri):
        print(f"{export.bento_model} in the BentoML store and its pyfunc in the registry; skipping export")
        return
    elif fp32_at_once:  # served already: its int8 files are being gated beside it, or that export died
        if not beside.running():
            beside.start()
        return
    else:
        beside.wait()
        if is_registered(export.model_uri):
            return
    run(export)


def main() -> None:
    export, args = command_line(
        ExportConfig,
        __doc__,
        flags={
            "--if-missing": "do nothing when the BentoML store has the model and the registry its pyfunc",
            "--fp32-first": "--if-missing, but a store without the model gets the fp32 file at once and the int8 "
            "files from an export started beside it (make serve)",
        },
    )
    setup_tracking()
    try:
        if args.if_missing or args.fp32_first:
            export_what_is_missing(export, args.fp32_first)
        else:
            run(export)
    except ParityError as error:
        print(f"REFUSED: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
