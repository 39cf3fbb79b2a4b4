"""Per-example records of a run: strict validation, aggregates recomputed from them, and a summary.

A per-example record is one line of a run directory's ``shards/shard_NNNNN.jsonl``::

    {"index": 3, "label": 5, "clean": [true, false, ...],            # one flag per re-evaluation
     "attacks": {"pgd": {"correct": [...], "distance": 0.031, "valid": true},
                 "apgd-ce": null}}                                   # null: skipped by the cascade

Everything a leaderboard shows (clean / robust accuracy under single-draw, majority and worst-of-M,
per attack) is a function of these records; :func:`aggregate_examples` computes it exactly as
:func:`robustkit.benchmark` does, so a server can recompute and compare instead of trusting a
submitter's numbers.

Example::

    >>> from robustkit.leaderboard.examples import aggregate_examples
    >>> ex = [{"index": 0, "label": 1, "clean": [True], "attacks": {"pgd": {"correct": [False], "distance": 0.1,
    ...        "valid": True}}}, {"index": 1, "label": 2, "clean": [False], "attacks": {"pgd": None}}]
    >>> agg = aggregate_examples(ex, ["pgd"], cascade=True, n_reeval=1, eps=0.1)
    >>> agg.clean["worst_of_m"].correct, agg.robust["worst_of_m"].correct, agg.n_invalid
    (1, 0, 0)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from ..errors import RobustkitError
from ..eval.record import PROTOCOLS, AccuracyStat
from ..eval.schema import Fields

MAX_EXAMPLES = 200_000
MAX_REEVAL = 1000
MAX_LABEL = 1_000_000
MAX_INDEX = 2**31 - 1
# benchmark() marks an adversarial example valid when its distance is within eps up to float rounding
DISTANCE_RTOL, DISTANCE_ATOL = 1e-5, 1e-7


class ExamplesError(RobustkitError, ValueError):
    """Per-example records are malformed or inconsistent with the entry they come with."""


def protocol_flag(draws: Sequence[bool], protocol: str) -> bool:
    """Correct under ``protocol`` given the re-evaluation draws (first draw / majority / all)."""
    if protocol == "single_draw":
        return bool(draws[0])
    if protocol == "majority":
        return sum(bool(d) for d in draws) * 2 > len(draws)
    if protocol == "worst_of_m":
        return all(draws)
    raise ExamplesError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")


def within_budget(distance: float, eps: float) -> bool:
    return distance <= eps * (1 + DISTANCE_RTOL) + DISTANCE_ATOL


def _draws(v: Any, where: str, n_reeval: int) -> list[bool]:
    if not isinstance(v, list) or len(v) != n_reeval or not all(isinstance(b, bool) for b in v):
        raise ExamplesError(f"{where}: expected an array of {n_reeval} booleans (one per re-evaluation), "
                            f"got {json.dumps(v)[:80]}")
    return v


def validate_examples(examples: Any, attack_order: Sequence[str], *, n_reeval: int, eps: float, cascade: bool,
                      n_examples: int | None = None) -> list[dict[str, Any]]:
    """Check per-example records against the entry's protocol; returns them sorted by index, normalised.

    Raises :class:`ExamplesError` naming the first offending example and field. Beyond types it
    enforces the protocol: one flag per re-evaluation, exactly the entry's attacks, distances that a
    ``valid`` flag claims to be within eps really are, and ``null`` (skipped) only for an example the
    cascade had already broken under every protocol; without the cascade nothing may be skipped.
    """
    if not isinstance(examples, list):
        raise ExamplesError(f"examples: expected an array, got {type(examples).__name__}")
    if not examples:
        raise ExamplesError("examples: no per-example records")
    if len(examples) > MAX_EXAMPLES:
        raise ExamplesError(f"examples: more than {MAX_EXAMPLES} records ({len(examples)})")
    if n_examples is not None and len(examples) != n_examples:
        raise ExamplesError(f"examples: {len(examples)} records but the entry says n_examples={n_examples}")
    names = list(attack_order)
    out, seen = [], set()
    for i, raw in enumerate(examples):
        where = f"examples[{i}]"
        f = Fields(raw, where, ExamplesError)
        f.exact_keys({"index", "label", "clean", "attacks"})
        index = f.int("index", 0, MAX_INDEX)
        if index in seen:
            raise ExamplesError(f"{where}.index: example index {index} appears twice")
        seen.add(index)
        label = f.int("label", 0, MAX_LABEL)
        clean = _draws(raw["clean"], f"{where}.clean", n_reeval)
        attacks = f.obj("attacks")
        if set(attacks) != set(names):
            raise ExamplesError(f"{where}.attacks: expected exactly the attacks {sorted(names)}, got {sorted(attacks)}")
        # benchmark()'s cascade: an example stays attacked while some protocol keeps it correct for every
        # attack so far (checked attack by attack); only a dead example may be skipped (null).
        alive = any(protocol_flag(clean, p) for p in PROTOCOLS)
        norm_attacks: dict[str, Any] = {}
        for name in names:
            a = attacks[name]
            aw = f"{where}.attacks.{name}"
            if a is None:
                if not cascade:
                    raise ExamplesError(f"{aw}: null (skipped) but the run does not cascade; every attack must "
                                        "run on every example")
                if alive:
                    raise ExamplesError(f"{aw}: null (skipped) although the example was not yet broken under "
                                        "every protocol; the cascade may only skip broken examples")
                norm_attacks[name] = None
                continue
            af = Fields(a, aw, ExamplesError)
            af.exact_keys({"correct", "distance", "valid"})
            correct = _draws(a["correct"], f"{aw}.correct", n_reeval)
            distance = af.float("distance", 0.0, math.inf)
            valid = af.bool("valid")
            if valid and not within_budget(distance, eps):
                raise ExamplesError(f"{aw}: marked valid but its distance {distance:.6g} exceeds eps {eps:.6g}")
            alive = alive and any(protocol_flag(clean, p) and protocol_flag(correct, p) for p in PROTOCOLS)
            norm_attacks[name] = {"correct": list(correct), "distance": distance, "valid": valid}
        out.append({"index": index, "label": label, "clean": list(clean), "attacks": norm_attacks})
    out.sort(key=lambda r: r["index"])
    return out


@dataclass(frozen=True)
class Aggregates:
    """What :func:`aggregate_examples` recomputes: accuracies per protocol and the invalid-example count."""

    clean: dict[str, AccuracyStat]
    robust: dict[str, AccuracyStat]
    per_attack: dict[str, dict[str, AccuracyStat]]
    n_invalid: int


def aggregate_examples(examples: Sequence[dict[str, Any]], attack_order: Sequence[str], *, cascade: bool,
                       n_reeval: int, eps: float) -> Aggregates:
    """Recompute clean, robust and per-attack accuracies from (validated) per-example records.

    Same definitions as :func:`robustkit.benchmark`: a skipped attack (``null``) counts as correct; robust
    accuracy is cumulative over all attacks; per-attack accuracy is cumulative with the cascade and
    ``clean & attack`` without it.
    """
    del n_reeval, eps  # the draws carry M; validity is the recorded flag (checked by validate_examples)
    clean = {p: [protocol_flag(r["clean"], p) for r in examples] for p in PROTOCOLS}
    cumulative = {p: list(v) for p, v in clean.items()}
    per_attack: dict[str, dict[str, AccuracyStat]] = {}
    n_invalid = 0
    for name in attack_order:
        stats = {}
        for p in PROTOCOLS:
            adv = [True if r["attacks"][name] is None else protocol_flag(r["attacks"][name]["correct"], p)
                   for r in examples]
            cumulative[p] = [c and a for c, a in zip(cumulative[p], adv)]
            src = cumulative[p] if cascade else [c and a for c, a in zip(clean[p], adv)]
            stats[p] = AccuracyStat.from_flags(torch.tensor(src, dtype=torch.bool))
        per_attack[name] = stats
        n_invalid += sum(1 for r in examples if r["attacks"][name] is not None and not r["attacks"][name]["valid"])
    return Aggregates(clean={p: AccuracyStat.from_flags(torch.tensor(clean[p], dtype=torch.bool)) for p in PROTOCOLS},
                      robust={p: AccuracyStat.from_flags(torch.tensor(cumulative[p], dtype=torch.bool))
                              for p in PROTOCOLS},
                      per_attack=per_attack, n_invalid=n_invalid)


def same_stat(a: AccuracyStat, b: AccuracyStat, tol: float = 1e-9) -> bool:
    return (a.correct == b.correct and a.n == b.n and abs(a.value - b.value) <= tol
            and abs(a.ci_low - b.ci_low) <= tol and abs(a.ci_high - b.ci_high) <= tol
            and abs(a.confidence - b.confidence) <= tol)


def compare_stats(claimed: dict[str, AccuracyStat], computed: dict[str, AccuracyStat], where: str) -> list[str]:
    """Human-readable disagreements between claimed and recomputed statistics (empty when equal)."""
    out = []
    for p in PROTOCOLS:
        a, b = claimed.get(p), computed[p]
        if a is None:
            out.append(f"{where}.{p}: missing")
        elif not same_stat(a, b):
            out.append(f"{where}.{p}: claimed {a.correct}/{a.n} ({a.value:.6g}, CI {a.ci_low:.6g}-{a.ci_high:.6g}), "
                       f"the per-example records give {b.correct}/{b.n} ({b.value:.6g}, CI "
                       f"{b.ci_low:.6g}-{b.ci_high:.6g})")
    return out


def summarize_examples(examples: Sequence[dict[str, Any]], attack_order: Sequence[str], *,
                       eps: float) -> dict[str, Any]:
    """A compact per-example summary for an entry page: outcomes, first breaking attack, distances.

    ``outcomes`` counts examples (under worst-of-M) as misclassified clean, broken first by each attack,
    or robust; ``unstable_clean`` counts examples whose clean re-evaluations disagree (a stochastic
    defense's coin flips); per attack: examples attacked, broken (worst-of-M), invalid, distance stats.
    """
    outcomes: dict[str, int] = {"misclassified_clean": 0, "robust": 0}
    outcomes.update({f"broken_by:{n}": 0 for n in attack_order})
    per_attack: dict[str, dict[str, Any]] = {}
    for name in attack_order:
        ran = [r["attacks"][name] for r in examples if r["attacks"][name] is not None]
        dists = [a["distance"] for a in ran]
        per_attack[name] = {"attacked": len(ran), "broken_worst_of_m": sum(1 for a in ran if not all(a["correct"])),
                            "invalid": sum(1 for a in ran if not a["valid"]),
                            "over_budget": sum(1 for d in dists if not within_budget(d, eps)),
                            "max_distance": max(dists) if dists else None,
                            "mean_distance": sum(dists) / len(dists) if dists else None}
    unstable = 0
    for r in examples:
        if len(set(r["clean"])) > 1:
            unstable += 1
        if not all(r["clean"]):
            outcomes["misclassified_clean"] += 1
            continue
        first = next((n for n in attack_order if r["attacks"][n] is not None and not all(r["attacks"][n]["correct"])),
                     None)
        outcomes["robust" if first is None else f"broken_by:{first}"] += 1
    return {"n_examples": len(examples), "protocol": "worst_of_m", "outcomes": outcomes,
            "unstable_clean": unstable, "per_attack": per_attack}


def load_run_examples(run_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(manifest, per-example records sorted by index)`` of a finished run directory.

    Raises :class:`ExamplesError` when the manifest is missing or unreadable or a shard is missing.
    """
    path = Path(run_dir)
    manifest_file = path / "manifest.json"
    if not path.is_dir():
        raise ExamplesError(f"{path} is not a directory; expected a robustkit run directory")
    if not manifest_file.is_file():
        raise ExamplesError(f"{path} has no manifest.json; not a robustkit run directory")
    try:
        manifest = json.loads(manifest_file.read_text())
        shards = [(int(a), int(b)) for a, b in manifest["shards"]]
        manifest["config"]["attacks"]  # noqa: B018 - presence check
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ExamplesError(f"{manifest_file} is not a valid run manifest ({type(e).__name__}: {e})") from e
    records: list[dict[str, Any]] = []
    for i, (start, stop) in enumerate(shards):
        f = path / "shards" / f"shard_{i:05d}.jsonl"
        if not f.is_file():
            raise ExamplesError(f"{f} is missing: the run is not finished (re-run robustkit bench with the same "
                                "--run-dir to resume)")
        try:
            lines = [json.loads(s) for s in f.read_text().splitlines() if s.strip()]
        except json.JSONDecodeError as e:
            raise ExamplesError(f"{f} is not valid JSON lines ({e})") from e
        if len(lines) != stop - start:
            raise ExamplesError(f"{f} has {len(lines)} examples, the manifest says {stop - start}")
        records.extend(lines)
    records.sort(key=lambda r: r.get("index", -1) if isinstance(r, dict) else -1)
    return manifest, records
