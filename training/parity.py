"""Write a trained model's parity sample again, at its config's `encoding`.

    python -m training.parity --model-dir models/imdb-minilm-lora

The parity sample is the validation split as token ids, beside the adapter, with the merged model's probabilities on
it (PyTorch fp32 on CPU): the hybrid's policy (`make lexical`), the registry's gate and the export's parity gate score
it, so that none of them needs the dataset (and the export no pass of PyTorch). It must be encoded as the model reads
when it predicts, and come from the adapter beside it: after `encoding.max_length` in a model's config.yaml changes
(a model trained on 256 tokens set to read 384: reports/experiments/read-384) or the adapter does, write it again
here, then run `make lexical` and `make register`.
"""

from __future__ import annotations

from pathlib import Path

from training.config import RELEASE_MODEL_DIR, ExperimentConfig, command_line
from training.data import load_data
from training.modeling import PARITY_SAMPLE, load_tokenizer, load_trained, save_parity_sample


def write_parity_sample(config: ExperimentConfig, model_dir: Path) -> None:
    data = load_data(config.data)
    validation = data.splits["validation"]
    model = load_trained(model_dir, config, data.label_names)
    tokenizer = load_tokenizer(config.model.checkpoint)
    save_parity_sample(
        validation["text"], validation["label"], tokenizer, config.encoding, model, model_dir / PARITY_SAMPLE
    )


def main() -> None:
    config, args = command_line(ExperimentConfig, __doc__, source="--model-dir", default=RELEASE_MODEL_DIR)
    write_parity_sample(config, args.source)
    print(f"wrote {args.source / PARITY_SAMPLE} ({config.encoding.max_length} tokens per review)")


if __name__ == "__main__":
    main()
