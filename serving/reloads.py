"""New exports while serving: the store is asked every `model_poll_s` what the served tags name now (`name:latest`
moves when `make retrain` promotes a champion, or a rollback moves it back), and a new export is swapped in whole, in
two phases, so that every answer comes from one export and says which:

1. Built beside the old one, off the event loop: the API side whole (lexical model, policy, labels, registry version,
   and for the champion its drift profile) on a thread of lower CPU priority, then the classifier's files, loaded and
   self-checked beside its batches, not in their way (a verdict already reached on this CPU is kept, not measured
   again), then for the champion its explainer (lower priority too: `explain.Explanations`).
2. Switched in one step: the classifier's arm, then the inference core's export (`Inference.use`).

Any failure before the switch leaves the old export serving whole; `/health` names the export that failed and why,
and it is tried again after a delay that doubles each time. The classifier keeps the old export until every request
that could still name it is past its deadline, then retires it (meanwhile the watch goes on), and both workers give
the memory of its sessions back to the system.
"""

from __future__ import annotations

import asyncio
import logging
import time

import bentoml

from serving.ab import CHAMPION, Arm
from serving.core.runtime import release_memory, yielding_threads
from serving.explain import Explanations
from serving.exports import ServedExport, current_tag
from serving.inference import Inference

log = logging.getLogger("sentiment.service")
MAX_BACKOFF_S = 600.0


class Reloads:
    def __init__(self, core: Inference, explanations: Explanations, hybrid_mode: str):
        self.core, self.explanations, self.hybrid_mode = core, explanations, hybrid_mode
        self.classifier, self.telemetry = core.classifier, core.telemetry
        self.failed: dict[Arm, dict] = {}  # per arm, its latest failed export (one entry each: bounded)
        self.retiring: set[asyncio.Task] = set()  # held: the event loop keeps only weak references
        self.threads = yielding_threads("reload", 1)  # the API side's build, below the answers' priority

    async def watch(self, wanted: dict[Arm, str], every_s: float) -> None:
        """Forever: each arm's export follows the store tag `wanted` names for it."""
        while True:
            await asyncio.sleep(every_s)
            for arm, export in self.core.exports.items():
                try:
                    tag = await asyncio.to_thread(current_tag, wanted[arm])
                except Exception as error:
                    log.warning("could not ask the store what %s names: %r", wanted[arm], error)
                    continue
                if tag == export.tag:
                    self.failed.pop(arm, None)  # the store names the served export again (a rollback)
                    continue
                if not self.due(arm, tag):
                    continue
                try:
                    await self.reload(arm, tag)
                    self.failed.pop(arm, None)
                except Exception as error:
                    self.fail(arm, tag, error, every_s)

    def due(self, arm: Arm, tag: str) -> bool:
        failed = self.failed.get(arm)
        return failed is None or failed["tag"] != tag or time.monotonic() >= failed["retry_at"]

    def fail(self, arm: Arm, tag: str, error: Exception, every_s: float) -> None:
        earlier = self.failed.get(arm, {})
        tries = earlier.get("tries", 0) + 1 if earlier.get("tag") == tag else 1
        delay = min(every_s * 2**tries, MAX_BACKOFF_S)
        if tries == 1:  # once per export, not once per try
            log.warning("the %s stays %s: %s failed to load (%r)", arm, self.core.exports[arm].tag, tag, error)
        self.failed[arm] = {
            "tag": tag,
            "error": repr(error)[:300],
            "tries": tries,
            "retry_at": time.monotonic() + delay,
        }

    async def reload(self, arm: Arm, tag: str) -> None:
        old = self.core.exports[arm]
        loop = asyncio.get_running_loop()
        model = await loop.run_in_executor(self.threads, bentoml.models.get, tag)
        export = await loop.run_in_executor(self.threads, ServedExport.of, arm, model, self.hybrid_mode)
        profile = None
        if arm == CHAMPION:
            profile = await loop.run_in_executor(self.threads, self.telemetry.profile_of, model.path)
        try:
            checked = await self.classifier.load(tag)
            explainer = None
            if arm == CHAMPION:
                explainer = await self.explanations.build(export, checked["recipe"])
        except Exception:
            await self.classifier.retire(tag)  # loaded beside the old one, never served
            raise
        await self.classifier.switch(arm, tag)
        if profile is not None and explainer is not None:  # from here to the swap: no await, one step
            self.telemetry.use_profile(profile)
            self.explanations.use(explainer)
        self.core.use(export)
        log.warning("the %s is now %s (%s)", arm, tag, export.registry_version)
        retiring = asyncio.create_task(self.retire(old.tag))  # the watch goes on meanwhile
        self.retiring.add(retiring)
        retiring.add_done_callback(self.retiring.discard)

    async def retire(self, tag: str) -> None:
        """The old export unloaded once the requests that chose it are answered, and its memory given back."""
        await asyncio.sleep(self.classifier.deadline_s)
        await self.classifier.retire(tag)
        await asyncio.to_thread(release_memory)

    def describe(self) -> dict:
        """Per arm whose latest export failed to load: which, why, the tries, and when it is tried again."""
        now = time.monotonic()
        return {
            arm: {key: failed[key] for key in ("tag", "error", "tries")}
            | {"retry_in_s": round(max(failed["retry_at"] - now, 0), 1)}
            for arm, failed in self.failed.items()
        }
