"""A model version as the API worker serves it: one export of the store, whole (its tag, labels, registry version
and lexical half), so that an answer never mixes two (`gateway.py` swaps a new one in at once)."""

from __future__ import annotations

from dataclasses import dataclass

from serving.ab import Arm
from serving.core.hybrid import HybridRouter
from serving.core.selfcheck import StoredModel


@dataclass(frozen=True)
class ModelVersion:
    """One served export as the API process uses it: the arm it answers for, its store tag, labels, registry version
    and lexical half."""

    arm: Arm
    tag: str
    path: str
    label_names: list[str]
    model_version: str
    hybrid: HybridRouter
    gate_reviews: int | None  # how many reviews the export's parity gate judged (older exports: unknown)

    @classmethod
    def of(cls, arm: Arm, model: StoredModel, hybrid_mode: str) -> ModelVersion:
        metadata = model.info.metadata
        return cls(
            arm=arm,
            tag=str(model.info.tag),
            path=model.path,
            label_names=metadata["label_names"],
            model_version=f"{metadata['mlflow_model']}:{metadata['mlflow_version']}",
            hybrid=HybridRouter(model.path, hybrid_mode),
            gate_reviews=metadata.get("gate_reviews"),
        )


def current_tag(tag: str) -> str:
    """What `tag` names in the store now (`name:latest` moves when an export lands)."""
    import bentoml  # here: the schemas import this module, and Spark's executors need no BentoML

    return str(bentoml.models.get(tag).tag)
