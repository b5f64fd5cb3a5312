"""Admission refuses a standing queue, never a burst or a request's own size, and the door refuses a worker that is
behind before any work (no timing asserted: an interval of 0 ms makes "for a whole interval" immediate)."""

import pytest

from serving.admission import Door, StandingQueue
from serving.errors import ApiError


def test_a_burst_that_drains_is_never_refused():
    queue = StandingQueue(target_ms=50, interval_ms=0)
    with queue.admit():
        for wait_ms in (400, 300, 10):  # a burst: long waits, then one text that met an empty queue
            queue.observe(wait_ms)
        assert not queue.standing()
        with queue.admit():  # admitted whatever it carries: admission never weighs a request's own texts
            pass


def test_a_queue_that_stands_for_the_interval_is_refused_until_it_drains():
    queue = StandingQueue(target_ms=50, interval_ms=0)
    with queue.admit():
        queue.observe(120)
        queue.observe(80)
        assert queue.standing()
        with pytest.raises(ApiError) as refused, queue.admit():
            pass
        assert refused.value.status == 503 and "over 50 ms" in refused.value.error
    assert queue.in_flight == 0 and not queue.standing()  # nothing in flight: the queue is empty


def test_waits_above_the_target_for_less_than_the_interval_are_a_burst():
    queue = StandingQueue(target_ms=50, interval_ms=60_000)
    with queue.admit():
        queue.observe(500)
        assert not queue.standing()


def test_the_door_refuses_a_worker_that_stays_behind():
    door = Door(max_loop_lag_ms=50, max_concurrency=2, interval_ms=0)
    assert door.refusal() is None
    door.probed(0.2)
    assert "200 ms behind" in door.refusal()
    door.probed(0.01)  # caught up
    assert door.refusal() is None
    door.inside = 2
    assert "over 2 requests" in door.refusal()


def test_one_late_probe_is_a_stall_not_a_worker_behind():
    door = Door(max_loop_lag_ms=50, max_concurrency=2, interval_ms=60_000)
    door.probed(0.5)
    assert door.refusal() is None


def test_shadow_copies_are_dropped_as_soon_as_texts_queue_before_any_user_is_refused():
    """While the transformer's texts wait over the target (not yet for a whole interval: no user is refused), a shadow
    copy is skipped and counted; once the queue drains, copies go again."""
    import asyncio
    from types import SimpleNamespace

    from serving.shadow import Shadows
    from serving.telemetry import RequestRecord

    queue, skipped, answered = StandingQueue(target_ms=50, interval_ms=60_000), [], []

    async def predict(texts, arm, mode):
        answered.append(arm)
        return []

    core = SimpleNamespace(classifier=SimpleNamespace(queue=queue), predict=predict)
    telemetry = SimpleNamespace(shadow_skipped=SimpleNamespace(inc=lambda: skipped.append(1)), record=lambda *a: None)
    record = RequestRecord("r1", "/predict", "user", "champion", 0.0)

    async def copies() -> None:
        shadows = Shadows(core, telemetry, max_in_flight=8)
        with queue.admit():
            queue.observe(120)  # texts queue: the queue is building, not standing
            assert queue.building() and not queue.standing()
            shadows.send(record, ["A review."], None)
        queue.observe(5)
        shadows.send(record, ["A review."], None)
        await asyncio.gather(*shadows.pending)

    asyncio.run(copies())
    assert skipped == [1] and answered == ["challenger"]
