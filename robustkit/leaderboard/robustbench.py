"""RobustBench's ``model_info`` JSON: export an entry as one, and import RobustBench's own as claims.

RobustBench keeps one file per model at ``model_info/<dataset>/<threat_model>/<Name>.json``. Every one
of its 236 files has the keys ``link``, ``name`` (the paper title), ``authors``, ``additional_data``,
``number_forward_passes``, ``dataset``, ``venue``, ``architecture``, ``eps`` (a string such as
``"8/255"``), ``clean_acc`` and ``reported``, and every Linf / L2 file ``autoattack_acc``; some add
``external``, ``footnote`` and ``unreliable``. Accuracies are percent strings.

**Export** (:func:`model_info`) writes all of them, in that order, always: an unknown value gets the
placeholder RobustBench's own ``Standard.json`` uses (``authors: ""``, ``venue: "N/A"``,
``reported: ""``; ``link: ""``, ``additional_data: false`` and a descriptive ``name`` where no paper
is given), ``architecture`` is the *inner classifier's* for a defense, and ``footnote`` and
``unreliable`` are always written; ``external`` only when a stronger third-party number exists
(RobustBench's tools read its absence as "same as AutoAttack"). A run that breaks RobustBench's rules
(:meth:`Entry.robustbench_violations`: randomized, adapting or batch-dependent defenses; and
:func:`robustkit.leaderboard.rules.ranking_problems`: sample, attack budget, sanity checks) is
refused unless ``allow_nonstandard=True``, which writes the reasons into the footnote.

**Import** (:func:`load_claims`) reads RobustBench's real files strictly (:class:`ImportedClaim`), so a
board can show RobustBench's rows next to robustkit's, marked as claims robustkit did not re-evaluate.

Example::

    >>> from robustkit.leaderboard.robustbench import eps_string, percent, parse_eps
    >>> eps_string(8 / 255), eps_string(0.5, "L2"), eps_string(0.2, "L2"), percent(0.59531), parse_eps("8/255")
    ('8/255', '0.5', '0.2', '59.53', 0.03137254901960784)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..eval.runner import atomic_write_text
from ..eval.schema import DIR_NAME_RE, MAX_SHORT, MAX_TEXT, Fields, check_name, loads_strict
from .entry import THREAT_MODELS, Entry, EntryError, EntryMetadata, load_run_entry

log = logging.getLogger(__name__)

MODEL_INFO_KEYS = ("link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue",
                   "architecture", "eps", "clean_acc", "reported", "autoattack_acc", "external", "footnote",
                   "unreliable")
# keys every real RobustBench Linf / L2 file has (external, footnote and unreliable are optional there)
REQUIRED_KEYS = MODEL_INFO_KEYS[:12]
PLACEHOLDERS = {"link": "", "authors": "", "venue": "N/A", "reported": "", "additional_data": False,
                "architecture": "N/A"}


def eps_string(eps: float, threat_model: str = "Linf") -> str:
    """RobustBench's eps: ``"8/255"`` for an Linf budget of k/255 pixel levels, else the shortest
    decimal (``"0.5"``; L2 budgets are never written as fractions)."""
    k = eps * 255
    if threat_model == "Linf" and round(k) >= 1 and abs(k - round(k)) <= 1e-6:
        return f"{round(k)}/255"
    return format(eps, ".10g")


def parse_eps(text: str) -> float:
    """The number of RobustBench's eps string (``"8/255"``, ``"0.5"``); :class:`EntryError` otherwise."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:/\s*(\d+(?:\.\d+)?)\s*)?", text) if isinstance(text, str) else None
    if not m or (m.group(2) is not None and float(m.group(2)) == 0):
        raise EntryError(f"eps: expected a string like '8/255' or '0.5', got {text!r:.60}")
    value = float(m.group(1)) / float(m.group(2) or 1)
    if not 0 < value < 1e4:
        raise EntryError(f"eps: expected a positive budget, got {text!r:.60}")
    return value


def percent(fraction: float) -> str:
    return f"{100 * fraction:.2f}"


def nonstandard_reasons(entry: Entry, rules: Any = None) -> list[str]:
    """Why ``entry`` is not a RobustBench result: the defense's traits, then the board rules it breaks."""
    return entry.robustbench_violations() + [p.message for p in entry.ranking_problems(rules)]


def model_info(entry: Entry, *, nonstandard: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The ``model_info`` dict of ``entry``: every RobustBench key, in RobustBench's order, with
    placeholders for unknown values (module docstring). ``nonstandard``: reasons written into the footnote."""
    footnotes = [s for s in (entry.footnote, entry.external.footnote if entry.external else None) if s]
    if nonstandard:
        footnotes.append(f"Non-standard evaluation, not RobustBench's protocol: {'; '.join(nonstandard)}.")
    if not any(a.name.startswith("autoattack") for a in entry.attacks):
        used = ", ".join(a.describe() for a in entry.attacks)
        footnotes.append(f"Robust accuracy under {used}, not AutoAttack.")
    if entry.stochastic:
        footnotes.append(f"Randomized defense: robust accuracy is worst-of-{entry.n_reeval} (each adversarial "
                         f"example re-classified {entry.n_reeval} times).")
    info: dict[str, Any] = {
        "link": entry.link, "name": entry.paper_title or f"{entry.defense} (robustkit evaluation, no paper given)",
        "authors": entry.authors, "additional_data": entry.additional_data,
        "number_forward_passes": entry.forward_passes_per_prediction, "dataset": entry.dataset,
        "venue": entry.venue, "architecture": entry.architecture, "eps": eps_string(entry.eps, entry.threat_model),
        "clean_acc": percent(entry.clean_accuracy.value),
        "reported": percent(entry.reported) if entry.reported is not None else None,
        "autoattack_acc": percent(entry.robust_accuracy.value),
        "external": percent(entry.external.robust_accuracy) if entry.external is not None else None,
        "footnote": " ".join(footnotes) or None, "unreliable": entry.unreliable}
    for key, placeholder in PLACEHOLDERS.items():
        if info[key] is None:
            info[key] = placeholder
    return {k: info[k] for k in MODEL_INFO_KEYS if info[k] is not None or k == "footnote"}


@dataclass(frozen=True)
class ExportResult:
    """Where the file went, the RobustBench model name, and the reasons it is non-standard (empty: standard)."""

    path: Path
    name: str
    violations: list[str]


def export_robustbench(run_dir: str | os.PathLike, out_dir: str | os.PathLike,
                       metadata: EntryMetadata | None = None, *, overwrite: bool = False,
                       allow_nonstandard: bool = False, rules: Any = None) -> ExportResult:
    """Write ``out_dir/<dataset>/<threat_model>/<Name>.json`` for the finished run in ``run_dir``.

    Raises :class:`EntryError` when the run is unfinished or inconsistent, when it breaks RobustBench's
    rules and ``allow_nonstandard`` is False (the message lists why), when no RobustBench name can be
    formed, or when the file exists with other content and ``overwrite`` is False. Nothing is written
    on error.
    """
    entry, _ = load_run_entry(run_dir, metadata)
    return write_model_info(entry, out_dir, overwrite=overwrite, allow_nonstandard=allow_nonstandard, rules=rules)


def write_model_info(entry: Entry, out_dir: str | os.PathLike, *, overwrite: bool = False,
                     allow_nonstandard: bool = False, rules: Any = None) -> ExportResult:
    if not DIR_NAME_RE.match(entry.name):
        raise EntryError(f"{entry.name!r} is not a RobustBench model name (AuthorYearFirstWord[_arch], letters, "
                         "digits, '_' and '-'); give a name, or the authors, venue (or year) and paper title")
    for label, v in (("dataset", entry.dataset), ("threat model", entry.threat_model)):
        if not DIR_NAME_RE.match(v):
            raise EntryError(f"{label} {v!r} cannot be a directory name")
    reasons = nonstandard_reasons(entry, rules)
    if reasons and not allow_nonstandard:
        raise EntryError(f"{entry.name} is not a standard RobustBench evaluation: {'; '.join(reasons)}; pass "
                         "--allow-nonstandard (allow_nonstandard=True) to export it with these reasons in the "
                         "footnote")
    path = Path(out_dir) / entry.dataset / entry.threat_model / f"{entry.name}.json"
    text = json.dumps(model_info(entry, nonstandard=reasons), indent=2, allow_nan=False) + "\n"
    if path.exists() and not overwrite and path.read_text() != text:
        raise EntryError(f"{path} exists with other content; pass overwrite=True (--overwrite) to replace it")
    atomic_write_text(path, text)
    return ExportResult(path=path, name=entry.name, violations=reasons)


# -------------------------------------------------------------------------------------------- import

@dataclass(frozen=True)
class ImportedClaim:
    """One row of RobustBench's leaderboard as RobustBench states it (accuracies in percent), not
    re-evaluated by robustkit. ``best_known`` is ``external`` where given, else ``autoattack_acc``."""

    name: str
    dataset: str
    threat_model: str
    eps: float
    title: str
    link: str
    authors: str
    venue: str
    architecture: str
    additional_data: bool
    number_forward_passes: int
    clean_acc: float
    autoattack_acc: float
    external: float | None
    reported: float | None
    footnote: str | None
    unreliable: bool | None
    source: str

    @property
    def best_known(self) -> float:
        return self.external if self.external is not None else self.autoattack_acc

    @property
    def board(self) -> tuple[str, str, str]:
        from .rules import board_key

        return board_key(self.dataset, self.threat_model, self.eps)

    @classmethod
    def from_model_info(cls, d: Any, *, name: str, threat_model: str, source: str) -> "ImportedClaim":
        """Strict parse of one ``model_info`` object (``name``: the file's stem; ``threat_model``: its
        directory). Raises :class:`EntryError` naming the file and field."""
        f = Fields(d, source, EntryError)
        if "corruptions_acc" in d:
            raise EntryError(f"{source}: a common-corruptions result; only Linf / L2 boards take imported claims")
        f.exact_keys(set(REQUIRED_KEYS), {"external", "footnote", "unreliable"})
        if threat_model not in THREAT_MODELS:
            raise EntryError(f"{source}: threat model directory {threat_model!r} is not one of {list(THREAT_MODELS)}")
        if not DIR_NAME_RE.match(name):
            raise EntryError(f"{source}: {name!r} is not a RobustBench model name")

        def pct(key: str, optional: bool = False) -> float | None:
            v = f.str(key, optional=optional)
            if v is None or (optional and v in ("", "null")):
                return None
            try:
                x = float(v)
            except ValueError:
                raise f.fail(key, "a percentage string like '59.53'", v) from None
            if not (math.isfinite(x) and 0 <= x <= 100):
                raise f.fail(key, "a percentage in [0, 100]", v)
            return x

        eps_text = f.str("eps")
        try:
            eps = parse_eps(eps_text)
        except EntryError as e:
            raise EntryError(f"{source}.{e}") from None
        reported = d.get("reported")
        return cls(name=name, dataset=f.str("dataset", pattern=DIR_NAME_RE), threat_model=threat_model, eps=eps,
                   title=f.str("name", max_len=MAX_TEXT).strip(), link=f.str("link", max_len=MAX_TEXT),
                   authors=f.str("authors", max_len=MAX_TEXT), venue=f.str("venue", max_len=MAX_SHORT),
                   architecture=f.str("architecture", max_len=MAX_SHORT), additional_data=f.bool("additional_data"),
                   number_forward_passes=f.int("number_forward_passes", 1, 10**9),
                   clean_acc=pct("clean_acc"), autoattack_acc=pct("autoattack_acc"),
                   external=pct("external", optional=True),
                   reported=None if reported is None else pct("reported", optional=True),
                   footnote=f.str("footnote", max_len=MAX_TEXT, optional=True),
                   unreliable=f.bool("unreliable", optional=True), source=source)


def load_claims(root: str | os.PathLike) -> list[ImportedClaim]:
    """Every ``<dataset>/<Linf|L2>/<Name>.json`` under ``root`` (RobustBench's ``model_info`` layout),
    parsed strictly; the common-corruptions directories are not boards here and are passed over. A
    directory without any such file raises :class:`EntryError`."""
    root = Path(root)
    if not root.is_dir():
        raise EntryError(f"{root} is not a directory (expected RobustBench's model_info/<dataset>/<threat_model>/)")
    files = sorted(p for tm in THREAT_MODELS for p in root.glob(f"*/{tm}/*.json") if p.is_file())
    if not files:
        raise EntryError(f"no <dataset>/Linf|L2/<Name>.json under {root}: not a model_info directory")
    claims = []
    for p in files:
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise EntryError(f"{p} cannot be read as UTF-8 text ({e})") from e
        d = loads_strict(text, str(p), EntryError)
        claim = ImportedClaim.from_model_info(d, name=p.stem, threat_model=p.parent.name, source=str(p))
        if claim.dataset != p.parent.parent.name:  # RobustBench's own tools go by the directory; so do we
            log.warning("%s: its dataset field says %r, its directory %r; filed under the directory", p,
                        claim.dataset, p.parent.parent.name)
            claim = dataclasses.replace(claim, dataset=check_name(p.parent.parent.name, str(p), EntryError,
                                                                  DIR_NAME_RE))
        claims.append(claim)
    return claims

