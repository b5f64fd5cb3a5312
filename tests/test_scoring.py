"""Batch scoring on Apache Spark (local[*]), as `make score` runs it: a tiny model trained, given its lexical half,
registered and exported, then all 25,000 IMDb test reviews scored by `python -m scoring.score` and compared row by
row with the in-process runtime (the offline decision `training.evaluate` uses)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from serving.core.hybrid import HybridRouter
from serving.core.selfcheck import SelfCheckLimits, load_classifier
from tests.test_export import run_export_cli
from tests.test_training_pipeline import tiny_config
from training import lexical
from training.registry import register
from training.train import run

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def tiny_export(tiny_checkpoint, data_dir, tmp_path_factory) -> Path:
    """A BentoML store holding a tiny transformer with its lexical half and policy, as `make model` builds one."""
    tmp = tmp_path_factory.mktemp("scoring")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.chdir(tmp)
        config = tiny_config(tiny_checkpoint, data_dir, tmp, **{"train.max_steps": 2})
        run(config)
        model_dir = Path(config.models_dir) / config.name
        lexical.run(model_dir, config)
        register(model_dir, config)
    result, _ = run_export_cli({"uri": uri, "tmp": tmp}, tmp, "min_agreement=0.0", "max_accuracy_drop=1.0")
    assert result.returncode == 0, result.stderr[-2000:]
    return tmp / "bentoml"


def score(store: Path, source: Path, out: Path, *overrides: str) -> tuple[pd.DataFrame, dict]:
    """`python -m scoring.score` on the tiny model: the scored rows (by their `row` column) and the run's report."""
    command = [sys.executable, "-m", "scoring.score", f"input={source}", f"output={out / 'scores'}"]
    command += ["model=tiny-onnx:latest", f"report={out / 'score.json'}", *overrides]
    env = os.environ | {"BENTOML_HOME": str(store), "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    scored = pd.read_parquet(out / "scores").sort_values("row").reset_index(drop=True)  # Spark keeps no order
    return scored, json.loads((out / "score.json").read_text())


def test_spark_scores_the_test_split_as_the_runtime_does(tiny_export, data_dir, tmp_path):
    """All 25,000 test reviews plus two blank rows (which get nulls: the API refuses them, a batch job goes on)."""
    reviews = pd.read_parquet(data_dir / "imdb" / "test.parquet")
    blanks = pd.DataFrame({"text": ["   ", None], "label": [0, 1]})
    source = tmp_path / "reviews.parquet"
    rows = pd.concat([reviews[["text", "label"]], blanks], ignore_index=True)
    rows.assign(row=range(len(rows))).to_parquet(source)  # IMDb's own ids repeat across the two labels
    scored, report = score(tiny_export, source, tmp_path)

    assert report["rows"] == len(scored) == 25_002 and scored.predicted_label.isna().tolist()[-2:] == [True, True]
    scored = scored.iloc[:-2]
    (model_dir,) = (tiny_export / "models" / "tiny-onnx").glob("*/")
    router = HybridRouter(model_dir)
    # the file the driver chose, one thread per session as on each executor (one core per task): the same kernels
    transformer, check = load_classifier(model_dir, SelfCheckLimits(), workers=1, recipe=report["recipe"])
    texts = reviews.text.tolist()
    lexical_probs = router.lexical.predict_proba(texts)
    expected = router.policy.decide(lexical_probs, transformer.predict_proba(texts))

    assert report["files"] == [check.recipe or "fp32"] and set(scored.model_version) == {"tiny-sentiment:1"}
    np.testing.assert_allclose(np.stack(scored.probabilities), expected, atol=1e-5)
    assert scored.predicted_label_id.tolist() == expected.argmax(1).tolist()
    accuracy = (scored.predicted_label_id == scored.label).mean()
    assert accuracy == (expected.argmax(1) == reviews.label.to_numpy()).mean()
    onward = router.policy.onward(lexical_probs, len(texts))
    assert (scored.path != "lexical").sum() == len(onward)  # routed as the service would
