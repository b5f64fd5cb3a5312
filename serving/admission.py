"""Admission: refuse only a standing queue, and refuse it before any work is spent on the request.

Two questions, asked in two places:

- At the door (`intake.py`), before the body is parsed or the lexical model runs: is this worker behind? Its event
  loop ran a timer more than `max_loop_lag_ms` late (`telemetry.watch_loop` measures it), or `max_concurrency`
  requests are already inside. Such a refusal does no work, so it stays fast however long the queue.
- Before the transformer (`classifier_client.py`): does the classifier have a standing queue? CoDel's rule (Nichols
  and Jacobson, 2012): the classifier reports, per call, how long other requests' texts held it up (its wait before
  its batch started, and the batch's time on texts not its own: a batch takes every text queued, so the wait alone
  misses the queue); a queue stands when every call answered for a whole `interval_ms` was held up more than
  `target_ms`. A burst (one batch of many texts, several clients at once) drains within the interval and is never
  refused; a request's own texts never count against it. While a queue stands, a call is refused only when the texts
  ahead of it would keep it past the target, so the queue is held short rather than emptied and refilled.

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
    """CoDel's test on how long the classifier held each call up, and what it then admits.

    A queue stands once every call answered for a whole interval was held up over the target by other requests'
    texts (`observe`); it keeps standing until a whole interval passes in which nothing was refused. While it stands,
    a call is admitted only if the texts already in flight would keep it waiting no longer than the target (at the
    classifier's recent time per text): the queue is held near the target instead of emptied and refilled. A call
    is never weighed by its own texts."""

    def __init__(self, target_ms: float, interval_ms: float):
        self.target_ms, self.interval_s = target_ms, interval_ms / 1000
        self.above = Sustained(target_ms, self.interval_s)
        self.in_flight = self.texts_in_flight = 0
        self.last_delay_ms = self.ms_per_text = 0.0
        self.stood_since: float | None = None  # when the queue came to stand
        self.last_refusal = 0.0

    def observe(self, delay_ms: float, ms_per_text: float) -> None:
        """One call: how long other requests' texts held it up, and its batch's time per text."""
        self.last_delay_ms, self.ms_per_text = delay_ms, ms_per_text
        self.above.measured(delay_ms)

    def standing(self) -> bool:
        """Whether a queue stands: with calls in flight, the delays stayed above the target for a whole interval, and
        since then an interval has not passed without a refusal (nothing in flight is then nothing ahead: admitted)."""
        now = time.monotonic()
        if self.in_flight > 0 and self.above.held():
            self.stood_since = self.stood_since or now
        elif self.stood_since is not None and now - max(self.stood_since, self.last_refusal) >= self.interval_s:
            self.stood_since = None
        return self.stood_since is not None

    def building(self) -> bool:
        """Whether texts in flight are held up over the target now (a queue that may come to stand): the moment to
        drop work no user waits for, such as shadow copies, before any user is refused."""
        return self.in_flight > 0 and self.above.since is not None

    def ahead_ms(self) -> float:
        """How long the texts in flight would keep a new call waiting, at the recent time per text."""
        return self.texts_in_flight * self.ms_per_text

    @contextmanager
    def admit(self, texts: int) -> Iterator[None]:
        """Hold a call of `texts` in flight for the block, or refuse it with a 503 + Retry-After while a queue stands
        and the texts ahead of it would keep it waiting past the target."""
        if self.standing() and self.ahead_ms() > self.target_ms:
            self.last_refusal = time.monotonic()
            raise errors.ApiError(
                503,
                f"the transformer's queue has held calls over {self.target_ms:.0f} ms for "
                f"{1000 * self.interval_s:.0f} ms, and the texts ahead would wait {self.ahead_ms():.0f} ms; "
                "retry shortly",
            )
        self.in_flight, self.texts_in_flight = self.in_flight + 1, self.texts_in_flight + texts
        try:
            yield
        finally:
            self.in_flight, self.texts_in_flight = self.in_flight - 1, self.texts_in_flight - texts

    def describe(self) -> dict:
        return {
            "in_flight": self.in_flight,
            "texts_in_flight": self.texts_in_flight,
            "last_delay_ms": round(self.last_delay_ms, 1),
            "ms_per_text": round(self.ms_per_text, 1),
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
