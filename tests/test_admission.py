"""Admission refuses a standing queue, never a burst or a request's own size, and the door refuses a worker that is
behind before any work (no timing asserted: an interval of 0 ms makes "for a whole interval" immediate)."""

import pytest

from serving.admission import Door, StandingQueue
from serving.classifier_client import delay_from_others
from serving.errors import ApiError

MS_PER_TEXT = 30.0


def test_a_burst_that_drains_is_never_refused():
    queue = StandingQueue(target_ms=50, interval_ms=0)
    with queue.admit(texts=1):
        for delay_ms in (400, 300, 10):  # a burst: long delays, then one call that met an empty queue
            queue.observe(delay_ms, MS_PER_TEXT)
        assert not queue.standing()
        with queue.admit(texts=64):  # admitted whatever it carries: admission never weighs a request's own texts
            pass


def test_a_standing_queue_is_held_short_until_an_interval_passes_with_nothing_refused():
    queue = StandingQueue(target_ms=50, interval_ms=0)
    with queue.admit(texts=1):
        queue.observe(120, MS_PER_TEXT)
        queue.observe(80, MS_PER_TEXT)
        assert queue.standing()
        # one text ahead (30 ms) admits a call of 8, whatever its own size; nine ahead (270 ms) refuse the next
        with queue.admit(texts=8), pytest.raises(ApiError) as refused, queue.admit(texts=1):
            pass
    assert refused.value.status == 503 and "over 50 ms" in refused.value.error and "270 ms" in refused.value.error
    assert queue.in_flight == 0 and queue.texts_in_flight == 0
    assert not queue.standing()  # nothing in flight, and an interval (0 ms) without a refusal: the queue drained


def test_delays_above_the_target_for_less_than_the_interval_are_a_burst():
    queue = StandingQueue(target_ms=50, interval_ms=60_000)
    with queue.admit(texts=1):
        queue.observe(500, MS_PER_TEXT)
        assert not queue.standing()


def test_a_call_is_held_up_by_the_wait_and_by_the_batch_time_of_other_requests_texts():
    """A batch takes every text queued: the last text in waits for nothing, yet its answer comes after the others'."""
    batch = {"waited_ms": 0.0, "batch_ms": 300.0, "batch_texts": 10}
    answers = [type("Answer", (), batch)()]
    assert delay_from_others(answers, own_texts=1) == pytest.approx(270.0)
    assert delay_from_others(answers * 10, own_texts=10) == 0.0  # a request alone with its own texts
    waited = [type("Answer", (), batch | {"waited_ms": 40.0})()]
    assert delay_from_others(waited, own_texts=10) == 40.0


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
        with queue.admit(texts=1):
            queue.observe(120, MS_PER_TEXT)  # texts queue: the queue is building, not standing
            assert queue.building() and not queue.standing()
            shadows.send(record, ["A review."], None)
        queue.observe(5, MS_PER_TEXT)
        shadows.send(record, ["A review."], None)
        await asyncio.gather(*shadows.pending)

    asyncio.run(copies())
    assert skipped == [1] and answered == ["challenger"]
