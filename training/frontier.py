"""The cascade's frontier judged on the test split: every configuration `make tiers` chose on validation (two and
three tiers, at each loss bound), scored on the test reviews with the ONNX files the store serves on this CPU.

    python -m training.frontier --model-dir models/imdb-minilm-lora   (make frontier, after make tiers and both exports)

Per configuration: validation and test accuracy, the share of reviews each transformer reads, and the transformer CPU
per request in-process (each file's ms/review timed here on the same reviews, times its share), beside the lexical
model's. Writes reports/experiments/tiers/frontier.json and FRONTIER.md, with the CPU's flags.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import bentoml
import numpy as np

from serving.core.hybrid import LEXICAL_FILE, POLICY_FILE, HybridPolicy, LexicalModel
from serving.core.runtime import cpu_flags
from serving.exports import runtime_of
from training.config import RELEASE_MODEL_DIR, ExperimentConfig, command_line, load_config
from training.data import load_data
from training.tiers import FRONTIER_FILE, judged

OUT = Path("reports/experiments/tiers")
TIMED_REVIEWS = 200
HEADER = (
    "| loss bound | tiers | lexical threshold | student threshold | validation accuracy | test accuracy "
    "| reach the student | reach the teacher | model ms per request |\n|---|---|---|---|---|---|---|---|---|"
)


def ms_per_review(predict, texts: list[str]) -> float:
    """Median ms of one review at a time (how the service runs a lone review)."""
    predict(texts[:5])
    timings = []
    for text in texts:
        started = time.perf_counter()
        predict([text])
        timings.append(1000 * (time.perf_counter() - started))
    return float(np.median(timings))


def main() -> None:
    config, args = command_line(ExperimentConfig, __doc__, source="--model-dir", default=RELEASE_MODEL_DIR)
    model_dir = args.source
    chosen = json.loads((model_dir / FRONTIER_FILE).read_text())
    student_names = load_config(Path(chosen["student"]) / "config.yaml").stage_names()
    teacher_tag = str(bentoml.models.get(f"{config.bento_model}:latest").tag)
    student_tag = str(bentoml.models.get(f"{student_names['BENTO_MODEL']}:latest").tag)
    teacher, student = runtime_of(teacher_tag), runtime_of(student_tag)  # each one's file chosen on this CPU
    lexical_model = LexicalModel(model_dir / LEXICAL_FILE)

    test = load_data(config.data).splits["test"]
    texts, labels = test["text"], np.array(test["label"])
    timed = texts[:TIMED_REVIEWS]
    ms = {
        "lexical": ms_per_review(lexical_model.predict_proba, timed),
        "student": ms_per_review(student.predict_proba, timed),
        "teacher": ms_per_review(teacher.predict_proba, timed),
    }
    lexical = lexical_model.predict_proba(texts)
    student_probs = student.predict_proba(texts, progress=f"student {student.model_file}, test split")
    teacher_probs = teacher.predict_proba(texts, progress=f"teacher {teacher.model_file}, test split")

    base = HybridPolicy.load(model_dir / POLICY_FILE)
    rows = []
    for point in chosen["chosen"]["frontier"]:
        for tiers in ("two_tiers", "three_tiers"):
            pair = point[tiers]
            if pair is None:
                continue
            policy = replace(
                base,
                mode="cascade",
                threshold=pair["threshold"],
                student_weight=chosen["chosen"]["student_weight"] if pair["student_threshold"] is not None else None,
                student_threshold=pair["student_threshold"],
            )
            on_test = judged(policy, lexical, student_probs, teacher_probs, labels)
            cost = ms["lexical"] + on_test["student_share"] * ms["student"] + on_test["teacher_share"] * ms["teacher"]
            rows.append(
                {
                    "max_loss": point["max_loss"],
                    "tiers": 3 if pair["student_threshold"] is not None else 2,
                    "threshold": pair["threshold"],
                    "student_threshold": pair["student_threshold"],
                    "validation": {k: pair[k] for k in ("accuracy", "student_share", "teacher_share")},
                    "test": on_test,
                    "model_ms_per_request": cost,
                }
            )
    report = {
        "cpu": cpu_flags(),
        "files": {"student": f"{student_tag} {student.model_file}", "teacher": f"{teacher_tag} {teacher.model_file}"},
        "ms_per_review": ms,
        "n_test": len(labels),
        "served": {"threshold": base.threshold, "student_threshold": base.student_threshold},
        "configurations": rows,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "frontier.json").write_text(json.dumps(report, indent=2) + "\n")
    (OUT / "FRONTIER.md").write_text(render(report))
    print((OUT / "FRONTIER.md").read_text())


def render(report: dict) -> str:
    ms = report["ms_per_review"]
    lines = [
        f"| {r['max_loss']} | {r['tiers']} | {r['threshold']} | {r['student_threshold'] or ''} "
        f"| {r['validation']['accuracy']:.4f} | {r['test']['accuracy']:.4f} | {r['test']['student_share']:.1%} "
        f"| {r['test']['teacher_share']:.1%} | {r['model_ms_per_request']:.2f} |"
        for r in report["configurations"]
    ]
    return (
        f"""# The cascade's frontier: two tiers or three

Generated by `make frontier` (`training/frontier.py`) on a CPU with `{report["cpu"]}`, from the configurations `make
tiers` chose on validation (`models/imdb-minilm-lora/frontier.json`: for each bound on the accuracy lost to the
teacher's ensemble, the cheapest cascade with two tiers and with three), judged on the {report["n_test"]:,} test
reviews with the files the store serves on this CPU (teacher: `{report["files"]["teacher"]}`, student:
`{report["files"]["student"]}`). One review at a time, here: lexical {ms["lexical"]:.2f} ms, student
{ms["student"]:.2f} ms, teacher {ms["teacher"]:.2f} ms. Model CPU per request = lexical + each transformer's ms times
the share of reviews it reads (the API path's own cost comes on top: [PROFILE](../../benchmark/PROFILE.md)). The
release serves lexical threshold {report["served"]["threshold"]} and
{"no student" if report["served"]["student_threshold"] is None else "a student"}: the bound 0.001 row, two tiers.

{HEADER}
"""
        + "\n".join(lines)
        + "\n"
    )


if __name__ == "__main__":
    main()
