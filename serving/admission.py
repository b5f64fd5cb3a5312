"""Admission to the transformer by the time the queue ahead will take, so that the requests let in stay fast.

Counting requests does not bound a wait: a `/predict_batch` of 64 texts costs 64 reviews, and a review costs what the
file chosen on this CPU costs. So the API worker keeps the texts it has sent to the classifier and not had back, and
the measured time the classifier takes per text while it has work (the time over the texts answered, in windows of
at least `WINDOW_S` or to the end of a busy spell: answers of a batch come back together, and batches run texts side
by side, so this is less than one call's latency); a request whose texts would wait past `max_queue_ms` for the
texts ahead of them gets a fast 503 + Retry-After instead. A request onto an empty queue is always admitted (whatever
its size), a batch weighs its texts for the requests after it, and a review that the lexical model answers alone
never comes here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from serving import errors

SMOOTHING = 0.2  # weight of the newest measurement in the moving average of a text's cost
WINDOW_S = 0.1  # the shortest stretch of answers one measurement covers


class TransformerAdmission:
    def __init__(self, max_queue_ms: float, max_in_flight: int, ms_per_text: float = 20.0):
        self.max_queue_ms, self.max_in_flight = max_queue_ms, max_in_flight
        self.ms_per_text = ms_per_text  # a first guess, replaced by measurements as answers come back
        self.queued_texts = self.in_flight = 0
        self.mark, self.answered = 0.0, 0  # the start of the measurement window, and the texts answered since

    def expected_wait_ms(self) -> float:
        """The time the texts ahead of a new request will take (its own texts are its own cost, not a wait)."""
        return self.queued_texts * self.ms_per_text

    @contextmanager
    def admit(self, texts: int) -> Iterator[None]:
        """Hold `texts` in the queue for the duration of the block, or raise a 503 when the queue ahead is too long."""
        if (wait_ms := self.expected_wait_ms()) > self.max_queue_ms:
            raise errors.ApiError(
                503,
                f"the transformer's queue would take about {wait_ms:.0f} ms (limit {self.max_queue_ms:.0f} ms); "
                "retry shortly",
            )
        if self.in_flight >= self.max_in_flight:
            raise errors.ApiError(503, f"over {self.max_in_flight} requests in flight; retry shortly")
        if not self.queued_texts:  # a busy spell begins: idle time is no cost
            self.mark, self.answered = time.perf_counter(), 0
        self.queued_texts += texts
        self.in_flight += 1
        try:
            yield
        finally:
            self.queued_texts -= texts
            self.in_flight -= 1
        self.answered += texts  # reached only when the block succeeded: an answer came back
        elapsed = time.perf_counter() - self.mark
        if elapsed >= WINDOW_S or not self.queued_texts:
            self.ms_per_text += SMOOTHING * (1000 * elapsed / self.answered - self.ms_per_text)
            self.mark, self.answered = self.mark + elapsed, 0

    def describe(self) -> dict:
        return {
            "queued_texts": self.queued_texts,
            "ms_per_text": round(self.ms_per_text, 2),
            "max_queue_ms": self.max_queue_ms,
        }
