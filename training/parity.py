"""Write a trained model's parity sample again, at its config's `encoding`.

    python -m training.parity --model-dir models/imdb-minilm-lora

The parity sample is the validation split as token ids, beside the adapter: the hybrid's policy (`make lexical`),
the registry's gate and the export's parity gate score it, so that none of them needs the dataset. It must be encoded
as the model reads when it predicts. After `encoding.max_length` in a model's config.yaml changes (a model trained
on 256 tokens set to read 384: reports/experiments/read-384), write it again here, then run `make lexical` and
`make register`.
"""

from __future__ import annotations

from pathlib import Path

from training.config import RELEASE_MODEL_DIR, ExperimentConfig, command_line
from training.data import load_data
from training.modeling import PARITY_SAMPLE, load_tokenizer, save_parity_sample


def write_parity_sample(config: ExperimentConfig, model_dir: Path) -> None:
    validation = load_data(config.data).splits["validation"]
    tokenizer = load_tokenizer(config.model.checkpoint)
    save_parity_sample(validation["text"], validation["label"], tokenizer, config.encoding, model_dir / PARITY_SAMPLE)


def main() -> None:
    config, args = command_line(ExperimentConfig, __doc__, source="--model-dir", default=RELEASE_MODEL_DIR)
    write_parity_sample(config, args.source)
    print(f"wrote {args.source / PARITY_SAMPLE} ({config.encoding.max_length} tokens per review)")


if __name__ == "__main__":
    main()
