"""Shared fixtures: real data paths, a tiny randomly initialised BERT, and a throwaway MLflow store."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SERVER_LOG = Path(__file__).resolve().parents[1] / "build" / "tests" / "predictions.jsonl"  # the `server`'s log


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "imdb" / "train.parquet").exists():
        pytest.skip(f"real datasets not found under {DATA_DIR}")
    return DATA_DIR


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    """A 2-layer, 32-wide BERT with random weights and the real MiniLM tokenizer: fast, but a real model."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from training.config import BUNDLED_MODEL, resolve_checkpoint

    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_checkpoint(BUNDLED_MODEL))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    torch.manual_seed(0)  # the same tiny model in every run: a test that passes, passes again
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    """The release model behind `bentoml serve` (needs `make model`), warm (`loadtests.common.ready`), one per test
    module: a server started later (fault drills, the notebook) resets BentoML's shared Prometheus files, and a
    long-lived one loses its metrics. Its request log is `SERVER_LOG`. Admission sheds nothing here (queue and loop
    limits of a minute, 512 inside): these tests send bursts of transformer requests to check answers and batching;
    shedding is drilled on a server of its own (tests/test_faults.py)."""
    from loadtests.common import bentoml_serve, running

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    SERVER_LOG.unlink(missing_ok=True)
    env = {
        "BENTOML_HOME": os.environ["BENTOML_HOME"],
        "QUEUE_TARGET_MS": "60000",
        "MAX_LOOP_LAG_MS": "60000",
        "MAX_CONCURRENCY": "512",
        "PREDICTION_LOG": str(SERVER_LOG),
    }
    with running(bentoml_serve(port), f"{url}/health", env):
        yield url


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # artifacts (./mlruns) land in the test's folder
    return uri


os.environ.setdefault("BENTOML_HOME", str(Path(__file__).resolve().parents[1] / ".bentoml"))


def pytest_report_header(config) -> str:
    """The CPU flags that decide ONNX Runtime's int8 kernels, at the top of every test log."""
    from serving.core.runtime import cpu_flags

    return f"cpu: {cpu_flags()}"
