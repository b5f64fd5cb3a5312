"""Admission to the transformer by the time the queue ahead will take, so that the requests let in stay fast.

Counting requests does not bound a wait: a `/predict_batch` of 64 texts costs 64 reviews, and a review costs what the
file chosen on this CPU costs. So the API worker keeps the texts it has sent to the classifier and not had back, and
the measured cost of a text (from calls that found nothing ahead of them: their latency is the classifier's own);
a request whose texts would wait past `max_queue_ms` gets a fast 503 + Retry-After instead. A request onto an empty
queue is always admitted, and one that the lexical model answers alone never comes here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from serving import errors

SMOOTHING = 0.2  # weight of the newest measurement in the moving average of a text's cost


class TransformerAdmission:
    def __init__(self, max_queue_ms: float, max_in_flight: int, ms_per_text: float = 20.0):
        self.max_queue_ms, self.max_in_flight = max_queue_ms, max_in_flight
        self.ms_per_text = ms_per_text  # a first guess, replaced by measurements as calls come back
        self.queued_texts = self.in_flight = 0

    def expected_wait_ms(self, texts: int) -> float:
        return (self.queued_texts + texts) * self.ms_per_text

    @contextmanager
    def admit(self, texts: int) -> Iterator[None]:
        """Hold `texts` in the queue for the duration of the block, or raise a 503 when they would wait too long."""
        if self.queued_texts and self.expected_wait_ms(texts) > self.max_queue_ms:
            raise errors.ApiError(
                503,
                f"the transformer's queue would take about {self.expected_wait_ms(texts):.0f} ms "
                f"(limit {self.max_queue_ms:.0f} ms); retry shortly",
            )
        if self.in_flight >= self.max_in_flight:
            raise errors.ApiError(503, f"over {self.max_in_flight} requests in flight; retry shortly")
        alone = self.queued_texts == 0
        self.queued_texts += texts
        self.in_flight += 1
        started = time.perf_counter()
        try:
            yield
        finally:
            self.queued_texts -= texts
            self.in_flight -= 1
        if alone:  # reached only when the block succeeded: its latency is the classifier's cost of these texts
            measured = 1000 * (time.perf_counter() - started) / texts
            self.ms_per_text += SMOOTHING * (measured - self.ms_per_text)

    def describe(self) -> dict:
        return {
            "queued_texts": self.queued_texts,
            "ms_per_text": round(self.ms_per_text, 2),
            "max_queue_ms": self.max_queue_ms,
        }
