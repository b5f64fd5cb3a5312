"""A/B testing: the models the service answers with (champion, and a challenger beside it) and who gets which.

A request's variant depends only on its sticky key (the `x-user-id` header, else the request id), so one user keeps
one variant for as long as the split stays the same. In `shadow` mode every answer comes from the champion and the
challenger gets a copy in the background, logged and measured but never returned.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal, Protocol

from serving.hybrid import HybridRouter

VariantName = Literal["champion", "challenger"]
CHAMPION: VariantName = "champion"
CHALLENGER: VariantName = "challenger"
ABMode = Literal["split", "shadow"]


class StoredModel(Protocol):
    """What a BentoML model offers, whether declared in the service (`BentoModel`) or read from the store."""

    @property
    def path(self) -> str: ...

    @property
    def info(self): ...


def bucket(key: str) -> float:
    """A number in [0, 1) fixed by the key: the same user always lands on the same side of the split."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


@dataclass(frozen=True)
class Split:
    """`split`: `challenger_share` of the keys get the challenger; `shadow`: everyone gets the champion and the
    challenger sees a copy. Without a challenger everyone gets the champion."""

    mode: ABMode
    challenger_share: float
    has_challenger: bool

    def __post_init__(self) -> None:
        if self.mode not in ("split", "shadow") or not 0 <= self.challenger_share <= 1:
            raise ValueError(f"A/B: mode must be split or shadow and the share in [0, 1]; got {self}")

    def assign(self, key: str) -> VariantName:
        if self.has_challenger and self.mode == "split" and bucket(key) < self.challenger_share:
            return CHALLENGER
        return CHAMPION

    @property
    def shadows(self) -> bool:
        return self.has_challenger and self.mode == "shadow"

    def describe(self) -> dict:
        if not self.has_challenger:
            return {"mode": "off: champion only"}
        share = 0.0 if self.mode == "shadow" else self.challenger_share
        return {"mode": self.mode, "challenger_share": share}


@dataclass(frozen=True)
class Variant:
    """One served model as the API process uses it: its store tag, labels, registry version and lexical half."""

    name: VariantName
    tag: str
    path: str
    label_names: list[str]
    model_version: str
    hybrid: HybridRouter

    @classmethod
    def of(cls, name: VariantName, model: StoredModel, hybrid_mode: str) -> Variant:
        metadata = model.info.metadata
        return cls(
            name=name,
            tag=str(model.info.tag),
            path=model.path,
            label_names=metadata["label_names"],
            model_version=f"{metadata['mlflow_model']}:{metadata['mlflow_version']}",
            hybrid=HybridRouter(model.path, hybrid_mode),
        )


def current_tag(tag: str) -> str:
    """What `tag` names in the store now (`name:latest` moves when an export lands)."""
    import bentoml  # here: the schemas import this module, and Spark's executors need no BentoML

    return str(bentoml.models.get(tag).tag)
