"""Load any labelled text dataset (local Parquet/CSV/JSONL or the Hugging Face hub) into train/validation/test."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import datasets
from datasets import ClassLabel, DatasetDict, Value

from training.config import DataConfig

EXTENSIONS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "json", ".json": "json"}


class DataSourceError(RuntimeError):
    """The dataset could not be found or read; the message names every place that was tried."""


@dataclass
class LoadedData:
    splits: DatasetDict  # train / validation / test, columns `text` and `label` (ClassLabel)
    label_names: list[str]
    source: str
    fingerprint: str


def _local_files(config: DataConfig) -> dict[str, Path]:
    """Map split name -> file for a folder (`<data_dir>/<name>` or `<name>`) or a single file."""
    for candidate in (Path(config.name), Path(config.data_dir) / config.name):
        if candidate.is_file() and candidate.suffix in EXTENSIONS:
            return {"train": candidate}
        if candidate.is_dir():
            files = {p.stem: p for p in sorted(candidate.iterdir()) if p.suffix in EXTENSIONS}
            if "train" in files or "test" in files:
                return {split: files[split] for split in ("train", "validation", "test") if split in files}
    return {}


def _fingerprint(files: dict[str, Path], base: str = "") -> str:
    digest = hashlib.sha256(base.encode())
    for split, path in sorted(files.items()):
        digest.update(split.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _read_source(config: DataConfig) -> tuple[DatasetDict, str, str]:
    files = _local_files(config)
    if files:
        builders = {EXTENSIONS[p.suffix] for p in files.values()}
        if len(builders) > 1:
            raise DataSourceError(f"mixed file types in {sorted(map(str, files.values()))}")
        try:
            raw = datasets.load_dataset(builders.pop(), data_files={k: str(v) for k, v in files.items()})
        except Exception as error:
            raise DataSourceError(f"could not read {sorted(map(str, files.values()))}: {error}") from error
        return raw, str(next(iter(files.values())).parent), _fingerprint(files)
    looked_for = (
        f"a file or folder {config.name!r} (also under {config.data_dir!r}) with train/test .parquet/.csv/.jsonl"
    )
    if not config.hub_id:
        raise DataSourceError(f"no data for {config.name!r}: looked for {looked_for}; set data.hub_id to use the hub")
    try:
        raw = datasets.load_dataset(config.hub_id)
    except Exception as error:
        raise DataSourceError(
            f"no data for {config.name!r}: looked for {looked_for} and hub dataset "
            f"{config.hub_id!r} ({type(error).__name__}: {error})"
        ) from error
    return raw, f"hf://{config.hub_id}", raw["train"]._fingerprint


def _standardise(raw: DatasetDict, config: DataConfig) -> tuple[DatasetDict, list[str]]:
    """Rename to `text`/`label`, turn labels into a ClassLabel (names given, from the hub, or inferred)."""
    for split, dataset in raw.items():
        missing = {config.text_column, config.label_column} - set(dataset.column_names)
        if missing:
            raise DataSourceError(f"split {split!r} lacks column(s) {sorted(missing)}; has {dataset.column_names}")
    raw = raw.select_columns([config.text_column, config.label_column])
    if config.text_column != "text":
        raw = raw.rename_column(config.text_column, "text")
    if config.label_column != "label":
        raw = raw.rename_column(config.label_column, "label")
    feature = next(iter(raw.values())).features["label"]
    labels = {label for values in raw.unique("label").values() for label in values}  # in Arrow, not row by row
    if isinstance(feature, ClassLabel):
        names = config.label_names or feature.names
    elif feature.dtype in ("string", "large_string"):
        names = config.label_names or sorted(labels)
        raw = raw.cast_column("label", Value("string"))  # ClassLabel maps the names of `string`, not `large_string`
    else:
        values = sorted(int(v) for v in labels)
        names = config.label_names or [str(v) for v in range(values[-1] + 1)]
        if values[0] < 0 or values[-1] >= len(names):
            raise DataSourceError(f"label ids {values[0]}..{values[-1]} do not fit the {len(names)} classes {names}")
    return raw.cast_column("label", ClassLabel(names=list(names))), list(names)


def _cap(dataset: datasets.Dataset, limit: int | None, seed: int) -> datasets.Dataset:
    """A stratified, seeded subset of at most `limit` rows."""
    if limit is None or limit >= len(dataset):
        return dataset
    return dataset.train_test_split(train_size=limit, stratify_by_column="label", seed=seed)["train"]


def read_splits(config: DataConfig) -> LoadedData:
    """The source's own splits as they are (for EDA), with `text`/`label` columns."""
    raw, source, fingerprint = _read_source(config)
    raw, names = _standardise(raw, config)
    return LoadedData(splits=raw, label_names=names, source=source, fingerprint=fingerprint)


def read_labelled_file(path: str | Path, config: DataConfig, label_names: list[str]) -> datasets.Dataset:
    """One labelled file with `config`'s columns, as `text`/`label` of the classes `label_names` (given in the file
    as names or as ids)."""
    path = Path(path)
    if path.suffix not in EXTENSIONS:
        raise DataSourceError(f"{path}: not one of {sorted(EXTENSIONS)}")
    try:
        raw = datasets.load_dataset(EXTENSIONS[path.suffix], data_files={"train": str(path)})
    except Exception as error:
        raise DataSourceError(f"could not read {path}: {error}") from error
    return _standardise(raw, replace(config, label_names=label_names))[0]["train"]


def load_data(config: DataConfig) -> LoadedData:
    """Train/validation/test splits; validation is carved from train (with `extra_train` appended), the test split
    is only ever scored."""
    source_data = read_splits(config)
    raw, source, fingerprint = source_data.splits, source_data.source, source_data.fingerprint
    if "train" not in raw or "test" not in raw:
        # A single file or split (a custom CSV, AG News' test-only copy): carve our own seeded test split.
        if len(raw) != 1:
            raise DataSourceError(f"{source} has splits {sorted(raw)}; expected train and test, or a single file")
        (only,) = raw.values()
        carved = only.train_test_split(test_size=config.test_size, stratify_by_column="label", seed=config.seed)
        raw = DatasetDict(train=carved["train"], test=carved["test"])
    if config.extra_train:
        extra = [read_labelled_file(p, config, source_data.label_names) for p in config.extra_train]
        features = raw["train"].features
        raw["train"] = datasets.concatenate_datasets([raw["train"], *(part.cast(features) for part in extra)])
        fingerprint = _fingerprint({f"extra_train.{i}": Path(p) for i, p in enumerate(config.extra_train)}, fingerprint)
    if "validation" not in raw:
        carved = raw["train"].train_test_split(
            test_size=config.validation_size, stratify_by_column="label", seed=config.seed
        )
        raw = DatasetDict(train=carved["train"], validation=carved["test"], test=raw["test"])
    splits = DatasetDict(
        train=_cap(raw["train"], config.max_train_samples, config.seed),
        validation=_cap(raw["validation"], config.max_validation_samples, config.seed),
        test=_cap(raw["test"], config.max_test_samples, config.seed),
    )
    return LoadedData(splits=splits, label_names=source_data.label_names, source=source, fingerprint=fingerprint)
