"""The shadow rollout of A/B testing: a copy of each request goes to the challenger, answered in the background and
only logged and measured, never returned; past `max_in_flight` pending copies one is skipped (and counted), so the
copies never slow the answers."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable

from serving.ab import CHALLENGER, Arm
from serving.core.hybrid import Mode
from serving.schemas import Prediction
from serving.telemetry import RequestRecord, RequestTelemetry

log = logging.getLogger("sentiment.service")
Answer = Callable[[list[str], Mode | None, Arm], Awaitable[list[Prediction]]]


class Shadows:
    def __init__(self, answer: Answer, telemetry: RequestTelemetry, max_in_flight: int):
        self.answer, self.telemetry, self.max_in_flight = answer, telemetry, max_in_flight
        self.pending: set[asyncio.Task] = set()  # held here: the loop keeps only weak references to tasks

    def send(self, record: RequestRecord, texts: list[str], mode: Mode | None) -> None:
        if len(self.pending) >= self.max_in_flight:
            self.telemetry.shadow_skipped.inc()
            return
        task = asyncio.create_task(self._answer(record, texts, mode))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _answer(self, record: RequestRecord, texts: list[str], mode: Mode | None) -> None:
        shadow = dataclasses.replace(record, arm=CHALLENGER, shadow=True, started=time.perf_counter())
        try:
            self.telemetry.record(shadow, texts, await self.answer(texts, mode, CHALLENGER))
        except Exception as error:
            log.warning("shadow copy of %s failed: %r", record.request_id, error)
