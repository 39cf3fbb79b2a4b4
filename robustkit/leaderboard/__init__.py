"""Leaderboard: entry schema, RobustBench export, submission server and web pages.

* :class:`Entry` — the versioned leaderboard view of a :class:`~robustkit.eval.record.BenchmarkRecord`
  (``Entry.from_run_dir(path)``), with :class:`EntryMetadata` for what a record cannot know.
* :func:`export_robustbench` — RobustBench ``model_info`` JSON of a run directory.
* :mod:`robustkit.leaderboard.server` — the submission server (Starlette + uvicorn over SQLite);
  :func:`submit_run` uploads a run to it.

The web-framework dependencies are optional (``pip install robustkit[leaderboard]``) and imported only
by the server.
"""

from .entry import (ENTRY_SCHEMA_VERSION, AttackSpec, Entry, EntryError, EntryMetadata, ExternalResult,
                    load_run_entry, robustbench_name, verify_examples)
from .client import SubmitError, submit_run
from .examples import ExamplesError, aggregate_examples, summarize_examples, validate_examples
from .robustbench import ExportResult, export_robustbench, model_info

__all__ = ["ENTRY_SCHEMA_VERSION", "AttackSpec", "Entry", "EntryError", "EntryMetadata", "ExamplesError",
           "ExportResult", "ExternalResult", "SubmitError", "aggregate_examples", "export_robustbench",
           "load_run_entry", "model_info", "robustbench_name", "submit_run", "summarize_examples",
           "validate_examples", "verify_examples"]
