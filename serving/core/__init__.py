"""The model core: what training, export and scoring import as the service does, so that every one of them reads a
review the same way. Text cleaning and the head+tail encoding (`text`), the ONNX Runtime classifier (`runtime`), the
lexical half and the hybrid cascade (`hybrid`), the int8 self-check on the serving CPU (`selfcheck`) and the drift
statistics (`drift`). Import-light on purpose (onnxruntime, tokenizers, numpy): the image has no torch."""
