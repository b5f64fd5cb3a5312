"""Service settings: one dataclass, built from the environment in one place (`ServiceSettings.from_env`)."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

BENTO_MODEL = "imdb-sentiment-onnx"  # the release's model in the BentoML store: the one place it is named
PARSERS = {"str": str, "int": int, "float": float, "bool": lambda raw: raw.strip().lower() in ("1", "true", "yes")}


CGROUP = Path("/sys/fs/cgroup")


def available_cpus(cgroup: Path = CGROUP) -> int:
    """The CPUs this process may use: its affinity, capped by its cgroup's CPU quota (v2 `cpu.max`, "quota period"
    or "max period"; v1 `cpu/cpu.cfs_quota_us` and `cpu.cfs_period_us`), as a container under a CPU limit has; at
    least one. A node's core count would oversubscribe a pod limited to fewer."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        if (cgroup / "cpu.max").exists():
            quota, period = (cgroup / "cpu.max").read_text().split()[:2]
        else:
            quota, period = (
                (cgroup / "cpu" / name).read_text().strip() for name in ("cpu.cfs_quota_us", "cpu.cfs_period_us")
            )
    except (OSError, ValueError):
        return max(cpus, 1)
    if quota in ("max", "-1"):
        return max(cpus, 1)
    return max(min(cpus, math.ceil(int(quota) / int(period))), 1)


@dataclass(frozen=True)
class ServiceSettings:
    """Every knob of the service; the environment variable of a field is its name in upper case (a renamed field
    also reads its old name, `alias`)."""

    bento_model_tag: str = f"{BENTO_MODEL}:latest"
    max_text_chars: int = 50_000
    max_batch_texts: int = 64  # texts per /predict_batch request
    # Adaptive batching: BentoML answers 503 once it expects a request to wait past max_latency_ms. Admission
    # (serving/admission.py) bounds the queue, so this deadline is only a backstop, far above the 100 ms target.
    # A /predict_batch request is one item of up to max_batch_texts texts, so a batch must hold at least that many
    # or it can never be scheduled.
    max_batch_size: int = 64
    max_latency_ms: int = 5000
    classify_timeout_s: int = 3  # beyond the batching deadline, how long a call to the classifier may take
    # POST requests at once in the API worker, counted once their body is in (serving/intake.py); past it the door
    # answers 503 before any work. A body must arrive within body_timeout_s (else 408): a client that sends headers
    # and nothing more holds no slot for long.
    max_concurrency: int = 12
    max_loop_lag_ms: float = 200.0  # the door also refuses while the event loop stays later than this (a stall)
    # The web UI's long-lived connections (serving/admission.py: Streams), apart from the API's: in all, and per client
    # address (the socket's, or behind a proxy the first address of client_address_header, e.g. x-forwarded-for).
    ui_max_connections: int = 256
    ui_max_per_client: int = 32
    client_address_header: str = ""
    ui_max_rows: int = 20_000  # rows of a web UI upload (more: `make score`, Spark)
    body_timeout_s: float = 10.0
    adaptive_batching: bool = True  # False: one call per request (the benchmark's comparison only)
    worker_check_s: float = 1.0  # how often BentoML's supervisor respawns a dead worker (its own default: 10 s)
    workers: int = field(default_factory=lambda: available_cpus())  # ONNX Runtime threads: the CPUs this may use
    # whether the threads of a review that reaches the classifier alone wait spinning for the next run: slightly faster
    # alone, but they keep every core busy after each run, against the API process and the other reviews
    lone_text_spinning: bool = False
    # The transformer has a standing queue when every call it answered for queue_interval_ms was held up over
    # queue_target_ms by other requests' texts; then a call the texts ahead would hold past the target gets a fast 503
    # + Retry-After (CoDel: serving/admission.py). 100 ms is about three reviews ahead at the transformer's time per
    # review under load: four closed-loop clients in transformer mode queue that much without a standing queue.
    queue_target_ms: float = 100.0
    queue_interval_ms: float = 300.0
    log_text: bool = False  # raw review text in the request log
    explain_max_evals: int = 64  # SHAP's budget per /explain (each response reports its elapsed_ms)
    max_explain_in_flight: int = 1  # explanations past this get a fast 503 (they never slow /predict's queue)
    drift_window: int = 500  # texts in the drift monitor's window (PSI vs the reference profile)
    hybrid_mode: str = ""  # transformer | ensemble | cascade; empty: the mode chosen on validation (hybrid.json)
    # A/B testing (docs/MLOPS.md): a challenger's export beside the champion's; empty: the champion answers alone.
    challenger_model_tag: str = ""  # e.g. imdb-sentiment-onnx-challenger:latest (make export-challenger)
    # split: challenger_share of the users get it; shadow: it answers copies, never users (AB_MODE: its old name)
    ab_rollout: str = field(default="split", metadata={"alias": "AB_MODE"})
    challenger_share: float = 0.1
    max_shadow_in_flight: int = 8  # shadow copies past this are skipped (counted): they must never slow the answers
    prediction_log: str = ""  # also append each request's JSON log line to this file (make ab-report reads it)
    model_poll_s: float = 30.0  # how often the store is asked whether a tag names a newer export (0: never reload)
    # Optional API keys (serving/access.py): off while both are empty. The keys, comma-separated, or a file of them.
    api_keys: str = field(default="", repr=False)
    api_keys_file: str = ""
    metrics_need_key: bool = False  # with API keys on, /metrics wants one too (Prometheus: `authorization` in its job)

    @property
    def max_body_bytes(self) -> int:
        """The largest request body (413 above): a full batch of the longest texts at 4 UTF-8 bytes a character."""
        return self.max_batch_texts * self.max_text_chars * 4 + 4096

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> ServiceSettings:
        values = {}
        for f in dataclasses.fields(cls):
            raw = env.get(f.name.upper(), env.get(f.metadata.get("alias", "")))
            if raw is None:
                continue
            values[f.name] = PARSERS[f.type](raw)
        settings = cls(**values)
        return dataclasses.replace(settings, max_batch_size=max(settings.max_batch_size, settings.max_batch_texts))


SETTINGS = ServiceSettings.from_env()  # read once, here: the schemas carry its limits and service.py its knobs
