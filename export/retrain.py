"""Retraining with a promotion gate: new labelled data -> a challenger -> the new champion, or a challenger for A/B.

    python -m export.retrain new_data=PATH [margin=0.002] ["experiment_overrides=[train.epochs=1]"] [key=value ...]
    make retrain NEW_DATA=PATH ARGS="margin=0.005"

1. Splits the new data (.parquet/.csv/.jsonl with the experiment's columns; stratified, seeded by `data.seed`) into a
   part to train on and a held-out part (`new_eval_size`), both written to `build/retrain/<id>/`; `<id>` hashes the
   new data's content and the recipe, so the same command resumes the same training run (`runs/retrain-<id>/`).
2. Trains a challenger from the experiment config with that part appended to the train split (`data.extra_train`),
   adds its lexical half when the champion serves a hybrid, and registers it as `challenger` (a version already
   registered from the same data and recipe is reused).
3. Scores what champion and challenger serve (transformer, hybrid policy and lexical model of each registry version)
   on the experiment's test split and on the held-out new data; the gate (`gate`) promotes only if the challenger
   wins by `margin` on both and no class's recall falls by more than `max_class_regression`.
4. Promoted: exported as a new `<export.bento_model>` version (the service reloads the store's latest), then
   `champion` moves to it. Refused: it stays `challenger`, exported as `<export.bento_model>-challenger` for A/B tests
   (`export_challenger`). The verdict and its reasons go to the version's tags and `reports/retrain/<id>/`.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import bentoml
import mlflow
import numpy as np
from datasets import Dataset, DatasetDict
from mlflow import MlflowClient

from export.convert import download_hybrid, resolve
from export.export import ExportConfig
from export.export import run as export_model
from serving.core.hybrid import LEXICAL_FILE, LexicalModel
from serving.core.runtime import cpu_flags
from training import lexical, train
from training.config import RELEASE_CONFIG, DataConfig, ExperimentConfig, command_line, load_config
from training.data import load_data, read_labelled_file
from training.metrics import classification_metrics
from training.modeling import predict_proba
from training.registry import (
    CHALLENGER,
    CHAMPION,
    champion_version,
    register,
    registered_with_hybrid,
    settle,
    setup_tracking,
    tagged_version,
)

TEST_SET, NEW_SET = "test split", "held-out new data"  # the two sets the gate compares on
ID_TAG, VERDICT_TAG, REASONS_TAG, REPORT_TAG = "retrain_id", "retrain_verdict", "retrain_reasons", "retrain_report"
CHALLENGER_SUFFIX = "-challenger"  # BentoML model of a refused challenger: `<export.bento_model>-challenger`
TRAIN_PART, HELD_OUT_PART, REPORT_FILE = "train.parquet", "held_out.parquet", "retrain.json"


@dataclass
class RetrainConfig:
    """What to retrain on, from which recipe, the gate a challenger must pass, and how it is exported."""

    new_data: str | None = None  # labelled file, the experiment's text/label columns (labels: names or ids)
    experiment: str = str(RELEASE_CONFIG)  # the champion's recipe: the challenger is trained from it
    experiment_overrides: list[str] = field(default_factory=list)  # key=value on it, e.g. [train.epochs=1]
    new_eval_size: float = 0.2  # share of the new data held out to evaluate on
    margin: float = 0.002  # accuracy the challenger must gain over the champion on each set
    max_class_regression: float = 0.005  # the largest fall in any class's recall allowed on either set
    export_challenger: bool = True  # a refused challenger goes to the store as `<export.bento_model>-challenger`
    work_dir: str = "build/retrain"  # <id>/: the new data's parts, the challenger's model folder, the ONNX files
    reports_dir: str = "reports/retrain"  # <id>/: retrain.json, RETRAIN.md, the export's parity report
    # the export's settings; model_uri, work_dir and report are set per retraining (the version, its folders)
    export: ExportConfig = field(default_factory=ExportConfig)


@dataclass(frozen=True)
class Verdict:
    promote: bool
    reasons: list[str]  # every failed condition in words, with its numbers (empty when promoted)


Scores = dict[str, dict[str, Any]]  # a set's name -> `classification_metrics` on it


def gate(champion: Scores, challenger: Scores, margin: float, max_class_regression: float) -> Verdict:
    """Promote only if on every set the challenger's accuracy is at least the champion's + `margin` and no class's
    recall falls by more than `max_class_regression`: a better average must not hide a class served worse."""
    reasons = []
    for name, new in challenger.items():
        old = champion[name]
        if new["accuracy"] < old["accuracy"] + margin:
            reasons.append(
                f"{name}: accuracy {new['accuracy']:.4f} < the champion's {old['accuracy']:.4f} + margin {margin:g}"
            )
        for label, scores in new["per_class"].items():
            before, after = old["per_class"][label]["recall"], scores["recall"]
            if before - after > max_class_regression:
                reasons.append(
                    f"{name}: recall of {label!r} fell {before - after:.4f} ({before:.4f} -> {after:.4f}), "
                    f"more than {max_class_regression:g}"
                )
    return Verdict(not reasons, reasons)


def content_id(new_data: Path, recipe: ExperimentConfig, eval_size: float) -> str:
    """The new data's content hash, with the recipe and split it is trained by: the same command resumes the same
    training run and reuses its version, while another recipe for the same data trains anew."""
    digest = hashlib.sha256(new_data.read_bytes())
    digest.update(json.dumps([recipe.to_dict(), eval_size], sort_keys=True).encode())
    return digest.hexdigest()[:12]


def split_new_data(path: Path, eval_size: float, data: DataConfig, label_names: list[str], out: Path) -> DatasetDict:
    """The new data as a `train` part and a held-out `test` part (stratified, seeded by `data.seed`), both written to
    `out` with the experiment's column names (the train part is read back as `data.extra_train`)."""
    parts = read_labelled_file(path, data, label_names).train_test_split(
        test_size=eval_size, stratify_by_column="label", seed=data.seed
    )
    out.mkdir(parents=True, exist_ok=True)
    columns = {old: new for old, new in (("text", data.text_column), ("label", data.label_column)) if old != new}
    for split, file in (("train", TRAIN_PART), ("test", HELD_OUT_PART)):
        parts[split].rename_columns(columns).to_parquet(out / file)
    return parts


def train_challenger(experiment: ExperimentConfig, champion_run_id: str, retrain_id: str) -> str:
    """Train (resuming a killed run), add the lexical half when the champion serves a hybrid, and register the
    result as `challenger` whatever it scores on validation; returns its version."""
    train.run(experiment)
    model_dir = Path(experiment.models_dir) / experiment.name
    if registered_with_hybrid(champion_run_id):
        lexical.run(model_dir, experiment)
    version, _ = register(model_dir, experiment, gate=False, tags={ID_TAG: retrain_id})
    return version


def served_probabilities(name: str, version: str, texts: list[str]) -> np.ndarray:
    """What registry version `version` serves for `texts`: its merged transformer (encoded as its own config says),
    through its hybrid policy and lexical model when it was registered with them."""
    uri = f"models:/{name}/{version}"
    registered = resolve(uri)
    components = mlflow.transformers.load_model(uri, return_type="components")
    transformer = predict_proba(components["model"], components["tokenizer"], texts, registered.config.encoding)
    with tempfile.TemporaryDirectory() as hybrid_dir:
        policy = download_hybrid(registered.run_id, Path(hybrid_dir))
        if policy is None:
            return transformer
        return policy.decide(LexicalModel(Path(hybrid_dir) / LEXICAL_FILE).predict_proba(texts), transformer)


def score(name: str, version: str, sets: dict[str, Dataset], label_names: list[str]) -> Scores:
    """`classification_metrics` of what the version serves, per set (all sets in one pass through the model)."""
    probs = served_probabilities(name, version, [text for dataset in sets.values() for text in dataset["text"]])
    parts = np.split(probs, np.cumsum([len(dataset) for dataset in sets.values()])[:-1])
    return {
        set_name: classification_metrics(np.array(dataset["label"]), part.argmax(1), label_names)
        for (set_name, dataset), part in zip(sets.items(), parts, strict=True)
    }


def export_verdict(
    config: RetrainConfig, name: str, version: str, promote: bool, work: Path, report_dir: Path
) -> bentoml.Model | None:
    """Promoted: a new version of `export.bento_model`, exported before `champion` moves (a version whose export fails
    the parity gate never becomes champion); refused: `<export.bento_model>-challenger`, unless `export_challenger`
    is off."""
    if not promote and not config.export_challenger:
        return None
    return export_model(
        replace(
            config.export,
            model_uri=f"models:/{name}/{version}",
            bento_model=config.export.bento_model + ("" if promote else CHALLENGER_SUFFIX),
            work_dir=str(work / "onnx"),
            report=str(report_dir / "parity.json"),
        )
    )


def markdown(record: dict[str, Any]) -> str:
    """RETRAIN.md: both versions on both sets, the gate's thresholds, the decision and why."""
    champion, challenger, rows = record["scores"]["champion"], record["scores"]["challenger"], record["new_rows"]
    old, new = f"champion v{record['champion_version']}", f"challenger v{record['challenger_version']}"
    accuracy = [f"| set | n | {old} | {new} | change | needed |", "|---|---|---|---|---|---|"]
    recall = [f"| set | class | {old} | {new} | change | allowed |", "|---|---|---|---|---|---|"]
    for set_name, after in challenger.items():
        before = champion[set_name]
        accuracy.append(
            f"| {set_name} | {after['n']} | {before['accuracy']:.4f} | {after['accuracy']:.4f} "
            f"| {after['accuracy'] - before['accuracy']:+.4f} | >= {record['margin']:+g} |"
        )
        for label, scores in after["per_class"].items():
            was = before["per_class"][label]["recall"]
            recall.append(
                f"| {set_name} | {label} | {was:.4f} | {scores['recall']:.4f} | {scores['recall'] - was:+.4f} "
                f"| >= {-record['max_class_regression']:+g} |"
            )
    if record["promoted"]:
        decision = f"**Promoted**: `champion` moved to v{record['challenger_version']}; every condition held."
    else:
        decision = f"**Refused**: v{record['challenger_version']} stays `challenger`.\n\n" + "\n".join(
            f"- {reason}" for reason in record["reasons"]
        )
    exported = f"`{record['bento_model']}`" if record["bento_model"] else "nothing (export_challenger is off)"
    return f"""# Retraining {record["id"]}: {record["registered_model"]} {new} against {old}

Generated by `make retrain` (`export/retrain.py`) on a CPU with `{record["cpu"]}`. New data: `{record["new_data"]}`:
{rows["train"]} rows trained on (appended to the experiment's train split), {rows["held_out"]} held out. Both
versions are scored as they serve (the transformer, hybrid policy and lexical model of each registry version).

{decision}

Exported to the BentoML store: {exported}.

## Accuracy (the challenger must gain at least the margin on every set)

{chr(10).join(accuracy)}

## Recall per class (no class may fall by more than {record["max_class_regression"]:g})

{chr(10).join(recall)}
"""


def write_report(record: dict[str, Any], report_dir: Path) -> None:
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / REPORT_FILE).write_text(json.dumps(record, indent=2) + "\n")
    (report_dir / "RETRAIN.md").write_text(markdown(record))


def run(config: RetrainConfig) -> dict[str, Any]:
    """Train, register, score, gate, export and record one retraining; returns its record (`retrain.json`)."""
    if not config.new_data:
        raise ValueError("new_data=PATH is required (make retrain NEW_DATA=PATH)")
    base = load_config(config.experiment, config.experiment_overrides)
    name, new_data = base.registered_model, Path(config.new_data)
    retrain_id = content_id(new_data, base, config.new_eval_size)
    work, report_dir = Path(config.work_dir) / retrain_id, Path(config.reports_dir) / retrain_id
    setup_tracking(base.dataset)
    client = MlflowClient()
    champion = champion_version(client, name)
    if champion is None:
        raise RuntimeError(f"{name} has no champion to retrain against: `make model` registers one")
    version = tagged_version(client, name, ID_TAG, retrain_id)
    if version == str(champion.version):
        print(f"{name} v{version} (retrain {retrain_id}) is already champion: nothing to do")
        return json.loads((report_dir / REPORT_FILE).read_text())

    data = load_data(base.data)
    parts = split_new_data(new_data, config.new_eval_size, base.data, data.label_names, work)
    if version is None:
        extra_train = [*base.data.extra_train, str(work / TRAIN_PART)]
        challenger = replace(
            base,
            name=f"retrain-{retrain_id}",
            models_dir=str(work / "models"),
            data=replace(base.data, extra_train=extra_train),
        )
        version = train_challenger(challenger, champion.run_id, retrain_id)
    else:
        print(f"{name} v{version} was trained on this data already: scoring it again")

    sets = {TEST_SET: data.splits["test"], NEW_SET: parts["test"]}
    roles = {"champion": str(champion.version), "challenger": version}
    scores = {role: score(name, number, sets, data.label_names) for role, number in roles.items()}
    verdict = gate(scores["champion"], scores["challenger"], config.margin, config.max_class_regression)
    bento_model = export_verdict(config, name, version, verdict.promote, work, report_dir)
    record = {
        "id": retrain_id,
        "new_data": str(config.new_data),
        "new_rows": {"train": len(parts["train"]), "held_out": len(parts["test"])},
        "registered_model": name,
        "champion_version": roles["champion"],
        "challenger_version": version,
        "training_run_id": client.get_run(client.get_model_version(name, version).run_id).data.tags["trained_run_id"],
        "margin": config.margin,
        "max_class_regression": config.max_class_regression,
        "scores": scores,
        "promoted": verdict.promote,
        "reasons": verdict.reasons,
        "bento_model": str(bento_model.tag) if bento_model else None,
        "cpu": cpu_flags(),
    }
    write_report(record, report_dir)
    tags = {
        VERDICT_TAG: "promoted" if verdict.promote else "refused",
        REASONS_TAG: "; ".join(verdict.reasons) or "every condition held",
        REPORT_TAG: str(report_dir),
    }
    alias = settle(client, name, version, verdict.promote, tags)
    outcome = (
        f"PROMOTED to {CHAMPION}"
        if alias == CHAMPION
        else f"REFUSED, stays {CHALLENGER}: " + "; ".join(verdict.reasons)
    )
    print(f"{name} v{version} (retrain {retrain_id}) {outcome}")
    print(f"exported: {record['bento_model'] or 'nothing'}; report: {report_dir / 'RETRAIN.md'}")
    return record


def main() -> None:
    config, _ = command_line(RetrainConfig, __doc__)
    run(config)


if __name__ == "__main__":
    main()
