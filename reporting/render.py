"""Render reports/PERFORMANCE.md, the model card and the README's results table from the files the commands write.

    python -m reporting.render   (make report)

Nothing here is measured or typed by hand: facts come from configs, metrics, the base model's config and the
machine, prose from `templates/`; a missing input shows which command produces it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
from safetensors import safe_open
from transformers import AutoConfig

from loadtests.run_loadtest import most_users_holding
from training.config import RELEASE_MODEL_DIR, ExperimentConfig, hub_id, load_config, resolve_checkpoint

MODEL_DIR = RELEASE_MODEL_DIR
TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"), keep_trailing_newline=True
)
REPORTS = Path("reports")
README = Path("README.md")


def _load(path: Path) -> Any:
    if not path.exists():
        return None
    return json.loads(path.read_text()) if path.suffix == ".json" else pd.read_csv(path)


def _missing(command: str) -> str:
    return f"_Not measured yet: run `{command}`._"


def hybrid_modes(evaluation: dict | None) -> dict[str, dict]:
    """The lexical model alone, the ensemble and the cascade on the test split (named for a table)."""
    hybrid = (evaluation or {}).get("hybrid") or {}
    names = {"lexical": "TF-IDF + logistic regression alone", "ensemble": "ensemble", "cascade": "cascade"}
    return {names[mode]: scores for mode, scores in hybrid.get("modes", {}).items()}


def accuracy_section(metrics: dict, evaluation: dict | None, parity: dict | None, served: dict | None) -> str:
    lines = ["| model | accuracy | macro F1 | n | source |", "|---|---|---|---|---|"]
    lines.append(
        f"| {metrics['name']}, PyTorch fp32 (test split) | {metrics['test_accuracy']:.4f} "
        f"| {metrics['test_macro_f1']:.4f} | {metrics['n_test']} | `models/.../metrics.json` |"
    )
    for mode, m in hybrid_modes(evaluation).items():
        lines.append(
            f"| {mode}, PyTorch transformer (test split; {m['transformer_share']:.1%} to the transformer) "
            f"| {m['accuracy']:.4f} | {m['macro_f1']:.4f} | {m['n']} | `reports/{metrics['name']}/evaluation.json` |"
        )
    if served:
        r = served["test"]
        lines.append(
            f"| ONNX `{served['file']}` served from the BentoML store (test split, `{served['cpu']}`) "
            f"| {r['accuracy']:.4f} | {r['macro_f1']:.4f} | {r['n']} | `reports/{metrics['name']}/served.json` |"
        )
        for mode, m in served.get("modes", {}).items():
            lines.append(
                f"| {mode} with `{served['file']}` (test split; {m['transformer_share']:.1%} to the transformer) "
                f"| {m['accuracy']:.4f} | {m['macro_f1']:.4f} | {r['n']} | `reports/{metrics['name']}/served.json` |"
            )
    if parity:
        for file, p in parity["files"].items():
            served = ", served" if file == parity["served"] else ""
            lines.append(
                f"| ONNX {file} (validation; PyTorch {p['reference_accuracy']:.4f}, agreement "
                f"{p['agreement']:.4f}{served}) | {p['accuracy']:.4f} | | {p['n']} | `reports/export/parity.json` |"
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
    versus_naive += (
        f" (within the target, **{benchmark['ratio_batching_to_naive_peak']:.1f}x** the naive peer's peak at any "
        "latency)"
    )
    rows.append("")
    default = benchmark["systems"][benchmark["default_system"]]
    rows.append(
        f"The default mode ({benchmark['default_system']}) keeps p95 under 100 ms up to "
        f"**{default['max_concurrency_holding']} concurrent clients** with fewer than 0.1% errors (target >= 4) and "
        f"serves there {versus_naive} (target >= 8x the peer's peak); it reaches "
        f"**{benchmark['ratio_batching_to_ceiling']:.2f}** of its mode's in-process ceiling; at each system's peak "
        "throughput, whatever its latency, batching serves "
        f"**{benchmark['peak_ratio_batching_to_naive']:.1f}x** the naive peer. The transformer on one review "
        f"in-process: p50 {benchmark['ceiling']['transformer_single_p50_ms']:.1f} ms. Details: "
        "[benchmark](benchmark/BENCHMARK.md)."
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


def _first(names: list[str], count: int) -> str:
    return ", ".join(names[:count]) + (f" and {len(names) - count} more" if len(names) > count else "")


def container_section(container: dict | None) -> str:
    if not container:
        return _missing("make test-container")
    summary = (
        f"Image `{container['image']}`: **{container['size_mb']:.0f} MB**; container start to `/health` 200 in "
        f"**{container['start_to_ready_s']:.1f} s** ({container['engine']}, `{container['cpu']}`)"
    )
    if "start_to_warm_s" in container:
        summary += (
            f"; fp32 answers until it is warm at {container['start_to_warm_s']:.1f} s (the int8 self-check on this "
            "CPU done, the explainer and the web UI built)"
        )
    if "peak_memory_mb" in container:
        summary += (
            f"; peak memory {container['peak_memory_mb']:.0f} MB after a mixed load and `/explain`, run as the "
            "Kubernetes manifest runs it (its user, read-only root, CPU limit), whose memory limit stays above it"
        )
    summary += "."
    contents = container.get("contents")
    if not contents:
        return summary
    rows = [
        f"| `{name}` alone | {size['alone']:.0f} | {_first(size['packages'], 8)} |"
        for name, size in contents["requirements_mb"].items()
        if size["alone"] >= 1
    ]
    rows += [
        f"| shared by two or more | {contents['shared_mb']['alone']:.0f} | "
        f"{_first(contents['shared_mb']['packages'], 8)} |",
        f"| their compiled bytecode (BentoML's build compiles it: faster starts) | {contents['bytecode_mb']:.0f} | |",
        f"| the model files (ONNX fp32 + int8, lexical, tokenizer, golden set) | {contents['models_mb']:.0f} | |",
        f"| the base image (`python:3.11-slim`) | {contents['base_mb']:.0f} | |",
        f"| the rest (the venv's Python, the service's code) | {contents['rest_mb']:.0f} | |",
    ]
    largest = ", ".join(f"{name} {mb:.0f}" for name, mb in contents["largest_packages_mb"].items())
    return (
        f"{summary}\n\nWhat each serving requirement adds (MB of installed files that no other requirement needs, "
        "measured inside the image by `reporting/image_sizes.py`):\n\n"
        "| part | MB | packages |\n|---|---|---|\n" + "\n".join(rows) + f"\n\nLargest packages (MB): {largest}."
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


def soak_section(soak: dict | None) -> str:
    if not soak:
        return _missing("make soak")
    p95 = [m["p95_ms"] for m in soak["minutes"] if m["p95_ms"] is not None]
    growth = ", ".join(f"{role} {g:+.1%}" for role, g in soak["rss_growth"].items())
    return (
        f"{len(soak['minutes'])} minutes at {soak['rate_per_s']:.1f} requests/s "
        f"({soak['rate_per_s'] / soak['open_loop_max_rps_p95_under_100ms']:.0%} of the "
        f"{soak['open_loop_max_rps_p95_under_100ms']:.1f}/s that held p95 < 100 ms in its own open-loop search): "
        f"**{soak['errors']} errors**, p95 per "
        f"minute {min(p95):.0f}-{max(p95):.0f} ms, resident memory growth {growth} (`{soak['cpu']}`). "
        "[SOAK](soak/SOAK.md)."
    )


def drills_section(reload: dict | None, beside: dict | None) -> str:
    """The reload drill (exports swapped under a mixed load) and the beside drill (a load beside an export)."""
    parts = []
    if reload:
        quiet, swaps, refusals = reload["quiet"], reload["swaps"], reload["refusal_rate"]
        parts.append(
            f"Reload: {len(swaps)} swaps between two exports under {reload['config']['clients']} clients of a mixed "
            f"load: refusal rate {refusals['swaps']:.2%} (quiet minute {refusals['quiet']:.2%}), "
            f"slowest answer {reload['slowest_ms_in_swaps']:.0f} ms (quiet minute {quiet['slowest_ms']:.0f} ms), "
            f"each worker's highest memory after the first swap, as a share of it then: "
            f"{reload['rss_growth_after_first_swap']}; bounds held: "
            f"{reload['holds']} (`{reload['cpu']}`). [RELOAD](reload/RELOAD.md)."
        )
    else:
        parts.append(_missing("make reload-drill"))
    if beside:
        rows = "; ".join(
            f"{phase}: {p['refused'] / max(p['answers'], 1):.2%} refused, p95 {p['p95_ms']:.0f} ms"
            for phase, p in beside["phases"].items()
        )
        parts.append(f"Beside an export: {rows} (`{beside['cpu']}`). [BESIDE](beside/BESIDE.md).")
    else:
        parts.append(_missing("make beside-drill"))
    return "\n\n".join(parts)


def scoring_section(scoring: dict | None, benchmark: dict | None) -> str:
    if not scoring:
        return _missing("make score")
    service = ""
    if benchmark:
        best = benchmark["systems"][benchmark["default_system"]]
        service = f" The HTTP service ({benchmark['default_system']}): {best['max_rps']:.1f} requests/s of one review."
    return (
        f"`make score`: {scoring['rows']:,} reviews from `{scoring['input']}` on Spark `{scoring['master']}` "
        f"({scoring['spark_cores']} cores, `{scoring['cpu']}`, {', '.join(scoring['files'])} transformer, "
        f"{scoring['hybrid']['mode']}) in {scoring['seconds']:.0f} s: **{scoring['rows_per_second']:.1f} "
        f"reviews/s** (read, shuffle, the executors' model loading and the Parquet write included).{service}"
    )


def training_section(metrics: dict) -> str:
    resumed = metrics.get("resumed_from_step") or 0
    text = (
        f"{metrics['n_train']:,} training reviews, {metrics['epochs']} epoch(s), "
        f"{metrics['train_wall_time_s'] / 60:.1f} min of training wall clock on {metrics['hardware']}"
    )
    return text + (f", summed over sessions (resumed at step {resumed})." if resumed else ".")


def base_model_facts(config: ExperimentConfig) -> dict[str, Any]:
    """Architecture facts read from the base checkpoint itself, not typed."""
    path = Path(resolve_checkpoint(config.model.checkpoint))
    base = AutoConfig.from_pretrained(path)
    with safe_open(str(path / "model.safetensors"), "np") as weights:
        parameters = sum(int(np.prod(weights.get_slice(key).get_shape())) for key in weights.keys())  # noqa: SIM118
    return {
        "name": config.model.checkpoint,
        "hub_id": hub_id(config.model.checkpoint),
        "model_type": base.model_type,
        "layers": base.num_hidden_layers,
        "hidden": base.hidden_size,
        "parameters": parameters,
    }


def readme_results(metrics: dict, evaluation, parity, benchmark, loadtest, container, served) -> str:
    """The README's five results, so the numbers there are never typed by hand (the rest: PERFORMANCE.md)."""
    rows = ["| result | value | source |", "|---|---|---|"]
    if served and "modes" in served:
        m, baseline = served["modes"][served["served_mode"]], evaluation["hybrid"]["modes"]["lexical"]["accuracy"]
        rows.append(
            f"| test accuracy of what is served ({served['served_mode']} with `{served['file']}`, "
            f"{served['test']['n']:,} IMDb reviews; {m['transformer_share']:.1%} reach the transformer) "
            f"| {m['accuracy']:.4f} (TF-IDF + LR alone: {baseline:.4f}) | `reports/{metrics['name']}/served.json` |"
        )
    if parity:
        chosen = parity["files"][parity["served"]]
        rows.append(
            f"| int8 served ({parity['served']}): ms/review vs fp32, agreement with PyTorch on {chosen['n']:,} "
            f"validation reviews (`{parity['cpu']}`) | {chosen['ms_per_review']:.1f} vs "
            f"{parity['files']['fp32']['ms_per_review']:.1f} ({chosen['x_fp32']:.2f}x); {chosen['agreement']:.4f} "
            "| `reports/export/parity.json` |"
        )
    if benchmark:
        best = benchmark["systems"][benchmark["default_system"]]
        rows.append(
            f"| service: most requests/s with p95 < 100 ms (concurrent clients; x a naive FastAPI + transformers "
            f"peer's peak) | {best['max_rps']:.1f} ({best['max_concurrency_holding']} clients; "
            f"{benchmark['ratio_batching_to_naive_peak']:.1f}x) | `reports/benchmark/benchmark.json` |"
        )
    if loadtest is not None:
        one_user = loadtest[(loadtest.Name == "/predict") & (loadtest.users == loadtest.users.min())].iloc[0]
        rows.append(
            f"| Locust, mixed profile (singles and batches): most users with `/predict` p95 < 100 ms and < 0.1% "
            f"errors; at {one_user.users} user p50 / p95 | {most_users_holding(loadtest)} users; "
            f"{one_user['50%']:.0f} / {one_user['95%']:.0f} ms | `reports/loadtest/results.csv` |"
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


def serving_machine(benchmark: dict | None) -> str:
    if not benchmark:
        return "not measured yet"
    return f"{benchmark['cpu_count']} CPU cores, `{benchmark.get('cpu', 'flags not recorded')}`"


def main() -> None:
    metrics = _load(MODEL_DIR / "metrics.json")
    config = load_config(MODEL_DIR / "config.yaml")
    evaluation = _load(REPORTS / config.name / "evaluation.json")
    parity = _load(REPORTS / "export" / "parity.json")
    benchmark = _load(REPORTS / "benchmark" / "benchmark.json")
    if benchmark and "default_system" not in benchmark:  # measured before the service had modes: not this service
        benchmark = None
    loadtest = _load(REPORTS / "loadtest" / "results.csv")
    soak = _load(REPORTS / "soak" / "soak.json")
    container = _load(REPORTS / "container" / "container.json")
    compose = _load(REPORTS / "container" / "compose.json")
    served = _load(REPORTS / config.name / "served.json")
    scoring = _load(REPORTS / "scoring" / "score.json")
    performance = TEMPLATES.get_template("PERFORMANCE.md.j2").render(
        metrics=metrics,
        config=config,
        serving_machine=serving_machine(benchmark),
        accuracy=accuracy_section(metrics, evaluation, parity, served),
        comparison=comparison_section(),
        benchmark=benchmark_section(benchmark),
        loadtest=loadtest_section(loadtest),
        soak=soak_section(soak),
        drills=drills_section(_load(REPORTS / "reload" / "reload.json"), _load(REPORTS / "beside" / "beside.json")),
        container=container_section(container),
        compose=compose_section(compose),
        scoring=scoring_section(scoring, benchmark),
        training=training_section(metrics),
    )
    (REPORTS / "PERFORMANCE.md").write_text(performance)
    card = TEMPLATES.get_template("MODEL_CARD.md.j2").render(
        metrics=metrics,
        config=config,
        evaluation=evaluation,
        hybrid=(evaluation or {}).get("hybrid"),
        parity=parity,
        base=base_model_facts(config),
        training=training_section(metrics),
    )
    (MODEL_DIR / "README.md").write_text(card)  # the name the Hugging Face Hub reads
    results = readme_results(metrics, evaluation, parity, benchmark, loadtest, container, served)
    replace_between(README, "results", results)
    print(f"wrote {REPORTS / 'PERFORMANCE.md'}, {MODEL_DIR / 'README.md'} (the model card) and the README's table")


if __name__ == "__main__":
    main()
