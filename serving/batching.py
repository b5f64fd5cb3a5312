"""Adaptive batching without the wait for batch-mates: a batch leaves as soon as the classifier is free.

BentoML's dispatcher (`CorkDispatcher` in `bentoml._internal.marshal.dispatcher`) runs one batch at a time; the
requests that arrive meanwhile form the next one. Besides, it holds a request back to wait for batch-mates for as
long as requests recently waited on average (`Optimizer.wait`, refreshed from the last 50 batches). That memory feeds
itself: after a burst, when requests queued behind a running batch, every lone request is held back for about that
long again, for minutes (in `make benchmark`, the transformer mode's single client, measured after the busier modes,
waited for batch-mates that never came). Waiting buys this classifier nothing: each text is its own ONNX Runtime
call, spread over the cores, so a fuller batch is not cheaper per text. BentoML has no setting for it;
`dispatch_when_free` keeps the queue, the batch size limit and the `max_latency_ms` deadline and drops only the wait.
"""

from __future__ import annotations


def dispatch_when_free() -> None:
    """Make BentoML's batching dispatchers in this process stop waiting for batch-mates (idempotent)."""
    from bentoml._internal.marshal.dispatcher import Optimizer

    if getattr(Optimizer, "waits_for_batch_mates", True) is False:
        return
    learn = Optimizer.trigger_refresh

    def refresh_without_wait(self: Optimizer) -> None:
        learn(self)  # the latency model (o_a, o_b) still drives the max_latency_ms deadline
        self.wait = 0

    Optimizer.trigger_refresh = refresh_without_wait  # type: ignore[method-assign]
    Optimizer.waits_for_batch_mates = False  # type: ignore[attr-defined]
