"""What the serving image ships whole: the ONNX Runtime classifier, the text encoding it shares with training, and
the service settings. Import-light on purpose (onnxruntime, tokenizers, numpy): the image has no torch."""
