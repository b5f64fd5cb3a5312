"""ONNX Runtime text classifier, shared by the service, the export parity gate and the benchmark.

Every text runs as its own ORT call, with no padding and no batch-mates: dynamic int8 quantization scales the
activations of each call, so a text scored beside others would get probabilities that depend on them. Calls run in
parallel on single-threaded sessions (one per core); a lone text gets one session with all cores.
"""

from __future__ import annotations

import json
import os
import platform
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from serving.text import EncodingConfig, encode, tokenizer_from_file

if TYPE_CHECKING:
    import onnxruntime as ort

TOKENIZER_FILE, CONFIG_FILE = "tokenizer.json", "classifier.json"


def cpu_flags() -> str:
    """The instruction-set extensions that decide which int8 kernels ONNX Runtime runs (printed beside numbers)."""
    cpuinfo = Path("/proc/cpuinfo")
    line = next((x for x in cpuinfo.read_text().splitlines() if x.startswith("flags")), "") if cpuinfo.exists() else ""
    flags = set(line.split(":", 1)[-1].split())
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    return " ".join([platform.machine(), *(f for f in wanted if f in flags)])


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


class OnnxTextClassifier:
    """Texts in, class probabilities out, from a folder holding an ONNX file, tokenizer.json and classifier.json."""

    def __init__(self, model_dir: str | Path, model_file: str, workers: int | None = None):
        model_dir = Path(model_dir)
        self.workers = workers or os.cpu_count() or 1
        info = json.loads((model_dir / CONFIG_FILE).read_text())
        self.label_names: list[str] = info["label_names"]
        self.encoding = EncodingConfig(**info["encoding"])
        self.tokenizer = tokenizer_from_file(model_dir / TOKENIZER_FILE)
        self.model_file = model_file
        path = str(model_dir / model_file)
        self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="onnx")
        # a lone text: all cores; many texts: one core each. Built side by side (ORT releases the GIL): half the wait
        single = self.pool.submit(self._session, path, self.workers)
        self.parallel = self._session(path, threads=1)
        self.single = single.result()
        self.input_names = {i.name for i in self.single.get_inputs()}

    @staticmethod
    def _session(path: str, threads: int) -> ort.InferenceSession:
        import onnxruntime as ort  # here: BentoML's arbiter imports this module and never runs a model

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def logits(self, session: ort.InferenceSession, ids: list[int]) -> np.ndarray:
        """Logits of one token-id sequence."""
        input_ids = np.array([ids], dtype=np.int64)
        feeds = {"input_ids": input_ids, "attention_mask": np.ones_like(input_ids)}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.zeros_like(input_ids)
        return session.run(None, feeds)[0][0]

    def predict_ids(self, ids: list[list[int]]) -> np.ndarray:
        """Probabilities for encoded texts, shape (len(ids), n_labels), in input order."""
        if not ids:
            return np.zeros((0, len(self.label_names)), dtype=np.float32)
        if len(ids) == 1:
            return softmax(self.logits(self.single, ids[0])[None])
        return softmax(np.stack(list(self.pool.map(lambda x: self.logits(self.parallel, x), ids))))

    def encode(self, texts: list[str]) -> list[list[int]]:
        return encode(texts, self.tokenizer, self.encoding)

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Probabilities, shape (len(texts), n_labels), in the order of `texts`."""
        return self.predict_ids(self.encode(texts))
