"""Export an entry as a RobustBench ``model_info`` JSON file.

RobustBench keeps one file per model at ``model_info/<dataset>/<threat_model>/<Name>.json`` with the
keys, in this order: ``link``, ``name`` (the paper title), ``authors``, ``additional_data``,
``number_forward_passes``, ``dataset``, ``venue``, ``architecture``, ``eps`` (a string such as
``"8/255"``), ``clean_acc``, ``reported``, ``autoattack_acc``, ``external``, ``footnote``,
``unreliable``. Accuracies are percent strings with two decimals; absent values are omitted. The
model name (the file name) is ``AuthorYearFirstWord[_arch]``. When no AutoAttack variant was among
the attacks, ``autoattack_acc`` still holds the robust accuracy and the footnote names the attacks.

RobustBench lists only deterministic defenses without test-time optimisation;
:func:`export_robustbench` still writes such an entry (for this project's own board) and returns the
rules it breaks so the caller can say so.

Example::

    >>> from robustkit.leaderboard.robustbench import eps_string, percent
    >>> eps_string(8 / 255), eps_string(0.5, "L2"), eps_string(0.2, "L2"), percent(0.59531)
    ('8/255', '0.5', '0.2', '59.53')
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..eval.runner import atomic_write_text
from ._fields import DIR_NAME_RE
from .entry import Entry, EntryError, EntryMetadata, load_run_entry

MODEL_INFO_KEYS = ("link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue",
                   "architecture", "eps", "clean_acc", "reported", "autoattack_acc", "external", "footnote",
                   "unreliable")


def eps_string(eps: float, threat_model: str = "Linf") -> str:
    """RobustBench's eps: ``"8/255"`` for an Linf budget of k/255 pixel levels, else the shortest
    decimal (``"0.5"``; L2 budgets are never written as fractions)."""
    k = eps * 255
    if threat_model == "Linf" and round(k) >= 1 and abs(k - round(k)) <= 1e-6:
        return f"{round(k)}/255"
    return format(eps, ".10g")


def percent(fraction: float) -> str:
    return f"{100 * fraction:.2f}"


def model_info(entry: Entry) -> dict[str, Any]:
    """The ``model_info`` dict of ``entry`` (keys in RobustBench's order; absent values omitted)."""
    footnotes = [s for s in (entry.footnote, entry.external.footnote if entry.external else None) if s]
    if not any(a.name.startswith("autoattack") for a in entry.attacks):
        used = ", ".join(a.describe() for a in entry.attacks)
        footnotes.append(f"Robust accuracy under {used}, not AutoAttack.")
    if entry.stochastic:
        footnotes.append(f"Randomized defense: robust accuracy is worst-of-{entry.n_reeval} (each adversarial "
                         f"example re-classified {entry.n_reeval} times).")
    info: dict[str, Any] = {
        "link": entry.link, "name": entry.paper_title, "authors": entry.authors,
        "additional_data": entry.additional_data, "number_forward_passes": entry.forward_passes_per_prediction,
        "dataset": entry.dataset, "venue": entry.venue, "architecture": entry.architecture,
        "eps": eps_string(entry.eps, entry.threat_model), "clean_acc": percent(entry.clean_accuracy.value),
        "reported": percent(entry.reported) if entry.reported is not None else None,
        "autoattack_acc": percent(entry.robust_accuracy.value),
        "external": percent(entry.external.robust_accuracy) if entry.external is not None else None,
        "footnote": " ".join(footnotes) or None, "unreliable": entry.unreliable}
    return {k: info[k] for k in MODEL_INFO_KEYS if info[k] is not None}


@dataclass(frozen=True)
class ExportResult:
    """Where the file went, the RobustBench model name, and the RobustBench rules the defense breaks."""

    path: Path
    name: str
    violations: list[str]


def export_robustbench(run_dir: str | os.PathLike, out_dir: str | os.PathLike,
                       metadata: EntryMetadata | None = None, *, overwrite: bool = False) -> ExportResult:
    """Write ``out_dir/<dataset>/<threat_model>/<Name>.json`` for the finished run in ``run_dir``.

    Raises :class:`EntryError` when the run is unfinished or inconsistent, when no RobustBench name
    can be formed (give ``metadata.name`` or authors + venue/year + paper title), or when the file
    exists with other content and ``overwrite`` is False. Nothing is written on error.
    """
    entry, _ = load_run_entry(run_dir, metadata)
    return write_model_info(entry, out_dir, overwrite=overwrite)


def write_model_info(entry: Entry, out_dir: str | os.PathLike, *, overwrite: bool = False) -> ExportResult:
    if not DIR_NAME_RE.match(entry.name):
        raise EntryError(f"{entry.name!r} is not a RobustBench model name (AuthorYearFirstWord[_arch], letters, "
                         "digits, '_' and '-'); give a name, or the authors, venue (or year) and paper title")
    for label, v in (("dataset", entry.dataset), ("threat model", entry.threat_model)):
        if not DIR_NAME_RE.match(v):
            raise EntryError(f"{label} {v!r} cannot be a directory name")
    path = Path(out_dir) / entry.dataset / entry.threat_model / f"{entry.name}.json"
    text = json.dumps(model_info(entry), indent=2, allow_nan=False) + "\n"
    if path.exists() and not overwrite and path.read_text() != text:
        raise EntryError(f"{path} exists with other content; pass overwrite=True (--overwrite) to replace it")
    atomic_write_text(path, text)
    return ExportResult(path=path, name=entry.name, violations=entry.robustbench_violations())
