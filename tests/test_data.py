"""The loaders on the real shared datasets, custom files, and the errors for missing or broken ones."""

import pandas as pd
import pytest

from training.config import DataConfig, ExperimentConfig
from training.data import DataSourceError, load_data, read_splits


def test_imdb_counts_and_stratified_validation(data_dir):
    source = read_splits(DataConfig(name="imdb", data_dir=str(data_dir), label_names=["neg", "pos"]))
    assert {s: len(d) for s, d in source.splits.items()} == {"train": 25_000, "test": 25_000}
    data = load_data(DataConfig(name="imdb", data_dir=str(data_dir), label_names=["neg", "pos"]))
    train, validation, test = (data.splits[s] for s in ("train", "validation", "test"))
    assert (len(train), len(validation), len(test)) == (22_500, 2_500, 25_000)
    assert sum(validation["label"]) == 1_250  # stratified: exactly half positive
    again = load_data(DataConfig(name="imdb", data_dir=str(data_dir), label_names=["neg", "pos"]))
    assert again.splits["validation"]["text"][:5] == validation["text"][:5]  # seeded
    assert data.label_names == ["neg", "pos"] and len(data.fingerprint) == 16


def test_ag_news_test_only_copy_is_carved(data_dir):
    names = ["World", "Sports", "Business", "Sci/Tech"]
    data = load_data(DataConfig(name="ag_news", data_dir=str(data_dir), label_names=names))
    sizes = {s: len(d) for s, d in data.splits.items()}
    assert sum(sizes.values()) == 7_600 and sizes["test"] == 1_520
    assert data.splits["test"].features["label"].names == names


@pytest.mark.parametrize("suffix", ["csv", "jsonl", "parquet"])
@pytest.mark.parametrize("where", ["absolute file", "relative file", "file under data_dir", "absolute folder"])
def test_custom_file_with_string_labels(data_dir, tmp_path, monkeypatch, suffix, where):
    """Any of the three formats, named any of the ways docs/USAGE.md allows; the names the later stages write under
    come from the experiment, never from the data's path."""
    frame = pd.read_parquet(data_dir / "sms_spam" / "train.parquet").head(400)
    frame = pd.DataFrame({"message": frame.text, "category": frame.label.map({0: "ham", 1: "spam"})})
    folder = tmp_path / "my data"
    folder.mkdir()
    path = folder / (f"train.{suffix}" if where == "absolute folder" else f"sms.{suffix}")
    {
        "csv": lambda: frame.to_csv(path, index=False),
        "jsonl": lambda: frame.to_json(path, orient="records", lines=True),
        "parquet": lambda: frame.to_parquet(path),
    }[suffix]()
    monkeypatch.chdir(tmp_path)
    name, data_dir_setting = {
        "absolute file": (str(path), "../shared/data"),
        "relative file": (f"my data/sms.{suffix}", "../shared/data"),
        "file under data_dir": (f"sms.{suffix}", str(folder)),
        "absolute folder": (str(folder), "../shared/data"),
    }[where]
    data_config = DataConfig(name=name, data_dir=data_dir_setting, text_column="message", label_column="category")
    data = load_data(data_config)
    assert data.label_names == ["ham", "spam"]  # inferred, sorted
    assert sum(len(d) for d in data.splits.values()) == 400
    experiment = ExperimentConfig(name="sms-spam", data=data_config)
    assert all(not str(value).startswith(str(tmp_path)) for value in experiment.stage_names().values())
    assert experiment.dataset in ("sms", "my data")
    first = data.splits["train"][0]
    assert set(first) == {"text", "label"} and isinstance(first["text"], str)


def test_missing_source_names_what_was_looked_for(tmp_path):
    with pytest.raises(DataSourceError, match=r"no data for 'nope'.*looked for.*data\.hub_id"):
        load_data(DataConfig(name="nope", data_dir=str(tmp_path)))


def test_malformed_file_and_missing_column(tmp_path):
    bad = tmp_path / "broken"
    bad.mkdir()
    (bad / "train.parquet").write_bytes(b"this is not parquet")
    with pytest.raises(DataSourceError, match="could not read"):
        load_data(DataConfig(name=str(bad)))
    csv = tmp_path / "x.csv"
    csv.write_text("body,label\nhello,1\n")
    with pytest.raises(DataSourceError, match=r"lacks column\(s\) \['text'\]"):
        load_data(DataConfig(name=str(csv)))
