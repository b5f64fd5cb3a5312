"""New model versions while serving: the store is asked every `model_poll_s` what the served tags name now
(`name:latest` moves when `make retrain` promotes a champion), and a new version is loaded whole beside the old one,
off the event loop, then swapped in one step, so that every answer comes from one version and says which.

Loaded before the swap: the classifier's ONNX files and their self-check on this CPU, the lexical model, policy,
labels and registry version, and for the champion its drift profile and explainer (the old explainer answers until
then). The classifier keeps the old version until every request that could still name it is past its deadline.
"""

from __future__ import annotations

import asyncio
import logging

import bentoml

from serving.ab import CHAMPION, Arm
from serving.classifier_client import ClassifierClient
from serving.explain import Explanations
from serving.telemetry import RequestTelemetry
from serving.versions import ModelVersion, current_tag

log = logging.getLogger("sentiment.service")


class Reloads:
    def __init__(
        self,
        versions: dict[Arm, ModelVersion],
        classifier: ClassifierClient,
        telemetry: RequestTelemetry,
        explanations: Explanations,
        hybrid_mode: str,
    ):
        self.versions, self.classifier, self.hybrid_mode = versions, classifier, hybrid_mode
        self.telemetry, self.explanations = telemetry, explanations

    async def watch(self, wanted: dict[Arm, str], every_s: float) -> None:
        """Forever: each arm's version follows the store tag `wanted` names for it."""
        while True:
            await asyncio.sleep(every_s)
            for arm, version in list(self.versions.items()):
                try:
                    tag = await asyncio.to_thread(current_tag, wanted[arm])
                    if tag != version.tag:
                        await self.reload(arm, tag)
                except Exception as error:
                    log.warning("could not reload the %s from %s: %r", arm, wanted[arm], error)

    async def reload(self, arm: Arm, tag: str) -> None:
        old = self.versions[arm]
        checked = await self.classifier.reload(arm, tag)
        model = await asyncio.to_thread(bentoml.models.get, tag)
        version = await asyncio.to_thread(ModelVersion.of, arm, model, self.hybrid_mode)
        if arm == CHAMPION:
            profile = await asyncio.to_thread(self.telemetry.profile_of, model.path)
            explainer = await asyncio.to_thread(self.explanations.build, version, checked["recipe"])
            self.telemetry.use_profile(profile)  # from here to the swap: no await, one step for every request
            self.explanations.use(explainer)
        self.versions[arm] = version
        log.warning("the %s is now %s (%s)", arm, tag, version.model_version)
        await asyncio.sleep(self.classifier.deadline_s)  # the requests that chose the old version are answered
        await self.classifier.retire(old.tag)
