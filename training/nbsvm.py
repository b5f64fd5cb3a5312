"""The lexical model: NBSVM-style logistic regression on word and character n-grams (Wang and Manning, 2012).

Binary n-gram features are scaled by their Naive Bayes log-count ratio (two classes; more classes keep the plain
features), a logistic regression is fit on them, and the vocabulary is cut to the `max_features` n-grams with the
largest weights, then fit again. The scaling and a temperature fitted on a held-out part of the train split (so that
its probabilities are calibrated: the cascade trusts their margin) are folded into the regression's weights, so the
exported model is a plain scikit-learn pipeline of two vectorizers and a logistic regression, which skl2onnx converts.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import FeatureUnion, Pipeline, make_pipeline, make_union

from serving.core.hybrid import TOKEN_PATTERN, lexical_text
from training.config import HybridConfig


def vectorizers(config: HybridConfig, vocabularies: list[list[str]] | None = None) -> FeatureUnion:
    """Word n-grams from 1 to `ngram_max` and, unless `char_ngram_max` is 0, character n-grams; always binary."""
    word = {"analyzer": "word", "ngram_range": (1, config.ngram_max), "token_pattern": TOKEN_PATTERN}
    char = {"analyzer": "char", "ngram_range": (config.char_ngram_min, config.char_ngram_max)}
    kinds = [word, char] if config.char_ngram_max else [word]
    return make_union(
        *(
            CountVectorizer(
                **kind,
                min_df=config.min_df,
                binary=True,
                lowercase=False,  # done by lexical_text, the same in Python and in the service
                dtype=np.float32,
                vocabulary=vocabularies[i] if vocabularies else None,
            )
            for i, kind in enumerate(kinds)
        )
    )


def log_count_ratio(features: sp.csr_matrix, labels: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """Per feature, log of how much likelier it is in the positive class than in the negative (smoothed)."""
    positive = alpha + np.asarray(features[labels == 1].sum(0)).ravel()
    negative = alpha + np.asarray(features[labels == 0].sum(0)).ravel()
    return np.log(positive / positive.sum()) - np.log(negative / negative.sum())


def with_sub_ngrams(vocabulary: list[str], analyzer: str, shortest: int) -> list[str]:
    """The vocabulary with every contiguous sub-n-gram of its entries: ONNX Runtime's TfIdfVectorizer counts an
    n-gram only through the shorter ones it contains."""
    kept = set(vocabulary)
    for entry in vocabulary:
        parts = entry.split(" ") if analyzer == "word" else list(entry)
        joiner = " " if analyzer == "word" else ""
        kept |= {
            joiner.join(parts[i:j])
            for i in range(len(parts))
            for j in range(i + shortest, len(parts) + 1)
            if j - i < len(parts)
        }
    return sorted(kept)


def temperature(scores: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that gives `scores` (logits) the lowest log loss on `labels`."""

    def loss(t: float) -> float:
        return -float(log_softmax(scores / t, axis=1)[np.arange(len(labels)), labels].mean())

    return float(minimize_scalar(loss, bounds=(0.05, 20.0), method="bounded").x)


def logits(model: LogisticRegression, features: sp.csr_matrix) -> np.ndarray:
    scores = model.decision_function(features)
    return np.column_stack([-scores / 2, scores / 2]) if scores.ndim == 1 else scores  # two classes: one score


def train_nbsvm(texts: list[str], labels: list[int], config: HybridConfig) -> Pipeline:
    """The NBSVM lexical model, fit on `texts` (its temperature on a held-out `calibration_share` of them)."""
    texts = [lexical_text(t) for t in texts]
    fit_texts, held_texts, fit_labels, held_labels = train_test_split(
        texts, np.asarray(labels), test_size=config.calibration_share, stratify=labels, random_state=0
    )
    union = vectorizers(config)
    features = union.fit_transform(fit_texts).tocsr()
    binary = len(np.unique(fit_labels)) == 2
    ratio = log_count_ratio(features, fit_labels) if binary else np.ones(features.shape[1])
    model = LogisticRegression(C=config.C, max_iter=3000).fit(features.multiply(ratio).tocsr(), fit_labels)

    # cut to the strongest n-grams (with the shorter ones they contain), fit again on those
    strength = np.abs(model.coef_ * ratio).max(0)
    keep = set(np.argsort(-strength)[: config.max_features].tolist())
    vocabularies, start = [], 0
    for _, vectorizer in union.transformer_list:
        names = vectorizer.get_feature_names_out()
        chosen = [str(names[i - start]) for i in range(start, start + len(names)) if i in keep]
        shortest = 1 if vectorizer.analyzer == "word" else vectorizer.ngram_range[0]
        vocabularies.append(with_sub_ngrams(chosen, vectorizer.analyzer, shortest))
        start += len(names)
    union = vectorizers(config, vocabularies).fit(fit_texts)
    features = union.transform(fit_texts).tocsr()
    ratio = log_count_ratio(features, fit_labels) if binary else np.ones(features.shape[1])
    model = LogisticRegression(C=config.C, max_iter=3000).fit(features.multiply(ratio).tocsr(), fit_labels)

    # fold the ratio and the temperature into the weights: the pipeline reads the plain binary features
    held = union.transform(held_texts).tocsr().multiply(ratio).tocsr()
    t = temperature(logits(model, held), held_labels)
    model.coef_, model.intercept_ = model.coef_ * ratio / t, model.intercept_ / t
    return make_pipeline(union, model)
