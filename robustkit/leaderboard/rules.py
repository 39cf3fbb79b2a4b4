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
3. **Sanity checks**: run (an entry whose only check is ``adversarial_validity``, which every run
   gets, was made with ``--no-checks``), and none failed.

Everything else is listed below the ranking with the reasons (:class:`Problem`, whose ``code`` is one
of :data:`PROBLEM_CODES`).

Example::

    >>> from robustkit.leaderboard.rules import full_autoattack
    >>> from robustkit.leaderboard import AttackSpec
    >>> full = {"version": "standard", "target_classes": 9, "fab_steps": 100, "square_queries": 5000}
    >>> full_autoattack(AttackSpec("autoattack-standard", "Linf", 8 / 255, steps=100, options=full))
    []
    >>> full_autoattack(AttackSpec("autoattack-standard", "Linf", 8 / 255, steps=10, options=full))
    ['AutoAttack with 10 APGD steps (full budget: 100)']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    from .entry import AttackSpec, Entry

# images in each dataset's test split (robustkit.data); the full split is always a standard sample
TEST_SET_SIZES = {"cifar10": 10_000, "cifar100": 10_000, "digits": 360, "imagenet": 50_000}
# subsets a benchmark declares standard: RobustBench evaluates ImageNet on 5,000 validation images
STANDARD_SUBSETS = {"imagenet": (5_000,)}
AA_STANDARD_SUBS = ("apgd-ce", "apgd-t", "fab-t", "square")
AA_RAND_SUBS = ("apgd-ce", "apgd-dlr")


@dataclass(frozen=True)
class RankingRules:
    """The numbers behind :func:`ranking_problems`; the defaults are RobustBench's (module docstring).

    Attributes:
        test_set_sizes: images in each dataset's test split (a run of all of them is a standard sample).
        standard_subsets: other sample sizes a benchmark declares standard, per dataset.
        aa_steps, aa_target_classes, aa_fab_steps, aa_square_queries, aa_rand_eot: AutoAttack's full
            budget (pyautoattack's defaults: 100, 9, 100, 5,000, 20).
        adaptive_attacks, adaptive_steps, adaptive_eot: the adaptive protocol that replaces AutoAttack
            for stochastic, non-differentiable or test-time-adapting defenses (Lee & Kim: PGD-EOT, 200
            steps, EOT 20).
        adaptive_always: accept the adaptive protocol for every defense (RobustBench: no; a board of
            tiny models may say yes).
        min_reeval_stochastic: re-classifications (M of worst-of-M) a stochastic defense needs.
    """

    test_set_sizes: Mapping[str, int] = field(default_factory=lambda: dict(TEST_SET_SIZES))
    standard_subsets: Mapping[str, tuple[int, ...]] = field(default_factory=lambda: dict(STANDARD_SUBSETS))
    aa_steps: int = 100
    aa_target_classes: int = 9
    aa_fab_steps: int = 100
    aa_square_queries: int = 5000
    aa_rand_eot: int = 20
    adaptive_attacks: tuple[str, ...] = ("pgd-eot", "bpda-eot")
    adaptive_steps: int = 200
    adaptive_eot: int = 20
    adaptive_always: bool = False
    min_reeval_stochastic: int = 2


ROBUSTBENCH_RULES = RankingRules()

# checks the harness runs on every result, --no-checks or not; the sanity checks are all the others
ALWAYS_RUN_CHECKS = ("adversarial_validity",)
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


def full_autoattack(a: "AttackSpec", rules: RankingRules = ROBUSTBENCH_RULES) -> list[str]:
    """Why ``a`` is not AutoAttack at its full budget (empty: it is). Only AutoAttack (``autoattack-standard`` / ``-rand`` / ``-custom``) qualifies."""
    if not a.name.startswith("autoattack"):
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
    if a.steps is None or a.steps < rules.aa_steps:
        out.append(f"AutoAttack with {a.steps} APGD steps (full budget: {rules.aa_steps})")
    if version == "standard":
        for key, need, what in (("target_classes", rules.aa_target_classes, "target classes"),
                                ("fab_steps", rules.aa_fab_steps, "FAB steps"),
                                ("square_queries", rules.aa_square_queries, "Square queries")):
            v = o.get(key)
            if not isinstance(v, int) or v < need:
                out.append(f"AutoAttack with {v} {what} (full budget: {need})")
    elif a.eot < rules.aa_rand_eot:
        out.append(f"AutoAttack-rand with EOT {a.eot} (full budget: {rules.aa_rand_eot})")
    return out


def adaptive_enough(a: "AttackSpec", rules: RankingRules = ROBUSTBENCH_RULES) -> list[str]:
    """Why ``a`` is not the adaptive protocol at its budget (empty: it is)."""
    if a.name not in rules.adaptive_attacks:
        return [f"{a.name} is not an adaptive EOT attack ({', '.join(rules.adaptive_attacks)})"]
    out = []
    if a.steps is None or a.steps < rules.adaptive_steps:
        out.append(f"{a.name} with {a.steps} steps (adaptive budget: {rules.adaptive_steps})")
    if a.eot < rules.adaptive_eot:
        out.append(f"{a.name} with EOT {a.eot} (adaptive budget: {rules.adaptive_eot})")
    return out


def ranking_problems(entry: "Entry", rules: RankingRules = ROBUSTBENCH_RULES) -> list[Problem]:
    """Why ``entry`` may not be ranked on its board (empty: it is ranked). See the module docstring.

    The server, the static site and ``robustkit export robustbench`` all decide with this function."""
    out = []
    full = rules.test_set_sizes.get(entry.dataset)
    standard = tuple(rules.standard_subsets.get(entry.dataset, ()))
    if entry.split != "test" or full is None or (entry.n_examples != full and entry.n_examples not in standard):
        what = (f"the full {entry.dataset} test set ({full:,})" if full is not None and entry.split == "test"
                else f"a {entry.dataset} test split of known size")
        out.append(Problem("sample", f"n = {entry.n_examples:,} of the {entry.split} split, not {what}"
                                     + (f" or a standard subset ({', '.join(f'{n:,}' for n in standard)})"
                                        if standard else "")))
    adaptive_ok = rules.adaptive_always or entry.stochastic or entry.gradient != "exact" or entry.adapts_at_test_time
    reasons: list[str] = []
    for a in entry.attacks:
        aa = full_autoattack(a, rules)
        adapt = adaptive_enough(a, rules) if adaptive_ok else ["not accepted for this defense"]
        if not aa or not adapt:
            break
        if a.name.startswith("autoattack"):
            reasons += aa
        elif adaptive_ok and a.name in rules.adaptive_attacks:
            reasons += adapt
    else:
        alt = (f" nor {'/'.join(rules.adaptive_attacks)} with >= {rules.adaptive_steps} steps and EOT >= "
               f"{rules.adaptive_eot}") if adaptive_ok else ""
        budget = "; ".join(reasons) if reasons else (
            f"no AutoAttack at full budget{alt} (attacks: {', '.join(a.describe() for a in entry.attacks)})")
        out.append(Problem("budget", f"reduced attack budget: {budget}"))
    if entry.stochastic and entry.n_reeval < rules.min_reeval_stochastic:
        out.append(Problem("reeval", f"stochastic defense re-classified {entry.n_reeval} time(s); worst-of-M "
                                     f"needs M >= {rules.min_reeval_stochastic}"))
    if not any(c.name not in ALWAYS_RUN_CHECKS for c in entry.checks):
        out.append(Problem("checks_skipped", "sanity checks skipped (--no-checks)"))
    failed = [c.name for c in entry.checks if c.status == "fail"]
    if failed:
        out.append(Problem("checks_failed", f"sanity check(s) failed: {', '.join(failed)}"))
    return out
