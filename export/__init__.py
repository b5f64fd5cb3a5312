"""Registry model -> ONNX (fp32 and int8 recipes) -> parity gate -> BentoML model store."""
