"""Evaluation: accuracies with confidence intervals (the benchmark harness builds on these)."""

from .accuracy import clean_accuracy, predict
from .stats import Accuracy, accuracy_with_ci, wilson_interval

__all__ = ["Accuracy", "accuracy_with_ci", "clean_accuracy", "predict", "wilson_interval"]
