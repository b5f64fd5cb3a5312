"""The hybrid model's lexical half and its policy: TF-IDF + logistic regression (or NBSVM) beside the transformer.

    python -m training.lexical --model-dir models/imdb-minilm-lora

Trains on the model's own train split and writes, beside the adapter, `lexical.onnx.gz` (skl2onnx, checked against
scikit-learn to 1e-4 on validation) and `hybrid.json`: the ensemble weight with the best validation accuracy, and the
lowest cascade threshold whose accuracy loss to the ensemble stays within `hybrid.max_cascade_loss` at
`hybrid.loss_confidence` (a paired bootstrap of the validation reviews: a bound, not the point estimate that a lucky
validation split would flatter). Everything is chosen on the whole validation split, never on test. Logged to the
transformer's MLflow run when this store has it.
"""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import mlflow
import numpy as np
import onnx
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from onnx import helper, numpy_helper
from skl2onnx import to_onnx
from skl2onnx.common.data_types import StringTensorType
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline, make_union

from serving.core.hybrid import (
    LEXICAL_FILE,
    POLICY_FILE,
    TOKEN_PATTERN,
    HybridPolicy,
    LexicalModel,
    ensemble,
    lexical_text,
    top_two_margin,
)
from serving.core.text import unpack_ids
from training.config import RELEASE_MODEL_DIR, ExperimentConfig, HybridConfig, command_line, flatten
from training.modeling import PARITY_SAMPLE, load_tokenizer, load_trained, stored_or_predicted
from training.nbsvm import train_nbsvm
from training.registry import setup_tracking

WEIGHTS = np.round(np.arange(0, 1.0001, 0.025), 3)  # lexical weight in the ensemble: 0 is the transformer alone
LEXICAL_MAX_ABS_DIFF = 1e-4  # the ONNX file must answer as scikit-learn does
NO_KNOWN_WORD = "?"  # a text none of whose n-grams is in the vocabulary: its TF-IDF row is all zeros
THRESHOLDS = np.round(np.arange(0, 1.0001, 0.01), 2)  # lexical top-two margin; 1.0 sends (almost) all onward


def train_lexical(texts: list[str], labels: list[int], config: HybridConfig) -> Pipeline:
    """The lexical model of `config.recipe`: word n-grams (one union of vectorizers) and a logistic regression."""
    if config.recipe == "nbsvm":
        return train_nbsvm(texts, labels, config)
    if config.recipe != "tfidf":
        raise ValueError(f"hybrid.recipe must be 'tfidf' or 'nbsvm', not {config.recipe!r}")
    vectorizer = TfidfVectorizer(
        ngram_range=(1, config.ngram_max),
        min_df=config.min_df,
        lowercase=False,  # done by lexical_text, the same in Python and in the service
        token_pattern=TOKEN_PATTERN,
        binary=config.binary,
    )
    pipeline = make_pipeline(make_union(vectorizer), LogisticRegression(C=config.C, max_iter=2000))
    return pipeline.fit([lexical_text(t) for t in texts], labels)


def export_lexical(pipeline: Pipeline, path: Path, texts: list[str]) -> float:
    """ONNX through skl2onnx (no pickle, no scikit-learn in the serving image); returns the largest probability
    difference from scikit-learn on `texts` (and a text with no known word), refusing the file above
    `LEXICAL_MAX_ABS_DIFF`.

    The TF-IDF rows are scaled to unit length by plain operators (skl2onnx's own alternative) instead of ONNX's
    `Normalizer`, whose ONNX Runtime kernel is slow on rows as wide as the vocabulary: the API worker runs this model
    on every request, on its event loop (`make profile` shows its share; `make benchmark` its in-process p50)."""
    union, classifier = pipeline.steps[0][1], pipeline.steps[-1][1]
    options: dict[int, dict] = {id(classifier): {"zipmap": False}}
    for _, vectorizer in union.transformer_list:
        if vectorizer.analyzer == "word":  # words as Python's regex finds them; characters need no options
            options[id(vectorizer)] = {"tokenexp": TOKEN_PATTERN, "separators": None}
    graph = to_onnx(
        pipeline,
        initial_types=[("text", StringTensorType([None, 1]))],
        options=options,
        black_op={"Normalizer"},
    )
    path.write_bytes(gzip.compress(zero_rows_kept(graph).SerializeToString(), mtime=0))
    texts = [*texts, NO_KNOWN_WORD]
    reference = pipeline.predict_proba([lexical_text(t) for t in texts])
    difference = float(np.abs(LexicalModel(path).predict_proba(texts) - reference).max())
    if not difference <= LEXICAL_MAX_ABS_DIFF:  # NaN fails too
        raise RuntimeError(f"{path.name} does not reproduce scikit-learn: max |dp| {difference:.2g}")
    return difference


def zero_rows_kept(graph: onnx.ModelProto) -> onnx.ModelProto:
    """skl2onnx divides each row by its norm (`Sqrt` of its sum of squares): an all-zero row (no known word) would
    become NaN. As scikit-learn does, it stays zero: the norm is at least the smallest positive float."""
    smallest = "smallest_norm"
    graph.graph.initializer.append(numpy_helper.from_array(np.array(np.finfo(np.float32).tiny), smallest))
    for index, node in reversed(list(enumerate(graph.graph.node))):
        if node.op_type == "Sqrt":
            norm = node.output[0]
            node.output[0] = f"{norm}_unguarded"
            graph.graph.node.insert(index + 1, helper.make_node("Max", [node.output[0], smallest], [norm]))
    return graph


def log_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-12)).mean())


def choose_weight(lexical: np.ndarray, transformer: np.ndarray, labels: np.ndarray) -> float:
    """The lexical weight with the best accuracy (ties: the lower log loss)."""

    def score(weight: float) -> tuple[float, float]:
        probs = ensemble(lexical, transformer, weight)
        return float((probs.argmax(1) == labels).mean()), -log_loss(probs, labels)

    return float(max(WEIGHTS, key=score))


def cascade_curve(
    lexical: np.ndarray, combined: np.ndarray, labels: np.ndarray, config: HybridConfig | None = None
) -> list[dict[str, float]]:
    """Per threshold: the share of texts sent to the transformer, the cascade's accuracy, how right the lexical model
    is on the texts it answers alone, and (with `config`) the bootstrap bound of the cascade's accuracy loss to the
    ensemble (the trade-off the threshold is chosen on)."""
    margin, lexical_right = top_two_margin(lexical), lexical.argmax(1) == labels
    combined_right = combined.argmax(1) == labels
    if config:  # the same resamples for every threshold: the bounds are comparable along the curve
        resamples = np.random.default_rng(0).integers(0, len(labels), (config.bootstrap_samples, len(labels)))
    curve = []
    for threshold in THRESHOLDS:
        alone = margin >= threshold
        served = np.where(alone, lexical_right, combined_right)
        point = {
            "threshold": float(threshold),
            "transformer_share": float(1 - alone.mean()),
            "accuracy": float(served.mean()),
            "lexical_precision": float(lexical_right[alone].mean()) if alone.any() else 1.0,
        }
        if config:
            loss = combined_right.astype(np.int8) - served.astype(np.int8)  # 1 where only the ensemble is right
            point["loss_bound"] = float(np.quantile(loss[resamples].mean(1), config.loss_confidence))
        curve.append(point)
    return curve


def choose_policy(
    lexical: np.ndarray, transformer: np.ndarray, labels: np.ndarray, config: HybridConfig
) -> tuple[HybridPolicy, dict]:
    """The served policy and the validation evidence behind it: the cascade at the lowest threshold whose loss bound
    holds, else (none holds) the ensemble."""
    weight = choose_weight(lexical, transformer, labels)
    curve = cascade_curve(lexical, ensemble(lexical, transformer, weight), labels, config)
    passing = [point["threshold"] for point in curve if point["loss_bound"] <= config.max_cascade_loss]
    policy = HybridPolicy(weight, min(passing), "cascade") if passing else HybridPolicy(weight, 1.0, "ensemble")
    accuracy = {
        mode: float((policy.with_mode(mode).decide(lexical, transformer).argmax(1) == labels).mean())
        for mode in ("transformer", "ensemble", "cascade")
    } | {"lexical": float((lexical.argmax(1) == labels).mean())}
    evidence = {
        "validation_accuracy": accuracy,
        "validation_transformer_share": len(policy.onward(lexical, len(labels))) / len(labels),
        "rule": f"lowest margin threshold at which the cascade loses at most {config.max_cascade_loss} accuracy to "
        f"the ensemble at {config.loss_confidence} confidence (paired bootstrap, {config.bootstrap_samples} "
        "resamples of validation); the ensemble if none does",
        "n_validation": len(labels),
        "validation_curve": curve,
    }
    return policy, evidence


def log_to_training_run(run_id: str | None, config: ExperimentConfig, metrics: dict, files: list[Path]) -> None:
    """Into the transformer's run when this store has it (a model trained elsewhere gets a run of its own)."""
    setup_tracking(config.dataset)
    try:
        run_id = MlflowClient().get_run(run_id).info.run_id if run_id else None
    except MlflowException:
        run_id = None
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else f"{config.name}-lexical"):
        mlflow.log_params(flatten({"hybrid": vars(config.hybrid)}))
        mlflow.log_metrics(metrics)
        for file in files:
            mlflow.log_artifact(str(file), "hybrid")


def run(model_dir: Path, config: ExperimentConfig) -> dict:
    from training.data import load_data

    data = load_data(config.data)
    train, validation = data.splits["train"], data.splits["validation"]
    sample = np.load(model_dir / PARITY_SAMPLE)  # the transformer's validation split, as token ids
    labels = sample["labels"].astype(int)
    if not np.array_equal(labels, np.array(validation["label"])):
        raise ValueError(f"{PARITY_SAMPLE} is not this data's validation split: retrain or check data.* settings")

    started = time.time()
    pipeline = train_lexical(train["text"], train["label"], config.hybrid)
    fit_seconds = time.time() - started
    parity = export_lexical(pipeline, model_dir / LEXICAL_FILE, validation["text"])
    lexical_probs = LexicalModel(model_dir / LEXICAL_FILE).predict_proba(validation["text"])  # as served
    summary = json.loads((model_dir / "metrics.json").read_text())
    model = load_trained(model_dir, config, summary["label_names"])
    ids = unpack_ids(sample["ids"], sample["offsets"])
    pad_token_id = load_tokenizer(config.model.checkpoint).pad_token_id
    transformer_probs = stored_or_predicted(model, ids, pad_token_id, sample.get("reference"))  # written with it
    policy, evidence = choose_policy(lexical_probs, transformer_probs, labels, config.hybrid)
    record = evidence | {
        "lexical": {**vars(config.hybrid), "n_train": len(train), "fit_seconds": round(fit_seconds, 1)},
        "lexical_onnx_max_abs_diff": parity,
    }
    policy.save(model_dir / POLICY_FILE, **record)
    metrics = {f"validation_accuracy_{mode}": value for mode, value in evidence["validation_accuracy"].items()}
    metrics |= {"hybrid_weight": policy.weight, "hybrid_threshold": policy.threshold}
    log_to_training_run(
        summary.get("mlflow_run_id"), config, metrics, [model_dir / LEXICAL_FILE, model_dir / POLICY_FILE]
    )
    return (
        {"mode": policy.mode, "weight": policy.weight, "threshold": policy.threshold}
        | metrics
        | {"validation_transformer_share": evidence["validation_transformer_share"]}
    )


def main() -> None:
    config, args = command_line(ExperimentConfig, __doc__, source="--model-dir", default=RELEASE_MODEL_DIR)
    print(json.dumps(run(args.source, config), indent=2))


if __name__ == "__main__":
    main()
