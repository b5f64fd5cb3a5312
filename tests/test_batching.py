"""BentoML's batching dispatcher, as the classifier runs it: it learns its latency model but never holds a request
back to wait for batch-mates."""

from bentoml._internal.marshal.dispatcher import CorkDispatcher, Optimizer

import serving.classifier  # noqa: F401  (the classifier's module applies it on import)


def test_the_dispatcher_learns_latency_but_does_not_wait_for_batch_mates():
    optimizer = CorkDispatcher(max_latency_in_ms=5000, max_batch_size=64, fallback=list).optimizer
    assert isinstance(optimizer, Optimizer)
    for n in (1, 2, 4, 8) * 10:  # batches that had waited 200 ms each, as after a burst
        optimizer.log_outbound(n=n, wait=0.2, duration=0.01 + 0.03 * n)
    optimizer.trigger_refresh()
    assert optimizer.wait == 0
    assert abs(optimizer.o_a - 0.03) < 1e-6 and abs(optimizer.o_b - 0.01) < 1e-6  # the deadline's model still learns
