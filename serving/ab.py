"""A/B testing: which arm answers a request, the champion or a challenger served beside it.

A request's arm depends only on its sticky key (the `x-user-id` header, else the request id), so one user keeps one
arm for as long as the allocation stays the same. In the `shadow` rollout every answer comes from the champion and
the challenger gets a copy in the background, logged and measured but never returned. (The API calls an arm a
`variant`: the response field, the `x-model-variant` header, the log key and the metric label keep that name.)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

Arm = Literal["champion", "challenger"]
CHAMPION: Arm = "champion"
CHALLENGER: Arm = "challenger"
Rollout = Literal["split", "shadow"]


def bucket(key: str) -> float:
    """A number in [0, 1) fixed by the key: the same user always lands on the same side of the allocation."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


@dataclass(frozen=True)
class Allocation:
    """`split`: `challenger_share` of the keys get the challenger; `shadow`: everyone gets the champion and the
    challenger sees a copy. Without a challenger everyone gets the champion."""

    rollout: Rollout
    challenger_share: float
    has_challenger: bool

    def __post_init__(self) -> None:
        if self.rollout not in ("split", "shadow") or not 0 <= self.challenger_share <= 1:
            raise ValueError(f"A/B: the rollout must be split or shadow and the share in [0, 1]; got {self}")

    def assign(self, key: str) -> Arm:
        if self.has_challenger and self.rollout == "split" and bucket(key) < self.challenger_share:
            return CHALLENGER
        return CHAMPION

    @property
    def shadows(self) -> bool:
        return self.has_challenger and self.rollout == "shadow"

    def describe(self) -> dict:
        if not self.has_challenger:
            return {"rollout": "off: champion only"}
        share = 0.0 if self.rollout == "shadow" else self.challenger_share
        return {"rollout": self.rollout, "challenger_share": share}
