"""A/B report: what each variant answered (from the service's prediction log) and, where labels were fed back, how
often it was right, with significance tests.

    python -m reporting.ab log=build/ab/predictions.jsonl [labels=FILE]   (make ab-report LOG=... LABELS=...)

Split traffic: per variant the requests, users, label mix (chi-square test of independence), confidence and latency;
with labels, accuracy with Wilson 95% intervals and a two-proportion z-test. Shadow traffic: the same requests
answered by both, so agreement, and with labels a paired exact McNemar test. Labels join on the text's digest (the log
never holds raw text): a Parquet/CSV/JSONL file with the texts that were sent and their labels (names or ids).
Writes reports/ab/ab.json, AB.md and ab.png.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy import stats

from serving.ab import CHALLENGER, CHAMPION
from serving.core.runtime import cpu_flags
from serving.settings import BENTO_MODEL
from serving.telemetry import digest
from training.config import command_line


@dataclass
class ABReportConfig:
    log: str = "build/ab/predictions.jsonl"  # the service's PREDICTION_LOG
    labels: str = ""  # labelled texts fed back (text + label columns); empty: no accuracy, label mix and agreement only
    text_column: str = "text"
    label_column: str = "label"
    bento_model: str = f"{BENTO_MODEL}:latest"  # its label names turn label ids into names
    alpha: float = 0.05
    out_dir: str = "reports/ab"


def read_log(path: Path) -> pd.DataFrame:
    """One row per answered text: request, user, variant, shadow, label, confidence, text digest, model version."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [
        {
            "request_id": r["request_id"],
            "position": i,
            "user": r["user"],
            "variant": r["variant"],
            "shadow": r["shadow"],
            "label": label,
            "score": r["scores"][i],
            "text_sha256": r["text_sha256"][i],
            "latency_ms": r["latency_ms"],
            "model_version": r["model_version"],
        }
        for r in records
        if r.get("message") == "prediction"
        for i, label in enumerate(r["labels"])
    ]
    if not rows:
        raise SystemExit(f"no predictions in {path}: serve with PREDICTION_LOG={path} and send traffic first")
    return pd.DataFrame(rows)


def read_labels(config: ABReportConfig) -> dict[str, str]:
    """Text digest -> true label name."""
    path = Path(config.labels)
    reader = {".parquet": pd.read_parquet, ".csv": pd.read_csv, ".jsonl": lambda p: pd.read_json(p, lines=True)}
    frame = reader[path.suffix](path)
    labels = frame[config.label_column]
    if pd.api.types.is_integer_dtype(labels):
        import bentoml

        names = bentoml.models.get(config.bento_model).info.metadata["label_names"]
        labels = labels.map(lambda i: names[i])
    return dict(zip(frame[config.text_column].map(digest), labels.astype(str), strict=True))


def wilson(successes: int, n: int) -> tuple[float, float]:
    """95% interval of a proportion that stays inside [0, 1] for small samples (SciPy's Wilson score interval)."""
    if n == 0:
        return (math.nan, math.nan)
    interval = stats.binomtest(successes, n).proportion_ci(confidence_level=0.95, method="wilson")
    return (float(interval.low), float(interval.high))


def two_proportion_z(k1: int, n1: int, k2: int, n2: int) -> dict:
    """Challenger (2) vs champion (1): difference, z and two-sided p-value with the pooled standard error."""
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    z = (k2 / n2 - k1 / n1) / se if se > 0 else 0.0
    return {"difference": k2 / n2 - k1 / n1, "z": z, "p_value": float(2 * stats.norm.sf(abs(z)))}


def per_variant(rows: pd.DataFrame) -> dict[str, dict]:
    summary = {}
    for variant, group in rows.groupby("variant"):
        mix = group.label.value_counts(normalize=True).sort_index()
        entry = {
            "requests": int(group.request_id.nunique()),
            "texts": len(group),
            "users": int(group.user.nunique()),
            "model_versions": sorted(group.model_version.unique()),
            "label_share": {k: round(float(v), 4) for k, v in mix.items()},
            "mean_confidence": float(group.score.mean()),
            "latency_ms_p50": float(group.drop_duplicates("request_id").latency_ms.median()),
            "latency_ms_p95": float(group.drop_duplicates("request_id").latency_ms.quantile(0.95)),
        }
        labelled = group.dropna(subset=["truth"])
        if len(labelled):
            right = int((labelled.label == labelled.truth).sum())
            entry |= {"labelled": len(labelled), "correct": right, "accuracy": right / len(labelled)}
            entry["accuracy_ci95"] = wilson(right, len(labelled))
        summary[str(variant)] = entry
    return summary


def verdict(p_value: float, difference: float, alpha: float) -> str:
    if p_value >= alpha:
        return f"no significant difference (p = {p_value:.3g} >= {alpha})"
    return f"the challenger is {'better' if difference > 0 else 'worse'} (p = {p_value:.3g} < {alpha})"


def compare_split(rows: pd.DataFrame, alpha: float) -> dict:
    """Users split between the variants: independent samples."""
    both = rows[rows.variant.isin([CHAMPION, CHALLENGER])]
    result: dict = {"variants": per_variant(both)}
    if both.variant.nunique() < 2:
        result["note"] = "only one variant answered users: nothing to compare"
        return result
    table = pd.crosstab(both.variant, both.label)
    if table.shape[1] > 1:
        chi2, p_value, _, _ = stats.chi2_contingency(table)
        result["label_mix_test"] = {"test": "chi-square of variant x predicted label", "chi2": chi2, "p_value": p_value}
    champion, challenger = result["variants"][CHAMPION], result["variants"][CHALLENGER]
    if "accuracy" in champion and "accuracy" in challenger:
        test = two_proportion_z(
            champion["correct"], champion["labelled"], challenger["correct"], challenger["labelled"]
        )
        result["accuracy_test"] = {"test": "two-proportion z-test"} | test
        result["verdict"] = verdict(test["p_value"], test["difference"], alpha)
    return result


def compare_shadow(rows: pd.DataFrame, alpha: float) -> dict | None:
    """The same texts answered by both: paired, so agreement and McNemar's exact test on the discordant pairs."""
    shadow = rows[rows.shadow]
    if shadow.empty:
        return None
    keys = ["request_id", "position"]
    pairs = rows[~rows.shadow & (rows.variant == CHAMPION)].merge(
        shadow, on=keys, suffixes=("_champion", "_challenger")
    )
    agree = int((pairs.label_champion == pairs.label_challenger).sum())
    result = {
        "pairs": len(pairs),
        "agreement": agree / len(pairs) if len(pairs) else math.nan,
        "agreement_ci95": wilson(agree, len(pairs)),
        "variants": per_variant(pd.concat([rows[~rows.shadow & (rows.variant == CHAMPION)], shadow])),
    }
    labelled = pairs.dropna(subset=["truth_champion"])
    if len(labelled):
        champion_right = labelled.label_champion == labelled.truth_champion
        challenger_right = labelled.label_challenger == labelled.truth_champion
        only_challenger, only_champion = (
            int((challenger_right & ~champion_right).sum()),
            int((champion_right & ~challenger_right).sum()),
        )
        discordant = only_challenger + only_champion
        p_value = float(stats.binomtest(only_challenger, discordant).pvalue) if discordant else 1.0
        difference = (only_challenger - only_champion) / len(labelled)
        result["accuracy_test"] = {
            "test": "exact McNemar (binomial on discordant pairs)",
            "labelled_pairs": len(labelled),
            "only_challenger_right": only_challenger,
            "only_champion_right": only_champion,
            "difference": difference,
            "p_value": p_value,
        }
        result["verdict"] = verdict(p_value, difference, alpha)
    return result


def plot(rows: pd.DataFrame, report: dict, path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    variants = report["split"]["variants"]
    names = list(variants)
    if all("accuracy" in variants[n] for n in names):
        values = [100 * variants[n]["accuracy"] for n in names]
        errors = np.array(
            [
                [v - 100 * variants[n]["accuracy_ci95"][0], 100 * variants[n]["accuracy_ci95"][1] - v]
                for n, v in zip(names, values, strict=True)
            ]
        ).T
        left.bar(names, values, yerr=errors, capsize=6, color=["tab:blue", "tab:orange"][: len(names)])
        left.set_ylabel("accuracy on labelled texts (%), 95% CI")
        left.set_ylim(max(0, min(values) - 10), 100)
    else:
        shares = pd.DataFrame({n: variants[n]["label_share"] for n in names}).T
        shares.plot.bar(stacked=True, ax=left, rot=0)
        left.set_ylabel("share of answers")
    left.set_title("users' answers by variant")
    for (variant, shadow), group in rows.groupby(["variant", "shadow"]):
        right.hist(group.score, bins=20, range=(0.5, 1), alpha=0.5, label=f"{variant}{' (shadow)' if shadow else ''}")
    right.set_xlabel("confidence (probability of the answer)")
    right.set_ylabel("texts")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(report: dict) -> str:
    lines = [
        f"# A/B report\n\nGenerated by `make ab-report` (`reporting/ab.py`) from `{report['log']}`"
        + (f" with labels from `{report['labels']}`" if report["labels"] else " (no labels fed back)")
        + f", on a CPU with `{report['cpu']}` (latencies: as the service that wrote the log measured them).\n"
    ]
    for section, title in (("split", "Users split between variants"), ("shadow", "Shadow copies (paired)")):
        result = report.get(section)
        if not result:
            continue
        lines += [
            f"## {title}\n",
            "| variant | requests | texts | users | label share | mean confidence | p95 ms | accuracy (95% CI) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, v in result["variants"].items():
            accuracy = (
                f"{100 * v['accuracy']:.2f}% ({100 * v['accuracy_ci95'][0]:.1f}-"
                f"{100 * v['accuracy_ci95'][1]:.1f}), n={v['labelled']}"
                if "accuracy" in v
                else "-"
            )
            share = ", ".join(f"{k} {100 * s:.1f}%" for k, s in v["label_share"].items())
            lines.append(
                f"| {name} | {v['requests']} | {v['texts']} | {v['users']} | {share} | "
                f"{v['mean_confidence']:.3f} | {v['latency_ms_p95']:.1f} | {accuracy} |"
            )
        if "agreement" in result:
            lo, hi = result["agreement_ci95"]
            lines.append(
                f"\nAgreement on {result['pairs']} paired texts: {100 * result['agreement']:.2f}% "
                f"(95% CI {100 * lo:.1f}-{100 * hi:.1f})."
            )
        for key in ("label_mix_test", "accuracy_test"):
            if key in result:
                lines.append(f"\n{result[key]['test']}: p = {result[key]['p_value']:.3g}.")
        lines.append(f"\n**Verdict**: {result.get('verdict') or result.get('note') or 'no labels fed back'}.\n")
    lines.append("![A/B](ab.png)\n")
    return "\n".join(lines)


def run(config: ABReportConfig) -> dict:
    rows = read_log(Path(config.log))
    truth = read_labels(config) if config.labels else {}
    rows["truth"] = rows.text_sha256.map(truth)
    report = {
        "log": config.log,
        "labels": config.labels or None,
        "alpha": config.alpha,
        "cpu": cpu_flags(),  # of this machine: the latencies are the service's, measured where it ran
        "split": compare_split(rows[~rows.shadow], config.alpha),
        "shadow": compare_shadow(rows, config.alpha),
    }
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ab.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    plot(rows, report, out / "ab.png")
    (out / "AB.md").write_text(markdown(report))
    return report


def main() -> None:
    config, _ = command_line(ABReportConfig, __doc__)
    report = run(config)
    for section in ("split", "shadow"):
        if report[section]:
            print(f"{section}: {report[section].get('verdict') or report[section].get('note', 'no labels fed back')}")
    print(f"wrote {config.out_dir}/AB.md")


if __name__ == "__main__":
    main()
