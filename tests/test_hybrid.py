"""The hybrid model offline: the lexical ONNX file answers as scikit-learn does, and the policy's rules hold."""

import numpy as np
import pytest

from serving.core.hybrid import LEXICAL_FILE, HybridPolicy, HybridRouter, LexicalModel, lexical_text, top_two_margin
from training.config import DataConfig, HybridConfig
from training.data import load_data
from training.lexical import THRESHOLDS, choose_policy, export_lexical, train_lexical


@pytest.fixture(scope="module")
def imdb_slice():
    data = load_data(DataConfig(max_train_samples=3000, max_validation_samples=600))
    return data.splits["train"], data.splits["validation"]


@pytest.fixture(scope="module")
def lexical_pair(imdb_slice, tmp_path_factory):
    """Two real lexical models of different strength: the policy's rules need two models' probabilities, not the
    transformer in particular."""
    train, validation = imdb_slice
    path = tmp_path_factory.mktemp("lexical") / LEXICAL_FILE
    strong = train_lexical(train["text"], train["label"], HybridConfig())
    difference = export_lexical(strong, path, validation["text"])
    weak = train_lexical(train["text"][:600], train["label"][:600], HybridConfig(ngram_max=1, C=0.5))
    return path, difference, weak


def test_lexical_onnx_answers_as_scikit_learn(lexical_pair, imdb_slice):
    path, difference, _ = lexical_pair
    assert difference <= 1e-4
    probs = LexicalModel(path).predict_proba(["An unwatchable, boring mess.", "A wonderful, moving film."])
    assert probs.argmax(1).tolist() == [0, 1]
    # case and IMDb's <br /> tags are folded the same way in the service as in training
    same = LexicalModel(path).predict_proba(["GREAT<br />film", "great film"])
    np.testing.assert_allclose(same[0], same[1], atol=1e-6)


def test_policy_is_chosen_by_its_rules(lexical_pair, imdb_slice):
    path, _, weak = lexical_pair
    _, validation = imdb_slice
    labels = np.array(validation["label"])
    lexical = LexicalModel(path).predict_proba(validation["text"])
    other = weak.predict_proba([lexical_text(t) for t in validation["text"]])
    config = HybridConfig(max_cascade_loss=0.01, bootstrap_samples=200)
    policy, evidence = choose_policy(lexical, other, labels, config)

    accuracy = evidence["validation_accuracy"]
    assert accuracy["ensemble"] >= accuracy["transformer"]  # weight 0 is on the grid
    curve = {point["threshold"]: point for point in evidence["validation_curve"]}
    for point in curve.values():  # a 95% bound is above the loss the validation split shows
        assert point["loss_bound"] >= accuracy["ensemble"] - point["accuracy"] - 1e-9
    passing = [t for t in THRESHOLDS if curve[t]["loss_bound"] <= config.max_cascade_loss]
    assert policy.mode == ("cascade" if passing else "ensemble")
    assert policy.threshold == (min(passing) if passing else 1.0)  # the lowest that holds
    assert accuracy["cascade"] >= accuracy["ensemble"] - config.max_cascade_loss
    share = evidence["validation_transformer_share"]
    assert share == pytest.approx(float((top_two_margin(lexical) < policy.threshold).mean()))


def test_cascade_routes_by_margin_for_any_number_of_classes_and_keeps_order():
    lexical = np.array([[0.96, 0.02, 0.02], [0.40, 0.35, 0.25], [0.05, 0.05, 0.90], [0.50, 0.45, 0.05]])
    transformer = np.array([[0.1, 0.8, 0.1]] * 4)
    policy = HybridPolicy(weight=0.5, threshold=0.6, mode="cascade")
    onward = policy.onward(lexical, 4)
    assert onward.tolist() == [1, 3]  # margins 0.94, 0.05, 0.85, 0.05
    probs, routes = policy.merge(lexical, transformer[onward], onward, 4)
    assert routes == ["lexical", "ensemble", "lexical", "ensemble"]
    np.testing.assert_allclose(probs[[0, 2]], lexical[[0, 2]])
    np.testing.assert_allclose(probs.sum(1), 1.0)
    np.testing.assert_allclose(probs, policy.decide(lexical, transformer))
    for mode, route in (("ensemble", "ensemble"), ("transformer", "transformer")):
        other = policy.with_mode(mode)
        assert other.onward(lexical, 4).tolist() == [0, 1, 2, 3]
        assert set(other.merge(lexical, transformer, other.onward(lexical, 4), 4)[1]) == {route}


def test_nbsvm_on_words_and_characters_exports_as_scikit_learn_answers(imdb_slice, tmp_path):
    """The cut vocabulary keeps every n-gram ONNX Runtime needs to count the kept ones, and the folded weights and
    temperature give calibrated probabilities: its log loss on held-out reviews beats a constant guess."""
    train, validation = imdb_slice
    config = HybridConfig(recipe="nbsvm", ngram_max=3, min_df=2, C=0.3, char_ngram_max=4, max_features=20_000)
    pipeline = train_lexical(train["text"], train["label"], config)
    path = tmp_path / LEXICAL_FILE
    assert export_lexical(pipeline, path, validation["text"]) <= 1e-4
    probs = LexicalModel(path).predict_proba(validation["text"])
    labels = np.array(validation["label"])
    assert (probs.argmax(1) == labels).mean() > 0.8
    assert -np.log(probs[np.arange(len(labels)), labels]).mean() < np.log(2)


def test_three_tiers_send_each_text_only_as_far_as_it_must_go(lexical_pair, tmp_path):
    """Lexical, then the student's ensemble, then the teacher's: each text answered by the first tier sure of it, the
    same served (async, the transformers out of process) and offline (`decide_with_routes`)."""
    import shutil

    path, _, _ = lexical_pair
    texts = ["An unwatchable, boring mess. Awful.", "It was fine, I suppose.", "Not bad, not good either."]
    lexical = LexicalModel(path).predict_proba(texts)
    margins = top_two_margin(lexical)
    threshold = float(np.sort(margins)[-1] - 1e-6)  # only the most confident text stays lexical
    policy = HybridPolicy(0.5, threshold, "cascade", student_weight=0.0, student_threshold=0.5)
    teacher = {text: [0.1, 0.9] for text in texts}
    asked: dict[str, list[str]] = {"student": [], "teacher": []}

    class Model:  # a transformer in this process, as the cascade's caller runs it
        def __init__(self, name, answers):
            self.name, self.answers = name, answers

        def predict_proba(self, batch, _progress=None):
            asked[self.name] += batch
            return np.array([self.answers[t] for t in batch])

    shutil.copy(path, tmp_path / LEXICAL_FILE)
    policy.save(tmp_path / "hybrid.json")
    router = HybridRouter(tmp_path)
    first = int(margins.argmax())
    order = [first] + [i for i in range(3) if i != first]
    ordered = [texts[i] for i in order]
    student = {ordered[1]: [0.97, 0.03], ordered[2]: [0.5, 0.5]}
    probs, routes = router.classify_in_process(
        ordered, router.policy, Model("teacher", teacher), student=Model("student", student)
    )
    assert routes == ["lexical", "student", "ensemble"]
    assert asked == {"student": ordered[1:], "teacher": ordered[2:]}
    offline_student = np.array([student.get(t, [0.5, 0.5]) for t in ordered])
    offline, offline_routes = policy.decide_with_routes(
        LexicalModel(path).predict_proba(ordered), np.array([teacher[t] for t in ordered]), offline_student
    )
    np.testing.assert_allclose(offline, probs)
    assert offline_routes == routes
    assert HybridRouter(tmp_path, with_student=False).policy.uses_student is False
