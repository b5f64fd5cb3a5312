"""Registry model -> ONNX (fp32, int8) -> parity gate -> BentoML model store.

`export.runtime` is import-light (onnxruntime, tokenizers, numpy) because the serving image uses it.
"""
