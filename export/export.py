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
`first_gate_samples` reviews, and starts the full export in the background (`python -m export.beside`, log:
`<work_dir>-beside.log`); that one imports a new version with the int8 files, and the service switches to it
(`serving/reloads.py`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import bentoml
import mlflow
import yaml

from export.convert import download_hybrid, export_onnx, load_parity_sample, pytorch_reference, resolve
from export.gate import ParityError, choose, evaluate_files, gate_size_note, parity_table, shipped_files
from export.quantize import DEFAULTS
from export.served import is_registered, register_served, served_name
from export.store import import_to_bentoml, in_store, reference_profile
from export.yielding import yielding
from serving.core.drift import PROFILE_FILE, save_profile
from serving.core.runtime import OnnxTextClassifier, cpu_flags
from serving.core.selfcheck import (
    FP32_FILE,
    GOLDEN_FILE,
    INT8_MANIFEST,
    SelfCheckLimits,
    int8_runtime,
    save_golden,
    save_int8_files,
)
from serving.settings import BENTO_MODEL
from training.config import command_line
from training.registry import setup_tracking


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
    reference_tolerance: float = 1e-4  # max |dp| allowed there (PyTorch fp32 on another CPU or batch: far less)
    timing_samples: int = 200
    timing_rounds: int = 3  # interleaved passes over the timing reviews; ms/review is their median
    rescore_step: float = 0.05  # rescoring margins are multiples of it
    golden_size: int = 64  # the service re-scores these at start (sized for a start within seconds)
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
    chosen = int8_runtime(onnx_dir, int8[0], fp32) if int8 else fp32  # the export's choice, as a service here would
    profile = reference_profile(registry.config, onnx_dir, chosen, export.profile_texts)
    if profile:
        save_profile(profile, onnx_dir / PROFILE_FILE)
    bento_model = import_to_bentoml(onnx_dir, registry, export, results, int8, warning, hybrid)
    alias = export.model_uri.partition("@")[2] or None  # the served pyfunc gets the transformer's alias
    pyfunc_version = None  # an fp32-first version's pyfunc is left to the full export beside it
    if not int8_pending:
        pyfunc_version = register_served(bento_model, registry.name, registry.version, alias)
    report = {
        "model": f"{registry.name}:{registry.version}",
        "bento_model": str(bento_model.tag),
        "registered_served_model": pyfunc_version and f"{served_name(registry.name)}:{pyfunc_version}",
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


@dataclass
class Beside:
    """The full export `--fp32-first` starts beside the service (`python -m export.beside`), known by its files: the
    config it runs, its log and its pid (so that a later `make serve` or `make model` sees whether it still runs)."""

    work_dir: str

    @property
    def config(self) -> Path:
        return Path(f"{self.work_dir}-beside.yaml")

    @property
    def log(self) -> Path:
        return Path(f"{self.work_dir}-beside.log")

    @property
    def pid_file(self) -> Path:
        return Path(f"{self.work_dir}-beside.pid")

    def start(self, export: ExportConfig) -> None:
        """`export` in a process of its own, detached (a stopped `make serve` leaves it to finish), yielding to the
        service (`export.yielding`: niced, half the cores' threads for PyTorch and the tokenizers, paced while the
        service is busy). ONNX Runtime's sessions set their own thread counts, so the gate still times each file as
        the service runs it."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.config.write_text(yaml.safe_dump(asdict(export), sort_keys=False))
        command = yielding([sys.executable, "-m", "export.beside", "--config", str(self.config)])
        with self.log.open("w") as log:
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
            beside.start(export)
        else:
            run(export)
    elif is_registered(export.model_uri):
        print(f"{export.bento_model} in the BentoML store and its pyfunc in the registry; skipping export")
    elif fp32_at_once:  # served already: its int8 files are being gated beside it, or that export died
        if not beside.running():
            beside.start(export)
    else:
        beside.wait()
        if not is_registered(export.model_uri):
            run(export)


@contextmanager
def refusal_exits_2() -> Iterator[None]:
    """A broken export (fp32 disagrees with PyTorch) ends the command with its reason and exit status 2."""
    try:
        yield
    except ParityError as error:
        print(f"REFUSED: {error}", file=sys.stderr)
        sys.exit(2)


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
    with refusal_exits_2():
        if args.if_missing or args.fp32_first:
            export_what_is_missing(export, args.fp32_first)
        else:
            run(export)


if __name__ == "__main__":
    main()
