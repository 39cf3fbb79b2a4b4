"""``BenchmarkRecord``: the versioned, JSON-round-trippable result of :func:`robustkit.benchmark`.

Numbers are numbers (fractions in [0, 1], counts as ints); every accuracy carries its sample size and
95% Wilson interval. ``from_dict`` is strict: a missing or unknown field, or a different schema
version, raises :class:`RecordError` instead of silently producing a half-filled record.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import RobustkitError
from .stats import accuracy_with_ci

SCHEMA_VERSION = 1
PROTOCOLS = ("single_draw", "majority", "worst_of_m")


class RecordError(RobustkitError, ValueError):
    """A record or per-example file does not match the schema."""


@dataclass(frozen=True)
class AccuracyStat:
    """An accuracy with its sample size and Wilson interval (fractions)."""

    correct: int
    n: int
    value: float
    ci_low: float
    ci_high: float
    confidence: float = 0.95

    @classmethod
    def from_flags(cls, flags, confidence: float = 0.95) -> "AccuracyStat":
        a = accuracy_with_ci(flags, confidence)
        return cls(a.correct, a.n, a.value, a.low, a.high, confidence)

    def attack_names(self) -> list[str]:
        """The attacks in the order they ran (``per_attack``'s keys come back sorted from JSON; with a cascade,
        "after X" is cumulative in this order)."""
        ran = [a.get("name") for a in self.attacks]
        return [n for n in ran if n in self.per_attack] + [n for n in self.per_attack if n not in ran]

    def __str__(self) -> str:
        return f"{100 * self.value:.2f}% [{100 * self.ci_low:.1f}, {100 * self.ci_high:.1f}] (n={self.n})"


@dataclass(frozen=True)
class CheckResult:
    """One sanity check: ``status`` pass/warn/fail; a blocking failure makes the record unreliable."""

    name: str
    status: Literal["pass", "warn", "fail", "skipped"]
    message: str
    blocking: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def is_blocking_failure(self) -> bool:
        return self.status == "fail" and self.blocking


@dataclass(frozen=True)
class BenchmarkRecord:
    """Everything needed to trust, reproduce and rank one benchmark run."""

    defense: str
    defense_config: dict[str, Any]
    config_hash: str
    traits: dict[str, Any]
    dataset: str
    split: str
    n_examples: int
    threat_model: str
    eps: float
    seed: int
    batch_size: int
    n_reeval: int
    cascade: bool
    attacks: list[dict[str, Any]]
    clean: dict[str, AccuracyStat]
    robust: dict[str, AccuracyStat]
    per_attack: dict[str, dict[str, AccuracyStat]]
    checks: list[CheckResult]
    unreliable: bool
    cost: dict[str, Any]
    software: dict[str, str]
    created_utc: str
    schema_version: int = SCHEMA_VERSION

    # ------------------------------------------------------------------------------------ (de)serialise
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    def save(self, path: str | Path) -> Path:
        from .runner import atomic_write_text

        return atomic_write_text(Path(path), self.to_json() + "\n")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BenchmarkRecord":
        _exact_keys(d, cls, "BenchmarkRecord")
        if d["schema_version"] != SCHEMA_VERSION:
            raise RecordError(f"record schema_version {d['schema_version']} is not {SCHEMA_VERSION}; "
                              "convert it with a matching robustkit version")
        d = dict(d)
        d["clean"] = {k: _stat(v) for k, v in d["clean"].items()}
        d["robust"] = {k: _stat(v) for k, v in d["robust"].items()}
        d["per_attack"] = {a: {k: _stat(v) for k, v in s.items()} for a, s in d["per_attack"].items()}
        checks = []
        for c in d["checks"]:
            _exact_keys(c, CheckResult, "CheckResult")
            checks.append(CheckResult(**c))
        d["checks"] = checks
        for key in ("clean", "robust"):
            if set(d[key]) != set(PROTOCOLS):
                raise RecordError(f"record field {key!r} must have the protocols {PROTOCOLS}, got {sorted(d[key])}")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "BenchmarkRecord":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise RecordError(f"record is not valid JSON: {e}") from e

    @classmethod
    def load(cls, path: str | Path) -> "BenchmarkRecord":
        return cls.from_json(Path(path).read_text())

    # ---------------------------------------------------------------------------------------- display
    def attack_names(self) -> list[str]:
        """The attacks in the order they ran (``per_attack``'s keys come back sorted from JSON; with a cascade,
        "after X" is cumulative in this order)."""
        ran = [a.get("name") for a in self.attacks]
        return [n for n in ran if n in self.per_attack] + [n for n in self.per_attack if n not in ran]

    def __str__(self) -> str:
        """The summary table (:meth:`summary`): ``print(record)`` shows what ``robustkit bench`` prints."""
        return self.summary()

    def summary(self) -> str:
        """A plain-text table: clean and robust accuracy per protocol, per attack, checks, cost."""
        lines = [f"{self.defense} on {self.dataset}/{self.split}, {self.threat_model} eps={self.eps:.6g}, "
                 f"n={self.n_examples}, seed={self.seed}, re-evaluations={self.n_reeval}",
                 f"{'':28}{'single draw':>32}{'majority':>32}{'worst of M':>32}"]

        def row(label: str, stats: dict[str, AccuracyStat]) -> str:
            return f"{label:<28}" + "".join(f"{str(stats[p]) if p in stats else '-':>32}" for p in PROTOCOLS)

        lines.append(row("clean", self.clean))
        for name in self.attack_names():
            lines.append(row(("after " if self.cascade else "") + name, self.per_attack[name]))
        lines.append(row("robust (all attacks)", self.robust))
        for a in self.attacks:
            proto = ", ".join(f"{k}={v}" for k, v in a.items() if k not in ("implementation",))
            lines.append(f"attack: {proto}")
        for c in self.checks:
            flag = " [blocking]" if c.is_blocking_failure else ""
            lines.append(f"check {c.status.upper():<5} {c.name}{flag}: {c.message}")
        lines.append("UNRELIABLE: a blocking check failed" if self.unreliable else "reliable: no blocking check failed")
        if self.defense_config.get("random_weights"):
            lines.append(f"RANDOM WEIGHTS (never trained): {', '.join(self.defense_config['random_weights'])}")
        c = self.cost
        lines.append(f"cost: {c.get('forward_nfe', 0)} forward / {c.get('backward_nfe', 0)} backward example-passes, "
                     f"{c.get('wall_seconds', 0):.1f}s wall on {c.get('device', '?')}")
        return "\n".join(lines)


def _exact_keys(d: Any, cls: type, what: str) -> None:
    if not isinstance(d, dict):
        raise RecordError(f"{what} must be a JSON object, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    required = {f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    unknown, missing = set(d) - names, required - set(d)
    if unknown or missing:
        raise RecordError(f"{what}: unknown fields {sorted(unknown)}, missing fields {sorted(missing)}")


def _stat(v: Any) -> AccuracyStat:
    _exact_keys(v, AccuracyStat, "AccuracyStat")
    s = AccuracyStat(**v)
    if not (0 <= s.correct <= s.n and 0 <= s.ci_low <= s.value <= s.ci_high <= 1):
        raise RecordError(f"inconsistent accuracy {v}")
    return s
