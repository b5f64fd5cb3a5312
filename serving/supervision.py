"""A killed worker is respawned within about a second, not ten.

`bentoml serve` runs each worker under a circus arbiter that notices a dead process only on its periodic check, and
BentoML hard-codes that interval to 10 s (`create_standalone_arbiter` in `bentoml._internal.utils.circus`, not a
setting of `bentoml serve`; circus has no SIGCHLD handler). So a worker killed by the OOM killer or `kill -9` stayed
down for up to 10 s before its restart even began. The arbiter process imports the service before it builds the
arbiter, so `check_workers_every` in service.py sets the interval for the arbiter about to be made.

The patch replaces a private class: `worker_check_problem` builds an arbiter as BentoML does and says so when a
BentoML upgrade voided it (the service logs it as an error and `/health` warns).
"""

from __future__ import annotations

from typing import Any


def check_workers_every(seconds: float) -> None:
    """Make the arbiters BentoML creates from now on check (and respawn) their workers every `seconds`."""
    from bentoml._internal.utils import circus

    bentoml_arbiter = getattr(circus.Arbiter, "bentoml_arbiter", circus.Arbiter)  # once, however often imported

    class Arbiter(bentoml_arbiter):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, "check_delay": seconds})

    Arbiter.bentoml_arbiter = bentoml_arbiter
    circus.Arbiter = Arbiter


def worker_check_problem(seconds: float) -> str | None:
    """None if an arbiter BentoML builds now checks its workers every `seconds`, else what is wrong."""
    from bentoml._internal.utils import circus

    arbiter = circus.create_standalone_arbiter([])  # not started: no process, no socket stays open
    if arbiter.check_delay != seconds:
        return f"BentoML's arbiter checks its workers every {arbiter.check_delay} s, not {seconds} s (supervision.py)"
    return None
