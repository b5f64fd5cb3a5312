"""TF-IDF (word 1-2 grams, sublinear tf) + logistic regression: the score the fine-tuned model must beat.

Trained on the same train split and scored on the same test split as the experiment config; logged to MLflow.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import mlflow
import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from serving.text import clean_text
from training.config import RELEASE_CONFIG, ExperimentConfig, command_line, flatten
from training.data import load_data
from training.metrics import classification_metrics, scalar_metrics
from training.registry import setup_tracking

VECTORIZER = {"ngram_range": (1, 2), "sublinear_tf": True, "min_df": 2, "max_features": 400_000}
CLASSIFIER = {"C": 4.0, "max_iter": 2000}


def main() -> None:
    config, _ = command_line(ExperimentConfig, __doc__, default=RELEASE_CONFIG)
    data = load_data(config.data)
    train, validation, test = (data.splits[s] for s in ("train", "validation", "test"))

    setup_tracking(config.data.name)
    with mlflow.start_run(run_name=f"{config.data.name}-tfidf-logreg"):
        mlflow.log_params(flatten({"vectorizer": VECTORIZER, "classifier": CLASSIFIER, "data": vars(config.data)}))
        mlflow.log_params({"data.fingerprint": data.fingerprint, "data.n_train": len(train)})
        started = time.time()
        model = make_pipeline(TfidfVectorizer(**VECTORIZER), LogisticRegression(**CLASSIFIER))
        model.fit([clean_text(t) for t in train["text"]], train["label"])
        fit_seconds = time.time() - started

        def score(split) -> dict:
            preds = model.predict([clean_text(t) for t in split["text"]])
            return classification_metrics(np.array(split["label"]), preds, data.label_names)

        results = {
            "validation": score(validation),
            "test": score(test),
            "fit_seconds": round(fit_seconds, 1),
            "n_train": len(train),
        }
        mlflow.log_metrics(
            scalar_metrics(results["test"], "test")
            | {"validation_accuracy": results["validation"]["accuracy"], "fit_seconds": fit_seconds}
        )
        out = Path(config.reports_dir) / config.data.name / "baseline.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        mlflow.log_artifact(str(out))
    print(
        json.dumps(
            {
                "test_accuracy": results["test"]["accuracy"],
                "n_test": results["test"]["n"],
                "n_train": len(train),
                "fit_seconds": results["fit_seconds"],
            }
        )
    )


if __name__ == "__main__":
    main()
