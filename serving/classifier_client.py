"""The transformer's service seen from the API worker: each call names the model version that must answer, is refused
while the classifier has a standing queue (`admission.StandingQueue`, fed the waits it reports), comes back within
the deadline, and survives a stale pooled connection.

`client` is BentoML's async client of `OnnxClassifier` (`classifier.py`, a `bentoml.depends` of the API service);
nothing else in the API worker talks to it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from serving.ab import Arm
from serving.admission import StandingQueue

STATUS_TIMEOUT_S = 2.0
CONNECTION_RETRIES = 3  # stale pooled connections a call may meet before it reaches the classifier


class ClassifierClient:
    def __init__(self, client: Any, queue: StandingQueue, deadline_s: float):
        self.client, self.queue, self.deadline_s = client, queue, deadline_s

    async def classify(self, texts: list[str], tag: str) -> list[list[float]]:
        """Class probabilities for `texts` from the store model `tag` (a version, or its student): a fast 503 while a
        queue stands (admission)."""
        sent = time.time()
        asks = [{"model": tag, "text": text, "sent": sent} for text in texts]  # this model and no other

        async def classify() -> list[Any]:
            for _ in range(CONNECTION_RETRIES):
                try:
                    return await self.client.classify(asks)
                except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
                    # A pooled connection the classifier had closed (its server drops idle keep-alive connections
                    # sooner than the client drops them, and a pool can hold several; BentoML exposes neither setting),
                    # or a restarting worker: `classify` is pure, send it again (within the deadline).
                    pass
            return await self.client.classify(asks)

        with self.queue.admit(len(texts)):
            answers = await asyncio.wait_for(classify(), self.deadline_s)
        batch = answers[0]  # classifier.Answer, as BentoML's client reads them: a call's texts run in one batch
        self.queue.observe(delay_from_others(answers, len(texts)), batch.batch_ms / batch.batch_texts)
        return [answer.probabilities for answer in answers]

    async def status(self) -> dict:
        """The champion's file served and its self-check on this CPU, the batches run, the versions loaded."""
        return await asyncio.wait_for(self.client.status(), STATUS_TIMEOUT_S)

    async def load(self, tag: str) -> dict:
        """The store's model `tag` loaded and self-checked beside the others, not served yet: its self-check."""
        return await self.client.load(tag=tag)

    async def switch(self, arm: Arm, tag: str) -> None:
        """The loaded model `tag` served as `arm`."""
        await self.client.switch(arm=arm, tag=tag)

    async def retire(self, tag: str) -> None:
        """Version `tag` unloaded: no request names it any more."""
        await self.client.retire(tag=tag)


def delay_from_others(answers: list[Any], own_texts: int) -> float:
    """How long a call's texts were held up by other requests' (ms): the wait before their batch started, plus the
    batch's time on texts that were not theirs. A batch takes every text queued, so under a standing queue the wait
    of the last text in can be near zero while the batch ahead of its answer is long; a request's own texts never
    count (a batch of 64 reviews alone waits on nothing)."""
    batch = answers[0]
    return max(a.waited_ms for a in answers) + batch.batch_ms * (1 - own_texts / batch.batch_texts)
