"""The behaviours of BentoML this service changes, for want of a setting: applied once at start, and checked there.

- **A batch leaves as soon as the classifier is free.** BentoML's dispatcher (`CorkDispatcher`) also holds a request
  back to wait for batch-mates for as long as requests recently waited on average (`Optimizer.wait`, refreshed from
  the last batches). That memory feeds itself: after a burst, every lone request is held back again for minutes
  (`make benchmark`'s transformer mode showed it). Waiting buys this classifier nothing, since each text is its own
  ONNX Runtime call spread over the cores. The queue, the batch size limit and the `max_latency_ms` deadline stay.
- **A killed worker is respawned within `worker_check_s`.** BentoML's circus arbiter notices a dead worker only on
  its periodic check, hard-coded (`create_standalone_arbiter`) to far longer than a user waits. The arbiter process
  imports the service before it builds the arbiter, so the change is in place for the arbiter about to be made.
- **The service's own middleware is outermost.** BentoML stacks its request metrics, tracing span, access log and
  timeout outside the middleware a service adds, so a request the front door refuses (a 503 under overload, a 404)
  paid for all of them first, and an overload's refusals took the worker's time from the requests it admits. The
  front door counts what it answers itself (`sentiment_door_answers_total`); BentoML's request metrics and access log
  see only the requests it lets in.
- **Request metrics are labelled by route, not by raw path.** BentoML's request metrics take the request's path as
  their `endpoint` label, so every distinct path a scanner tries adds series to `/metrics` and to the worker's memory,
  without bound. Here a path outside the service's routes is labelled `unknown` (and the front door answers 404).

`apply` makes the changes and then checks them: it builds a dispatcher and an arbiter as BentoML does, and reads that
BentoML's app still stacks the service's middleware in the list reordered here and that the metrics middleware still
takes its label from the path it is given. If a BentoML upgrade renamed or reworked what they touch, the service
refuses to start and says which one and why, instead of serving without them. None changes what a client is answered.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from typing import Any

import bentoml


class IncompatibleBentoML(RuntimeError):
    """BentoML no longer takes one of the changes: pin the version the project names or update this module."""


def apply(worker_check_s: float, route_of: Callable[[str], str]) -> None:
    """The changes, in this process, checked; `IncompatibleBentoML` (which stops the start) if one is void.
    `route_of` gives the metric label of a request path."""
    try:
        _dispatch_when_free()
        _check_workers_every(worker_check_s)
        _metrics_by_route(route_of)
        _own_middleware_outermost()
        checks = (_dispatch_problem(), _worker_check_problem(worker_check_s), _metrics_problem(), _stack_problem())
        problems = [problem for problem in checks if problem]
    except (ImportError, AttributeError, TypeError, OSError) as error:  # an internal renamed, reworked or unreadable
        problems = [f"{type(error).__name__}: {error}"]
    if problems:
        raise IncompatibleBentoML(
            f"BentoML {bentoml.__version__} does not take this service's changes ({'; '.join(problems)}): "
            "install the bentoml version in requirements-serve.txt, or update serving/compat.py"
        )


def _dispatch_when_free() -> None:
    from bentoml._internal.marshal.dispatcher import Optimizer

    if getattr(Optimizer, "waits_for_batch_mates", True) is False:
        return  # already applied in this process
    learn = Optimizer.trigger_refresh

    def refresh_without_wait(self: Optimizer) -> None:
        learn(self)  # the latency model still drives the max_latency_ms deadline
        self.wait = 0

    Optimizer.trigger_refresh = refresh_without_wait  # type: ignore[method-assign]
    Optimizer.waits_for_batch_mates = False  # type: ignore[attr-defined]


def _dispatch_problem() -> str | None:
    """Feeds a dispatcher BentoML builds now as after a burst: None if it learns its latency model but never waits."""
    from bentoml._internal.marshal.dispatcher import CorkDispatcher

    optimizer = CorkDispatcher(max_latency_in_ms=5000, max_batch_size=64, fallback=list).optimizer
    for n in (1, 2, 4, 8) * 10:  # batches that had each waited long, as after a burst
        optimizer.log_outbound(n=n, wait=0.2, duration=0.01 + 0.03 * n)
    optimizer.trigger_refresh()
    if optimizer.wait != 0:
        return f"its batching still waits {optimizer.wait:.3f} s for batch-mates"
    return None


def _check_workers_every(seconds: float) -> None:
    from bentoml._internal.utils import circus

    bentoml_arbiter = getattr(circus.Arbiter, "bentoml_arbiter", circus.Arbiter)  # once, however often applied

    class Arbiter(bentoml_arbiter):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, "check_delay": seconds})

    Arbiter.bentoml_arbiter = bentoml_arbiter
    circus.Arbiter = Arbiter


def _worker_check_problem(seconds: float) -> str | None:
    """Builds an arbiter as BentoML does (not started: no process, no socket): None if it checks every `seconds`."""
    from bentoml._internal.utils import circus

    arbiter = circus.create_standalone_arbiter([])
    if arbiter.check_delay != seconds:
        return f"its arbiter checks its workers every {arbiter.check_delay} s, not {seconds} s"
    return None


def _own_middleware_outermost() -> None:
    from _bentoml_impl.server.app import ServiceAppFactory

    stacked = getattr(ServiceAppFactory.middlewares.fget, "bentoml_property", ServiceAppFactory.middlewares)

    def middlewares(self: ServiceAppFactory) -> list:
        stack = stacked.fget(self)
        own = {cls for cls, _ in self.service.middlewares}
        return [m for m in stack if m.cls in own] + [m for m in stack if m.cls not in own]

    middlewares.bentoml_property = stacked  # type: ignore[attr-defined]  # once, however often applied
    ServiceAppFactory.middlewares = property(middlewares)  # type: ignore[method-assign,assignment]


def _stack_problem() -> str | None:
    """None if BentoML still builds its middleware list in the property `middlewares`, with the service's own in it
    (what `_own_middleware_outermost` reorders)."""
    from _bentoml_impl.server.app import ServiceAppFactory

    stacked = getattr(ServiceAppFactory.middlewares.fget, "bentoml_property", None)
    if not isinstance(stacked, property) or "self.service.middlewares" not in inspect.getsource(stacked.fget):
        return "its app no longer stacks the service's middleware in ServiceAppFactory.middlewares"
    return None


def _metrics_by_route(route_of: Callable[[str], str]) -> None:
    from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware as Metrics

    metered = getattr(Metrics.__call__, "bentoml_call", Metrics.__call__)  # once, however often applied

    async def by_route(self: Metrics, scope: dict, receive: Any, send: Any) -> None:
        route = route_of(scope["path"]) if scope["type"] in ("http", "websocket") else scope.get("path")
        if route == scope.get("path"):
            return await metered(self, scope, receive, send)
        inner, path = self.app, scope["path"]

        async def with_its_path(labelled: dict, receive: Any, send: Any) -> None:
            await inner(dict(labelled, path=path), receive, send)

        labeller = copy.copy(self)  # per request: the path is given back to the app below it
        labeller.app = with_its_path
        await metered(labeller, dict(scope, path=route), receive, send)

    by_route.bentoml_call = metered  # type: ignore[attr-defined]
    Metrics.__call__ = by_route  # type: ignore[method-assign]


def _metrics_problem() -> str | None:
    """None if BentoML's metrics middleware still labels a request by the path in its scope (what `by_route` sets)."""
    from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware as Metrics

    metered = getattr(Metrics.__call__, "bentoml_call", None)
    if metered is None or 'endpoint = scope["path"]' not in inspect.getsource(metered):
        return "its request metrics no longer take their endpoint label from the scope's path"
    return None
