"""Adaptive batching without the wait for batch-mates: a batch leaves as soon as the classifier is free.

BentoML's dispatcher (`CorkDispatcher` in `bentoml._internal.marshal.dispatcher`) runs one batch at a time; the
requests that arrive meanwhile form the next one. Besides, it holds a request back to wait for batch-mates for as
long as requests recently waited on average (`Optimizer.wait`, refreshed from the last 50 batches). That memory feeds
itself: after a burst, when requests queued behind a running batch, every lone request is held back for about that
long again, for minutes (in `make benchmark`, the transformer mode's single client, measured after the busier modes,
waited for batch-mates that never came). Waiting buys this classifier nothing: each text is its own ONNX Runtime
call, spread over the cores, so a fuller batch is not cheaper per text. BentoML has no setting for it;
`dispatch_when_free` keeps the queue, the batch size limit and the `max_latency_ms` deadline and drops only the wait.
It replaces a private method: `dispatch_problem` feeds a dispatcher as after a burst and says so when a BentoML
upgrade voided it (the service logs it as an error and `/health` warns).
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
    Optimizer.bentoml_trigger_refresh = learn  # type: ignore[attr-defined]
    Optimizer.waits_for_batch_mates = False  # type: ignore[attr-defined]


def dispatch_problem() -> str | None:
    """None if a dispatcher BentoML builds now learns its latency model but never waits, else what is wrong."""
    from bentoml._internal.marshal.dispatcher import CorkDispatcher

    optimizer = CorkDispatcher(max_latency_in_ms=5000, max_batch_size=64, fallback=list).optimizer
    for n in (1, 2, 4, 8) * 10:  # batches that had waited 200 ms each, as after a burst
        optimizer.log_outbound(n=n, wait=0.2, duration=0.01 + 0.03 * n)
    optimizer.trigger_refresh()
    if optimizer.wait != 0:
        return f"BentoML's batching waits {optimizer.wait:.3f} s for batch-mates again (serving/batching.py)"
    return None
