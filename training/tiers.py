"""The three-tier cascade: where the student (`make distill`) sits between the lexical model and the teacher.

    python -m training.tiers --model-dir models/imdb-minilm-lora hybrid.student=models/imdb-minilm-student

On the teacher's validation split (its parity sample) and the student's (the same reviews, read as the student reads
them), with the lexical model `make lexical` chose: the student's ensemble weight with the best accuracy, then every
pair of thresholds (the lexical margin that sends a review onward, the student ensemble's margin below which the
teacher answers) is scored by the transformer CPU it costs (`hybrid.student_cost` per review the student reads, 1 per
review the teacher reads) and kept only if the cascade loses at most `hybrid.max_cascade_loss` to the teacher's
ensemble at `hybrid.loss_confidence` (paired bootstrap, as `training.lexical`). The cheapest pair wins; "never sure"
student thresholds are in the grid, so two tiers win when the student does not pay. Chosen on the whole validation
split; `frontier.json` beside the policy also chooses on one half and judges on the other.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from serving.core.hybrid import LEXICAL_FILE, POLICY_FILE, HybridPolicy, LexicalModel, ensemble, top_two_margin
from training.config import RELEASE_MODEL_DIR, ExperimentConfig, HybridConfig, command_line, load_config
from training.data import load_data
from training.lexical import choose_weight
from training.modeling import PARITY_SAMPLE

LEXICAL_THRESHOLDS = np.round(np.arange(0, 1.0001, 0.02), 2)
STUDENT_THRESHOLDS = np.append(np.round(np.arange(0, 1.0001, 0.02), 2), 2.0)  # 2.0: never sure (two tiers)
FRONTIER_FILE = "frontier.json"
FRONTIER_LOSSES = (0.001, 0.002, 0.005, 0.01, 0.02)  # accuracy losses to the teacher's ensemble, at the confidence


def tier_grid(
    lexical: np.ndarray, student: np.ndarray, teacher: np.ndarray, policy: HybridPolicy, student_weight: float
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """For every (lexical threshold, student threshold): which reviews go onward and which reach the teacher, and
    each tier's answers."""
    student_ensemble = ensemble(lexical, student, student_weight)
    answers = {
        "lexical": lexical.argmax(1),
        "student": student_ensemble.argmax(1),
        "teacher": ensemble(lexical, teacher, policy.weight).argmax(1),
    }
    onward = top_two_margin(lexical)[None, :] < LEXICAL_THRESHOLDS[:, None]  # (lexical thresholds, reviews)
    unsure = top_two_margin(student_ensemble)[None, :] < STUDENT_THRESHOLDS[:, None]  # (student thresholds, reviews)
    return onward, onward[:, None, :] & unsure[None, :, :], answers


def score_pairs(
    lexical: np.ndarray,
    student: np.ndarray,
    teacher: np.ndarray,
    labels: np.ndarray,
    policy: HybridPolicy,
    student_weight: float,
    config: HybridConfig,
) -> list[dict]:
    """Every pair of thresholds: accuracy, the shares each transformer reads, the CPU cost, and the loss bound."""
    onward, to_teacher, answers = tier_grid(lexical, student, teacher, policy, student_weight)
    right = {tier: answer == labels for tier, answer in answers.items()}
    served = np.where(
        onward[:, None, :], np.where(to_teacher, right["teacher"], right["student"]), right["lexical"][None, None, :]
    )
    loss = (right["teacher"][None, None, :].astype(np.float32) - served).reshape(-1, len(labels))
    resamples = np.random.default_rng(0).integers(0, len(labels), (config.bootstrap_samples, len(labels)))
    counts = np.stack([np.bincount(row, minlength=len(labels)) for row in resamples]).astype(np.float32)
    bounds = np.quantile(counts @ loss.T / len(labels), config.loss_confidence, axis=0)
    student_share = np.broadcast_to(onward.mean(1)[:, None], to_teacher.shape[:2]).reshape(-1)
    teacher_share = to_teacher.mean(2).reshape(-1)
    accuracy = served.mean(2).reshape(-1)
    pairs = [(a, b) for a in LEXICAL_THRESHOLDS for b in STUDENT_THRESHOLDS]
    return [
        {
            "threshold": float(a),
            "student_threshold": float(b) if b <= 1 else None,
            "accuracy": float(accuracy[i]),
            "student_share": float(student_share[i]) if b <= 1 else 0.0,
            "teacher_share": float(teacher_share[i]),
            "cost": float((student_share[i] if b <= 1 else 0.0) * config.student_cost + teacher_share[i]),
            "loss_bound": float(bounds[i]),
        }
        for i, (a, b) in enumerate(pairs)
    ]


def cheapest(pairs: list[dict], config: HybridConfig) -> dict | None:
    passing = [p for p in pairs if p["loss_bound"] <= config.max_cascade_loss]
    return min(passing, key=lambda p: (p["cost"], -p["accuracy"])) if passing else None


def choose_tiers(
    lexical: np.ndarray,
    student: np.ndarray,
    teacher: np.ndarray,
    labels: np.ndarray,
    policy: HybridPolicy,
    config: HybridConfig,
) -> tuple[HybridPolicy, dict]:
    """The policy with its tiers chosen on these reviews (unchanged when no pair passes) and the cheapest pair."""
    student_weight = choose_weight(lexical, student, labels)
    pairs = score_pairs(lexical, student, teacher, labels, policy, student_weight, config)
    best = cheapest(pairs, config)
    if best is None:
        return policy, {}
    frontier = []  # how the cheapest two- and three-tier cascades trade accuracy for CPU as the bound loosens
    for max_loss in FRONTIER_LOSSES:
        loose = replace(config, max_cascade_loss=max_loss)
        two = cheapest([p for p in pairs if p["student_threshold"] is None], loose)
        three = cheapest([p for p in pairs if p["student_threshold"] is not None], loose)
        frontier.append({"max_loss": max_loss, "two_tiers": two, "three_tiers": three})
    best = best | {"frontier": frontier, "student_weight": student_weight}
    chosen = replace(
        policy,
        mode="cascade",
        threshold=best["threshold"],
        student_weight=best["student_weight"] if best["student_threshold"] is not None else None,
        student_threshold=best["student_threshold"],
    )
    return chosen, best


def judged(policy: HybridPolicy, lexical, student, teacher, labels) -> dict:
    probs, routes = policy.decide_with_routes(lexical, teacher, student)
    return {
        "accuracy": float((probs.argmax(1) == labels).mean()),
        "student_share": float(np.mean([r != "lexical" for r in routes])) if policy.uses_student else 0.0,
        "teacher_share": float(np.mean([r in ("ensemble", "transformer") for r in routes])),
    }


def run(model_dir: Path, config: ExperimentConfig) -> dict:
    student_dir = Path(config.hybrid.student or "")
    teacher_sample, student_sample = np.load(model_dir / PARITY_SAMPLE), np.load(student_dir / PARITY_SAMPLE)
    labels = teacher_sample["labels"].astype(int)
    if not np.array_equal(labels, student_sample["labels"]):
        raise ValueError(f"{student_dir} was not validated on {model_dir}'s validation split")
    validation = load_data(config.data).splits["validation"]
    lexical = LexicalModel(model_dir / LEXICAL_FILE).predict_proba(validation["text"])
    teacher, student = teacher_sample["reference"], student_sample["reference"]
    two_tiers = replace(HybridPolicy.load(model_dir / POLICY_FILE), student_weight=None, student_threshold=None)
    policy, best = choose_tiers(lexical, student, teacher, labels, two_tiers, config.hybrid)

    even = np.arange(len(labels)) % 2 == 0
    split_check = {}
    for chosen_on, judged_on in (("even", even), ("odd", ~even)), (("odd", ~even), ("even", even)):
        half, other = chosen_on[1], judged_on[1]
        on_half, _ = choose_tiers(lexical[half], student[half], teacher[half], labels[half], two_tiers, config.hybrid)
        there = (lexical[other], student[other], teacher[other], labels[other])
        split_check[f"chosen_on_{chosen_on[0]}"] = asdict(on_half) | {
            f"judged_on_{judged_on[0]}": judged(on_half, *there),
            "two_tiers_there": judged(two_tiers, *there),
        }
    frontier = {
        "student": str(student_dir),
        "student_cost": config.hybrid.student_cost,
        "chosen": asdict(policy) | best,
        "two_tiers": asdict(two_tiers) | judged(two_tiers, lexical, student, teacher, labels),
        "split_check": split_check,
        "validation_accuracy": {
            "lexical": float((lexical.argmax(1) == labels).mean()),
            "student": float((student.argmax(1) == labels).mean()),
            "teacher": float((teacher.argmax(1) == labels).mean()),
            "served": judged(policy, lexical, student, teacher, labels)["accuracy"],
        },
    }
    (model_dir / FRONTIER_FILE).write_text(json.dumps(frontier, indent=2) + "\n")
    saved = json.loads((model_dir / POLICY_FILE).read_text()) | asdict(policy)
    student_names = load_config(student_dir / "config.yaml").stage_names()
    saved["student"] = {"model_dir": str(student_dir), "bento_model": student_names["BENTO_MODEL"]}
    (model_dir / POLICY_FILE).write_text(json.dumps(saved, indent=2) + "\n")
    return frontier


def main() -> None:
    config, args = command_line(ExperimentConfig, __doc__, source="--model-dir", default=RELEASE_MODEL_DIR)
    print(json.dumps(run(args.source, config), indent=2))


if __name__ == "__main__":
    main()
