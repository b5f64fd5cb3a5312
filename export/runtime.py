"""ONNX Runtime text classifier used both by the service and by the export parity gate.

On a small CPU, padding is the enemy of batching: a batch padded to its longest review wastes most of its
FLOPs. So a batch is sorted by length and cut into micro-batches whose padding stays under `max_padding`;
micro-batches then run in parallel on single-threaded ORT calls (one per core), which measured faster here
than one multi-threaded call on a padded batch. A lone short request uses all cores for the lowest latency.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from training.text import EncodingConfig, encode, load_tokenizer

MODEL_FILE, TOKENIZER_FILE, CONFIG_FILE = "model.onnx", "tokenizer.json", "classifier.json"


@dataclass(frozen=True)
class RuntimeConfig:
    """Threading and micro-batching; defaults chosen by `loadtests/benchmark.py` on a 2-core machine."""

    workers: int = int(os.environ.get("CLASSIFIER_WORKERS", os.cpu_count() or 1))
    # On a 2-core AVX2 CPU (no VNNI: int8 GEMMs gain little from batching), micro-batches of at most 1, 2 or 4
    # reviews with <= 5% padding ran within noise of each other and faster than 8 with <= 15% padding (the old
    # default): `make benchmark` measures the sweep (reports/benchmark/BENCHMARK.md).
    max_micro_batch: int = 2
    max_padding: float = 0.05  # share of padded positions a micro-batch may carry


def micro_batches(lengths: list[int], max_size: int, max_padding: float) -> list[list[int]]:
    """Group indices of length-sorted sequences so each group's padding share stays under `max_padding`."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    groups: list[list[int]] = []
    for index in order:
        group = groups[-1] if groups else None
        if group is not None and len(group) < max_size:
            longest = lengths[index]  # sorted: the newcomer is the longest
            padded = longest * (len(group) + 1)
            if 1 - (sum(lengths[i] for i in group) + longest) / padded <= max_padding:
                group.append(index)
                continue
        groups.append([index])
    return groups


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


class OnnxTextClassifier:
    """Texts in, class probabilities out, from a folder holding model.onnx, tokenizer.json, classifier.json."""

    def __init__(self, model_dir: str | Path, config: RuntimeConfig | None = None, model_file: str = MODEL_FILE):
        model_dir = Path(model_dir)
        self.config = config or RuntimeConfig()
        info = json.loads((model_dir / CONFIG_FILE).read_text())
        self.label_names: list[str] = info["label_names"]
        self.encoding = EncodingConfig(**info["encoding"])
        self.tokenizer = load_tokenizer(model_dir / TOKENIZER_FILE)
        self.pad_id = info["pad_token_id"]
        path = str(model_dir / model_file)
        self.single = self._session(path, threads=self.config.workers)  # a lone request: all cores
        self.parallel = self._session(path, threads=1)  # many micro-batches: one core each
        self.input_names = {i.name for i in self.single.get_inputs()}
        self.pool = ThreadPoolExecutor(self.config.workers, thread_name_prefix="onnx")

    @staticmethod
    def _session(path: str, threads: int) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def run_padded(self, session: ort.InferenceSession, ids: list[list[int]]) -> np.ndarray:
        """Logits for token-id sequences run as one batch, padded to the longest."""
        width = max(map(len, ids))
        input_ids = np.full((len(ids), width), self.pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(ids), width), dtype=np.int64)
        for row, sequence in enumerate(ids):
            input_ids[row, : len(sequence)] = sequence
            attention_mask[row, : len(sequence)] = 1
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.zeros_like(input_ids)
        return session.run(None, feeds)[0]

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Probabilities, shape (len(texts), n_labels), in the order of `texts`."""
        if not texts:
            return np.zeros((0, len(self.label_names)), dtype=np.float32)
        ids = encode(texts, self.tokenizer, self.encoding)
        groups = micro_batches([len(x) for x in ids], self.config.max_micro_batch, self.config.max_padding)
        logits = np.zeros((len(texts), len(self.label_names)), dtype=np.float32)
        if len(groups) == 1:
            logits[groups[0]] = self.run_padded(self.single, [ids[i] for i in groups[0]])
        else:
            results = self.pool.map(lambda group: self.run_padded(self.parallel, [ids[i] for i in group]), groups)
            for group, group_logits in zip(groups, results, strict=True):
                logits[group] = group_logits
        return softmax(logits)
