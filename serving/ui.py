"""The web UI at /ui (Gradio, mounted in the API service: same process, same port): type a review and see its label,
probabilities and the words that drove it; or upload a CSV/Parquet file and download its predictions.

Gradio's default theme ships its fonts, so the page loads nothing from outside the service (offline, in the image).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a served model

import bentoml
import gradio as gr
import pandas as pd
from fastapi import FastAPI
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from serving.ab import CHAMPION
from serving.core import UI_EXAMPLES_FILE
from serving.errors import ApiError
from serving.explain import Explanation
from serving.inference import Caller
from serving.schemas import BatchRequest, PredictRequest
from serving.settings import SETTINGS

RequestT = TypeVar("RequestT", bound=BaseModel)
TEXT_COLUMN = "text"
UPLOAD_TYPES = (".csv", ".parquet")
MAX_UPLOAD = "10mb"  # Gradio refuses a larger upload before it is stored
KEEP_FILES_S = 3600  # uploads and results are deleted after an hour (Gradio's cache, and ours)
OUTPUTS = Path(tempfile.gettempdir()) / "sentiment-ui"  # result files, until Gradio has copied them


def highlighted(explanation: Explanation) -> list[tuple[str, float | None]]:
    """The explained text as (piece, weight toward the predicted class) for `gr.HighlightedText`, scaled to [-1, 1]."""
    label, text = explanation.label, explanation.explained_text
    strongest = max((abs(w.attributions[label]) for w in explanation.words), default=0.0) or 1.0
    pieces, position = [], 0
    for word in explanation.words:
        if word.start > position:
            pieces.append((text[position : word.start], None))
        pieces.append((word.word, round(word.attributions[label] / strongest, 3)))
        position = word.end
    return pieces + ([(text[position:], None)] if position < len(text) else [])


def validated(request: type[RequestT], first_row: int = 0, **fields) -> RequestT:
    """The API's own request model, so the page accepts exactly what the API accepts (a blank review is refused)."""
    try:
        return request(**fields)
    except ValidationError as error:
        raise gr.Error("; ".join(reason(e, first_row) for e in error.errors())) from error


def reason(error: ErrorDetails, first_row: int) -> str:
    where = "the review" if len(error["loc"]) == 1 else f"row {first_row + int(error['loc'][1]) + 1}"
    blank = error["type"] in ("string_too_short", "string_pattern_mismatch")
    return f"{where}: {'is blank' if blank else error['msg']}"


async def explain_review(text: str, request: gr.Request):
    """The answer as `/predict` gives it (the browser session is the A/B key), and the champion's explanation."""
    service, review = bentoml.get_current_service(), validated(PredictRequest, text=text).text
    try:
        caller = Caller(uuid.uuid4().hex, request.session_hash, "/ui/review")
        (prediction,) = await service.core.answer([review], None, caller)
        explanation = await service.explained(review, None)
    except ApiError as error:  # the API's own 4xx/503 reasons, shown in the page
        raise gr.Error(error.error) from error
    note = f"{prediction.model_version} ({prediction.variant}, {prediction.path}); words: {explanation.method}"
    if prediction.variant != CHAMPION:
        note += " of the champion's answer (explanations are the champion's)"
    if explanation.truncated:
        note += "; long review: the middle, which the transformer never reads, is left out"
    return prediction.scores, highlighted(explanation), f"{note}; {explanation.elapsed_ms:.0f} ms"


def read_upload(path: str) -> pd.DataFrame:
    """The uploaded file's rows (in a worker thread: parsing a large file would hold the event loop)."""
    # fastparquet: pyarrow would make the image far larger for this one call
    return pd.read_parquet(path, engine="fastparquet") if path.endswith(".parquet") else pd.read_csv(path)


def append_rows(out: Path, rows: pd.DataFrame) -> None:
    rows.to_csv(out, mode="a", header=not out.exists(), index=False)


async def predict_file(path: str | None, request: gr.Request) -> str:
    """The file's rows answered as `/predict_batch` calls would, a chunk at a time, each chunk's rows written out as
    it is answered (nothing held but the file read): the event loop is free between chunks, so the API's requests
    are answered while a large file of confident reviews (the lexical model's, in this process) goes through."""
    if path is None or Path(path).suffix.lower() not in UPLOAD_TYPES:
        raise gr.Error("Upload a .csv or .parquet file with a 'text' column")
    frame = await asyncio.to_thread(read_upload, path)
    if TEXT_COLUMN not in frame:
        raise gr.Error(f"the file has no {TEXT_COLUMN!r} column (it has {list(frame.columns)})")
    if len(frame) > SETTINGS.ui_max_rows:
        raise gr.Error(f"the file has {len(frame)} rows; the web UI takes {SETTINGS.ui_max_rows} (more: make score)")
    core, texts = bentoml.get_current_service().core, frame[TEXT_COLUMN].fillna("").astype(str).tolist()
    out, upload_id = Path(tempfile.mkdtemp(dir=sweep(OUTPUTS))) / f"{Path(path).stem}-predictions.csv", uuid.uuid4().hex
    try:
        for start in range(0, len(texts), chunk_size := SETTINGS.max_batch_texts):
            chunk = validated(BatchRequest, first_row=start, texts=texts[start : start + chunk_size]).texts
            caller = Caller(f"{upload_id}-{start // chunk_size}", request.session_hash, "/ui/batch")
            predictions = await core.answer(chunk, None, caller)
            rows = frame.iloc[start : start + chunk_size].assign(
                label=[p.label for p in predictions],
                score=[p.score for p in predictions],
                path=[p.path for p in predictions],
                model_version=[p.model_version for p in predictions],
            )
            await asyncio.to_thread(append_rows, out, rows)  # also yields: requests waiting meanwhile are answered
    except ApiError as error:
        raise gr.Error(error.error) from error
    return str(out)


def sweep(folder: Path) -> Path:
    """`folder` without the entries older than `KEEP_FILES_S` (Gradio has copied them into its own cache by then)."""
    folder.mkdir(parents=True, exist_ok=True)
    for entry in folder.iterdir():
        if time.time() - entry.stat().st_mtime > KEEP_FILES_S:
            shutil.rmtree(entry, ignore_errors=True)
    return folder


def ui_app(title: str, labels: list[str], login: Callable[[str, str], bool] | None = None) -> FastAPI:
    """The web UI as an app of its own, named `title` (the served model's, of classes `labels`), for the service to
    mount where it likes (`serving/deferred.py`); behind Gradio's login form when `login` is given (user name,
    password -> allowed)."""
    message = "API keys are on: any user name, an API key as the password" if login else None
    app, ui = FastAPI(), build_ui(title, labels)
    return gr.mount_gradio_app(app, ui, path="/", auth=login, auth_message=message, max_file_size=MAX_UPLOAD)


def build_ui(title: str, labels: list[str]) -> gr.Blocks:
    examples = json.loads(UI_EXAMPLES_FILE.read_text()) if UI_EXAMPLES_FILE.exists() else []
    if any(example["label"] not in labels for example in examples):  # another model's examples (`make evaluate-served`)
        examples = []
    with gr.Blocks(title=title, delete_cache=(KEEP_FILES_S // 4, KEEP_FILES_S)) as ui:
        gr.Markdown(f"# {title}\nThe served model: its answer, and the words behind it (SHAP).")
        with gr.Tab("Review"):
            review = gr.Textbox(label="Review", lines=6, elem_id="review")
            submit = gr.Button("Classify and explain", variant="primary", elem_id="submit")
            scores = gr.Label(label="Prediction", elem_id="prediction")
            words = gr.HighlightedText(
                label="Words toward the predicted class (red: for, blue: against)", elem_id="words"
            )
            note = gr.Markdown(elem_id="method")
            if examples:
                gr.Examples(
                    [[e["text"]] for e in examples],
                    inputs=[review],
                    example_labels=[e["title"] for e in examples],
                    label="Real test reviews",
                )
            submit.click(explain_review, inputs=review, outputs=[scores, words, note], api_name=False)
        with gr.Tab("Batch file"):
            upload = gr.File(
                label=f"CSV or Parquet with a 'text' column, up to {SETTINGS.ui_max_rows:,} rows",
                file_types=list(UPLOAD_TYPES),
            )
            run = gr.Button("Predict", elem_id="predict-file")
            result = gr.File(label="Predictions (CSV)")
            run.click(predict_file, inputs=upload, outputs=result, api_name=False)
    return ui
