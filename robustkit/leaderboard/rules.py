"""What makes results comparable, and which of them a board ranks: one function, shared by the server,
the static site and the RobustBench exporter.

A **board** holds the results of one ``(dataset, threat model, eps)``: robust accuracies at other budgets
are not comparable, so they never share a ranking (:func:`board_key`).

An entry is **ranked** on its board only when :func:`ranking_problems` returns nothing. The rules are
RobustBench's (Croce et al., "RobustBench: a standardized adversarial robustness benchmark", NeurIPS
2021 Datasets and Benchmarks; leaderboard rules at robustbench.github.io), made explicit:

1. **Sample**: the full test split (:data:`TEST_SET_SIZES`), or a subset the benchmark itself declares
   standard (:data:`STANDARD_SUBSETS`: RobustBench's 5,000 ImageNet validation images).
2. **Attack budget**: AutoAttack at its full budget — version ``standard`` (APGD-CE, APGD-T, FAB-T,
   Square) or ``rand`` (APGD-CE and APGD-DLR with EOT) with at least 100 APGD steps, 9 target classes,
   100 FAB steps, 5,000 Square queries and 20 EOT samples for ``rand`` (pyautoattack's defaults) — or,
   for a defense AutoAttack cannot attack faithfully (stochastic, non-exact gradient, or adapting at
   test time), a stronger adaptive protocol: PGD-EOT or BPDA+EOT with at least 200 steps and 20 EOT
   samples (Lee & Kim, "Robust evaluation of diffusion-based adversarial purification", ICCV 2023).
   A stochastic defense must also be re-classified at least twice (worst-of-M, M >= 2).
3. **Sanity checks**: run (an entry without checks was made with ``--no-checks``), and none failed.

Everything else is listed below the ranking with the reasons (:class:`Problem`, whose ``code`` is one
of :data:`PROBLEM_CODES`).

Example::

    >>> from robustkit.leaderboard.rules import full_autoattack
    >>> from robustkit.leaderboard import AttackSpec
    >>> full_autoattack(AttackSpec("autoattack", "Linf", 8 / 255, steps=10, options={"version": "standard"}))
    ['AutoAttack with 10 APGD steps (full budget: 100)']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .entry import AttackSpec, Entry

# images in each dataset's test split (robustkit.data); the full split is always a standard sample
TEST_SET_SIZES = {"cifar10": 10_000, "cifar100": 10_000, "digits": 360, "imagenet": 50_000}
# subsets a benchmark declares standard: RobustBench evaluates ImageNet on 5,000 validation images
STANDARD_SUBSETS = {"imagenet": (5_000,)}
# AutoAttack's full budget (pyautoattack's defaults for version "standard" / "rand")
AA_STEPS, AA_TARGET_CLASSES, AA_FAB_STEPS, AA_SQUARE_QUERIES, AA_RAND_EOT = 100, 9, 100, 5000, 20
AA_STANDARD_SUBS = ("apgd-ce", "apgd-t", "fab-t", "square")
AA_RAND_SUBS = ("apgd-ce", "apgd-dlr")
# the adaptive protocol of Lee & Kim (ICCV 2023) for stochastic / non-differentiable defenses
ADAPTIVE_ATTACKS = ("pgd-eot", "bpda-eot")
ADAPTIVE_STEPS, ADAPTIVE_EOT = 200, 20
MIN_REEVAL_STOCHASTIC = 2

PROBLEM_CODES = ("sample", "budget", "reeval", "checks_skipped", "checks_failed")


@dataclass(frozen=True)
class Problem:
    """Why an entry is not ranked: ``code`` (one of :data:`PROBLEM_CODES`) and a sentence."""

    code: str
    message: str

    def __str__(self) -> str:
        return self.message


def board_key(dataset: str, threat_model: str, eps: float) -> tuple[str, str, str]:
    """The board an entry belongs to; eps is compared as RobustBench writes it (``"8/255"``)."""
    from .robustbench import eps_string

    return dataset, threat_model, eps_string(eps, threat_model)


def full_autoattack(a: "AttackSpec") -> list[str]:
    """Why ``a`` is not AutoAttack at its full budget (empty: it is). Only ``autoattack`` attacks qualify."""
    if a.name != "autoattack":
        return [f"{a.name} is not AutoAttack"]
    o = a.options
    version = o.get("version")
    if version not in ("standard", "rand"):
        return [f"AutoAttack version {version!r} (full budget: 'standard', or 'rand' for randomized defenses)"]
    out = []
    subs = o.get("sub_attacks")
    want = AA_STANDARD_SUBS if version == "standard" else AA_RAND_SUBS
    if isinstance(subs, list) and not set(want) <= set(subs):
        out.append(f"AutoAttack without {', '.join(sorted(set(want) - set(subs)))}")
    if a.steps is None or a.steps < AA_STEPS:
        out.append(f"AutoAttack with {a.steps} APGD steps (full budget: {AA_STEPS})")
    if version == "standard":
        for key, need, what in (("target_classes", AA_TARGET_CLASSES, "target classes"),
                                ("fab_steps", AA_FAB_STEPS, "FAB steps"),
                                ("square_queries", AA_SQUARE_QUERIES, "Square queries")):
            v = o.get(key)
            if not isinstance(v, int) or v < need:
                out.append(f"AutoAttack with {v} {what} (full budget: {need})")
    elif a.eot < AA_RAND_EOT:
        out.append(f"AutoAttack-rand with EOT {a.eot} (full budget: {AA_RAND_EOT})")
    return out


def adaptive_enough(a: "AttackSpec") -> list[str]:
    """Why ``a`` is not the adaptive protocol at its budget (empty: it is)."""
    if a.name not in ADAPTIVE_ATTACKS:
        return [f"{a.name} is not an adaptive EOT attack ({', '.join(ADAPTIVE_ATTACKS)})"]
    out = []
    if a.steps is None or a.steps < ADAPTIVE_STEPS:
        out.append(f"{a.name} with {a.steps} steps (adaptive budget: {ADAPTIVE_STEPS})")
    if a.eot < ADAPTIVE_EOT:
        out.append(f"{a.name} with EOT {a.eot} (adaptive budget: {ADAPTIVE_EOT})")
    return out


def ranking_problems(entry: "Entry") -> list[Problem]:
    """Why ``entry`` may not be ranked on its board (empty: it is ranked). See the module docstring."""
    out = []
    full = TEST_SET_SIZES.get(entry.dataset)
    standard = STANDARD_SUBSETS.get(entry.dataset, ())
    if entry.split != "test" or full is None or (entry.n_examples != full and entry.n_examples not in standard):
        what = (f"the full {entry.dataset} test set ({full:,})" if full is not None and entry.split == "test"
                else f"a {entry.dataset} test split of known size")
        out.append(Problem("sample", f"n = {entry.n_examples:,} of the {entry.split} split, not {what}"
                                     + (f" or a standard subset ({', '.join(f'{n:,}' for n in standard)})"
                                        if standard else "")))
    adaptive_needed = entry.stochastic or entry.gradient != "exact" or entry.adapts_at_test_time
    reasons: list[str] = []
    for a in entry.attacks:
        aa = full_autoattack(a)
        if not aa:
            break
        adapt = adaptive_enough(a) if adaptive_needed else ["AutoAttack is faithful here"]
        if not adapt:
            break
        if a.name == "autoattack":
            reasons += aa
        elif adaptive_needed and a.name in ADAPTIVE_ATTACKS:
            reasons += adapt
    else:
        budget = "; ".join(reasons) if reasons else (
            "no AutoAttack at full budget" + (f" nor {'/'.join(ADAPTIVE_ATTACKS)} with >= {ADAPTIVE_STEPS} steps "
                                              f"and EOT >= {ADAPTIVE_EOT}" if adaptive_needed else "")
            + f" among {', '.join(a.name for a in entry.attacks)}")
        out.append(Problem("budget", f"reduced attack budget: {budget}"))
    if entry.stochastic and entry.n_reeval < MIN_REEVAL_STOCHASTIC:
        out.append(Problem("reeval", f"stochastic defense re-classified {entry.n_reeval} time(s); worst-of-M "
                                     f"needs M >= {MIN_REEVAL_STOCHASTIC}"))
    if not entry.checks:
        out.append(Problem("checks_skipped", "sanity checks skipped (--no-checks)"))
    failed = [c.name for c in entry.checks if c.status == "fail"]
    if failed:
        out.append(Problem("checks_failed", f"sanity check(s) failed: {', '.join(failed)}"))
    return out
