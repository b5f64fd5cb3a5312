"""The model core: what training, export and scoring import as the service does, so that every one of them reads a
review the same way. Text cleaning and the head+tail encoding (`text`), the ONNX Runtime classifier (`runtime`), the
lexical half and the hybrid cascade (`hybrid`), the int8 self-check on the serving CPU (`selfcheck`) and the drift
statistics (`drift`). Import-light on purpose (onnxruntime, tokenizers, numpy): the image has no torch."""

from pathlib import Path

# The web UI's example reviews: real test reviews chosen from the served model's answers by `make evaluate-served`
# (training/evaluate.py), read by serving/ui.py. Beside the UI's screenshots, in the project or the Bento's source
# (bentofile.yaml ships it), so training never writes into serving/.
UI_EXAMPLES_FILE = Path(__file__).resolve().parents[2] / "reports" / "ui" / "examples.json"
