"""The naive peer for the benchmark: FastAPI + `transformers.pipeline`, PyTorch fp32, one request at a time,
plain (head-only) truncation.

python -m loadtests.naive_server --port 3200
"""

from __future__ import annotations

import argparse
import threading
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from transformers import pipeline

from training.config import load_config
from training.modeling import load_tokenizer, merged_from_adapter

MODEL_DIR = Path("models/imdb-minilm-lora")


class Review(BaseModel):
    text: str


def create_app(model_dir: Path = MODEL_DIR) -> FastAPI:
    config = load_config(model_dir / "config.yaml")
    model = merged_from_adapter(model_dir, config.model.checkpoint, ["neg", "pos"])
    classify = pipeline(
        "text-classification",
        model=model,
        tokenizer=load_tokenizer(config.model.checkpoint),
        truncation=True,
        max_length=config.encoding.max_length,
        top_k=None,
    )
    lock = threading.Lock()  # one request at a time, as a plain pipeline server does
    app = FastAPI()

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/predict")
    def predict(review: Review) -> dict:
        with lock:
            (result,) = classify([review.text])  # a list in, one list of {label, score} per text out
            scores = {s["label"]: s["score"] for s in result}
        label = max(scores, key=scores.get)
        return {"label": label, "score": scores[label], "scores": scores}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=3200)
    args = parser.parse_args()
    uvicorn.run(create_app(), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
