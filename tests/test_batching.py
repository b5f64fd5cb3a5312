"""BentoML's batching dispatcher, as the classifier runs it: it learns its latency model but never holds a request
back to wait for batch-mates; and the checks that say when a BentoML upgrade voids this patch or the arbiter's."""

from bentoml._internal.marshal.dispatcher import CorkDispatcher, Optimizer

import serving.classifier  # noqa: F401  (the classifier's module applies it on import)
from serving.batching import dispatch_problem
from serving.supervision import check_workers_every, worker_check_problem


def test_the_dispatcher_learns_latency_but_does_not_wait_for_batch_mates():
    optimizer = CorkDispatcher(max_latency_in_ms=5000, max_batch_size=64, fallback=list).optimizer
    assert isinstance(optimizer, Optimizer)
    for n in (1, 2, 4, 8) * 10:  # batches that had waited 200 ms each, as after a burst
        optimizer.log_outbound(n=n, wait=0.2, duration=0.01 + 0.03 * n)
    optimizer.trigger_refresh()
    assert optimizer.wait == 0
    assert abs(optimizer.o_a - 0.03) < 1e-6 and abs(optimizer.o_b - 0.01) < 1e-6  # the deadline's model still learns


def test_a_voided_patch_is_reported_without_timing(monkeypatch):
    """What the service checks at start (logged as an error, a /health warning): nothing while the patches hold,
    a problem as soon as BentoML's own behaviour is back."""
    from bentoml._internal.utils import circus

    check_workers_every(0.5)
    assert worker_check_problem(0.5) is None and dispatch_problem() is None
    monkeypatch.setattr(circus, "Arbiter", circus.Arbiter.bentoml_arbiter)  # as if BentoML no longer used the name
    assert "every 10 s, not 0.5 s" in worker_check_problem(0.5)
    monkeypatch.setattr(Optimizer, "trigger_refresh", Optimizer.bentoml_trigger_refresh)
    assert "waits" in dispatch_problem()
