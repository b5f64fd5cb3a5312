"""Your own labelled file, as docs/USAGE.md tells a user to bring it: a CSV of a few thousand SMS messages with its own
column names and string labels (built here from the shared SMS Spam copy, never committed), a config naming its
absolute path, then the Makefile's verbs with no size overrides, through `make serve` and a /predict that names one
of its labels. Only the model is small (the tiny BERT, one short epoch): the export's sample sizes are the defaults,
fitted to what the validation split holds."""

import os
import subprocess

import pandas as pd
import pytest
import requests
import yaml

from loadtests.common import ROOT, running
from tests.conftest import free_port

pytestmark = pytest.mark.timeout(900)
LABELS = ["ham", "spam"]


@pytest.mark.parametrize("rows", [None, 300], ids=["all 5,574 messages", "300 messages"])
def test_a_users_csv_with_its_own_columns_trains_exports_and_serves_with_the_defaults(
    tiny_checkpoint, data_dir, tmp_path, monkeypatch, rows
):
    user_data = tmp_path / "my data"  # a folder of the user's, with a space in its name
    user_data.mkdir()
    shared = pd.concat(pd.read_parquet(data_dir / "sms_spam" / f"{split}.parquet") for split in ("train", "test"))
    shared = shared.sample(rows, random_state=0) if rows else shared
    messages = pd.DataFrame({"category": shared.label.map(dict(enumerate(LABELS))), "message": shared.text})
    csv = user_data / "sms.csv"
    messages.to_csv(csv, index=False)
    config_file = tmp_path / "sms.yaml"
    config_file.write_text(
        yaml.safe_dump(
            {
                "name": "sms-spam-tiny",
                "registered_model": "sms-spam-tiny",
                "output_dir": str(tmp_path / "runs"),
                "models_dir": str(tmp_path / "models"),
                "reports_dir": str(tmp_path / "reports"),
                "data": {"name": str(csv), "text_column": "message", "label_column": "category"},
                "model": {"checkpoint": tiny_checkpoint, "lora_r": 4},
                "train": {"epochs": 1, "batch_size": 32, "learning_rate": 1e-3},
                "encoding": {"max_length": 48},
            }
        )
    )
    stores = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "BENTOML_HOME": str(tmp_path / "bentoml")}
    monkeypatch.delenv("BENTO_MODEL_TAG", raising=False)  # as in a fresh shell (`make test` exports the release's)
    env = os.environ | stores
    for verb in ("eda", "train", "lexical", "evaluate", "register", "export"):
        command = ["make", verb, f"CONFIG={config_file}"]
        made = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        assert made.returncode == 0, (verb, made.stdout[-2000:], made.stderr[-3000:])
    assert sorted(p.name for p in user_data.iterdir()) == ["sms.csv"]  # nothing written beside the user's data
    report = yaml.safe_load((tmp_path / "reports" / "sms-spam-tiny" / "export" / "parity.json").read_text())
    assert 0 < report["gate_reviews"] < 2000 and "judged" in report["gate_note"]
    assert (tmp_path / "reports" / "eda" / "sms-spam-tiny" / "EDA.md").exists()
    assert (ROOT / "build" / "sms-spam-tiny" / "onnx").is_dir()  # its own work folder, not the release's

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with running(["make", "serve", f"CONFIG={config_file}", f"PORT={port}"], f"{url}/health", env):
        health = requests.get(f"{url}/health").json()
        assert health["model"].startswith("sms-spam-tiny-onnx:") and health["gate_reviews"] == report["gate_reviews"]
        answer = requests.post(f"{url}/predict", json={"text": "WINNER! Claim your free prize now, text WIN"})
        assert answer.status_code == 200, answer.text
        assert list(answer.json()["scores"]) == LABELS and answer.json()["label"] in LABELS
        openapi = requests.get(f"{url}/docs.json").json()["info"]
        assert openapi["title"] == "sms-spam-tiny" and "ham, spam" in openapi["description"]
        assert "movie" not in openapi["description"].lower()


def test_every_sample_size_fits_what_the_validation_split_holds():
    """A few hundred labelled rows leave a validation split of a few dozen: the export still has a search set, a
    gate, a golden set and timing reviews; the release's 2,500 keep the defaults."""
    from export.export import ExportConfig
    from export.gate import gate_size_note

    for reviews in (30, 446):
        fitted = ExportConfig().fitted_to(reviews)
        assert fitted.search_samples >= 1 and fitted.search_samples + fitted.gate_samples == reviews
        assert 0 < fitted.golden_size <= fitted.gate_samples and fitted.timing_samples <= reviews
        assert f"judged {fitted.gate_samples} reviews" in gate_size_note(fitted, reviews)
    release = ExportConfig().fitted_to(2500)
    assert (release.search_samples, release.gate_samples, release.golden_size) == (500, 2000, 64)
    assert gate_size_note(release, 2500) is None
