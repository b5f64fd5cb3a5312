"""Why the service answered as it did: SHAP's partition explainer over the words of a review.

It explains the served decision (the hybrid policy in the service's mode: the lexical model, and the ONNX
transformer where the policy sends the text onward) on the part of the review the transformer reads (head + tail),
with its own ONNX Runtime session, so an explanation never waits in, or fills, the predict path's batching queue.
Cost: about `max_evals` decisions per explanation (SHAP's partition explainer spends that budget on a hierarchy
of word groups: coarser for longer reviews, exact additivity always).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

import numpy as np
from pydantic import BaseModel, Field

from serving.core.hybrid import TRANSFORMER_ONLY, HybridPolicy
from serving.core.runtime import yielding_threads
from serving.core.selfcheck import served_runtime
from serving.core.text import visible_text
from serving.errors import ApiError
from serving.exports import ServedExport, runtime_of

WORDS = r"\W+"  # SHAP's text masker splits on non-word characters: attributions are per word


class WordAttribution(BaseModel):
    word: str
    start: int = Field(description="Character offset of the word in `explained_text`")
    end: int
    attributions: dict[str, float] = Field(description="Contribution of the word to each class's probability")


class Explanation(BaseModel):
    label: str = Field(description="The decision on `explained_text`")
    scores: dict[str, float]
    base_scores: dict[str, float] = Field(
        description="Probabilities with every word masked; the attributions sum to `scores` minus these"
    )
    explained_text: str = Field(
        description="The cleaned review as the transformer reads it: head and tail when it is long"
    )
    truncated: bool = Field(description="True when the middle of the review was cut (the transformer never sees it)")
    words: list[WordAttribution]
    method: str
    evaluations: int = Field(description="Decisions computed for this explanation")
    elapsed_ms: float


class Explainer:
    """One per API worker; `explain` is blocking (run it in a thread)."""

    def __init__(self, export: ServedExport, recipe: str | None, workers: int):
        import shap  # here, not at the top: seconds of imports that only the API worker's explainer needs

        self.transformer = served_runtime(export.directory, recipe, workers)  # the file the classifier chose here
        self.student = runtime_of(export.student_tag, workers) if export.student_tag else None  # the middle tier
        self.router = export.hybrid
        self.label_names = export.label_names  # the store's: the labels every answer of the API names
        self.masker = shap.maskers.Text(WORDS, mask_token="...", collapse_mask_token=True)
        self.partition = shap.explainers.Partition
        self.explain("Warm up.", TRANSFORMER_ONLY, max_evals=8)  # SHAP's numba kernels compile on first use

    def decision(self, texts: list[str], policy: HybridPolicy) -> np.ndarray:
        """The served probabilities of `texts` under `policy`, as the service computes them."""
        return self.router.classify_in_process(texts, policy, self.transformer, student=self.student)[0]

    def explain(self, text: str, policy: HybridPolicy, max_evals: int) -> Explanation:
        started = time.perf_counter()
        seen, truncated = visible_text(text, self.transformer.tokenizer, self.transformer.encoding)
        calls = []

        def model(masked: np.ndarray) -> np.ndarray:
            calls.append(len(masked))
            return self.decision([str(t) for t in masked], policy)

        spans = self.masker.tokenizer(seen)["offset_mapping"]
        scores = model(np.array([seen]))[0]
        if len(spans) < 2:  # SHAP's text clustering needs two pieces; one word's attribution is exact without it
            base = model(np.array([self.masker.mask_token]))[0] if any(e > s for s, e in spans) else scores
            values, base_values = [scores - base] * len(spans), base
        else:
            explainer = self.partition(model, self.masker, output_names=self.label_names)
            result = explainer([seen], max_evals=max_evals, silent=True)[0]
            values, base_values = result.values, result.base_values
        words = [
            WordAttribution(
                word=seen[start:end],
                start=start,
                end=end,
                attributions=dict(zip(self.label_names, np.asarray(value, dtype=float).tolist(), strict=True)),
            )
            for (start, end), value in zip(spans, values, strict=True)
            if end > start
        ]
        best = int(scores.argmax())
        return Explanation(
            label=self.label_names[best],
            scores=dict(zip(self.label_names, scores.tolist(), strict=True)),
            base_scores=dict(zip(self.label_names, np.asarray(base_values, dtype=float).tolist(), strict=True)),
            explained_text=seen,
            truncated=truncated,
            words=words,
            method=f"SHAP partition explainer, word masker, budget {max_evals} evaluations, {policy.mode} decision",
            evaluations=sum(calls),
            elapsed_ms=round(1000 * (time.perf_counter() - started), 1),
        )


class Explanations:
    """The API worker's explainer, for the champion: built in the background (SHAP compiles its kernels on first use:
    seconds, and readiness must not wait for it), replaced whole when a new champion is swapped in (the old one
    answers meanwhile), and behind its own concurrency limit, so explanations never queue in the predict path. Built
    and run on threads of a lower CPU priority (theirs and their ONNX sessions'): they never take a core from an
    answer."""

    def __init__(self, workers: int, max_in_flight: int, max_evals: int):
        self.workers, self.max_in_flight, self.max_evals = workers, max_in_flight, max_evals
        self.explaining = 0
        self.explainer: asyncio.Future[Explainer] | None = None  # until `load_in_background`
        self.threads = yielding_threads("explain", max_in_flight + 1)  # one more: a build beside the explanations

    async def build(self, export: ServedExport, recipe: str | None) -> Explainer:
        """An explainer for `export`, serving the file `recipe` names (seconds, on the yielding threads)."""
        return await asyncio.get_running_loop().run_in_executor(self.threads, Explainer, export, recipe, self.workers)

    def load_in_background(self, first: Awaitable[tuple[ServedExport, str | None]]) -> None:
        """The first explainer, for the export and file `first` names once the classifier has chosen its file."""

        async def load() -> Explainer:
            return await self.build(*await first)

        self.explainer = asyncio.ensure_future(load())

    def use(self, explainer: Explainer) -> None:
        self.explainer = asyncio.get_running_loop().create_future()
        self.explainer.set_result(explainer)

    def state(self) -> str:
        """`ready`, `warming up`, or `unavailable (...)` when loading it failed."""
        if self.explainer is None or not self.explainer.done():
            return "warming up"
        if self.explainer.cancelled():
            return "unavailable"
        error = self.explainer.exception()
        return "ready" if error is None else f"unavailable ({error!r})"

    async def explain(self, text: str, policy: HybridPolicy) -> Explanation:
        if (state := self.state()) != "ready":
            raise ApiError(503, f"the explainer is {state}; retry shortly")
        if self.explaining >= self.max_in_flight:
            raise ApiError(503, f"over {self.max_in_flight} explanations in flight; retry shortly")
        self.explaining += 1
        try:
            explainer = self.explainer.result()  # type: ignore[union-attr]  (ready: checked above)
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.threads, explainer.explain, text, policy, self.max_evals)
        finally:
            self.explaining -= 1
