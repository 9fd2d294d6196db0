"""Evaluation metrics that act on samples or features (e.g. the Frechet distance)."""
