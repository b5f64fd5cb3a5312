"""Data, training, evaluation and registry code for the text classifier.

Kept import-light: `training.text` is also imported by the serving image, which has no torch.
"""
