"""Soak test: a steady load at 80% of the highest load that holds p95 < 100 ms, for 10 minutes.

    python -m loadtests.soak [--minutes 10] [--share 0.8]      (make soak; not in CI)

Open loop: requests leave at a fixed rate whatever the answers do, so a slowing service shows as growing latency
instead of a slower client. The highest rate is found first with the same open-loop traffic (a bisection of short
steps, up to the closed-loop maximum of `make benchmark`, whose clients wait for each answer and so never build the
queue an open loop does). Writes reports/soak/soak.json and SOAK.md: the search, errors and p95 per minute, and the
resident memory of every server process at the start and the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp
import numpy as np

from loadtests.common import ROOT, bentoml_serve, rss_mb, running, sample_reviews
from serving.core.runtime import cpu_flags

OUT = ROOT / "reports" / "soak"
PORT = 3320
TARGET_P95_MS = 100.0


async def open_loop(url: str, texts: list[str], rate: float, seconds: float) -> list[tuple[float, float, int]]:
    """(sent at, latency ms, status) for requests sent at `rate` per second."""
    results: list[tuple[float, float, int]] = []

    async def one(session: aiohttp.ClientSession, text: str, sent: float) -> None:
        try:
            async with session.post(f"{url}/predict", json={"text": text}) as response:
                await response.read()
                status = response.status
        except aiohttp.ClientError:
            status = 0
        results.append((sent, 1000 * (time.perf_counter() - sent), status))

    start = time.perf_counter()
    tasks = []
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(one(session, texts[i % len(texts)], time.perf_counter())))
        await asyncio.gather(*tasks)
    return [(sent - start, latency, status) for sent, latency, status in results]


def holds(rows: list[tuple[float, float, int]]) -> tuple[bool, float]:
    """Whether a step had no errors and p95 under the target; and its p95."""
    p95 = float(np.percentile([latency for _, latency, _ in rows], 95))
    return all(status == 200 for _, _, status in rows) and p95 < TARGET_P95_MS, p95


def highest_rate(url: str, texts: list[str], ceiling: float, steps: int, seconds: float) -> tuple[float, list[dict]]:
    """Bisection between 0 and `ceiling` requests/s: the highest open-loop rate that held."""
    low, high, search = 0.0, ceiling, []
    for _ in range(steps):
        rate = (low + high) / 2
        ok, p95 = holds(asyncio.run(open_loop(url, texts, rate, seconds)))
        search.append({"rate_per_s": rate, "p95_ms": p95, "held": ok})
        low, high = (rate, high) if ok else (low, rate)
    return low, search


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--share", type=float, default=0.8)
    parser.add_argument("--search-steps", type=int, default=5)
    parser.add_argument("--step-seconds", type=float, default=30)
    args = parser.parse_args()
    benchmark = json.loads((ROOT / "reports" / "benchmark" / "benchmark.json").read_text())
    best = benchmark["systems"][benchmark["default_system"]]["max_rps"]
    texts = sample_reviews(2000, seed=5)
    url = f"http://127.0.0.1:{PORT}"
    with running(bentoml_serve(PORT), f"{url}/health") as server:
        asyncio.run(open_loop(url, texts[:50], 2, 5))  # warm-up
        capacity, search = highest_rate(url, texts[-500:], best, args.search_steps, args.step_seconds)
        if capacity == 0:
            raise SystemExit(f"no rate held p95 < {TARGET_P95_MS:.0f} ms without errors: {search}")
        rate = args.share * capacity
        memory_before = rss_mb(server.pid)
        rows = asyncio.run(open_loop(url, texts, rate, 60 * args.minutes))
        memory_after = rss_mb(server.pid)
    minutes = []
    for minute in range(int(np.ceil(args.minutes))):
        window = [r for r in rows if minute * 60 <= r[0] < (minute + 1) * 60]
        ok = [latency for _, latency, status in window if status == 200]
        minutes.append(
            {
                "minute": minute + 1,
                "requests": len(window),
                "errors": len(window) - len(ok),
                "p95_ms": float(np.percentile(ok, 95)) if ok else None,
            }
        )
    growth = {role: memory_after[role] / memory_before[role] - 1 for role in memory_before}
    result = {
        "cpu": cpu_flags(),
        "rate_per_s": rate,
        "open_loop_max_rps_p95_under_100ms": capacity,
        "search": search,
        "benchmark_max_rps_p95_under_100ms": best,
        "minutes": minutes,
        "errors": sum(m["errors"] for m in minutes),
        "rss_mb_before": memory_before,
        "rss_mb_after": memory_after,
        "rss_growth": growth,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    table = "\n".join(f"| {m['minute']} | {m['requests']} | {m['errors']} | {m['p95_ms']:.0f} |" for m in minutes)
    memory = "\n".join(
        f"| {role} | {memory_before[role]:.0f} | {memory_after[role]:.0f} | {growth[role]:+.1%} |" for role in growth
    )
    steps = "\n".join(f"| {s['rate_per_s']:.1f} | {s['p95_ms']:.0f} | {'yes' if s['held'] else 'no'} |" for s in search)
    (OUT / "SOAK.md").write_text(
        f"# Soak test\n\nGenerated by `make soak` (`loadtests/soak.py`) on `{result['cpu']}`: "
        f"{args.minutes:g} minutes, open loop at {rate:.1f} requests/s, {args.share:.0%} of the {capacity:.1f}/s "
        f"that held p95 < {TARGET_P95_MS:.0f} ms with no errors in the search below ({args.step_seconds:g} s per step; "
        f"`make benchmark`'s closed loop held {best:.1f}/s).\n\n"
        f"| open-loop rate /s | p95 ms | held |\n|---|---|---|\n{steps}\n\n"
        f"Errors: **{result['errors']}**.\n\n| minute | requests | errors | p95 ms |\n|---|---|---|---|\n{table}\n\n"
        f"| process | RSS MB before | after | growth |\n|---|---|---|---|\n{memory}\n"
    )
    print((OUT / "SOAK.md").read_text())


if __name__ == "__main__":
    main()
