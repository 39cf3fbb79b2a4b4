"""Corruption sweep: accuracy of test-time-adaptation methods on CIFAR-10-C, one (method, corruption) at a time.

``corruption_sweep(methods, corruptions=..., severity=5, ...) -> SweepResult`` runs every method on every
corruption with the protocol of TENT and TEA: the method is reset before each (corruption, severity), the
corrupted test set is streamed in the official order in fixed batches of ``batch_size``, and the method
predicts each batch once (adapting as it goes). Accuracy is over all streamed examples, with a 95% Wilson
interval. The result records the protocol (methods and their configs, batch size, n, severity, reset
policy, seed, and whether the data is a robustkit regeneration) and renders as a Markdown table.

Reference:
    Yuan et al., "TEA: Test-time Energy Adaptation", CVPR 2024 (https://github.com/yuanyige/tea);
    Wang et al., "Tent: Fully Test-Time Adaptation by Entropy Minimization", ICLR 2021.

Example (a tiny BatchNorm CNN on a 4-image generated CIFAR-10-C; real use: ``robustkit corruption-sweep``)::

    >>> import tempfile, warnings, numpy as np, torch.nn as nn, robustkit
    >>> from robustkit.data.cifar10c import write_cifar10c
    >>> from robustkit.defenses import NormStatsClassifier, SourceClassifier
    >>> d = tempfile.mkdtemp()
    >>> _ = write_cifar10c(d, np.full((4, 32, 32, 3), 128, np.uint8), np.arange(4), corruptions=("fog",),
    ...                    progress=False)
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    ...                     nn.Linear(4, 10)).eval()
    >>> clf = robustkit.wrap_classifier(net, input_shape=(3, 32, 32))
    >>> with warnings.catch_warnings():  # the loader warns that the data is a regeneration
    ...     warnings.simplefilter("ignore")
    ...     result = corruption_sweep({"source": SourceClassifier(clf), "bn": NormStatsClassifier(clf)},
    ...                               corruptions=("fog",), batch_size=2, data_dir=d)
    >>> result.methods, result.protocol["n_examples"], result.protocol["generated_data"]
    (['source', 'bn'], 4, True)
    >>> import shutil; shutil.rmtree(d)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from ..attacks.base import eval_mode
from ..classifier import Classifier
from ..data.corruptions import CORRUPTIONS, SEVERITIES
from ..errors import InputError
from ..utils import check_positive_int, did_you_mean, progress_bar
from .record import RecordError
from .schema import check_finite, loads_strict, read_json_file, validate_fields
from .stats import wilson_interval

__all__ = ["ALL_15", "SCHEMA_VERSION", "RESET_POLICY", "SweepCell", "SweepResult", "corruption_sweep"]

log = logging.getLogger(__name__)

ALL_15: tuple[str, ...] = tuple(CORRUPTIONS)
SCHEMA_VERSION = 1
RESET_POLICY = ("reset() before each (corruption, severity) (TENT/TEA protocol); state is continual across the "
                "batches of one corruption. What reset() drops is the method's: e.g. TEA keeps its SGLD "
                "buffer unless TEAConfig.reset_buffer")
CONFIDENCE = 0.95


@dataclass(frozen=True)
class SweepCell:
    """One (method, corruption) result: ``correct`` of ``n``, its Wilson interval, and wall time."""

    method: str
    corruption: str
    severity: int
    correct: int
    n: int
    low: float
    high: float
    seconds: float

    @property
    def accuracy(self) -> float:
        return self.correct / self.n


@dataclass
class SweepResult:
    """Results of :func:`corruption_sweep`: cells plus the protocol, JSON round-trippable.

    ``methods`` is the column order, ``corruptions`` the row order; ``protocol`` holds the settings and
    ``method_info`` each method's class and config (a dict of its hyperparameter dataclass).
    """

    methods: list[str]
    corruptions: list[str]
    severity: int
    cells: list[SweepCell]
    protocol: dict[str, Any] = field(default_factory=dict)
    method_info: dict[str, dict[str, Any]] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def cell(self, method: str, corruption: str) -> SweepCell:
        for c in self.cells:
            if c.method == method and c.corruption == corruption:
                return c
        raise KeyError(f"no result for method {method!r} on {corruption!r}")

    def mean_accuracy(self, method: str) -> float:
        """Unweighted mean over corruptions (the papers' "avg" column)."""
        accs = [self.cell(method, c).accuracy for c in self.corruptions]
        return sum(accs) / len(accs)

    # ------------------------------------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": self.schema_version, "methods": list(self.methods),
                "corruptions": list(self.corruptions), "severity": self.severity,
                "protocol": self.protocol, "method_info": self.method_info,
                "cells": [dataclasses.asdict(c) for c in self.cells]}

    @classmethod
    def from_dict(cls, d: Any, *, source: str | Path | None = None) -> "SweepResult":
        """Validate and build (raises :class:`~robustkit.eval.record.RecordError` naming file and field).

        Checked: exact fields and types; known corruptions and severity; one cell per (method,
        corruption) at the sweep's severity; each cell's ``correct <= n`` and its Wilson interval recomputed.
        """
        return validate_fields(source, lambda: _parse_sweep(d), RecordError)
    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"
        if path is not None:
            Path(path).expanduser().write_text(text)
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> "SweepResult":
        """From JSON text, or from the path of a file :meth:`to_json` wrote (validated as :meth:`from_dict`)."""
        text = str(text_or_path)
        if text.lstrip().startswith("{"):
            return cls.from_dict(loads_strict(text, "sweep result", RecordError))
        path = Path(text).expanduser()
        return cls.from_dict(read_json_file(path, RecordError), source=path)

    # ------------------------------------------------------------------------------------------- table
    def to_markdown(self, ci: bool = True) -> str:
        """Rows corruptions + mean, columns methods; cells ``acc% [low-high]`` (95% Wilson)."""
        head = "| corruption (severity %d) | " % self.severity + " | ".join(self.methods) + " |"
        sep = "|---|" + "---:|" * len(self.methods)
        rows = [head, sep]
        for c in self.corruptions:
            vals = []
            for m in self.methods:
                cell = self.cell(m, c)
                s = f"{100 * cell.accuracy:.1f}"
                if ci:
                    s += f" [{100 * cell.low:.1f}–{100 * cell.high:.1f}]"
                vals.append(s)
            rows.append(f"| {c} | " + " | ".join(vals) + " |")
        rows.append("| **mean** | " + " | ".join(f"**{100 * self.mean_accuracy(m):.1f}**" for m in self.methods)
                    + " |")
        return "\n".join(rows) + "\n"


def _parse_sweep(d: Any) -> SweepResult:
    from .schema import Fields

    f = Fields(d, "sweep", RecordError)
    f.exact_keys({"schema_version", "methods", "corruptions", "severity", "cells"}, {"protocol", "method_info"})
    version = f.int("schema_version", 0, 10**6)
    if version != SCHEMA_VERSION:
        raise RecordError(f"sweep.schema_version: {version} is not the version this robustkit reads ({SCHEMA_VERSION})"
                          + ("; upgrade robustkit" if version > SCHEMA_VERSION else ""))
    lists = {}
    for key, allowed in (("methods", None), ("corruptions", CORRUPTIONS)):
        items = f.list(key, 1000)
        if not items or len(set(map(repr, items))) != len(items):
            raise RecordError(f"sweep.{key}: expected a non-empty list of distinct names, got {items!r:.80}")
        for i, v in enumerate(items):
            if not isinstance(v, str) or (allowed is not None and v not in allowed):
                raise RecordError(f"sweep.{key}[{i}]: expected " + ("a name" if allowed is None else
                                  f"one of {list(allowed)}") + f", got {v!r:.60}")
        lists[key] = list(items)
    severity = f.int("severity", min(SEVERITIES), max(SEVERITIES))
    cells, seen = [], set()
    for i, c in enumerate(f.list("cells", 10**6)):
        cf = Fields(c, f"sweep.cells[{i}]", RecordError)
        cf.exact_keys({x.name for x in dataclasses.fields(SweepCell)})
        method = cf.str("method", choices=tuple(lists["methods"]))
        corruption = cf.str("corruption", choices=tuple(lists["corruptions"]))
        if cf.int("severity", 0, 10**6) != severity:
            raise RecordError(f"sweep.cells[{i}].severity: {c['severity']} differs from the sweep's {severity}")
        if (method, corruption) in seen:
            raise RecordError(f"sweep.cells[{i}]: a second result for ({method}, {corruption})")
        seen.add((method, corruption))
        n = cf.int("n", 1, 10**9)
        correct = cf.int("correct", 0, n)
        lo, hi = wilson_interval(correct, n, CONFIDENCE)
        for key, want in (("low", lo), ("high", hi)):
            if abs(cf.float(key, 0.0, 1.0) - want) > 1e-9:
                raise RecordError(f"sweep.cells[{i}].{key}: {c[key]!r} but {correct}/{n} gives {want!r} "
                                  f"(Wilson {CONFIDENCE:g} interval)")
        cells.append(SweepCell(method=method, corruption=corruption, severity=severity, correct=correct, n=n,
                               low=c["low"], high=c["high"], seconds=cf.float("seconds", 0.0, 1e12)))
    missing = [(m, c) for m in lists["methods"] for c in lists["corruptions"] if (m, c) not in seen]
    if missing:
        raise RecordError(f"sweep.cells: no result for {len(missing)} (method, corruption) pair(s), first {missing[0]}")
    protocol, info = f.obj("protocol", optional=True) or {}, f.obj("method_info", optional=True) or {}
    check_finite([protocol, info], "sweep", RecordError)
    return SweepResult(methods=lists["methods"], corruptions=lists["corruptions"], severity=severity, cells=cells,
                       protocol=dict(protocol), method_info=dict(info), schema_version=version)


def _method_info(name: str, clf: Classifier) -> dict[str, Any]:
    cfg = getattr(clf, "config", None)
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        cfg = json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
    elif cfg is not None:
        cfg = repr(cfg)
    return {"class": type(clf).__name__, "registered_name": getattr(clf, "name", None), "config": cfg,
            "adapts_at_test_time": bool(getattr(getattr(clf, "traits", None), "adapts_at_test_time", False))}


def _generated_info(data_dir: str | Path | None, corruption: str) -> dict[str, Any] | None:
    from ..data.cifar10c import MARKER, find_folder
    from ..data.files import data_root

    folder = find_folder(data_root(data_dir), corruption)
    if folder is None or not (folder / MARKER).is_file():
        return None
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return {"note": f"{folder / MARKER} present but unreadable"}


def _stream_correct(clf: Classifier, x: torch.Tensor, y: torch.Tensor, batch_size: int, device: str | torch.device,
                    *, desc: str) -> int:
    """Correct predictions of ``clf`` fed ``x`` in consecutive batches (predicted once each, in order)."""
    correct = 0
    with eval_mode(clf):  # each submodule's training flag restored afterwards
        for i in progress_bar(range(0, len(y), batch_size), desc=desc, unit="batch"):
            xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
            with torch.no_grad():  # adapters enable grad internally for their own update
                pred = clf(xb).argmax(dim=1)
            correct += int((pred == yb).sum())
    return correct


def corruption_sweep(methods: Mapping[str, Classifier], *, corruptions: Sequence[str] = ALL_15, severity: int = 5,
                     n_examples: int | None = None, batch_size: int = 200, data_dir: str | Path | None = None,
                     seed: int = 0, device: str | torch.device = "cpu",
                     progress: Callable[[SweepCell], None] | None = None) -> SweepResult:
    """Run each method on each corruption of CIFAR-10-C at ``severity`` and return a :class:`SweepResult`.

    Per (method, corruption): ``torch.manual_seed(seed)``, ``method.reset()``, then the first
    ``n_examples`` images (official order) are fed in consecutive batches of ``batch_size`` (the last
    may be smaller); each batch is predicted once. ``progress(cell)`` is called after each cell.

    Args:
        methods: name → Classifier (e.g. ``{"source": clf, "tea": create_defense("tea.resnet20.cifar10",
            pretrained=True)}``); the same object is reused (and reset) across corruptions.
        corruptions: subset of :data:`ALL_15`, in the order of the rows.
        data_dir: where ``CIFAR-10-C/`` is (see ``robustkit.data.cifar10c``).
        seed: global torch seed set before each cell (methods with a private generator, like TEA's,
            take their own ``config.seed``).

    Raises:
        InputError: empty or non-Classifier methods, unknown corruption, bad severity/batch size/n.
    """
    if not methods:
        raise InputError("methods must name at least one Classifier")
    for name, clf in methods.items():
        if not isinstance(clf, Classifier):
            raise InputError(f"method {name!r} must be a robustkit Classifier, got {type(clf).__name__}")
    corruptions = list(corruptions)
    bad = [c for c in corruptions if c not in CORRUPTIONS]
    if bad or not corruptions:
        raise InputError(f"unknown corruption(s) {', '.join(map(str, bad)) or '(none given)'}"
                         f"{did_you_mean(bad[0], CORRUPTIONS) if bad else ''}; choose from {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise InputError(f"severity must be one of {list(SEVERITIES)}, got {severity!r}")
    check_positive_int("batch_size", batch_size)
    check_positive_int("n_examples", n_examples, none_ok=True)

    from ..data import load_dataset

    cells: list[SweepCell] = []
    n_seen: int | None = None
    generated: dict[str, Any] | None = None
    with progress_bar(total=len(corruptions) * len(methods), desc=f"corruption sweep (severity {severity})",
                      unit="cell") as bar:
        for corruption in corruptions:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                x, y = load_dataset("cifar10c", corruption=corruption, severity=severity, n_examples=n_examples,
                                    data_dir=data_dir)
            for w in caught:  # re-emit once per sweep rather than once per corruption
                if generated is None or not issubclass(w.category, UserWarning):
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            if generated is None:
                generated = _generated_info(data_dir, corruption)
            n_seen = len(y) if n_seen is None else n_seen
            for name, clf in methods.items():
                clf.to(device)
                torch.manual_seed(seed)
                clf.reset()
                bar.set_postfix_str(f"{name} on {corruption}-{severity}")
                t0 = time.perf_counter()
                correct = _stream_correct(clf, x, y, batch_size, device, desc=f"{name} on {corruption}-{severity}")
                seconds = time.perf_counter() - t0
                lo, hi = wilson_interval(correct, len(y), CONFIDENCE)
                cell = SweepCell(name, corruption, severity, correct, len(y), lo, hi, seconds)
                log.info("%s on %s-%d: %d/%d (%.1f s)", name, corruption, severity, correct, len(y), seconds)
                cells.append(cell)
                bar.update(1)
                if progress is not None:
                    progress(cell)
    protocol = {"dataset": "cifar10c", "severity": severity, "n_examples": n_seen, "batch_size": batch_size,
                "order": "official CIFAR-10 test order, consecutive fixed batches", "reset_policy": RESET_POLICY,
                "seed": seed, "confidence": CONFIDENCE, "interval": "Wilson score",
                "mean": "unweighted mean over corruptions", "device": str(device),
                "torch_threads": torch.get_num_threads(), "generated_data": generated is not None,
                "generated_info": generated}
    return SweepResult(methods=list(methods), corruptions=corruptions, severity=severity, cells=cells,
                       protocol=protocol, method_info={n: _method_info(n, c) for n, c in methods.items()})
