"""Overload drill: many closed-loop clients send real reviews to /predict at once; the admitted answers must stay
fast and the shed ones must be fast 503s with Retry-After, and the service must answer normally afterwards.

    python -m loadtests.overload [clients=64] [seconds=20]   (make overload)

Starts its own server (warm: int8 checked, explainer and UI built), writes reports/overload/overload.json and
OVERLOAD.md with the CPU it ran on. tests/test_faults.py runs the same drill, shorter.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass

import aiohttp
import numpy as np
import requests

from loadtests.common import ROOT, bentoml_serve, running, sample_reviews
from serving.core.runtime import cpu_flags
from training.config import command_line

REQUEST_TIMEOUT_S = 30.0
SHED_CLIENT = {True: "waits the Retry-After it was given", False: "retries at once"}


@dataclass
class OverloadConfig:
    clients: int = 64
    seconds: float = 20.0
    reviews: int = 400  # real IMDb test reviews, sent in turn
    # a shed client waits the Retry-After it was given before its next request, as HTTP asks of it; one that does
    # not keeps every core busy answering its retries (docs/DEPLOYMENT.md: what a fronting proxy adds)
    honour_retry_after: bool = False
    port: int = 3011
    report: str = "reports/overload/overload.json"


@dataclass(frozen=True)
class Answer:
    review: int  # index into the reviews sent
    status: int | str  # HTTP status, or "timeout" / "refused"
    seconds: float
    retry_after: str | None
    path: str | None  # who answered a 200: lexical | student | ensemble | transformer
    refused_by: str | None  # a 503's reason: "door" (the worker behind) or "queue" (the transformer's)


async def drive(url: str, reviews: list[str], clients: int, seconds: float, honour_retry_after: bool) -> list[Answer]:
    """`clients` closed-loop clients, each sending the next review as soon as its last answer came back (after the
    Retry-After of a 503, if `honour_retry_after`)."""
    answers: list[Answer] = []
    next_review = iter(range(10**9))
    deadline = time.monotonic() + seconds

    async def client(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < deadline:
            review = next(next_review) % len(reviews)
            started = time.monotonic()
            try:
                async with session.post(f"{url}/predict", json={"text": reviews[review]}) as response:
                    body = await response.json(content_type=None)
                    path = body.get("path") if response.status == 200 else None
                    status, retry = response.status, response.headers.get("retry-after")
                    by = ("queue" if "queue" in body.get("error", "") else "door") if status == 503 else None
            except TimeoutError:
                status, retry, path, by = "timeout", None, None, None
            except aiohttp.ClientConnectionError:
                status, retry, path, by = "refused", None, None, None
            answers.append(Answer(review, status, time.monotonic() - started, retry, path, by))
            if honour_retry_after and retry:
                await asyncio.sleep(min(float(retry), max(deadline - time.monotonic(), 0)))

    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=clients)) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    return answers


def percentiles(seconds: list[float]) -> dict[str, float | None]:
    if not seconds:
        return {"n": 0, "p50_ms": None, "p95_ms": None, "max_ms": None}
    ms = 1000 * np.array(seconds)
    p50, p95 = np.percentile(ms, [50, 95])
    return {"n": len(ms), "p50_ms": float(p50), "p95_ms": float(p95), "max_ms": float(ms.max())}


def summarize(answers: list[Answer], seconds: float) -> dict:
    statuses = [a.status for a in answers]
    return {
        "requests": len(answers),
        "requests_per_s": len(answers) / seconds,
        "statuses": {str(s): statuses.count(s) for s in sorted(set(statuses), key=str)},
        "admitted": percentiles([a.seconds for a in answers if a.status == 200]),
        "shed": percentiles([a.seconds for a in answers if a.status == 503]),
        "shed_with_retry_after": sum(1 for a in answers if a.status == 503 and a.retry_after),
        "shed_by": {by: sum(1 for a in answers if a.refused_by == by) for by in ("door", "queue")},
        "paths": {p: sum(1 for a in answers if a.path == p) for p in {a.path for a in answers if a.path}},
    }


def lexical_only(url: str, reviews: list[str]) -> set[int]:
    """The reviews the cascade answers without the transformer (asked of the quiet service): never to be shed."""
    paths = []
    for start in range(0, len(reviews), 64):
        body = requests.post(f"{url}/predict_batch", json={"texts": reviews[start : start + 64]}, timeout=60).json()
        paths += [p["path"] for p in body["predictions"]]
    return {i for i, path in enumerate(paths) if path == "lexical"}


def drill(url: str, config: OverloadConfig) -> dict:
    reviews = sample_reviews(config.reviews, seed=1)
    lexical = lexical_only(url, reviews)
    answers = asyncio.run(drive(url, reviews, config.clients, config.seconds, config.honour_retry_after))
    summary = summarize(answers, config.seconds)
    # the door refuses before the lexical model runs; the transformer's queue must never refuse a lexical review
    summary["lexical_reviews_shed"] = sum(1 for a in answers if a.review in lexical and a.refused_by == "queue")
    after = requests.post(f"{url}/predict", json={"text": reviews[0]}, timeout=10)
    summary["status_after"] = after.status_code
    return summary


def main() -> None:
    config, _ = command_line(OverloadConfig, __doc__)
    url = f"http://127.0.0.1:{config.port}"
    with running(bentoml_serve(config.port), f"{url}/health"):
        summary = drill(url, config)
        summary["admission"] = requests.get(f"{url}/health", timeout=10).json()["admission"]
    report = {"cpu": cpu_flags(), "config": asdict(config), **summary}
    out = ROOT / config.report
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_name("OVERLOAD.md").write_text(render(report))
    print(json.dumps(report, indent=2))


def render(report: dict) -> str:
    rows = [
        f"| {name} | {r['n']} | {r['p50_ms'] or 0:.0f} | {r['p95_ms'] or 0:.0f} | {r['max_ms'] or 0:.0f} |"
        for name, r in (("admitted (200)", report["admitted"]), ("shed (503 + Retry-After)", report["shed"]))
    ]
    config = report["config"]
    shed_client = SHED_CLIENT[config["honour_retry_after"]]
    return (
        f"# Overload drill\n\nGenerated by `make overload` (`loadtests/overload.py`) on a CPU with `{report['cpu']}`: "
        f"{config['clients']} closed-loop clients for {config['seconds']:g} s, real IMDb test reviews to `/predict` "
        f"(default mode), the load generator on the same machine; a shed client {shed_client}. "
        f"Statuses: {report['statuses']}; {report['requests_per_s']:.1f} requests/s; "
        f"shed at the door / by the transformer's queue: {report['shed_by']}; reviews the cascade answers alone "
        f"that the transformer's queue shed: "
        f"{report['lexical_reviews_shed']}; a request after the drill: {report['status_after']}. Admission at the "
        f"end: {report['admission']}.\n\n| answers | n | p50 ms | p95 ms | max ms |\n|---|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n"
    )


if __name__ == "__main__":
    main()
