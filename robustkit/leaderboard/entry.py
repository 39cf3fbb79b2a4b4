"""``Entry``: the versioned leaderboard view of one :class:`~robustkit.eval.record.BenchmarkRecord`.

An entry carries RobustBench's ``model_info`` fields (paper, authors, venue, architecture, extra data,
forward passes, clean / reported / robust / external accuracy, footnote, ``unreliable``) and what a
board of stochastic and adaptive defenses needs on top: the declared traits (stochastic, adapts at
test time, batch-dependent, gradient mode), the batch size it was evaluated with, every attack with
its budget and EOT, the number of re-evaluations, robust accuracy as single draw, majority and worst
of M (worst of M ranks), the sample size with 95% intervals, the sanity checks, the cost (forward
passes per prediction, NFE, GPU-hours), software versions and the config hash.

Accuracies are fractions in [0, 1] (RobustBench's percent strings are made only by the exporter).
``Entry.from_dict`` is strict: unknown or missing fields, wrong types, NaN and out-of-range values
raise :class:`EntryError` naming the field. Schema 2 added ``batch_dependent`` and ``batch_size``; a
schema-1 entry is read as ``batch_dependent=False`` and ``batch_size=None`` (not recorded). Schema 3
added ``defense_digest`` (SHA-256 of the record's whole defense configuration: class, hyperparameters,
classifier, score model, weights), ``classifier`` and ``score_model``; an older entry is read with
them ``None`` and is identified by its run's ``config_hash`` instead (:meth:`Entry.identity`).

Example (a tiny real run; a few seconds on a CPU)::

    >>> import tempfile, robustkit
    >>> from robustkit.leaderboard import Entry
    >>> clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    >>> with tempfile.TemporaryDirectory() as run:
    ...     _ = robustkit.benchmark(clf, dataset="digits", eps=0.1, attacks=["pgd"], n_examples=8, batch_size=8,
    ...                             attack_options={"pgd": {"steps": 2}}, checks=False, run_dir=run, progress=False)
    ...     e = Entry.from_run_dir(run)
    >>> e.name, e.ranking_protocol, e.robust_accuracy.n, Entry.from_json(e.to_json()) == e
    ('tiny_cnn.digits', 'single_draw', 8, True)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import RobustkitError
from ..eval.record import (AccuracyStat, BenchmarkRecord, CheckResult, RecordError,
                            parse_accuracy_stats)
from ..eval.runner import canonical_json
from ..eval.schema import ATTACK_NAME_RE, DIR_NAME_RE, MAX_SHORT, MAX_TEXT, NAME_RE, Fields, check_name, loads_strict
from .examples import (MAX_EXAMPLES, MAX_REEVAL, ExamplesError, aggregate_examples, compare_stats,
                       load_run_examples, validate_examples)

ENTRY_SCHEMA_VERSION = 3
GRADIENT_MODES = ("exact", "bpda", "surrogate")
THREAT_MODELS = ("Linf", "L2")
CHECK_STATUSES = ("pass", "warn", "fail", "skipped")
MAX_ATTACKS = 32
MAX_CHECKS = 64
MAX_ATTACK_OPTIONS = 64
MAX_OPTION_LIST = 64


class EntryError(RobustkitError, ValueError):
    """An entry (or its metadata) does not match the schema, or disagrees with its run directory."""


@dataclass(frozen=True)
class AttackSpec:
    """One attack of the protocol: name, budget (norm, eps), steps, EOT samples and its other settings."""

    name: str
    norm: str
    eps: float
    steps: int | None = None
    eot: int = 1
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_protocol(cls, name: str, protocol: dict[str, Any], *, norm: str, eps: float) -> "AttackSpec":
        """From an attack's recorded protocol (``record.attacks[i]``); unknown budget → the record's."""
        p = dict(protocol)
        p.pop("name", None)
        steps = p.pop("steps", None)
        eot = p.pop("eot", 1)
        spec_norm = p.pop("norm", norm)
        spec_eps = p.pop("eps", eps)
        options = {str(k): _option_value(v) for k, v in p.items()}
        return cls(name=name, norm=spec_norm, eps=float(spec_eps),
                   steps=steps if isinstance(steps, int) and not isinstance(steps, bool) else None,
                   eot=eot if isinstance(eot, int) and not isinstance(eot, bool) and eot >= 1 else 1,
                   options=options)

    def describe(self) -> str:
        parts = [f"{self.norm} eps={self.eps:.6g}"] + ([f"{self.steps} steps"] if self.steps else [])
        if self.eot > 1:
            parts.append(f"EOT {self.eot}")
        return f"{self.name} ({', '.join(parts)})"


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, bool, int)) or (isinstance(v, float) and math.isfinite(v))


def _option_value(v: Any) -> Any:
    """An attack setting as stored in an entry: a scalar, a short list of scalars, else its JSON text."""
    if _scalar(v):
        return v[:MAX_SHORT] if isinstance(v, str) else v
    if isinstance(v, (list, tuple)) and len(v) <= MAX_OPTION_LIST and all(_scalar(x) for x in v):
        return [x[:MAX_SHORT] if isinstance(x, str) else x for x in v]
    return json.dumps(v, sort_keys=True, default=repr)[:MAX_SHORT]


@dataclass(frozen=True)
class ExternalResult:
    """A stronger third-party evaluation of the same defense (RobustBench's ``external``), a fraction."""

    robust_accuracy: float
    footnote: str
    link: str | None = None


@dataclass(frozen=True)
class EntryMetadata:
    """What a record cannot know: the paper and how the model is shown. Every field is optional.

    ``name`` overrides the board / RobustBench model name; otherwise it is formed as
    ``AuthorYearFirstWord[_suffix]`` from ``authors``, ``year`` (or the year in ``venue``) and
    ``paper_title`` when those are given, and is the defense's registry name when they are not.
    ``reported`` is the paper's claimed robust accuracy as a fraction.
    """

    name: str | None = None
    paper_title: str | None = None
    link: str | None = None
    authors: str | None = None
    venue: str | None = None
    year: int | None = None
    architecture: str | None = None
    additional_data: bool | None = None
    reported: float | None = None
    footnote: str | None = None
    external: ExternalResult | None = None
    name_suffix: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "metadata") -> "EntryMetadata":
        f = Fields(d, where, EntryError)
        names = [x.name for x in dataclasses.fields(cls)]
        f.exact_keys(set(), names)
        ext = f.obj("external", optional=True)
        return cls(name=f.str("name", optional=True, pattern=NAME_RE),
                   paper_title=f.str("paper_title", max_len=MAX_TEXT, optional=True),
                   link=f.str("link", max_len=MAX_TEXT, optional=True),
                   authors=f.str("authors", max_len=MAX_TEXT, optional=True),
                   venue=f.str("venue", optional=True), year=f.int("year", 1900, 2999, optional=True),
                   architecture=f.str("architecture", optional=True),
                   additional_data=f.bool("additional_data", optional=True),
                   reported=f.float("reported", 0.0, 1.0, optional=True),
                   footnote=f.str("footnote", max_len=MAX_TEXT, optional=True),
                   external=_external(ext, f"{where}.external") if ext is not None else None,
                   name_suffix=f.str("name_suffix", optional=True, pattern=DIR_NAME_RE))

    @classmethod
    def load(cls, path: str | Path) -> "EntryMetadata":
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError as e:
            raise EntryError(f"metadata file {p} does not exist") from e
        except (OSError, UnicodeDecodeError) as e:
            raise EntryError(f"metadata file {p} cannot be read as UTF-8 text ({e})") from e
        return cls.from_dict(loads_strict(text, f"metadata file {p}", EntryError), where=str(p))

    def merged(self, **overrides: Any) -> "EntryMetadata":
        """A copy with every non-None override applied (CLI options over a metadata file)."""
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


def _external(d: dict[str, Any], where: str) -> ExternalResult:
    f = Fields(d, where, EntryError)
    f.exact_keys({"robust_accuracy", "footnote"}, {"link"})
    return ExternalResult(robust_accuracy=f.float("robust_accuracy", 0.0, 1.0),
                          footnote=f.str("footnote", max_len=MAX_TEXT), link=f.str("link", max_len=MAX_TEXT,
                                                                                   optional=True))


def _ascii_word(text: str, keep: str = "") -> str:
    return re.sub(rf"[^A-Za-z0-9{keep}]", "", unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode())


LEADING_ARTICLES = ("a", "an", "the")


def robustbench_name(authors: str, year: int, paper_title: str, suffix: str | None = None) -> str:
    """RobustBench's model name ``AuthorYearFirstWord[_suffix]``: the first author's surname (a
    hyphenated surname kept whole), the year, and the title's first word after a leading article, a
    hyphenated word cut at its first hyphen ("Geometry-aware" → "Geometry"); accents are dropped.

    >>> robustbench_name("Weili Nie, Brandon Guo, Yujia Huang", 2022, "Diffusion Models for Adversarial Purification")
    'Nie2022Diffusion'
    >>> robustbench_name("Jürgen Müller and A. B.", 2024, "(Robust) diffusion", "WRN-28-10")
    'Muller2024Robust_WRN-28-10'
    >>> robustbench_name("Souvik Kundu, Mahdi Nazemi", 2021, "A Tunable Robust Pruning Framework")
    'Kundu2021Tunable'
    >>> robustbench_name("Seyed-Mohsen Moosavi-Dezfooli", 2019, "Robustness via Curvature Regularization")
    'Moosavi-Dezfooli2019Robustness'
    >>> robustbench_name("Jingfeng Zhang, Jianing Zhu", 2021, "Geometry-aware Instance-reweighted Training")
    'Zhang2021Geometry'
    """
    first_author = re.split(r",|;| and ", authors.strip())[0].strip()
    surname = _ascii_word(first_author.split()[-1], keep="-").strip("-") if first_author.split() else ""
    words = [_ascii_word(w.split("-")[0]) for w in paper_title.split() if _ascii_word(w)]
    words = [w for w in words if w]
    while len(words) > 1 and words[0].lower() in LEADING_ARTICLES:
        words = words[1:]
    word = words[0] if words else ""
    if not surname or not word:
        raise EntryError(f"cannot form a name from authors {authors!r} and title {paper_title!r}: need a first "
                         "author's surname and a title word in Latin letters; give a name explicitly")
    name = f"{surname[0].upper()}{surname[1:]}{year}{word[0].upper()}{word[1:]}"
    if suffix:
        name += "_" + check_name(suffix, "name suffix", EntryError, DIR_NAME_RE)
    return name


def venue_year(venue: str | None) -> int | None:
    m = re.search(r"\b(19|20)\d\d\b", venue or "")
    return int(m.group(0)) if m else None


def _default_name(defense: str, meta: EntryMetadata) -> str:
    if meta.name:
        return meta.name
    year = meta.year or venue_year(meta.venue)
    if meta.authors and meta.paper_title and year:
        return robustbench_name(meta.authors, year, meta.paper_title, meta.name_suffix)
    if NAME_RE.match(defense) and ".." not in defense:
        return defense
    cleaned = re.sub(r"[^A-Za-z0-9_.+-]", "_", defense).strip("._") or "defense"
    return cleaned[:128]


@dataclass(frozen=True)
class Entry:
    """One leaderboard row: protocol, results, checks, cost and provenance of a benchmark run."""

    name: str
    defense: str
    dataset: str
    split: str
    threat_model: str
    eps: float
    # protocol
    stochastic: bool
    adapts_at_test_time: bool
    batch_dependent: bool  # a prediction depends on the rest of its batch (so batch_size is part of the defense)
    gradient: str
    attacks: tuple[AttackSpec, ...]
    eot: int
    n_reeval: int
    cascade: bool
    seed: int
    n_examples: int
    batch_size: int | None  # examples per shard (the batch of a batch-dependent or adapting defense); None: schema 1
    # results (fractions with Wilson 95% intervals)
    clean: dict[str, AccuracyStat]
    robust: dict[str, AccuracyStat]
    per_attack: dict[str, dict[str, AccuracyStat]]
    checks: tuple[CheckResult, ...]
    unreliable: bool
    # cost
    forward_passes_per_prediction: int
    forward_nfe: int
    backward_nfe: int
    gpu_hours: float
    wall_seconds: float
    # provenance
    software: dict[str, str]
    config_hash: str
    weights_sha256: str | None
    created_utc: str
    # paper metadata (RobustBench's model_info fields)
    paper_title: str | None = None
    link: str | None = None
    authors: str | None = None
    venue: str | None = None
    architecture: str | None = None
    additional_data: bool | None = None
    reported: float | None = None
    footnote: str | None = None
    external: ExternalResult | None = None
    # identity (schema 3): what was evaluated, beyond its registry name
    defense_digest: str | None = None  # sha256 of the canonical JSON of the record's defense_config
    classifier: str | None = None  # the inner classifier of a defense (its registry or given name)
    score_model: str | None = None  # the diffusion model of a purification defense
    schema_version: int = ENTRY_SCHEMA_VERSION

    # ------------------------------------------------------------------------------------------ views
    @property
    def ranking_protocol(self) -> str:
        """worst-of-M for a stochastic defense (each x_adv re-classified M times), else the single draw."""
        return "worst_of_m" if self.stochastic else "single_draw"

    @property
    def robust_accuracy(self) -> AccuracyStat:
        return self.robust[self.ranking_protocol]

    @property
    def clean_accuracy(self) -> AccuracyStat:
        return self.clean[self.ranking_protocol]

    @property
    def board_accuracy(self) -> float:
        """What the board sorts by: our robust accuracy, or a stronger external result when lower."""
        v = self.robust_accuracy.value
        return min(v, self.external.robust_accuracy) if self.external is not None else v

    @property
    def attack_order(self) -> list[str]:
        return [a.name for a in self.attacks]

    def identity(self) -> str:
        """What makes two submissions the *same* entry (a resubmission updates it): the defense
        configuration digest (score model, classifier and weights included), threat model, eps and the
        protocol (dataset, split, sample size, attacks with their budgets, re-evaluations, cascade, and
        the batch size where predictions depend on it). Paper metadata, seed and results are not part
        of it. SHA-256 hex."""
        protocol = {"dataset": self.dataset, "split": self.split, "n_examples": self.n_examples,
                    "attacks": [dataclasses.asdict(a) for a in self.attacks], "n_reeval": self.n_reeval,
                    "cascade": self.cascade,
                    "batch_size": self.batch_size if self.batch_dependent or self.adapts_at_test_time else None}
        ident = {"defense": self.defense_digest or f"run:{self.config_hash}", "threat_model": self.threat_model,
                 "eps": self.eps, "protocol": protocol}
        return hashlib.sha256(canonical_json(ident).encode()).hexdigest()

    def ranking_problems(self, rules: Any = None) -> list:
        """Why the board does not rank this entry: :func:`robustkit.leaderboard.rules.ranking_problems`
        under ``rules`` (a :class:`~robustkit.leaderboard.rules.RankingRules`; default RobustBench's)."""
        from .rules import ROBUSTBENCH_RULES, ranking_problems

        return ranking_problems(self, rules or ROBUSTBENCH_RULES)

    def robustbench_violations(self) -> list[str]:
        """Why RobustBench would not list this defense (it admits only deterministic, static models)."""
        out = []
        if self.stochastic:
            out.append("randomized defense (RobustBench admits only deterministic models)")
        if self.adapts_at_test_time:
            out.append("test-time optimisation/adaptation (RobustBench admits only static models)")
        if self.batch_dependent:
            out.append("predictions depend on the batch (RobustBench classifies each example on its own)")
        return out

    # ------------------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["attacks"] = [dataclasses.asdict(a) for a in self.attacks]
        d["checks"] = [dataclasses.asdict(c) for c in self.checks]
        return d

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True, allow_nan=False)

    def content_hash(self) -> str:
        return hashlib.sha256(canonical_json(self.to_dict()).encode()).hexdigest()

    def save(self, path: str | Path) -> Path:
        from ..eval.runner import atomic_write_text

        return atomic_write_text(Path(path), self.to_json() + "\n")

    @classmethod
    def from_json(cls, text: str) -> "Entry":
        return cls.from_dict(loads_strict(text, "entry", EntryError))

    @classmethod
    def load(cls, path: str | Path) -> "Entry":
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise EntryError(f"entry file {path} cannot be read as UTF-8 text ({e})") from e
        return cls.from_json(text)

    @classmethod
    def from_dict(cls, d: Any, where: str = "entry") -> "Entry":
        """Strict parse: exact fields, types, ranges, internal consistency (raises :class:`EntryError`).
        A schema-1 entry is upgraded first (module docstring)."""
        if isinstance(d, dict) and d.get("schema_version") == 1 and not {"batch_dependent", "batch_size"} & set(d):
            d = {**d, "batch_dependent": False, "batch_size": None, "schema_version": 2}
        if isinstance(d, dict) and d.get("schema_version") == 2 and not set(_IDENTITY_FIELDS) & set(d):
            d = {**d, **dict.fromkeys(_IDENTITY_FIELDS), "schema_version": ENTRY_SCHEMA_VERSION}
        f = Fields(d, where, EntryError)
        names = {x.name for x in dataclasses.fields(cls)}
        f.exact_keys(names)
        version = f.int("schema_version", 0, 10**6)
        if version != ENTRY_SCHEMA_VERSION:
            raise EntryError(f"{where}.schema_version: {version} is not {ENTRY_SCHEMA_VERSION}; convert it with a "
                             "matching robustkit version")
        threat_model = f.str("threat_model", choices=THREAT_MODELS)
        eps = f.float("eps", 0.0, 1.0 if threat_model == "Linf" else 1e4)
        if eps <= 0:
            raise EntryError(f"{where}.eps: expected a positive budget, got {eps}")
        n_examples = f.int("n_examples", 1, MAX_EXAMPLES)
        attacks = tuple(_attack(a, f"{where}.attacks[{i}]") for i, a in enumerate(f.list("attacks", MAX_ATTACKS)))
        if not attacks:
            raise EntryError(f"{where}.attacks: at least one attack is required")
        order = [a.name for a in attacks]
        if len(set(order)) != len(order):
            raise EntryError(f"{where}.attacks: attack names must be distinct, got {order}")
        clean = _stats(f.obj("clean"), f"{where}.clean", n_examples)
        robust = _stats(f.obj("robust"), f"{where}.robust", n_examples)
        pa = f.obj("per_attack")
        if set(pa) != set(order):
            raise EntryError(f"{where}.per_attack: expected the attacks {order}, got {sorted(pa)}")
        per_attack = {name: _stats(pa[name], f"{where}.per_attack.{name}", n_examples) for name in order}
        checks = tuple(_check(c, f"{where}.checks[{i}]") for i, c in enumerate(f.list("checks", MAX_CHECKS)))
        unreliable = f.bool("unreliable")
        if unreliable != any(c.is_blocking_failure for c in checks):
            raise EntryError(f"{where}.unreliable: {unreliable} but a blocking check "
                             f"{'did not fail' if unreliable else 'failed'}; unreliable must be true exactly when "
                             "a blocking check failed")
        ext = f.obj("external", optional=True)
        weights = f.str("weights_sha256", optional=True)
        config_hash = f.str("config_hash")
        defense_digest = f.str("defense_digest", optional=True)
        for key, v in (("config_hash", config_hash), ("weights_sha256", weights), ("defense_digest", defense_digest)):
            if v is not None and not re.fullmatch(r"[0-9a-f]{64}", v):
                raise EntryError(f"{where}.{key}: expected 64 lowercase hex digits (sha256), got {v[:70]!r}")
        return cls(
            name=f.str("name", pattern=NAME_RE), defense=f.str("defense"),
            dataset=f.str("dataset", pattern=DIR_NAME_RE), split=f.str("split", pattern=DIR_NAME_RE),
            threat_model=threat_model, eps=eps, stochastic=f.bool("stochastic"),
            adapts_at_test_time=f.bool("adapts_at_test_time"), batch_dependent=f.bool("batch_dependent"),
            gradient=f.str("gradient", choices=GRADIENT_MODES),
            attacks=attacks, eot=f.int("eot", 1, 10**6), n_reeval=f.int("n_reeval", 1, MAX_REEVAL),
            cascade=f.bool("cascade"), seed=f.int("seed", -(2**63), 2**64 - 1), n_examples=n_examples,
            batch_size=f.int("batch_size", 1, MAX_EXAMPLES, optional=True),
            clean=clean, robust=robust, per_attack=per_attack, checks=checks, unreliable=unreliable,
            forward_passes_per_prediction=f.int("forward_passes_per_prediction", 1, 10**9),
            forward_nfe=f.int("forward_nfe", 0, 2**63 - 1), backward_nfe=f.int("backward_nfe", 0, 2**63 - 1),
            gpu_hours=f.float("gpu_hours", 0.0, 1e9), wall_seconds=f.float("wall_seconds", 0.0, 1e12),
            software=f.str_map("software"), config_hash=config_hash, weights_sha256=weights,
            created_utc=f.str("created_utc", max_len=64),
            paper_title=f.str("paper_title", max_len=MAX_TEXT, optional=True),
            link=f.str("link", max_len=MAX_TEXT, optional=True),
            authors=f.str("authors", max_len=MAX_TEXT, optional=True), venue=f.str("venue", optional=True),
            architecture=f.str("architecture", optional=True),
            additional_data=f.bool("additional_data", optional=True),
            reported=f.float("reported", 0.0, 1.0, optional=True),
            footnote=f.str("footnote", max_len=MAX_TEXT, optional=True),
            external=_external(ext, f"{where}.external") if ext is not None else None,
            defense_digest=defense_digest, classifier=f.str("classifier", optional=True),
            score_model=f.str("score_model", optional=True), schema_version=version)

    # --------------------------------------------------------------------------------- construction
    @classmethod
    def from_record(cls, record: BenchmarkRecord, metadata: EntryMetadata | None = None, *,
                    attack_order: Sequence[str] | None = None) -> "Entry":
        """The entry of ``record``; ``attack_order`` is the order the attacks ran in (default: the
        record's ``per_attack`` order, which is alphabetical once a record went through JSON; pass the
        manifest's order, as :meth:`from_run_dir` does, when the run cascades)."""
        meta = metadata or EntryMetadata()
        order = list(attack_order) if attack_order is not None else list(record.per_attack)
        if set(order) != set(record.per_attack) or len(order) != len(record.per_attack):
            raise EntryError(f"attack order {order} does not match the record's attacks {sorted(record.per_attack)}")
        protocols = {a.get("name", a.get("attack")): a for a in record.attacks}
        attacks = tuple(AttackSpec.from_protocol(n, protocols.get(n, {}), norm=record.threat_model, eps=record.eps)
                        for n in order)
        t, c = record.traits, record.cost
        entry = cls(
            name=_default_name(record.defense, meta), defense=record.defense, dataset=record.dataset,
            split=record.split, threat_model=record.threat_model, eps=float(record.eps),
            stochastic=bool(t.get("stochastic", False)), adapts_at_test_time=bool(t.get("adapts_at_test_time", False)),
            batch_dependent=bool(t.get("batch_dependent", False)),
            gradient=str(t.get("gradient", "exact")), attacks=attacks, eot=max(a.eot for a in attacks),
            n_reeval=record.n_reeval, cascade=record.cascade, seed=record.seed, n_examples=record.n_examples,
            batch_size=record.batch_size,
            clean=dict(record.clean), robust=dict(record.robust),
            per_attack={n: dict(record.per_attack[n]) for n in order}, checks=tuple(record.checks),
            unreliable=record.unreliable,
            forward_passes_per_prediction=int(c.get("forward_passes_per_prediction", t.get("forward_passes", 1))),
            forward_nfe=int(c.get("forward_nfe", 0)), backward_nfe=int(c.get("backward_nfe", 0)),
            gpu_hours=float(c.get("gpu_hours", 0.0)), wall_seconds=float(c.get("wall_seconds", 0.0)),
            software=dict(record.software), config_hash=record.config_hash,
            weights_sha256=record.defense_config.get("weights_sha256"), created_utc=record.created_utc,
            paper_title=meta.paper_title, link=meta.link, authors=meta.authors, venue=meta.venue,
            architecture=meta.architecture or _architecture(record), additional_data=meta.additional_data,
            reported=meta.reported, footnote=meta.footnote, external=meta.external,
            defense_digest=hashlib.sha256(canonical_json(record.defense_config).encode()).hexdigest(),
            classifier=_config_name(record, "classifier"), score_model=_config_name(record, "score_model"))
        return cls.from_dict(entry.to_dict())  # one validation path for every entry

    @classmethod
    def from_run_dir(cls, path: str | Path, metadata: EntryMetadata | None = None) -> "Entry":
        """The entry of a finished run directory, after checking that ``record.json`` agrees with the
        per-example records in ``shards/`` (a hand-edited record is refused with :class:`EntryError`)."""
        entry, _ = load_run_entry(path, metadata)
        return entry


_IDENTITY_FIELDS = ("defense_digest", "classifier", "score_model")


def _config_name(record: BenchmarkRecord, key: str) -> str | None:
    cfg = record.defense_config.get("config")
    v = cfg.get(key) if isinstance(cfg, dict) else None
    return v[:MAX_SHORT] if isinstance(v, str) and v else None


def _architecture(record: BenchmarkRecord) -> str | None:
    """The classifier's architecture: the config's own, else (for a defense) its inner classifier's
    registered architecture, else that classifier's name."""
    cfg = record.defense_config.get("config")
    arch = cfg.get("architecture") if isinstance(cfg, dict) else None
    if isinstance(arch, str) and arch:
        return arch[:MAX_SHORT]
    inner = _config_name(record, "classifier")
    if inner is None:
        return None
    from ..errors import RegistryError
    from ..registry import classifier_config

    try:
        return classifier_config(inner).architecture[:MAX_SHORT]
    except RegistryError:
        return inner


def load_run_entry(path: str | Path, metadata: EntryMetadata | None = None) -> tuple[Entry, list[dict[str, Any]]]:
    """``(entry, per-example records)`` of a finished run directory, cross-checked (see :meth:`Entry.from_run_dir`)."""
    path = Path(path)
    try:
        manifest, raw_examples = load_run_examples(path)
    except ExamplesError as e:
        raise EntryError(str(e)) from e
    record_file = path / "record.json"
    if not record_file.is_file():
        raise EntryError(f"{path}: no record.json: the run is not finished (re-run robustkit bench with the same "
                         "--run-dir to resume)")
    try:
        record = BenchmarkRecord.load(record_file)
    except RecordError as e:  # its message names the file and the field
        raise EntryError(str(e)) from e
    order = manifest["config"]["attacks"]
    if not isinstance(order, list) or set(order) != set(record.per_attack):
        raise EntryError(f"{path}: the manifest's attacks {order} do not match record.json's "
                         f"{sorted(record.per_attack)}")
    if manifest.get("config_hash") != record.config_hash:
        raise EntryError(f"{path}: record.json's config_hash differs from the manifest's; the record belongs to "
                         "another run")
    entry = Entry.from_record(record, metadata, attack_order=order)
    examples = verify_examples(entry, raw_examples)
    return entry, examples


def verify_examples(entry: Entry, examples: Any) -> list[dict[str, Any]]:
    """Validate per-example records against ``entry`` and check every aggregate; returns them normalised.

    Raises :class:`EntryError` listing each disagreement (claimed vs recomputed).
    """
    try:
        examples = validate_examples(examples, entry.attack_order, n_reeval=entry.n_reeval, eps=entry.eps,
                                     cascade=entry.cascade, n_examples=entry.n_examples)
    except ExamplesError as e:
        raise EntryError(str(e)) from e
    agg = aggregate_examples(examples, entry.attack_order, cascade=entry.cascade, n_reeval=entry.n_reeval,
                             eps=entry.eps)
    problems = compare_stats(entry.clean, agg.clean, "clean") + compare_stats(entry.robust, agg.robust, "robust")
    for name in entry.attack_order:
        problems += compare_stats(entry.per_attack[name], agg.per_attack[name], f"per_attack.{name}")
    validity = [c for c in entry.checks if c.name == "adversarial_validity"]
    if agg.n_invalid and not any(c.status == "fail" and c.blocking for c in validity):
        problems.append(f"{agg.n_invalid} adversarial example(s) are marked invalid but no blocking "
                        "adversarial_validity check failed")
    if not agg.n_invalid and any(c.status == "fail" for c in validity):
        problems.append("the adversarial_validity check failed but every adversarial example is marked valid")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise EntryError(f"aggregates disagree with the per-example records: {shown}")
    return examples


def _stats(d: Any, where: str, n_examples: int) -> dict[str, AccuracyStat]:
    # the record's strict reader: exact protocols, n == n_examples, value and Wilson interval recomputed
    return parse_accuracy_stats(d, where, n_examples, EntryError, MAX_EXAMPLES)


def _check(d: Any, where: str) -> CheckResult:
    f = Fields(d, where, EntryError)
    f.exact_keys({"name", "status", "message", "blocking", "details"})
    details = f.obj("details")
    try:
        text = json.dumps(details, allow_nan=False)
    except (ValueError, TypeError) as e:
        raise EntryError(f"{where}.details: not plain JSON without NaN or infinity ({e})") from e
    if len(text) > 16_000:
        raise EntryError(f"{where}.details: larger than 16,000 characters of JSON")
    return CheckResult(name=f.str("name", pattern=NAME_RE), status=f.str("status", choices=CHECK_STATUSES),
                       message=f.str("message", max_len=MAX_TEXT), blocking=f.bool("blocking"), details=details)


def _attack(d: Any, where: str) -> AttackSpec:
    f = Fields(d, where, EntryError)
    f.exact_keys({"name", "norm", "eps", "steps", "eot", "options"})
    options = f.obj("options")
    if len(options) > MAX_ATTACK_OPTIONS:
        raise EntryError(f"{where}.options: more than {MAX_ATTACK_OPTIONS} settings")
    of = Fields(options, f"{where}.options", EntryError)
    for k, v in options.items():
        if len(k) > MAX_SHORT:
            raise EntryError(f"{where}.options: a key is longer than {MAX_SHORT} characters")
        items = v if isinstance(v, list) else [v]
        if isinstance(v, list) and len(v) > MAX_OPTION_LIST:
            raise EntryError(f"{where}.options.{k}: more than {MAX_OPTION_LIST} items")
        for x in items:
            if isinstance(x, str):
                Fields({k: x}, f"{where}.options", EntryError).str(k)
            elif isinstance(x, float):
                Fields({k: x}, f"{where}.options", EntryError).float(k, -math.inf, math.inf)
            elif not (x is None or isinstance(x, (bool, int))):
                raise of.fail(k, "a string, number, boolean, null or an array of those", v)
    return AttackSpec(name=f.str("name", pattern=ATTACK_NAME_RE), norm=f.str("norm", choices=THREAT_MODELS),
                      eps=f.float("eps", 0.0, 1e4), steps=f.int("steps", 0, 10**7, optional=True),
                      eot=f.int("eot", 1, 10**6), options=dict(options))
