"""The student a model's cascade names (`make tiers`), registered and exported when missing, so that the store holds
both transformers of a three-tier cascade (`make serve` and `make model` run this after the model's own export).

    python -m export.student --model-dir models/imdb-minilm-lora [--fp32-first]

Nothing happens when the model's policy has no student tier. The student goes through the same registry gate, ONNX
export, int8 recipes, parity gate and per-CPU choice as any model, under its own config's names; with `--fp32-first`
its fp32 file is imported at once and its int8 files follow from an export beside the service, as for the model.
"""

from __future__ import annotations

from pathlib import Path

from mlflow import MlflowClient

from export.export import ExportConfig, export_what_is_missing
from serving.core.hybrid import named_student
from training.config import RELEASE_MODEL_DIR, ExperimentConfig, command_line, load_config
from training.registry import champion_version, register, setup_tracking


def main() -> None:
    _, args = command_line(
        ExperimentConfig,
        __doc__,
        source="--model-dir",
        default=RELEASE_MODEL_DIR,
        flags={"--fp32-first": "an empty store gets the student's fp32 file at once, its int8 files from beside"},
    )
    student = named_student(args.source)
    if student is None:
        print(f"{args.source}'s cascade has no student tier")
        return
    student_dir = Path(student["model_dir"])
    config = load_config(student_dir / "config.yaml")
    setup_tracking(config.dataset)
    if not champion_version(MlflowClient(), config.registered_model):
        version, alias = register(student_dir, config)
        print(f"registered {config.registered_model} v{version} as {alias}")
    names = config.stage_names()
    export = ExportConfig(
        model_uri=names["MODEL_URI"],
        bento_model=names["BENTO_MODEL"],
        work_dir=f"{names['BUILD_DIR']}/onnx",
        report=f"{names['BUILD_DIR']}/export/parity.json",
    )
    export_what_is_missing(export, fp32_at_once=args.fp32_first)


if __name__ == "__main__":
    main()
