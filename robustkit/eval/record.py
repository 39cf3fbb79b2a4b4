"""``BenchmarkRecord``: the versioned, JSON-round-trippable result of :func:`robustkit.benchmark`.

Numbers are numbers (fractions in [0, 1], counts as ints); every accuracy carries its sample size and
95% Wilson interval.

Validation. :meth:`BenchmarkRecord.load` (and ``from_json`` / ``from_dict``) accept only a record that
benchmark() could have written; anything else raises :class:`RecordError` naming the file and the field
(``runs/a/record.json: record.robust.majority.n: 6 differs from n_examples=8``):

* the file: UTF-8 JSON without NaN / Infinity or duplicate keys; an empty or cut-off file says "truncated";
* the fields: exactly the dataclass's fields, each of its type and range (counts are integers, not
  booleans; eps in (0, 1] for Linf; ``threat_model`` one of ``Linf`` / ``L2``; ``clean``, ``robust`` and
  each ``per_attack`` entry have exactly the protocols ``single_draw``, ``majority``, ``worst_of_m``;
  check statuses, gradient modes and attack names from their fixed vocabularies; ``config_hash`` a sha256;
  no NaN anywhere);
* every accuracy: ``n == n_examples``, ``value == correct / n`` and the Wilson interval recomputed;
* the aggregates against each other (what any set of per-example results gives): worst-of-M <= single draw
  and <= majority; one draw => the protocols coincide; robust <= per-attack <= clean; with the cascade the
  last per-attack accuracy is the robust one; ``unreliable`` exactly when a blocking check failed; a
  deterministic defense has ``n_reeval == 1``; each recorded attack protocol has results and the record's
  norm and eps.

The per-example results live next to the record in its run directory; :func:`robustkit.eval.report.load_run`
recomputes every aggregate from them and refuses a record that disagrees.

Versions. ``schema_version`` 1 is the only layout so far. Records written before the
``batch_dependent`` or ``generative`` trait existed (earlier schema-1 files) lack ``traits.batch_dependent`` /
``traits.generative`` and are read with ``False``, which is what those defenses were declared as. A record with a higher ``schema_version``
than this robustkit knows is refused ("upgrade robustkit"), never half-read.

Example::

    >>> from robustkit.eval.record import BenchmarkRecord, RecordError
    >>> try:
    ...     BenchmarkRecord.from_json('{"schema_version": 2, "defense": "x"}')
    ... except RecordError as e:
    ...     print(e)
    record.schema_version: 2 is newer than this robustkit reads (1); upgrade robustkit to read it
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import RobustkitError
from .schema import check_finite, loads_strict, read_json_file, validate_fields
from .stats import accuracy_with_ci, wilson_interval

SCHEMA_VERSION = 1
PROTOCOLS = ("single_draw", "majority", "worst_of_m")
THREAT_MODELS = ("Linf", "L2")
GRADIENT_MODES = ("exact", "bpda", "surrogate")
CHECK_STATUSES = ("pass", "warn", "fail", "skipped")
MAX_EXAMPLES = 10**9
MAX_REEVAL = 1000
MAX_ATTACKS = 64
MAX_CHECKS = 256
MAX_L2_EPS = 1e4
STAT_TOL = 1e-9  # recorded fractions vs recomputed ones (both float64 from the same integers)
_SHA256 = re.compile(r"[0-9a-f]{64}")
_COST_COUNTS = ("forward_passes", "backward_passes", "forward_passes_per_prediction", "forward_nfe", "backward_nfe")
_COST_SECONDS = ("attack_seconds", "checks_seconds", "wall_seconds", "gpu_hours", "elapsed_seconds_this_call")


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
        """JSON text; a NaN / infinite number in a check's free-form ``details`` (a diagnostic that could not
        be measured, e.g. on NaN logits) is written as the string ``"nan"`` / ``"inf"`` / ``"-inf"``, since
        JSON has no such numbers. Any other non-finite number makes :meth:`save` refuse the record."""
        d = self.to_dict()
        for c in d["checks"]:
            c["details"] = _nonfinite_as_text(c["details"])
        return json.dumps(d, indent=indent, sort_keys=True, allow_nan=False)

    def save(self, path: str | Path) -> Path:
        """Validate (as :meth:`load` would) and write atomically: a record robustkit cannot read is never written."""
        from .runner import atomic_write_text

        text = validate_fields(path, self._finite_json, RecordError)
        BenchmarkRecord.from_json(text, source=path)
        return atomic_write_text(Path(path), text + "\n")

    def _finite_json(self) -> str:
        try:
            return self.to_json()
        except ValueError:  # allow_nan=False: name the field
            check_finite(self.to_dict(), "record", RecordError)
            raise

    @classmethod
    def from_dict(cls, d: Any, *, source: str | os.PathLike | None = None) -> "BenchmarkRecord":
        """Validate and build a record (see the module docstring for the schema and the migrations).

        Raises :class:`RecordError` naming ``source`` (the file, when given) and the first bad field.
        """
        return validate_fields(source, lambda: _parse_record(d), RecordError)

    @classmethod
    def from_json(cls, text: str, *, source: str | os.PathLike | None = None) -> "BenchmarkRecord":
        where = str(source) if source is not None else "record"
        return cls.from_dict(loads_strict(text, where, RecordError), source=source)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BenchmarkRecord":
        """Read and validate a record file; any problem is a :class:`RecordError` naming the file and field."""
        return cls.from_dict(read_json_file(path, RecordError), source=path)

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
        if self.defense_config.get("default_budget"):
            lines.append("REDUCED DEFAULT BUDGET (the registry entry's demo budget, a loose upper bound, not a result "
                         f"to cite; --full-budget / entry_budget=False for the presets): "
                         f"{describe_budget(self.defense_config['default_budget'])}")
        c = self.cost
        passes = (c.get("forward_passes", c.get("forward_nfe", 0)), c.get("backward_passes", c.get("backward_nfe", 0)))
        nfe = (c.get("forward_nfe", passes[0]), c.get("backward_nfe", passes[1]))
        # a defense with several network evaluations per prediction (a diffusion purifier's solver steps): both
        network = f" ({nfe[0]} / {nfe[1]} network evaluations)" if nfe != passes else ""
        lines.append(f"cost: {passes[0]} forward / {passes[1]} backward example-passes{network}, "
                     f"{c.get('wall_seconds', 0):.1f}s wall on {c.get('device', '?')}")
        return "\n".join(lines)


def describe_budget(filled: dict[str, Any]) -> str:
    """What a registry entry's default budget filled in (``defense_config["default_budget"]``), as the CLI spells
    it: ``n_examples=32, n_reeval=4, check steps=5, pgd-eot.steps=10, ...`` (the run's warning and the
    record's summary)."""
    parts = [f"{k}={v}" for k, v in filled.items() if k not in ("attack_options", "check_options")]
    parts += [f"check {k}={v}" for k, v in filled.get("check_options", {}).items()]
    parts += [f"{a}.{k}={v:g}" if isinstance(v, float) else f"{a}.{k}={v}"
              for a, opts in filled.get("attack_options", {}).items() for k, v in opts.items()]
    return ", ".join(parts)


def _nonfinite_as_text(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # "nan", "inf", "-inf"
    if isinstance(v, dict):
        return {k: _nonfinite_as_text(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_nonfinite_as_text(x) for x in v]
    return v


_RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(BenchmarkRecord))
# schema_version has a default for construction, but every record file states it
_REQUIRED_FIELDS = {f.name for f in dataclasses.fields(BenchmarkRecord)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING} | {
                        "schema_version"}


# ------------------------------------------------------------------------------------------ validation

def _upgrade(d: Any) -> Any:
    """Bring an older valid record to the current layout (module docstring, "Versions"); refuse the future."""
    if not isinstance(d, dict):
        return d  # the field checks say what is wrong
    if "schema_version" not in d:
        raise RecordError("record: missing field 'schema_version' (is this a BenchmarkRecord?)")
    version = d["schema_version"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise RecordError(f"record.schema_version: expected an integer, got {version!r:.60}")
    if version > SCHEMA_VERSION:
        raise RecordError(f"record.schema_version: {version} is newer than this robustkit reads ({SCHEMA_VERSION}); "
                          "upgrade robustkit to read it")
    if version < 1:
        raise RecordError(f"record.schema_version: {version} was never written by robustkit (versions start at 1)")
    traits = d.get("traits")
    if isinstance(traits, dict) and not {"batch_dependent", "generative"} <= set(traits):
        d = {**d, "traits": {"batch_dependent": False, "generative": False, **traits}}
    return d


def _parse_record(raw: Any) -> BenchmarkRecord:
    from .schema import ATTACK_NAME_RE, MAX_SHORT, MAX_TEXT, Fields, check_name

    d = _upgrade(raw)
    f = Fields(d, "record", RecordError)
    f.exact_keys(_REQUIRED_FIELDS, set(_RECORD_FIELDS) - _REQUIRED_FIELDS)
    check_finite(d, "record", RecordError)
    n = f.int("n_examples", 1, MAX_EXAMPLES)
    threat_model = f.str("threat_model", choices=THREAT_MODELS)
    eps = f.float("eps", 0.0, 1.0 if threat_model == "Linf" else MAX_L2_EPS)
    if eps <= 0:
        raise RecordError(f"record.eps: expected a positive budget, got {eps}")
    traits = _traits(f.obj("traits"))
    n_reeval = f.int("n_reeval", 1, MAX_REEVAL)
    if not traits["stochastic"] and n_reeval != 1:
        raise RecordError(f"record.n_reeval: {n_reeval} re-evaluations of a deterministic defense "
                          "(traits.stochastic is false); benchmark() records 1")
    cascade = f.bool("cascade")
    clean = parse_accuracy_stats(f.obj("clean"), "record.clean", n)
    robust = parse_accuracy_stats(f.obj("robust"), "record.robust", n)
    per_attack_raw = f.obj("per_attack")
    per_attack = {}
    for name, stats in per_attack_raw.items():
        check_name(name, f"record.per_attack[{name[:60]!r}]", RecordError, ATTACK_NAME_RE)
        per_attack[name] = parse_accuracy_stats(stats, f"record.per_attack.{name}", n)
    attacks = []
    for i, a in enumerate(f.list("attacks", MAX_ATTACKS)):
        attacks.append(_attack_protocol(a, f"record.attacks[{i}]", threat_model, eps, set(per_attack)))
    names = [a["name"] for a in attacks]
    if len(set(names)) != len(names):
        raise RecordError(f"record.attacks: attack names must be distinct, got {names}")
    checks = []
    for i, c in enumerate(f.list("checks", MAX_CHECKS)):
        cf = Fields(c, f"record.checks[{i}]", RecordError)
        cf.exact_keys({"name", "status", "message", "blocking", "details"})
        checks.append(CheckResult(name=cf.str("name"), status=cf.str("status", choices=CHECK_STATUSES),
                                  message=cf.str("message", max_len=MAX_TEXT), blocking=cf.bool("blocking"),
                                  details=cf.obj("details")))
    unreliable = f.bool("unreliable")
    if unreliable != any(c.is_blocking_failure for c in checks):
        raise RecordError(f"record.unreliable: {unreliable}, but a blocking check "
                          f"{'did not fail' if unreliable else 'failed'}; it must be true exactly when one failed")
    _check_aggregates(clean, robust, per_attack, n_reeval=n_reeval, cascade=cascade)
    config_hash = f.str("config_hash")
    if not _SHA256.fullmatch(config_hash):
        raise RecordError(f"record.config_hash: expected 64 lowercase hex digits (sha256), got {config_hash[:70]!r}")
    created = f.str("created_utc", max_len=64)
    try:
        _dt.datetime.fromisoformat(created)
    except ValueError as e:
        raise RecordError(f"record.created_utc: expected an ISO 8601 time, got {created!r}") from e
    checked = dict(
        defense=f.str("defense", max_len=MAX_TEXT), defense_config=f.obj("defense_config"),
        config_hash=config_hash, traits=traits, dataset=f.str("dataset"), split=f.str("split"), n_examples=n,
        threat_model=threat_model, eps=eps, seed=f.int("seed", -(2**63), 2**64 - 1),
        batch_size=f.int("batch_size", 1, MAX_EXAMPLES), n_reeval=n_reeval, cascade=cascade, attacks=attacks,
        clean=clean, robust=robust, per_attack=per_attack, checks=checks, unreliable=unreliable,
        cost=_cost(f.obj("cost"), MAX_SHORT), software=f.str_map("software", max_items=256),
        created_utc=created, schema_version=SCHEMA_VERSION)
    # a field added later with a default (absent from older records) that has no check here yet is passed
    # through as read; every field of this version is checked above (tests/test_record_validation.py)
    extra = {k: d[k] for k in _RECORD_FIELDS if k not in checked and k in d}
    return BenchmarkRecord(**checked, **extra)


def _traits(d: dict[str, Any]) -> dict[str, Any]:
    from .schema import Fields

    from ..classifier import DefenseTraits

    f = Fields(d, "record.traits", RecordError)
    checked = {"stochastic", "adapts_at_test_time", "gradient", "forward_passes", "batch_dependent", "generative"}
    later = {x.name for x in dataclasses.fields(DefenseTraits)} - checked  # traits added since: as read
    f.exact_keys(checked, later)
    return {"stochastic": f.bool("stochastic"), "adapts_at_test_time": f.bool("adapts_at_test_time"),
            "gradient": f.str("gradient", choices=GRADIENT_MODES),
            "forward_passes": f.int("forward_passes", 1, 10**9), "batch_dependent": f.bool("batch_dependent"),
            "generative": f.bool("generative"), **{k: d[k] for k in later if k in d}}


def parse_accuracy_stats(d: Any, where: str, n_examples: int, error: type[RobustkitError] = RecordError,
                         max_examples: int = MAX_EXAMPLES) -> dict[str, AccuracyStat]:
    """Strictly read ``{protocol: AccuracyStat}`` at ``where`` (a record's or an entry's ``clean`` etc.).

    Exactly the three protocols; each accuracy has ``n == n_examples`` and its ``value`` and Wilson
    interval recomputed from ``correct`` and ``n`` (to ``STAT_TOL``). Raises ``error`` naming the field.
    """
    from .schema import Fields

    Fields(d, where, error).exact_keys(set(PROTOCOLS))
    return {p: _stat(d[p], f"{where}.{p}", n_examples, error, max_examples) for p in PROTOCOLS}


def _stat(d: Any, where: str, n_examples: int, error: type[RobustkitError], max_examples: int) -> AccuracyStat:
    from .schema import Fields

    f = Fields(d, where, error)
    f.exact_keys({"correct", "n", "value", "ci_low", "ci_high", "confidence"})
    n = f.int("n", 1, max_examples)
    if n != n_examples:
        raise error(f"{where}.n: {n} differs from n_examples={n_examples}")
    correct = f.int("correct", 0, n)
    value = f.float("value", 0.0, 1.0)
    if abs(value - correct / n) > STAT_TOL:
        raise error(f"{where}.value: {value} is not correct/n = {correct}/{n}")
    lo, hi = f.float("ci_low", 0.0, 1.0), f.float("ci_high", 0.0, 1.0)
    if not lo <= value <= hi:
        raise error(f"{where}: the interval [{lo}, {hi}] does not contain the value {value}")
    confidence = f.float("confidence", 0.0, 1.0)
    if not 0 < confidence < 1:
        raise error(f"{where}.confidence: expected a level in (0, 1), got {confidence}")
    for key, got, want in zip(("ci_low", "ci_high"), (lo, hi), wilson_interval(correct, n, confidence)):
        if abs(got - want) > STAT_TOL:
            raise error(f"{where}.{key}: {got!r} but {correct}/{n} gives {want!r} (Wilson {confidence:g} interval)")
    s = AccuracyStat(correct, n, value, lo, hi, confidence)
    return s


def _attack_protocol(d: Any, where: str, threat_model: str, eps: float, names: set[str]) -> dict[str, Any]:
    from .schema import ATTACK_NAME_RE, Fields

    f = Fields(d, where, RecordError)
    name = f.str("name", pattern=ATTACK_NAME_RE)
    if name not in names:
        raise RecordError(f"{where}.name: {name!r} has no results in record.per_attack ({sorted(names)})")
    if "norm" in d:
        f.str("norm", choices=(threat_model,))
    if "eps" in d and not math.isclose(f.float("eps", 0.0, math.inf), eps, rel_tol=1e-6, abs_tol=1e-12):
        raise RecordError(f"{where}.eps: {d['eps']!r} differs from the record's eps {eps!r}")
    for key, lo in (("steps", 0), ("eot", 1), ("restarts", 0)):
        if key in d:  # optional, but never null
            f.int(key, lo, 10**9)
    return dict(d)


def _cost(d: dict[str, Any], max_len: int) -> dict[str, Any]:
    from .schema import Fields

    f = Fields(d, "record.cost", RecordError)
    for key in (k for k in _COST_COUNTS if k in d):  # optional keys, but never null
        f.int(key, 0, 2**63 - 1)
    for key in (k for k in _COST_SECONDS if k in d):
        f.float(key, 0.0, 1e12)
    if "device" in d:
        f.str("device", max_len=max_len)
    return dict(d)


def _check_aggregates(clean: dict[str, AccuracyStat], robust: dict[str, AccuracyStat],
                      per_attack: dict[str, dict[str, AccuracyStat]], *, n_reeval: int, cascade: bool) -> None:
    """Relations every benchmark() aggregate satisfies, whatever the per-example results were.

    Per protocol p: robust[p] <= after[a][p] <= clean[p] for every attack a (robust accuracy needs every
    attack to fail; per-attack accuracy needs the clean prediction to be right), and with the cascade the
    last (lowest) per-attack accuracy is the robust one. Per group: worst-of-M <= single draw and worst-of-M
    <= majority (every draw right implies the first and most are); with one draw the three coincide.
    """
    groups = {"clean": clean, "robust": robust, **{f"per_attack.{a}": s for a, s in per_attack.items()}}
    for label, stats in groups.items():
        w = stats["worst_of_m"].correct
        for p in ("single_draw", "majority"):
            if w > stats[p].correct:
                raise RecordError(f"record.{label}.worst_of_m.correct: {w} examples right under every draw but only "
                                  f"{stats[p].correct} under {p}; impossible")
        if n_reeval == 1 and len({stats[p].correct for p in PROTOCOLS}) != 1:
            raise RecordError(f"record.{label}: with one draw per example the protocols coincide, got "
                              + ", ".join(f"{p}={stats[p].correct}" for p in PROTOCOLS))
    for p in PROTOCOLS:
        r, c = robust[p].correct, clean[p].correct
        if r > c:
            raise RecordError(f"record.robust.{p}.correct: {r} robust examples but only {c} correct clean; impossible")
        for a, stats in per_attack.items():
            if not r <= stats[p].correct <= c:
                raise RecordError(f"record.per_attack.{a}.{p}.correct: {stats[p].correct} is outside [robust {r}, "
                                  f"clean {c}]; impossible")
        lowest = min((s[p].correct for s in per_attack.values()), default=c)
        if (cascade or not per_attack) and r != lowest:
            raise RecordError(f"record.robust.{p}.correct: {r}, but the "
                              + ("cascade's last per-attack accuracy" if per_attack else "clean accuracy (no attacks)")
                              + f" is {lowest}; they must be equal")


def load_run_record(run_dir: str | os.PathLike) -> BenchmarkRecord:
    """``record.json`` of a finished run directory, validated and checked against its per-example results.

    Beyond :meth:`BenchmarkRecord.load`, every shard's per-example results are read and checked
    (:func:`robustkit.leaderboard.examples.validate_examples`), the clean, robust and per-attack accuracies
    are recomputed from them in the run's attack order and compared with the record's, and the
    ``adversarial_validity`` check must have failed exactly when some adversarial example is marked invalid.

    Raises:
        RecordError: naming ``record.json`` and what disagrees (claimed vs recomputed), or the shard file
            and field that cannot be read.
    """
    from ..leaderboard.examples import (ExamplesError, aggregate_examples, compare_stats, load_run_examples,
                                        validate_examples)

    path = Path(run_dir)
    record_file = path / "record.json"
    record = BenchmarkRecord.load(record_file)
    try:
        manifest, raw = load_run_examples(path)
        order = manifest["config"]["attacks"]
        if not isinstance(order, list) or sorted(map(str, order)) != sorted(record.per_attack):
            raise ExamplesError(f"{path / 'manifest.json'}: config.attacks {order!r:.200} are not the record's "
                                f"attacks {sorted(record.per_attack)}")
        examples = validate_examples(raw, order, n_reeval=record.n_reeval, eps=record.eps, cascade=record.cascade,
                                     n_examples=record.n_examples)
    except ExamplesError as e:
        raise RecordError(f"{record_file}: its per-example results cannot be checked: {e}") from e
    agg = aggregate_examples(examples, order, cascade=record.cascade, n_reeval=record.n_reeval, eps=record.eps)
    problems = compare_stats(record.clean, agg.clean, "clean") + compare_stats(record.robust, agg.robust, "robust")
    for name in order:
        problems += compare_stats(record.per_attack[name], agg.per_attack[name], f"per_attack.{name}")
    failed = any(c.name == "adversarial_validity" and c.is_blocking_failure for c in record.checks)
    if bool(agg.n_invalid) != failed:
        problems.append(f"checks: adversarial_validity {'failed' if failed else 'passed'} but "
                        f"{agg.n_invalid} adversarial example(s) are marked invalid")
    if problems:
        raise RecordError(f"{record_file}: the record disagrees with the per-example results of its run "
                          f"({len(problems)} problem(s)): " + "; ".join(problems[:4]))
    return record
