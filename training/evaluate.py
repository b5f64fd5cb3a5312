"""Evaluation reports: metrics, confusion matrix, error analysis, and the hybrid model's modes side by side.

`python -m training.evaluate --model-dir models/imdb-minilm-lora` rebuilds the committed model, scores it on the
test split (the only place that does) and adds the test scores to the model's `metrics.json`; `--served` scores
the config's export in the BentoML store (`<registered_model>-onnx:latest`) the same way (`reports/<name>/served.json`)
and picks the web UI's example reviews from its answers (`reports/ui/examples.json`).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from serving.core import UI_EXAMPLES_FILE
from serving.core.hybrid import LEXICAL_FILE, POLICY_FILE, HybridPolicy, LexicalModel, ensemble, top_two_margin
from serving.core.text import EncodingConfig
from training.config import RELEASE_MODEL_DIR, ExperimentConfig, command_line
from training.lexical import cascade_curve
from training.metrics import classification_metrics

LENGTH_BINS = [0, 128, 256, 512, 1024, 100_000]  # in words


def plot_confusion_matrix(matrix: list[list[int]], label_names: list[str], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(1.2 * len(label_names) + 2, 1.2 * len(label_names) + 1.5))
    ax.imshow(matrix, cmap="Blues")
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            ax.text(j, i, str(count), ha="center", va="center", color="black")
    ax.set_xticks(range(len(label_names)), label_names, rotation=45)
    ax.set_yticks(range(len(label_names)), label_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def error_analysis(texts: list[str], labels: np.ndarray, probs: np.ndarray, label_names: list[str], k: int = 10):
    """Most confident mistakes, and accuracy by review length (in words)."""
    preds = probs.argmax(1)
    frame = pd.DataFrame(
        {
            "text": texts,
            "true": [label_names[i] for i in labels],
            "predicted": [label_names[i] for i in preds],
            "confidence": probs.max(1),
            "correct": preds == labels,
            "words": [len(t.split()) for t in texts],
        }
    )
    mistakes = frame[~frame.correct].sort_values("confidence", ascending=False).head(k)
    frame["length_bin"] = pd.cut(frame.words, LENGTH_BINS, right=False)
    by_length = frame.groupby("length_bin", observed=True).agg(n=("correct", "size"), accuracy=("correct", "mean"))
    by_length.index = by_length.index.astype(str)
    return mistakes, by_length


def mode_name(mode: str, policy: dict[str, Any]) -> str:
    described = {
        "lexical": f"TF-IDF + logistic regression alone ({policy['lexical']['n_train']:,} training texts)",
        "ensemble": f"ensemble (lexical weight {policy['weight']:g})",
        "cascade": f"cascade (lexical alone at margin >= {policy['threshold']:g}, else the ensemble)",
    }[mode]
    return described + (" **served**" if mode == policy["mode"] else "")


def _mistakes_table(mistakes: pd.DataFrame) -> str:
    rows = (
        f"| {r.true} | {r.predicted} | {r.confidence:.3f} | {r.text[:160].replace('|', '/').replace(chr(10), ' ')}… |"
        for r in mistakes.itertuples()
    )
    return "| true | predicted | confidence | excerpt |\n|---|---|---|---|\n" + "\n".join(rows)


def _metrics_table(rows: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| model | accuracy | macro precision | macro recall | macro F1 | n | share to the transformer |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in rows.items():
        lines.append(
            f"| {name} | {m['accuracy']:.4f} | {m['macro_precision']:.4f} | {m['macro_recall']:.4f} "
            f"| {m['macro_f1']:.4f} | {m['n']} | {m['transformer_share']:.1%} |"
        )
    return "\n".join(lines)


def write_report(
    name: str,
    texts: list[str],
    labels: np.ndarray,
    probs: np.ndarray,
    label_names: list[str],
    out_dir: Path,
    encoding: EncodingConfig,
    hybrid: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write `evaluation.{md,json}`, and `confusion_matrix.png` to `out_dir`; return the metrics."""
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = classification_metrics(labels, probs.argmax(1), label_names)
    mistakes, by_length = error_analysis(texts, labels, probs, label_names)
    plot_confusion_matrix(metrics["confusion_matrix"], label_names, out_dir / "confusion_matrix.png")
    rows = {f"{name}: the transformer alone": metrics | {"transformer_share": 1.0}}
    if hybrid:
        rows |= {mode_name(mode, hybrid["policy"]): scores for mode, scores in hybrid["modes"].items()}
    per_class = "\n".join(
        f"| {c} | {s['precision']:.4f} | {s['recall']:.4f} | {s['f1']:.4f} | {s['support']} |"
        for c, s in metrics["per_class"].items()
    )
    hybrid_section = (
        f"""
## The hybrid model: where the lexical fast path errs

The cascade's lexical model answered {1 - hybrid["modes"]["cascade"]["transformer_share"]:.1%} of the test reviews
alone; its most confident mistakes there:

{_mistakes_table(hybrid["fast_path_mistakes"])}

![cascade trade-off](cascade.png)
"""
        if hybrid
        else ""
    )
    lengths = "\n".join(f"| {b} | {r.n} | {r.accuracy:.4f} |" for b, r in by_length.iterrows())
    report = f"""# Evaluation: {name}

Test split, {metrics["n"]} examples; the transformer reads {encoding.max_length} tokens of each ({encoding.truncation}).
Generated by `training/evaluate.py`.

{_metrics_table(rows)}

## Per class

| class | precision | recall | F1 | support |
|---|---|---|---|---|
{per_class}

![confusion matrix](confusion_matrix.png)

## Accuracy by length (words)

| words | n | accuracy |
|---|---|---|
{lengths}

## The transformer's most confident mistakes

{_mistakes_table(mistakes)}
{hybrid_section}"""
    (out_dir / "evaluation.md").write_text(report)
    payload = {
        "model": name,
        "test": metrics,
        "hybrid": hybrid and {key: hybrid[key] for key in ("policy", "modes", "test_curve")},
        "accuracy_by_length": by_length.reset_index().to_dict(orient="records"),
        "most_confident_mistakes": mistakes.assign(text=mistakes.text.str.slice(0, 300)).to_dict(orient="records"),
    }
    (out_dir / "evaluation.json").write_text(json.dumps(payload, indent=2) + "\n")
    return metrics


def mode_scores(
    policy: HybridPolicy, lexical: np.ndarray, transformer: np.ndarray, labels: np.ndarray, label_names: list[str]
) -> dict[str, dict[str, Any]]:
    """Metrics of the ensemble and the cascade with `policy`'s weight and threshold, and the share each sends to the
    transformer."""
    scores = {}
    for mode in ("ensemble", "cascade"):
        chosen = policy.with_mode(mode)
        served = chosen.decide(lexical, transformer)
        share = len(chosen.onward(lexical, len(labels))) / len(labels)
        scores[mode] = classification_metrics(labels, served.argmax(1), label_names) | {"transformer_share": share}
    return scores


def score_hybrid(
    model_dir: Path, texts: list[str], labels: np.ndarray, transformer: np.ndarray, label_names: list[str], out: Path
) -> dict[str, Any] | None:
    """The lexical model alone, the ensemble and the cascade beside the transformer (None without `make lexical`):
    accuracy and share sent to the transformer per mode, the cascade's trade-off curve on test beside validation's
    (`cascade.png`), and the fast path's most confident mistakes."""
    if not (model_dir / POLICY_FILE).exists():
        return None
    policy, saved = HybridPolicy.load(model_dir / POLICY_FILE), json.loads((model_dir / POLICY_FILE).read_text())
    lexical = LexicalModel(model_dir / LEXICAL_FILE).predict_proba(texts)
    modes = {"lexical": classification_metrics(labels, lexical.argmax(1), label_names) | {"transformer_share": 0.0}}
    modes |= mode_scores(policy, lexical, transformer, labels, label_names)
    test_curve = cascade_curve(lexical, ensemble(lexical, transformer, policy.weight), labels)
    plot_cascade(saved.pop("validation_curve"), test_curve, policy.threshold, out / "cascade.png")
    fast = np.flatnonzero(top_two_margin(lexical) >= policy.threshold)
    fast_mistakes, _ = error_analysis([texts[i] for i in fast], labels[fast], lexical[fast], label_names)
    return {"policy": saved, "modes": modes, "test_curve": test_curve, "fast_path_mistakes": fast_mistakes}


def plot_cascade(validation: list[dict], test: list[dict], threshold: float, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in (("validation", validation), ("test", test)):
        ax.plot([100 * p["transformer_share"] for p in curve], [100 * p["accuracy"] for p in curve], label=name)
        chosen = next(p for p in curve if p["threshold"] >= threshold)
        ax.scatter([100 * chosen["transformer_share"]], [100 * chosen["accuracy"]], color="black", zorder=3)
    ax.set_xlabel("reviews sent to the transformer (%)")
    ax.set_ylabel("cascade accuracy (%)")
    ax.set_title(f"cascade trade-off; dot: the served threshold ({threshold:g})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def evaluate(model_dir: Path, config: ExperimentConfig) -> dict[str, Any]:
    """Rebuild base + adapter, score the test split, write the report and add the test scores to metrics.json."""
    from training.data import load_data
    from training.modeling import load_tokenizer, load_trained, predict_proba

    data = load_data(config.data)
    model = load_trained(model_dir, config, data.label_names)
    test = data.splits["test"]
    tokenizer = load_tokenizer(config.model.checkpoint)
    probs = predict_proba(model, tokenizer, test["text"], config.encoding, progress="PyTorch, test split")
    labels, out_dir = np.array(test["label"]), Path(config.reports_dir) / config.name
    out_dir.mkdir(parents=True, exist_ok=True)
    hybrid = score_hybrid(model_dir, test["text"], labels, probs, data.label_names, out_dir)
    metrics = write_report(config.name, test["text"], labels, probs, data.label_names, out_dir, config.encoding, hybrid)
    test_scores = {"test_accuracy": metrics["accuracy"], "test_macro_f1": metrics["macro_f1"], "n_test": metrics["n"]}
    for mode, scores in (hybrid or {}).get("modes", {}).items():
        test_scores |= {
            f"test_accuracy_{mode}": scores["accuracy"],
            f"test_transformer_share_{mode}": scores["transformer_share"],
        }
    summary_path = model_dir / "metrics.json"
    summary_path.write_text(json.dumps(json.loads(summary_path.read_text()) | test_scores, indent=2) + "\n")
    return test_scores


def ui_examples(
    texts: list[str], labels: np.ndarray, served: np.ndarray, label_names: list[str], max_chars: int = 700
) -> list[dict[str, str]]:
    """Short real reviews for the web UI: the served model's most confident right answer per class and its most
    confident mistake."""
    short = np.array([len(t) <= max_chars for t in texts])
    predicted, confidence = served.argmax(1), served.max(1)
    picks = []
    for label in range(len(label_names)):
        right = short & (labels == label) & (predicted == label)
        picks.append((int(np.flatnonzero(right)[confidence[right].argmax()]), f"{label_names[label]}, answered right"))
    wrong = short & (predicted != labels)
    if wrong.any():
        picks.append((int(np.flatnonzero(wrong)[confidence[wrong].argmax()]), "a confident mistake"))
    return [
        {"title": f"{title} (true: {label_names[labels[i]]})", "text": texts[i], "label": label_names[labels[i]]}
        for i, title in picks
    ]


def evaluate_served(config: ExperimentConfig, bento_model: str) -> dict[str, Any]:
    """Score the test split with the file the BentoML model serves on this CPU (the service's self-check chooses it),
    through the service's own runtime; writes `reports/<name>/served.json` and the web UI's example reviews
    (`UI_EXAMPLES_FILE`)."""
    import bentoml

    from serving.core.runtime import cpu_flags
    from serving.core.selfcheck import SelfCheckLimits, load_classifier
    from serving.exports import runtime_of, student_tag
    from training.data import load_data

    model = bentoml.models.get(bento_model)
    test = load_data(config.data).splits["test"]
    labels = np.array(test["label"])
    transformer, check = load_classifier(model.path, SelfCheckLimits.of(model))
    result = {"bento_model": str(model.tag), "recipe": check.recipe or "fp32", "cpu": cpu_flags()}
    name = transformer.model_file
    if transformer.rescorer is not None:  # the answers int8 is unsure of come from fp32
        result["fp32_rescores_below_margin"] = transformer.rescore_below
    probs = transformer.predict_proba(test["text"], progress=f"{check.recipe or 'fp32'}, test split")
    label_names = model.info.metadata["label_names"]
    metrics = classification_metrics(labels, probs.argmax(1), label_names)
    result |= {"file": name, "test": {key: metrics[key] for key in ("accuracy", "macro_f1", "n")}}
    served = probs
    if (Path(model.path) / POLICY_FILE).exists():  # every served mode, with this file as its transformer
        policy = HybridPolicy.load(Path(model.path) / POLICY_FILE)
        lexical = LexicalModel(Path(model.path) / LEXICAL_FILE).predict_proba(test["text"])
        student_probs = None
        if (tag := student_tag(model)) is not None:  # the cascade's middle tier, as the service runs it
            student = runtime_of(tag)
            student_probs = student.predict_proba(test["text"], progress=f"student {student.model_file}")
            result["student"] = {"bento_model": tag, "file": student.model_file}
        elif policy.uses_student:
            policy = replace(policy, student_weight=None, student_threshold=None)  # as served without its student
        served, routes = policy.decide_with_routes(lexical, probs, student_probs)
        result["tiers"] = {route: routes.count(route) / len(routes) for route in sorted(set(routes))}
        scores = mode_scores(policy, lexical, probs, labels, label_names)
        result["served_mode"] = policy.mode
        result["served_accuracy"] = float((served.argmax(1) == labels).mean())
        result["modes"] = {
            mode: {key: m[key] for key in ("accuracy", "macro_f1", "transformer_share")} for mode, m in scores.items()
        }
    out = Path(config.reports_dir) / config.name / "served.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    examples = ui_examples(test["text"], labels, served, label_names)
    UI_EXAMPLES_FILE.parent.mkdir(parents=True, exist_ok=True)
    UI_EXAMPLES_FILE.write_text(json.dumps(examples, indent=2, ensure_ascii=False) + "\n")
    return result


def main() -> None:
    config, args = command_line(
        ExperimentConfig,
        __doc__,
        source="--model-dir",
        default=RELEASE_MODEL_DIR,
        flags={"--served": "score the ONNX file the BentoML store's model serves instead of PyTorch"},
    )
    if args.served:
        print(json.dumps(evaluate_served(config, f"{config.bento_model}:latest")))
    else:
        print(json.dumps(evaluate(args.source, config)))


if __name__ == "__main__":
    main()
