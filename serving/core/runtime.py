"""ONNX Runtime text classifier, shared by the service, the export parity gate and the benchmark.

Every text runs as its own ORT call, with no padding and no batch-mates: dynamic int8 quantization scales the
activations of each call, so a text scored beside others would get probabilities that depend on them. Calls run in
parallel on single-threaded sessions (one per core); a lone text gets one session with all cores.

An int8 classifier may carry the fp32 one as its `rescorer`: the few answers int8 is unsure of (top-two probability
margin below `rescore_below`) are scored again in fp32, where int8's rounding could flip them.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from serving.core.text import EncodingConfig, encode, tokenizer_from_file

if TYPE_CHECKING:
    import onnxruntime as ort

TOKENIZER_FILE, CONFIG_FILE = "tokenizer.json", "classifier.json"


def freeze_startup_objects() -> None:
    """Hide what a worker made while starting (its imports, models, the web UI) from the garbage collector for good:
    a full collection, Python's own under load or `release_memory`'s after a reload, then scans only what came since,
    instead of holding the GIL (and so the event loop or the batches) for as long as a full scan takes. Frozen
    objects are still freed when no reference is left."""
    import gc

    gc.collect()
    gc.freeze()


M_ARENA_MAX = -8  # glibc's mallopt parameter


def glibc(function: str):
    """glibc's `function` (a ctypes function), or None when the C library is not glibc or cannot be found."""
    import ctypes
    import ctypes.util

    libc = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(libc), function, None) if libc else None


def cap_malloc_arenas(arenas: int = 2) -> None:
    """At most `arenas` glibc heaps in this process (as MALLOC_ARENA_MAX does). glibc's default, up to eight per
    core, lets each reload's new sessions and threads spread over more heaps, where memory freed by another thread
    stays: a worker's memory then climbs swap after swap (`make reload-drill` measures it)."""
    if mallopt := glibc("mallopt"):
        mallopt(M_ARENA_MAX, arenas)


def release_memory() -> None:
    """Give the memory of unloaded ONNX sessions back to the system: collect what cycles hold (cheap once the start's
    objects are frozen: `freeze_startup_objects`), then ask glibc to trim its heap (freed arena blocks otherwise stay
    with the process, and each swapped-in export would add its own)."""
    import gc

    gc.collect()
    if malloc_trim := glibc("malloc_trim"):
        malloc_trim(0)


YIELDING_NICENESS = 10  # the CPU priority of work beside the answers: in a worker, and an export beside it


def yielding_threads(name: str, threads: int) -> ThreadPoolExecutor:
    """Threads at a lower CPU priority, for work that must leave the cores to the answers (an explainer, a reload's
    build). Every thread they start, ONNX Runtime's own included, keeps that priority, and a worker cannot raise it
    again (RLIMIT_NICE): give them only work whose threads serve nothing else."""
    return ThreadPoolExecutor(threads, thread_name_prefix=name, initializer=_yield_this_thread)


def _yield_this_thread() -> None:
    import contextlib
    import threading

    with contextlib.suppress(AttributeError, OSError):  # Linux: per thread; elsewhere it would renice the process
        if platform.system() == "Linux":
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), YIELDING_NICENESS)


def cpu_flags() -> str:
    """The instruction-set extensions that decide which int8 kernels ONNX Runtime runs (printed beside numbers)."""
    cpuinfo = Path("/proc/cpuinfo")
    line = next((x for x in cpuinfo.read_text().splitlines() if x.startswith("flags")), "") if cpuinfo.exists() else ""
    flags = set(line.split(":", 1)[-1].split())
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    return " ".join([platform.machine(), *(f for f in wanted if f in flags)])


PROGRESS_CHUNK = 64  # reviews per step of a progress bar


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


def top_two_margin(probs: np.ndarray) -> np.ndarray:
    """Probability of the best class minus the runner-up's: a confidence that works for any number of classes."""
    top_two = np.sort(probs, axis=1)[:, -2:]
    return top_two[:, 1] - top_two[:, 0]


class OnnxTextClassifier:
    """Texts in, class probabilities out, from a folder holding an ONNX file, tokenizer.json and classifier.json."""

    def __init__(
        self,
        model_dir: str | Path,
        model_file: str,
        workers: int | None = None,
        rescorer: OnnxTextClassifier | None = None,
        rescore_below: float = 0.0,
        spin: bool = True,
    ):
        model_dir = Path(model_dir)
        self.rescorer, self.rescore_below = rescorer, rescore_below
        self.workers = workers or os.cpu_count() or 1
        self.spin = spin  # a lone text's threads wait spinning for the next run: faster, and busy on every core
        info = json.loads((model_dir / CONFIG_FILE).read_text())
        self.label_names: list[str] = info["label_names"]
        self.encoding = EncodingConfig(**info["encoding"])
        self.tokenizer = tokenizer_from_file(model_dir / TOKENIZER_FILE)
        self.model_file = model_file
        self.path = path = str(model_dir / model_file)
        self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="onnx")  # its threads start with the first run
        # a lone text: all cores; many texts: one core each. Built one after the other, on the caller's thread only: a
        # version loaded while another serves leaves the other cores to it
        self.single = self._session(path, self.workers, spin)
        self.parallel = self._session(path, threads=1)
        self.input_names = {i.name for i in self.single.get_inputs()}

    @staticmethod
    def _session(path: str, threads: int, spin: bool = True) -> ort.InferenceSession:
        import onnxruntime as ort  # here: BentoML's arbiter imports this module and never runs a model

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def quiet(self) -> OnnxTextClassifier:
        """This classifier with an all-cores session whose threads sleep as soon as a run ends, to rescore another
        file's answers: that file's threads may still spin after its run, and spinning threads of this one would fight
        them for the cores. Shares everything else."""
        if not self.spin:
            return self
        quiet = copy.copy(self)
        quiet.single, quiet.spin = self._session(self.path, self.workers, spin=False), False
        return quiet

    def logits(self, session: ort.InferenceSession, ids: list[int]) -> np.ndarray:
        """Logits of one token-id sequence."""
        input_ids = np.array([ids], dtype=np.int64)
        feeds = {"input_ids": input_ids, "attention_mask": np.ones_like(input_ids)}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.zeros_like(input_ids)
        return session.run(None, feeds)[0][0]

    def predict_ids(self, ids: list[list[int]], progress: str | None = None) -> np.ndarray:
        """Probabilities for encoded texts, shape (len(ids), n_labels), in input order; with `progress`, in chunks
        under a progress bar of that name (each text is scored alone, so chunks change no answer)."""
        if progress is not None:
            from tqdm.auto import tqdm  # here: only offline jobs ask for it (the image has it, through huggingface_hub)

            chunks = [ids[start : start + PROGRESS_CHUNK] for start in range(0, len(ids), PROGRESS_CHUNK)]
            bar = tqdm(chunks, desc=progress, unit="chunk", postfix=f"{PROGRESS_CHUNK} reviews each")
            return np.concatenate([self.predict_ids(chunk) for chunk in bar] or [self.predict_ids([])])
        if not ids:
            return np.zeros((0, len(self.label_names)), dtype=np.float32)
        if len(ids) == 1:
            probabilities = softmax(self.logits(self.single, ids[0])[None])
        else:
            probabilities = softmax(np.stack(list(self.pool.map(lambda x: self.logits(self.parallel, x), ids))))
        if self.rescorer is not None:
            unsure = np.flatnonzero(top_two_margin(probabilities) < self.rescore_below)
            if unsure.size:
                probabilities[unsure] = self.rescorer.predict_ids([ids[i] for i in unsure])
        return probabilities

    def encode(self, texts: list[str]) -> list[list[int]]:
        return encode(texts, self.tokenizer, self.encoding)

    def predict_proba(self, texts: list[str], progress: str | None = None) -> np.ndarray:
        """Probabilities, shape (len(texts), n_labels), in the order of `texts`."""
        return self.predict_ids(self.encode(texts), progress)


def ms_per_review(runtimes: dict[str, OnnxTextClassifier], ids: list[list[int]], rounds: int = 3) -> dict[str, float]:
    """Each runtime's median ms per review over `rounds` passes, one review per call (as a lone /predict runs), the
    runtimes interleaved pass by pass so that a slow spell of the machine falls on all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in runtimes}
    for runtime in runtimes.values():
        runtime.predict_ids(ids[:3])  # warm-up
    for _ in range(rounds):
        for name, runtime in runtimes.items():
            started = time.perf_counter()
            for x in ids:
                runtime.predict_ids([x])
            times[name].append(1000 * (time.perf_counter() - started) / len(ids))
    return {name: float(np.median(t)) for name, t in times.items()}
