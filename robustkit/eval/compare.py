"""Two benchmark runs side by side: ``robustkit compare RUN_A RUN_B [--plot FILE.png]``.

Only runs on the same examples under the same threat model compare: same dataset, split, examples (the
manifest's indices when both are run directories, else n), threat model and eps. Anything else is an
:class:`~robustkit.InputError` naming what differs. The table shows clean accuracy, accuracy after each
attack and under all attacks, per protocol (one when both runs made a single draw per example), with 95 %
Wilson intervals and the difference B - A in percentage points, followed by each run's attack protocols.

Example (a few seconds on a CPU)::

    >>> import tempfile, robustkit
    >>> from pathlib import Path
    >>> tmp = Path(tempfile.mkdtemp())
    >>> clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    >>> kw = dict(dataset="digits", eps=0.1, n_examples=16, checks=False, progress=False)
    >>> a = robustkit.benchmark(clf, attacks=["pgd"], attack_options={"pgd": {"steps": 1}}, run_dir=tmp / "a", **kw)
    >>> b = robustkit.benchmark(clf, attacks=["pgd"], attack_options={"pgd": {"steps": 10}}, run_dir=tmp / "b", **kw)
    >>> print(compare_runs(tmp / "a", tmp / "b").splitlines()[0])
    A = tiny_cnn.digits (a)  vs  B = tiny_cnn.digits (b)
"""

from __future__ import annotations

import json
import math
import os
import textwrap
from pathlib import Path
from typing import Any

from ..errors import InputError
from .record import PROTOCOLS, AccuracyStat, BenchmarkRecord

__all__ = ["check_comparable", "compare_records", "compare_runs", "load_record", "plot_comparison"]

_LABELS = {"single_draw": "single draw", "majority": "majority of M", "worst_of_m": "worst of M"}


def load_record(path: str | os.PathLike) -> tuple[BenchmarkRecord, list[int] | None]:
    """A run directory or a ``record.json`` → (record, the run's example indices when its manifest has them)."""
    p = Path(path)
    record_file = p / "record.json" if p.is_dir() else p
    if not record_file.is_file():
        raise InputError(f"{path}: no such run directory or record file" if not p.exists()
                         else f"{p} has no record.json: the run is not finished (re-run bench with its --run-dir)")
    record = BenchmarkRecord.load(record_file)
    manifest = record_file.parent / "manifest.json"
    indices = None
    if manifest.is_file():
        try:
            indices = json.loads(manifest.read_text()).get("config", {}).get("indices")
        except json.JSONDecodeError:
            indices = None  # the record itself loaded; an unreadable manifest only loses the index check
    return record, indices if isinstance(indices, list) else None


def check_comparable(a: BenchmarkRecord, b: BenchmarkRecord, indices_a: list[int] | None = None,
                     indices_b: list[int] | None = None, names: tuple[str, str] = ("A", "B")) -> None:
    """Raise :class:`~robustkit.InputError` unless ``a`` and ``b`` ran on the same data and threat model."""
    diff = [f"{what} ({va!r} vs {vb!r})" for what, va, vb in (
        ("dataset", a.dataset, b.dataset), ("split", a.split, b.split), ("n", a.n_examples, b.n_examples),
        ("threat model", a.threat_model, b.threat_model)) if va != vb]
    if not math.isclose(a.eps, b.eps, rel_tol=1e-9, abs_tol=1e-12):
        diff.append(f"eps ({a.eps:.6g} vs {b.eps:.6g})")
    if not diff and indices_a is not None and indices_b is not None and indices_a != indices_b:
        diff.append("the examples (same n, other indices)")
    if diff:
        raise InputError(f"cannot compare {names[0]} and {names[1]}: they differ in {'; '.join(diff)}; a "
                         "comparison needs the same data and threat model")


def _protocols(a: BenchmarkRecord, b: BenchmarkRecord) -> list[str]:
    # with one draw per example the three protocols coincide by definition: show one
    return ["worst_of_m"] if a.n_reeval == 1 and b.n_reeval == 1 else list(PROTOCOLS)


def _rows(a: BenchmarkRecord, b: BenchmarkRecord) -> list[tuple[str, dict[str, AccuracyStat] | None,
                                                              dict[str, AccuracyStat] | None]]:
    """(label, A's stats, B's stats) for clean, each attack (in A's order, then B's others), all attacks."""
    attacks = a.attack_names() + [n for n in b.attack_names() if n not in a.per_attack]
    rows = [("clean", a.clean, b.clean)]
    rows += [(f"{'after ' if a.cascade and b.cascade else ''}{n}", a.per_attack.get(n), b.per_attack.get(n))
             for n in attacks]
    rows.append(("robust (all attacks)", a.robust, b.robust))
    return rows


def _stat(s: AccuracyStat | None) -> str:
    return "-" if s is None else f"{100 * s.value:.2f}% [{100 * s.ci_low:.1f}, {100 * s.ci_high:.1f}]"


def compare_records(a: BenchmarkRecord, b: BenchmarkRecord, *, names: tuple[str, str] = ("A", "B")) -> str:
    """The side-by-side table of two comparable records (see the module docstring)."""
    check_comparable(a, b, names=names)
    lines = [f"A = {a.defense} ({names[0]})  vs  B = {b.defense} ({names[1]})",
             f"{a.dataset}/{a.split}, {a.threat_model} eps={a.eps:.6g}, n={a.n_examples}; seeds {a.seed} / {b.seed}, "
             f"re-evaluations {a.n_reeval} / {b.n_reeval}",
             f"{'':30}{'protocol':<15}{'A':>26}{'B':>26}{'B - A':>12}"]
    for label, sa, sb in _rows(a, b):
        for p in _protocols(a, b):
            x, y = (sa or {}).get(p), (sb or {}).get(p)
            delta = f"{100 * (y.value - x.value):+.2f} pts" if x is not None and y is not None else "-"
            lines.append(f"{label:<30}{_LABELS[p]:<15}{_stat(x):>26}{_stat(y):>26}{delta:>12}")
    for tag, rec in (("A", a), ("B", b)):
        for att in rec.attacks:
            lines.append(f"{tag} attack: " + ", ".join(f"{k}={v}" for k, v in att.items() if k != "implementation"))
        lines.append(f"{tag}: " + ("UNRELIABLE: a blocking check failed" if rec.unreliable
                                   else "reliable: no blocking check failed")
                     + (f"; RANDOM WEIGHTS: {', '.join(rec.defense_config['random_weights'])}"
                        if rec.defense_config.get("random_weights") else ""))
    return "\n".join(lines)


def compare_runs(run_a: str | os.PathLike, run_b: str | os.PathLike) -> str:
    """Load two run directories (or ``record.json`` files), check they compare, and return the table."""
    (a, ia), (b, ib) = load_record(run_a), load_record(run_b)
    names = (Path(run_a).name, Path(run_b).name)
    check_comparable(a, b, ia, ib, names=names)
    return compare_records(a, b, names=names)


def plot_comparison(run_a: str | os.PathLike, run_b: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Grouped bars (A, B) of the strictest protocol per row, with 95 % intervals, written as a PNG."""
    from .report import _new_figure, _save, _yerr

    (a, ia), (b, ib) = load_record(run_a), load_record(run_b)
    names = (Path(run_a).name, Path(run_b).name)
    check_comparable(a, b, ia, ib, names=names)
    rows = _rows(a, b)
    fig = _new_figure(max(5.0, 1.2 * len(rows) + 2.0), 4.0)
    ax = fig.add_subplot()
    for k, (tag, rec_name, pick) in enumerate((("A", f"{a.defense} ({names[0]})", 1), ("B", f"{b.defense} ({names[1]})", 2))):
        xs = [i + (k - 0.5) * 0.4 for i, r in enumerate(rows) if r[pick] is not None]
        stats: list[Any] = [r[pick]["worst_of_m"] for r in rows if r[pick] is not None]
        bars = ax.bar(xs, [100 * s.value for s in stats], 0.4, yerr=_yerr(stats), capsize=3,
                      label=textwrap.shorten(f"{tag} = {rec_name}", 60))
        ax.bar_label(bars, labels=[f"{100 * s.value:.1f}" for s in stats], fontsize=7, padding=2)
        for i, r in enumerate(rows):
            if r[pick] is None:  # an attack only the other run ran: say so instead of an empty slot
                ax.text(i + (k - 0.5) * 0.4, 2, f"{tag}: not run", rotation=90, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(rows)), [textwrap.fill(r[0], 16) for r in rows], fontsize=8)
    ax.set_ylim(0, 110)  # room above 100 % for the value labels
    ax.set_ylabel("accuracy (%), worst of M, 95% CI")
    ax.set_title(textwrap.fill(f"{a.dataset}/{a.split} {a.threat_model} eps={a.eps:.4g}, n={a.n_examples}", 70),
                 fontsize=9)
    fig.legend(loc="outside lower center", ncol=2, fontsize=7)  # below the axes: never over a bar
    return _save(fig, Path(path))
