"""Evaluation: ``benchmark()``, protocols, sanity checks, the sharded runner and records."""

from .accuracy import clean_accuracy, predict
from .benchmark import benchmark, parse_eps
from .checks import run_checks
from .record import AccuracyStat, BenchmarkRecord, CheckResult, RecordError
from .runner import RunConfigError, RunDir, RunIntegrityError, RunIOError
from .stats import Accuracy, accuracy_with_ci, wilson_interval

__all__ = ["Accuracy", "AccuracyStat", "BenchmarkRecord", "CheckResult", "RecordError", "RunConfigError", "RunDir",
           "RunIOError", "RunIntegrityError",
           "accuracy_with_ci", "benchmark", "clean_accuracy", "parse_eps", "predict", "run_checks", "wilson_interval"]
