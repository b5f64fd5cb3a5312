"""What keeps a reload out of the answers' way, checked in this process: work on yielding threads runs below the
answers' priority, ONNX Runtime's own threads included, and the classifier keeps BentoML's one sync thread for its
batches. Needs the model in the BentoML store (`make model`, which `make test` runs first)."""

from __future__ import annotations

import asyncio
import os
import platform
import threading

import bentoml
import pytest

from serving.core.runtime import YIELDING_NICENESS, OnnxTextClassifier, yielding_threads
from serving.core.selfcheck import FP32_FILE
from serving.settings import SETTINGS

linux_only = pytest.mark.skipif(platform.system() != "Linux", reason="per-thread priorities are Linux's")


def niceness(thread_id: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, thread_id)


def threads_started_by(make) -> tuple[object, set[int]]:
    """What `make()` returns, and the ids of the threads of this process that appeared meanwhile."""
    before = {int(t) for t in os.listdir("/proc/self/task")}
    made = make()
    return made, {int(t) for t in os.listdir("/proc/self/task")} - before


@linux_only
def test_yielding_threads_and_the_onnx_threads_they_start_run_below_the_answers():
    served = bentoml.models.get(SETTINGS.bento_model_tag).path
    ours = niceness(threading.get_native_id())
    pool = yielding_threads("test", 1)
    assert pool.submit(lambda: niceness(threading.get_native_id())).result() == ours + YIELDING_NICENESS

    def session_threads() -> tuple[OnnxTextClassifier, set[int]]:
        return threads_started_by(lambda: OnnxTextClassifier(served, FP32_FILE, workers=2))

    built_below, started_below = pool.submit(session_threads).result()
    assert started_below and {niceness(t) for t in started_below} == {ours + YIELDING_NICENESS}
    built_here, started_here = session_threads()  # the answers' own: their threads keep this priority
    assert started_here and {niceness(t) for t in started_here} == {ours}
    assert built_below.predict_proba(["fine"]).shape == built_here.predict_proba(["fine"]).shape
    pool.shutdown()


def test_the_classifier_leaves_bentoml_s_one_sync_thread_to_its_batches():
    """BentoML runs a service's sync APIs one at a time: a sync `load` held every `classify` batch for the whole
    load (the slowest answers of a reload, measured by `make reload-drill`)."""
    from serving.classifier import OnnxClassifier

    sync = {name for name, api in OnnxClassifier.apis.items() if not asyncio.iscoroutinefunction(api.func)}
    assert sync == {"classify"}
