"""An export as the API worker serves it: one model of the store, whole (its tag, labels, registry version
and lexical half), so that an answer never mixes two (`inference.Inference.use` swaps a new one in at once)."""

from __future__ import annotations

from dataclasses import dataclass

from serving.ab import Arm
from serving.core.hybrid import HybridRouter, Tier, named_student
from serving.core.selfcheck import StoredModel


@dataclass(frozen=True)
class ServedExport:
    """One served export as the API process uses it: the arm it answers for, its store tag and folder, labels,
    registry version and lexical half."""

    arm: Arm
    tag: str
    directory: str
    label_names: list[str]
    registry_version: str  # the MLflow registered model it came from, name:version
    hybrid: HybridRouter
    gate_reviews: int | None  # how many reviews the export's parity gate judged (older exports: unknown)
    student_tag: str | None  # the store model of the cascade's student tier, when its policy has one and it is here

    @classmethod
    def of(cls, arm: Arm, model: StoredModel, hybrid_mode: str) -> ServedExport:
        metadata = model.info.metadata
        student = student_tag(model)
        return cls(
            arm=arm,
            tag=str(model.info.tag),
            directory=model.path,
            label_names=metadata["label_names"],
            registry_version=f"{metadata['mlflow_model']}:{metadata['mlflow_version']}",
            hybrid=HybridRouter(model.path, hybrid_mode, with_student=student is not None),
            gate_reviews=metadata.get("gate_reviews"),
            student_tag=student,
        )

    @property
    def tags(self) -> dict[Tier, str]:
        """The store model that answers each transformer tier of this export's cascade."""
        return {"teacher": self.tag} | ({"student": self.student_tag} if self.student_tag else {})


def current_tag(tag: str) -> str:
    """What `tag` names in the store now (`name:latest` moves when an export lands)."""
    import bentoml  # here: the schemas import this module, and Spark's executors need no BentoML

    return str(bentoml.models.get(tag).tag)


def student_tag(model: StoredModel) -> str | None:
    """The store tag of the student its policy names (`make tiers`), if the policy has a student tier and the store
    has the student's export; else None (the cascade runs on two tiers)."""
    import bentoml

    if (student := named_student(model.path)) is None:
        return None
    try:
        return str(bentoml.models.get(f"{student['bento_model']}:latest").tag)
    except bentoml.exceptions.NotFound:
        return None


def runtime_of(tag: str, workers: int | None = None):
    """The store model `tag` (a student, say) in this process, with the file its self-check chooses on this CPU
    (seconds): for the in-process consumers of the cascade (explanations, the benchmark's ceiling, evaluation)."""
    import bentoml

    from serving.core.selfcheck import SelfCheckLimits, load_classifier

    stored = bentoml.models.get(tag)
    return load_classifier(stored.path, SelfCheckLimits.of(stored), workers=workers)[0]
