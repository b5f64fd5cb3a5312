"""Admission: refuse only a standing queue, and refuse it before any work is spent on the request.

Two questions, asked in two places:

- At the door (`intake.py`), before the body is parsed or the lexical model runs: is this worker behind? Its event
  loop ran a timer more than `max_loop_lag_ms` late (`telemetry.watch_loop` measures it), or `max_concurrency`
  requests are already inside. Such a refusal does no work, so it stays fast however long the queue.
- Before the transformer (`classifier_client.py`): does the classifier have a standing queue? CoDel's rule (Nichols
  and Jacobson, 2012): the classifier reports how long each text waited before its batch started; a queue stands when
  every text answered for a whole `interval_ms` waited more than `target_ms`. A burst (one batch of many texts, several
  clients at once) drains within the interval and is never refused; a request's own texts never count against it.

Below saturation nothing is refused: the queue drains between bursts, and the door's signals stay low.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from serving import errors

LOOP_PROBE_S = 0.05  # how often the event loop's lag is measured


class Sustained:
    """Whether every value measured for a whole interval was above a limit (one value at or below resets it)."""

    def __init__(self, limit: float, interval_s: float):
        self.limit, self.interval_s = limit, interval_s
        self.since: float | None = None  # when the values went above the limit and stayed there

    def measured(self, value: float) -> None:
        if value <= self.limit:
            self.since = None
        elif self.since is None:
            self.since = time.monotonic()

    def held(self) -> bool:
        return self.since is not None and time.monotonic() - self.since >= self.interval_s


class StandingQueue:
    """CoDel's test on the waits the classifier reports, with the calls in flight counted."""

    def __init__(self, target_ms: float, interval_ms: float):
        self.target_ms, self.interval_s = target_ms, interval_ms / 1000
        self.above = Sustained(target_ms, self.interval_s)
        self.in_flight = 0
        self.last_wait_ms = 0.0

    def observe(self, waited_ms: float) -> None:
        """One text's wait before its batch started."""
        self.last_wait_ms = waited_ms
        self.above.measured(waited_ms)

    def standing(self) -> bool:
        """Whether the waits have stayed above the target for a whole interval (never with nothing in flight: then
        the queue is empty)."""
        return self.in_flight > 0 and self.above.held()

    def building(self) -> bool:
        """Whether texts in flight are waiting over the target now (a queue that may come to stand): the moment to
        drop work no user waits for, such as shadow copies, before any user is refused."""
        return self.in_flight > 0 and self.above.since is not None

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Hold a call in flight for the block, or refuse it with a 503 + Retry-After while a queue stands."""
        if self.standing():
            raise errors.ApiError(
                503,
                f"the transformer's queue has held every text over {self.target_ms:.0f} ms for "
                f"{1000 * self.interval_s:.0f} ms; retry shortly",
            )
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    def describe(self) -> dict:
        return {
            "in_flight": self.in_flight,
            "last_wait_ms": round(self.last_wait_ms, 1),
            "standing": self.standing(),
            "target_ms": self.target_ms,
            "interval_ms": 1000 * self.interval_s,
        }


class Door:
    """Whether the worker is behind: checked for every request before its body is parsed. As for the queue, a lag
    counts only once every probe for `interval_ms` found it (a stall at start or a burst is not a standing queue)."""

    def __init__(self, max_loop_lag_ms: float, max_concurrency: int, interval_ms: float):
        self.max_loop_lag_s, self.max_concurrency = max_loop_lag_ms / 1000, max_concurrency
        self.loop_lag_s = 0.0  # the latest lag the event loop's probe measured
        self.lagging = Sustained(self.max_loop_lag_s, interval_ms / 1000)
        self.inside = 0

    def refusal(self) -> str | None:
        if self.inside >= self.max_concurrency:
            return f"over {self.max_concurrency} requests in flight"
        if self.lagging.held():
            return f"the worker is {1000 * self.loop_lag_s:.0f} ms behind (limit {1000 * self.max_loop_lag_s:.0f} ms)"
        return None

    def probed(self, lag_s: float) -> None:
        self.loop_lag_s = lag_s
        self.lagging.measured(lag_s)

    async def watch_loop(self, histogram: Any) -> None:
        """How late the event loop runs a timer (into `histogram` too): the stall every request here waits out."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + LOOP_PROBE_S
            await asyncio.sleep(LOOP_PROBE_S)
            self.probed(max(loop.time() - due, 0.0))
            histogram.observe(self.loop_lag_s)

    def describe(self) -> dict:
        return {"inside": self.inside, "loop_lag_ms": round(1000 * self.loop_lag_s, 1)}


class Streams:
    """The web UI's connections (Gradio's heartbeats, queue streams, uploads: they may stay open for minutes) have a
    budget of their own, apart from the API's door, and one client address holds at most `per_client` of them, so a
    client that opens many costs only itself. Only addresses with connections open are kept."""

    def __init__(self, total: int, per_client: int):
        self.total, self.per_client = total, per_client
        self.open: dict[str, int] = {}
        self.count = 0

    def refusal(self, client: str) -> tuple[int, str] | None:
        if self.open.get(client, 0) >= self.per_client:
            return 429, f"this client holds {self.per_client} web UI connections already; close some"
        if self.count >= self.total:
            return 503, f"the web UI holds {self.total} connections already; retry shortly"
        return None

    @contextmanager
    def held(self, client: str) -> Iterator[None]:
        self.open[client], self.count = self.open.get(client, 0) + 1, self.count + 1
        try:
            yield
        finally:
            self.count -= 1
            if (left := self.open[client] - 1) > 0:
                self.open[client] = left
            else:
                del self.open[client]

    def describe(self) -> dict:
        return {"open": self.count, "clients": len(self.open), "total": self.total, "per_client": self.per_client}
