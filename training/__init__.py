"""Data, training, evaluation and the MLflow registry: everything that ends at a registered model version."""
