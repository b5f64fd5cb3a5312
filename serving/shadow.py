"""The shadow rollout of A/B testing: a copy of each request goes to the challenger, answered in the background and
only logged and measured, never returned. Copies have a budget of their own and are dropped first: past
`max_in_flight` pending copies, or as soon as the transformer's texts start to queue (before any user is refused), a
copy is skipped and counted (`sentiment_ab_shadow_skipped_total`), so the copies never take a user's place."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import TYPE_CHECKING

from serving.ab import CHALLENGER
from serving.core.hybrid import Mode
from serving.telemetry import RequestRecord, RequestTelemetry

if TYPE_CHECKING:
    from serving.inference import Inference

log = logging.getLogger("sentiment.service")


class Shadows:
    def __init__(self, core: Inference, telemetry: RequestTelemetry, max_in_flight: int):
        self.core, self.telemetry, self.max_in_flight = core, telemetry, max_in_flight
        self.pending: set[asyncio.Task] = set()  # held here: the loop keeps only weak references to tasks

    def send(self, record: RequestRecord, texts: list[str], mode: Mode | None) -> None:
        if len(self.pending) >= self.max_in_flight or self.core.classifier.queue.building():
            self.telemetry.shadow_skipped.inc()
            return
        task = asyncio.create_task(self._answer(record, texts, mode))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _answer(self, record: RequestRecord, texts: list[str], mode: Mode | None) -> None:
        shadow = dataclasses.replace(record, arm=CHALLENGER, shadow=True, started=time.perf_counter())
        try:
            self.telemetry.record(shadow, texts, await self.core.predict(texts, CHALLENGER, mode))
        except Exception as error:
            log.warning("shadow copy of %s failed: %r", record.request_id, error)
