"""Admission to the transformer by the time its queue will take: an empty queue always admits, a batch weighs its
texts, the limit answers 503, and the cost of a text is learned from the answers (no timing asserted)."""

import pytest

from serving.admission import TransformerAdmission
from serving.errors import ApiError


def test_an_empty_queue_admits_any_batch_and_a_full_one_sheds_by_expected_wait():
    admission = TransformerAdmission(max_queue_ms=100, max_in_flight=48, ms_per_text=10)
    with admission.admit(64):  # a whole batch onto an empty queue: admitted, however long it takes
        assert admission.queued_texts == 64
        with pytest.raises(ApiError) as shed, admission.admit(1):
            pass
        assert shed.value.status == 503 and "would take about 640 ms" in shed.value.error
    assert admission.queued_texts == 0 and admission.in_flight == 0


def test_a_batch_weighs_its_texts_and_requests_past_the_count_limit_are_shed():
    admission = TransformerAdmission(max_queue_ms=80, max_in_flight=2, ms_per_text=10)
    with admission.admit(1), admission.admit(8):  # 1 text ahead x 10 ms = 10 ms: admitted
        assert admission.expected_wait_ms() == 90  # 9 texts ahead of the next request: shed
        assert "would take about 90 ms" in refusal(admission)
    by_count = TransformerAdmission(max_queue_ms=1000, max_in_flight=2, ms_per_text=10)
    with by_count.admit(1), by_count.admit(1):
        assert "over 2 requests in flight" in refusal(by_count)


def test_the_cost_of_a_text_is_learned_from_answers_and_failures_teach_nothing():
    admission = TransformerAdmission(max_queue_ms=100, max_in_flight=48, ms_per_text=1e6)
    with admission.admit(4):
        pass
    learned = admission.ms_per_text
    assert learned < 1e6  # moved from the first guess toward what the answer took
    with pytest.raises(RuntimeError), admission.admit(4):
        raise RuntimeError("the classifier failed")
    assert admission.ms_per_text == learned and admission.queued_texts == 0


def refusal(admission: TransformerAdmission) -> str:
    """Why one more text is shed (the test fails if it is admitted)."""
    with pytest.raises(ApiError) as shed, admission.admit(1):
        pass
    assert shed.value.status == 503
    return shed.value.error
