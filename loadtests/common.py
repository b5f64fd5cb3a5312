"""What the load tests, drills and the benchmark share: real review samples, a server started as a subprocess, and
a mixed load of single and batch requests."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import requests

ROOT = Path(__file__).resolve().parents[1]
IMDB_TEST = Path(os.environ.get("TEXTCLF_DATA_DIR", ROOT.parent / "shared" / "data")) / "imdb" / "test.parquet"


def sample_labelled(n: int = 2000, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """A seeded random sample of real IMDb test reviews (the natural length mix, both classes) and their labels."""
    frame = pd.read_parquet(IMDB_TEST, columns=["text", "label"]).sample(n, random_state=seed)
    return frame.text.tolist(), frame.label.to_numpy()


def sample_reviews(n: int = 2000, seed: int = 0) -> list[str]:
    return sample_labelled(n, seed)[0]


def ready(health: requests.Response) -> bool:
    """200, and for this service also warm: its int8 self-check finished (fp32 answers until then), its explainer and
    web UI built. All three run in the background after start: numbers measured earlier would mix the two files and
    share the CPU with them."""
    if health.status_code != 200:
        return False
    body = health.json() if "json" in health.headers.get("content-type", "") else {}
    if "selfcheck" not in body:
        return True
    if broken := {part: body[part] for part in ("explainer", "ui") if body[part].startswith("unavailable")}:
        raise RuntimeError(f"the service is up but broken: {broken}")
    return body["selfcheck"]["finished"] and body["explainer"] == "ready" and body["ui"] == "ready"


@contextmanager
def running(command: list[str], health_url: str, env: dict[str, str] | None = None, timeout: float = 180) -> Iterator:
    """Start a server, wait until `health_url` says it is `ready`, stop it afterwards; if it exits first, the error
    ends with the tail of its output."""
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(command, cwd=ROOT, env=os.environ | (env or {}), stdout=output, stderr=output)
        try:
            deadline = time.time() + timeout
            while True:
                if process.poll() is not None:
                    output.seek(0)
                    tail = output.read().decode(errors="replace")[-3000:]
                    raise RuntimeError(f"{command} exited with {process.returncode}:\n{tail}")
                try:
                    if ready(requests.get(health_url, timeout=2)):
                        break
                except requests.RequestException:
                    pass
                if time.time() > deadline:
                    raise TimeoutError(f"{health_url} not healthy after {timeout} s")
                time.sleep(0.5)
            yield process
        finally:
            process.terminate()
            process.wait(30)


def bentoml_serve(port: int) -> list[str]:
    return [sys.executable, "-m", "bentoml", "serve", "service:SentimentAPI", "--port", str(port)]


class MixedLoad:
    """Closed-loop clients: one review to /predict (8 of 9) or 2 to 8 to /predict_batch, then 10 to 50 ms of thought;
    every answer as (finished at, seconds, status; 0 for a request that failed without one)."""

    def __init__(self, url: str, clients: int):
        self.url, self.answers, self.stop = url, [], threading.Event()
        self.reviews = sample_reviews(400, seed=2)
        self.threads = [threading.Thread(target=self.client, args=(n,), daemon=True) for n in range(clients)]

    def client(self, seed: int) -> None:
        rng = random.Random(seed)
        with requests.Session() as session:
            while not self.stop.is_set():
                started = time.perf_counter()
                if rng.random() < 1 / 9:
                    path, body = "/predict_batch", {"texts": rng.sample(self.reviews, rng.randint(2, 8))}
                else:
                    path, body = "/predict", {"text": rng.choice(self.reviews)}
                try:
                    status = session.post(f"{self.url}{path}", json=body, timeout=60).status_code
                except requests.RequestException:  # a reset or a timeout is a failed answer, not a stopped client
                    status = 0
                finished = time.perf_counter()
                self.answers.append((finished, finished - started, status))
                time.sleep(rng.uniform(0.01, 0.05))

    def between(self, start: float, end: float) -> dict:
        window = [(seconds, status) for at, seconds, status in self.answers if start <= at < end]
        refused = sum(1 for _, status in window if status != 200)
        return {
            "answers": len(window),
            "refused": refused,
            "refusal_rate": refused / max(len(window), 1),
            "p95_ms": round(1000 * float(np.percentile([s for s, _ in window], 95)), 1) if window else 0.0,
            "slowest_ms": round(1000 * max((s for s, _ in window), default=0.0), 1),
        }

    def __enter__(self) -> MixedLoad:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)


def rss_mb(pid: int) -> dict[str, float]:
    """Resident memory of the server and its workers, by command-line role."""
    processes = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    result = {}
    for p in processes:
        cmdline = " ".join(p.cmdline())
        role = next((name for name in ("onnx-classifier", "sentiment-api") if name in cmdline), "arbiter")
        result[role] = result.get(role, 0.0) + p.memory_info().rss / 2**20
    return result
