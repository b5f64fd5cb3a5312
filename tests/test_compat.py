"""The BentoML behaviours the service changes (`serving/compat.py`): in effect once applied, and a start that stops,
saying why, when a BentoML upgrade voids one."""

import subprocess
import sys

import pytest
from bentoml._internal.marshal.dispatcher import CorkDispatcher, Optimizer

from serving import compat


def test_the_dispatcher_learns_latency_but_does_not_wait_for_batch_mates():
    compat.apply(worker_check_s=1.0, route_of=lambda path: path)
    optimizer = CorkDispatcher(max_latency_in_ms=5000, max_batch_size=64, fallback=list).optimizer
    assert isinstance(optimizer, Optimizer)
    for n in (1, 2, 4, 8) * 10:  # batches that had each waited 200 ms, as after a burst
        optimizer.log_outbound(n=n, wait=0.2, duration=0.01 + 0.03 * n)
    optimizer.trigger_refresh()
    assert optimizer.wait == 0
    assert abs(optimizer.o_a - 0.03) < 1e-6 and abs(optimizer.o_b - 0.01) < 1e-6  # the deadline's model still learns


VOIDED = {
    "an internal renamed": "from bentoml._internal.marshal.dispatcher import Optimizer; del Optimizer.trigger_refresh",
    "a change that no longer takes": (
        "import types; from bentoml._internal.utils import circus; "
        "circus.create_standalone_arbiter = lambda *a, **k: types.SimpleNamespace(check_delay=10)"
    ),
    "middleware stacked elsewhere": (
        "from _bentoml_impl.server.app import ServiceAppFactory; "
        "ServiceAppFactory.middlewares = property(lambda self: [])"
    ),
}


@pytest.mark.parametrize("voided", VOIDED.values(), ids=VOIDED.keys())
def test_a_voided_change_stops_the_start_with_a_clear_message(voided):
    """The service module as `bentoml serve` imports it, after a BentoML whose internals moved: no start."""
    started = subprocess.run([sys.executable, "-c", f"{voided}; import service"], capture_output=True, text=True)
    assert started.returncode != 0
    assert "IncompatibleBentoML" in started.stderr and "requirements-serve.txt" in started.stderr
