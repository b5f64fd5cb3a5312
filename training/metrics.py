"""Classification metrics, computed the same way for the lexical model, training and evaluation."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, label_names: list[str]) -> dict[str, Any]:
    """Accuracy, macro precision/recall/F1, per-class scores and the confusion matrix (rows = truth)."""
    labels = list(range(len(label_names)))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_precision": float(np.mean(precision)),
        "macro_recall": float(np.mean(recall)),
        "macro_f1": float(np.mean(f1)),
        "n": len(y_true),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(label_names, precision, recall, f1, support, strict=True)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def scalar_metrics(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    """The flat numbers of `classification_metrics`, prefixed for MLflow (`test_accuracy`, ...)."""
    keys = ("accuracy", "macro_precision", "macro_recall", "macro_f1")
    flat = {f"{prefix}_{k}": metrics[k] for k in keys}
    for name, scores in metrics["per_class"].items():
        flat.update({f"{prefix}_{name}_{k}": v for k, v in scores.items() if k != "support"})
    return flat
