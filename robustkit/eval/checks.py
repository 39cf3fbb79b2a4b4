"""Sanity checks against gradient obfuscation and mis-declared defenses, on a small probe set.

Each check returns a :class:`~robustkit.eval.record.CheckResult` (pass / warn / fail) whose message says
what was seen and what it implies; a *blocking* failure makes the benchmark record ``unreliable``. The
list follows Carlini et al. 2019 ("On Evaluating Adversarial Robustness"), Tramèr et al. NeurIPS 2020
and Pintor et al. NeurIPS 2022 ("Indicators of Attack Failure"):

=========================  ===================================================================  ========
check                      what it looks at                                                       blocking
=========================  ===================================================================  ========
stochasticity              repeated forwards differ ⇔ ``traits.stochastic``                       yes
logits                     outputs are not probabilities (softmax saturates attack losses)          yes
gradients                  input gradients of the checks' loss exist, are finite and non-zero       yes
test_time_state            parameters/buffers change on forward ⇔ ``traits.adapts_at_test_time``    yes
batch_dependence           splitting the batch changes logits ⇔ ``traits.batch_threat_model``        yes
unbounded_attack           PGD with eps = 0.5 (Linf) / 10 (L2) reaches ≈ 0% accuracy                yes
monotone_eps               accuracy neither rises nor stays flat over eps/4, eps/2, eps, 2·eps  yes
more_steps                 doubling PGD steps lowers accuracy by no more than the CI                no
black_box                  Square Attack does not beat white-box PGD                                yes
transfer                   PGD (last iterate) on the undefended base model does not beat PGD        yes
=========================  ===================================================================  ========

Tolerances are statistical. Accuracy-versus-accuracy checks (monotone_eps, more_steps) count a
difference only when it exceeds the 95% half-width at p = 1/2 (``1.96·sqrt(0.25/n)``) plus one example.
monotone_eps also fails on a flat curve: not one more example broken from eps/4 to 2·eps while more
than that tolerance of the probe stays unbroken (an attack that does not use its budget).
The "does attack A beat white-box PGD" checks (black_box, transfer) compare two attacks on the *same*
probe points, so they use the paired test for that: McNemar's exact (sign) test on the discordant
points, one-sided at ``ALPHA``. On 24 points, A breaking 6 points that PGD cannot (and PGD none that
A cannot) gives p = 1/64, whereas the unpaired half-width (±24%, about six points net) calls it a tie.

The checks run the model (and the base classifier) in eval mode, as every attack does, and restore
each submodule's own training flag afterwards.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable

import torch

from ..classifier import Classifier
from ..attacks import PGD, AttackResult, eval_mode, make_attack
from ..attacks.base import GRAD_COST
from ..attacks.pgd import LOSS_CHOICES, eot_gradient, resolve_loss
from ..errors import InputError
from ..utils import check_positive_int, progress_bar, state_digest
from .record import CheckResult

UNBOUNDED_EPS = {"Linf": 0.5, "L2": 10.0}
CHECKS = ("stochasticity", "logits", "gradients", "test_time_state", "batch_dependence", "unbounded_attack",
          "monotone_eps", "more_steps", "black_box", "transfer")
ALPHA = 0.05  # one-sided level of the paired tests (black_box, transfer)


def _tolerance(n: int) -> float:
    return 1.96 * math.sqrt(0.25 / n) + 1.0 / n


def sign_test_p(b: int, c: int) -> float:
    """One-sided exact sign test (McNemar's exact test) on discordant pairs: ``P[X >= b]`` for
    ``X ~ Binomial(b + c, 1/2)``, i.e. how surprising ``b`` wins out of ``b + c`` would be if the two
    attacks were equally strong. 1.0 when there are no discordant points."""
    n = b + c
    if n == 0:
        return 1.0
    return sum(math.comb(n, k) for k in range(b, n + 1)) / 2 ** n


def _paired(other_robust: torch.Tensor, white_robust: torch.Tensor) -> dict[str, float | int]:
    """Discordant counts of an alternative attack against white-box PGD, and the sign test's p."""
    b = int((white_robust & ~other_robust).sum())  # broken by the alternative only
    c = int((~white_robust & other_robust).sum())  # broken by white-box PGD only
    return {"broken_only_by_alternative": b, "broken_only_by_white_box": c, "p_value": sign_test_p(b, c)}


RANDOM_RTOL = 1e-5  # relative logit change between two forwards of the same input that counts as randomness


def _relative_difference(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest absolute logit difference, relative to the largest absolute logit of ``ref``."""
    return float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


def check_stochasticity(model: Classifier, x: torch.Tensor, y: torch.Tensor) -> CheckResult:
    outs = []
    with torch.no_grad():
        for _ in range(3):
            model.reset()
            outs.append(model(x))
    model.reset()
    diff = max(_relative_difference(o, outs[0]) for o in outs[1:])
    random = diff > RANDOM_RTOL
    declared = model.traits.stochastic
    details = {"max_relative_logit_difference": diff}
    if random == declared:
        return CheckResult("stochasticity", "pass", f"repeated forwards {'differ' if random else 'agree'} "
                           f"(max relative logit difference {diff:.2e}), as declared", True, details)
    if random:
        return CheckResult("stochasticity", "fail", f"the model is declared deterministic but repeated forwards "
                           f"differ (max relative logit difference {diff:.2e}): single-draw attacks and a single "
                           "evaluation overstate robustness; declare traits.stochastic=True so EOT attacks and "
                           "re-evaluation are used", True, details)
    return CheckResult("stochasticity", "warn", "the model is declared stochastic but 3 forwards gave identical "
                       "logits: randomness may be seeded per call or absent; EOT then only costs time", False, details)


def check_logits(model: Classifier, x: torch.Tensor) -> CheckResult:
    with torch.no_grad():
        out = model(x)
    probs = bool(out.min() > -1e-5) and bool(out.max() < 1 + 1e-5) and bool(((out.sum(1) - 1).abs() < 1e-4).all())
    if probs:
        return CheckResult("logits", "fail", "outputs are non-negative and sum to 1: the model returns "
                           "probabilities, not logits; cross-entropy and DLR on probabilities saturate and mask "
                           "gradients. Return logits (or log-probabilities)", True)
    return CheckResult("logits", "pass", "outputs are logits, not probabilities", True)


def _input_gradient(model: Classifier, x: torch.Tensor, y: torch.Tensor, draws: int,
                    loss: str = "ce") -> torch.Tensor:
    grad, _ = eot_gradient(model, x, y, draws, loss, allow_unused=True)  # draws batched where the model allows
    return torch.zeros_like(x) if grad is None else grad


LOSS_NAMES = {"ce": "cross-entropy", "margin": "margin"}  # PGD's LOSSES, as the messages name them


def _saturation_cause(model: Classifier, x: torch.Tensor, margin_zero: torch.Tensor,
                      details: dict[str, float]) -> str | None:
    """Why the cross-entropy gradient is zero at ``x`` (points where it is) when the margin's is not
    (``margin_zero`` marks where it is): a saturated softmax (float32 softmax is exactly one-hot beyond a
    top-2 logit gap of ~100). None when the margin's gradient is zero too."""
    with torch.no_grad():
        top2 = model(x).topk(2, dim=1).values
    gap = float((top2[:, 0] - top2[:, 1]).median())
    details.update(median_logit_gap_of_zero_gradient_points=gap,
                   fraction_zero_margin_gradient=float(margin_zero.float().sum()) / details["probe_size"])
    if bool(margin_zero.any()):
        return None
    return (f"the logits saturate the softmax (median top-2 logit gap {gap:.3g}), so cross-entropy gradients are "
            "exactly 0 while margin gradients are not: CE-based attacks (pgd, pgd-eot, apgd-ce, bpda-eot) get no "
            "signal; attack with a margin loss (pgd/pgd-eot with loss='margin', apgd-dlr)")


def check_gradients(model: Classifier, x: torch.Tensor, y: torch.Tensor, draws: int,
                    loss: str = "ce") -> CheckResult:
    """Input gradients of ``loss`` (the loss the checks' attacks use) exist, are finite and non-zero.

    With ``loss="ce"``, zero gradients are diagnosed (a saturated softmax is named). With ``loss="margin"``
    the verdict is on the margin's gradient, and a cross-entropy gradient that the softmax zeroes is a
    warning: the record's CE-based attacks (e.g. AutoAttack's APGD-CE) are then blind.
    """
    name = LOSS_NAMES[loss]
    try:
        g = _input_gradient(model, x, y, draws, loss)
    except RuntimeError as e:  # e.g. "element 0 of tensors does not require grad"
        return CheckResult("gradients", "fail", f"no input gradient could be computed ({e}); gradient-based "
                           "attacks cannot run: provide a BPDA or surrogate gradient mode", True)
    if not bool(torch.isfinite(g).all()):
        return CheckResult("gradients", "fail", "input gradients contain NaN/Inf: gradient-based attacks "
                           "will fail silently (exploding or shattered gradients)", True)
    zero = (g.flatten(1).abs().sum(1) == 0)
    frac = float(zero.float().mean())
    details = {"loss": loss, "probe_size": x.shape[0], "fraction_zero_gradient": frac,
               "mean_abs_gradient": float(g.abs().mean())}
    cause = "non-differentiable or saturated step"
    if frac > 0 and loss == "ce":
        margin_zero = _input_gradient(model, x[zero], y[zero], draws, "margin").flatten(1).abs().sum(1) == 0
        cause = _saturation_cause(model, x[zero], margin_zero, details) or cause
    if frac > 0.5:
        return CheckResult("gradients", "fail", f"{100 * frac:.0f}% of probe points have an all-zero input "
                           f"{name} gradient ({cause}): white-box numbers from {name}-based attacks on this "
                           "model are not evidence of robustness", True, details)
    if frac > 0:
        return CheckResult("gradients", "warn", f"{100 * frac:.0f}% of probe points have an all-zero input "
                           f"{name} gradient ({cause})", False, details)
    if loss != "ce":
        ce_zero = _input_gradient(model, x, y, draws, "ce").flatten(1).abs().sum(1) == 0
        details["fraction_zero_ce_gradient"] = float(ce_zero.float().mean())
        if bool(ce_zero.any()):  # the margin's gradient is non-zero everywhere (checked above)
            cause = _saturation_cause(model, x[ce_zero], zero[ce_zero], details)
            return CheckResult("gradients", "warn", f"{name} gradients are finite and non-zero on every probe "
                               f"point, but {100 * float(ce_zero.float().mean()):.0f}% have an all-zero "
                               f"cross-entropy gradient ({cause})", False, details)
    return CheckResult("gradients", "pass", f"input {name} gradients are finite and non-zero on every probe point",
                       True, details)


def check_test_time_state(model: Classifier, x: torch.Tensor) -> CheckResult:
    model.reset()
    before = state_digest(model)
    with torch.no_grad():
        model(x)
    changed = state_digest(model) != before
    model.reset()
    restored = state_digest(model) == before
    declared = model.traits.adapts_at_test_time
    if changed and not declared:
        return CheckResult("test_time_state", "fail", "parameters or buffers change during a forward but the "
                           "model does not declare adapts_at_test_time: attacks must reset() it and the "
                           "evaluation must include adaptive attacks", True)
    if changed and not restored:
        return CheckResult("test_time_state", "fail", "the model adapts at test time but reset() does not "
                           "restore its initial state: results depend on evaluation order", True)
    if declared and not changed:
        return CheckResult("test_time_state", "warn", "declared adapts_at_test_time, but no parameter or buffer "
                           "changed during a forward (state may live outside the state_dict)", False)
    return CheckResult("test_time_state", "pass", "state changes match the declared traits"
                       + (" and reset() restores it" if changed else ""), True)


BATCH_RTOL = 1e-4  # relative logit change that counts as batch dependence (float noise across batch sizes: ~1e-6)


def check_batch_dependence(model: Classifier, x: torch.Tensor) -> CheckResult:
    """Classify the probe whole and as two halves (``reset()`` before each forward) and compare the logits.

    A model whose prediction depends on the rest of the batch must say so (``traits.batch_dependent``, or
    ``adapts_at_test_time``): otherwise the harness attacks subsets of a shard (a cascade, APGD's
    not-yet-broken points) and scores another batch. Skipped for a model whose repeated forwards differ:
    the split cannot be told from its own randomness.
    """
    n = x.shape[0]
    if n < 2:
        return CheckResult("batch_dependence", "skipped", "needs a probe of at least 2 examples", False)
    h = n // 2
    with torch.no_grad():
        outs = []
        for part in (x, x, x[:h], x[h:]):
            model.reset()
            outs.append(model(part))
    model.reset()
    whole, again, first, second = outs
    noise = _relative_difference(again, whole)
    if noise > RANDOM_RTOL:
        return CheckResult("batch_dependence", "skipped", "repeated forwards differ (the model is stochastic), so "
                           "classifying the batch in halves cannot be told from the model's own randomness", False,
                           {"max_relative_logit_difference_repeat": noise})
    diff = _relative_difference(torch.cat([first, second]), whole)
    dependent = diff > BATCH_RTOL
    declared = model.traits.batch_threat_model
    details = {"max_relative_logit_difference_split": diff, "halves": [h, n - h]}
    if dependent and not declared:
        return CheckResult("batch_dependence", "fail", f"classifying the probe in two halves changes the logits "
                           f"(max relative difference {diff:.2e}), but the model declares neither batch_dependent "
                           "nor adapts_at_test_time (batch statistics computed at test time do this): the harness "
                           "would attack subsets of a shard and score another batch; declare "
                           "traits.batch_dependent=True or remove the dependence", True, details)
    if declared and not dependent:
        return CheckResult("batch_dependence", "warn", f"declared batch-dependent, but classifying the probe in "
                           f"two halves changes no logit beyond {BATCH_RTOL:g} (relative): the batch threat model "
                           "then only constrains the attacks", False, details)
    return CheckResult("batch_dependence", "pass", f"classifying the probe in two halves "
                       f"{'changes' if dependent else 'does not change'} the logits (max relative difference "
                       f"{diff:.2e}), as declared", True, details)


#: the checks' attack budget when nothing is asked and no attack budget is known; ``eot`` is 8 for a
#: stochastic model, else 1
DEFAULT_BUDGET = {"steps": 20, "square_queries": 1000}
#: the smallest budget the automatic sizing goes down to (a stochastic model keeps at least EOT 2)
MIN_BUDGET = {"steps": 5, "square_queries": 100}
#: by default the checks cost at most this fraction of the whole run (checks + attacks)
MAX_CHECK_FRACTION = 0.3


def estimated_check_passes(*, steps: int, eot: int, square_queries: int, transfer: bool = True) -> float:
    """Upper bound on the checks' cost per probe example, in forward-equivalents of the model (a forward 1,
    a forward + backward ``GRAD_COST``), as :func:`run_checks` spends it: 3 forwards (stochasticity), 1
    (logits), ``2 x eot`` gradients and a forward (gradients: its loss, and the other loss to diagnose a
    saturated softmax), 1 (test_time_state), 4 (batch_dependence); PGD at
    ``steps x eot`` gradients for unbounded_attack, each of the four monotone_eps budgets, and twice that
    for more_steps; Square's queries; a clean and a verification forward per attack (and the transfer
    check's two)."""
    pgd_runs = 1 + 4 + 2  # unbounded, the eps ladder, more_steps (counted in units of `steps`)
    return (3 + 1 + 2 * eot * GRAD_COST + 1 + 1 + 4 + pgd_runs * steps * eot * GRAD_COST + square_queries
            + 2 * (6 + 1) + (2 if transfer else 0))


def plan_check_budget(*, stochastic: bool, probe_size: int, attack_passes: float | None,
                      asked: dict[str, object] | None = None,
                      max_fraction: float = MAX_CHECK_FRACTION) -> tuple[dict[str, int], dict[str, object]]:
    """The checks' budget (``steps``, ``eot``, ``square_queries``) sized to the attack budget.

    Starts from :data:`DEFAULT_BUDGET` (EOT 8 for a stochastic model, else 1) and, while the checks' estimated
    cost (``probe_size x`` :func:`estimated_check_passes`) exceeds ``max_fraction`` of the whole run
    (checks + ``attack_passes``, the attacks' estimated cost over all examples), halves EOT, steps and
    queries in turn down to :data:`MIN_BUDGET`. Values in ``asked`` (the user's check_options) are kept
    as given. ``attack_passes=None`` (an attack whose cost is unknown): the defaults. Returns the budget
    and what was decided, for the record.

    >>> plan_check_budget(stochastic=True, probe_size=16, attack_passes=None)[0]
    {'steps': 20, 'eot': 8, 'square_queries': 1000}
    >>> budget, why = plan_check_budget(stochastic=True, probe_size=16, attack_passes=5e4)
    >>> budget, why["sized"], why["estimated_fraction"] <= 0.3
    ({'steps': 10, 'eot': 2, 'square_queries': 500}, True, True)
    """
    asked = dict(asked or {})
    budget = {"steps": DEFAULT_BUDGET["steps"], "eot": 8 if stochastic else 1,
              "square_queries": DEFAULT_BUDGET["square_queries"]}
    budget.update({k: int(v) for k, v in asked.items() if k in budget})  # type: ignore[arg-type]
    floor = {**MIN_BUDGET, "eot": 2 if stochastic else 1}

    def cost(b: dict[str, int]) -> float:
        return probe_size * estimated_check_passes(**b)

    info: dict[str, object] = {"max_fraction": max_fraction, "attack_passes_estimate": attack_passes,
                               "sized": False}
    if attack_passes is not None:
        cap = max_fraction / (1 - max_fraction) * attack_passes
        free = [k for k in ("eot", "steps", "square_queries") if k not in asked]
        while cost(budget) > cap:
            shrinkable = [k for k in free if budget[k] > floor[k]]
            if not shrinkable:
                break
            for k in shrinkable:  # one halving of each, in turn
                budget[k] = max(floor[k], budget[k] // 2)
                if cost(budget) <= cap:
                    break
            info["sized"] = True
        info["estimated_fraction"] = cost(budget) / (cost(budget) + attack_passes) if attack_passes else 1.0
    info["check_passes_estimate"] = cost(budget)
    return budget, info


def _pgd(model: Classifier, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str, steps: int,
         eot: int, seed: int, loss: str) -> AttackResult:
    step_size = 2.5 * eps / steps
    return PGD(eps=eps, norm=norm, steps=steps, step_size=step_size, eot=eot, seed=seed, loss=loss)(model, x, y)


# the knobs of the checks (benchmark's check_options): the attacks' budget and loss (run_checks's arguments),
# and the probe size (the benchmark's probe_size, which this key overrides)
CHECK_OPTIONS = ("steps", "eot", "square_queries", "loss", "probe_size")


def validate_check_options(options: dict[str, object]) -> None:
    """Raise :class:`~robustkit.InputError` unless every key is in ``CHECK_OPTIONS``, ``loss`` one of
    ``"ce"``/``"margin"``/``"auto"`` and every other value a positive int."""
    unknown = sorted(set(options) - set(CHECK_OPTIONS))
    if unknown:
        raise InputError(f"unknown check option(s) {unknown}; choose from {list(CHECK_OPTIONS)}")
    for label, v in options.items():
        if label == "loss":
            if v not in LOSS_CHOICES:
                raise InputError(f"check option loss must be one of {list(LOSS_CHOICES)}, got {v!r}")
        else:
            check_positive_int(f"check option {label}", v)


def run_checks(model: Classifier, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str, seed: int = 0,
               steps: int | None = None, eot: int | None = None, base_classifier: Classifier | None = None,
               square_queries: int | None = None, loss: str = "auto",
               progress: Callable[[str], None] | None = None,
               cost: dict[str, float] | None = None) -> list[CheckResult]:
    """Run every check on the probe ``(x, y)``; returns the results in the table's order.

    ``steps`` are the PGD steps of every attack check (default 20; the unbounded one too), ``eot`` their
    EOT samples and the gradients check's draws (default 8 for a stochastic model, else 1),
    ``square_queries`` the black-box budget (default 1000) and ``loss`` the PGD loss of the attack checks
    and of the ``gradients`` check: ``"auto"`` is the margin for a generative classifier
    (``traits.generative``, logits that can saturate the softmax), else the cross-entropy. The benchmark
    sizes the defaults to its attack budget (:func:`plan_check_budget`). Every result's
    ``details["protocol"]`` records the budget and the probe size. Progress: a tqdm bar over the checks
    on a terminal (and the attacks' own bars), ``progress(name)`` before each check. ``cost``, when
    given, receives the examples forwarded and back-propagated through ``model`` and the seconds spent.
    The model and ``base_classifier`` are evaluated in eval mode; their training flags are restored.
    """
    if eot is None:
        eot = 8 if model.traits.stochastic else 1
    steps = DEFAULT_BUDGET["steps"] if steps is None else steps
    square_queries = DEFAULT_BUDGET["square_queries"] if square_queries is None else square_queries
    validate_check_options({"steps": steps, "square_queries": square_queries, "loss": loss, "eot": eot})
    loss = resolve_loss(loss, model.traits)
    counter = _PassCounter(model)
    t0 = time.perf_counter()
    try:
        with eval_mode(model, base_classifier):
            results = _run_checks(model, x, y, eps=eps, norm=norm, seed=seed, steps=steps, eot=eot, loss=loss,
                                  base_classifier=base_classifier, square_queries=square_queries,
                                  progress=progress)
    finally:
        counter.remove()
    if cost is not None:
        cost.update(forwards=counter.forwards, backwards=counter.backwards, seconds=time.perf_counter() - t0)
    protocol = {"probe_size": int(x.shape[0]), "steps": steps, "eot": eot, "square_queries": square_queries,
                "loss": loss, "seed": seed}
    return [dataclasses.replace(r, details={**r.details, "protocol": protocol}) for r in results]


class _PassCounter:
    """Counts the examples forwarded through ``model`` (and back-propagated, via a hook on its output)."""

    def __init__(self, model: Classifier):
        self.forwards = 0
        self.backwards = 0
        self.handle = model.register_forward_hook(self._hook)

    def _hook(self, module: torch.nn.Module, args: tuple, out: torch.Tensor) -> None:
        n = int(args[0].shape[0])
        self.forwards += n
        if isinstance(out, torch.Tensor) and out.requires_grad:
            out.register_hook(lambda grad: self._backward(n))

    def _backward(self, n: int) -> None:
        self.backwards += n

    def remove(self) -> None:
        self.handle.remove()


def _run_checks(model: Classifier, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str, seed: int,
                steps: int, eot: int, loss: str, base_classifier: Classifier | None, square_queries: int,
                progress: Callable[[str], None] | None) -> list[CheckResult]:
    n = x.shape[0]
    tol = _tolerance(n)
    bar = progress_bar(total=len(CHECKS), desc="sanity checks", unit="check")
    results: list[CheckResult] = []

    def note(name: str) -> None:
        bar.update(len(results) - bar.n)  # the checks finished so far
        bar.set_postfix_str(name)
        if progress is not None:
            progress(name)

    def pgd(e: float, k: int = steps) -> AttackResult:
        return _pgd(model, x, y, eps=e, norm=norm, steps=k, eot=eot, seed=seed, loss=loss)

    note("stochasticity")
    results.append(check_stochasticity(model, x, y))
    note("logits")
    results.append(check_logits(model, x))
    note("gradients")
    results.append(check_gradients(model, x, y, eot, loss))
    note("test_time_state")
    results.append(check_test_time_state(model, x))
    note("batch_dependence")
    results.append(check_batch_dependence(model, x))

    note("unbounded_attack")
    big = UNBOUNDED_EPS[norm]
    acc_big = _pgd(model, x, y, eps=big, norm=norm, steps=steps, eot=eot, seed=seed, loss=loss).robust_accuracy
    if acc_big <= tol:
        results.append(CheckResult("unbounded_attack", "pass", f"PGD with eps={big} reaches {100 * acc_big:.0f}% "
                                   "accuracy", True, {"accuracy": acc_big, "eps": big}))
    else:
        results.append(CheckResult("unbounded_attack", "fail", f"PGD with eps={big} ({norm}), which can turn any "
                                   f"image into any other, still leaves {100 * acc_big:.0f}% accuracy: the attack "
                                   "is not reaching the model (obfuscated gradients or a broken attack)", True,
                                   {"accuracy": acc_big, "eps": big}))

    note("monotone_eps")
    ladder = [eps / 4, eps / 2, eps, 2 * eps]
    ladder_results = [pgd(e) for e in ladder]
    accs = [r.robust_accuracy for r in ladder_results]
    rises = [(ladder[i], ladder[i + 1]) for i in range(3) if accs[i + 1] > accs[i] + tol]
    # flat: an 8-fold budget breaks not one more example, while more than the tolerance remain unbroken
    flat = not rises and accs[3] >= accs[0] and accs[3] > tol
    details = {"eps": ladder, "accuracy": accs}
    if rises:
        results.append(CheckResult("monotone_eps", "fail", f"accuracy rises with eps ({', '.join(f'{a:.4g}→{b:.4g}' for a, b in rises)}; "
                                   f"accuracies {[round(a, 3) for a in accs]}): a larger budget should never help "
                                   "the model; the attack is failing", True, details))
    elif flat:
        results.append(CheckResult("monotone_eps", "fail", f"accuracy is flat in eps: {[round(a, 3) for a in accs]} "
                                   f"from eps/4 to 2·eps ({ladder[0]:.4g} to {ladder[3]:.4g}): an 8-fold budget breaks "
                                   "no further example, so the attack is not using its budget (masked gradients or a "
                                   "broken attack)", True, details))
    else:
        results.append(CheckResult("monotone_eps", "pass", f"accuracy falls with eps: {[round(a, 3) for a in accs]}",
                                   True, details))
    acc_eps = accs[2]

    note("more_steps")
    res_2k = pgd(eps, 2 * steps)
    acc_2k = res_2k.robust_accuracy
    details = {"steps": [steps, 2 * steps], "accuracy": [acc_eps, acc_2k]}
    if acc_2k < acc_eps - tol:
        results.append(CheckResult("more_steps", "warn", f"doubling PGD steps ({steps}→{2 * steps}) lowers accuracy "
                                   f"from {100 * acc_eps:.0f}% to {100 * acc_2k:.0f}%: attacks have not converged; "
                                   "the reported numbers may be loose upper bounds", False, details))
    else:
        results.append(CheckResult("more_steps", "pass", f"doubling PGD steps changes accuracy by "
                                   f"{100 * (acc_2k - acc_eps):+.0f} points (within tolerance)", False, details))
    # per example: robust to both PGD runs at eps (the best of the white-box attacks)
    white_robust = ladder_results[2].robust & res_2k.robust
    white = float(white_robust.float().mean())

    note("black_box")
    sq_robust = make_attack("square", eps=eps, norm=norm, seed=seed, square_queries=square_queries)(model, x, y).robust
    acc_sq = float(sq_robust.float().mean())
    paired = _paired(sq_robust, white_robust)
    details = {"square_accuracy": acc_sq, "white_box_accuracy": white, "queries": square_queries, **paired}
    b, c, p = paired["broken_only_by_alternative"], paired["broken_only_by_white_box"], paired["p_value"]
    if p < ALPHA:
        results.append(CheckResult("black_box", "fail", f"Square Attack ({square_queries} queries, no gradients) "
                                   f"reaches {100 * acc_sq:.0f}% while white-box PGD leaves {100 * white:.0f}%: it "
                                   f"breaks {b} probe point(s) PGD cannot (PGD alone breaks {c}; sign test "
                                   f"p = {p:.3g} < {ALPHA}): gradients are obfuscated; white-box results understate "
                                   "the attack", True, details))
    else:
        results.append(CheckResult("black_box", "pass", f"Square {100 * acc_sq:.0f}% vs white-box {100 * white:.0f}%: "
                                   f"Square alone breaks {b} point(s), PGD alone {c} (sign test p = {p:.3g} ≥ {ALPHA})",
                                   True, details))

    note("transfer")
    if base_classifier is None:
        results.append(CheckResult("transfer", "skipped", "no undefended base classifier given", False))
    else:
        # the last (highest-loss) iterate, not the first misclassified one: points just past the base
        # model's boundary do not transfer (and a quantiser or purifier rounds them straight back)
        res = PGD(eps=eps, norm=norm, steps=steps, step_size=2.5 * eps / steps, early_stop=False,
                  seed=seed, loss=loss)(base_classifier, x, y)
        with torch.no_grad():
            model.reset()
            clean_ok = model(x).argmax(1) == y
            model.reset()
            tr_robust = clean_ok & (model(res.x_adv).argmax(1) == y)
        model.reset()
        acc_tr = float(tr_robust.float().mean())
        paired = _paired(tr_robust, white_robust)
        details = {"transfer_accuracy": acc_tr, "white_box_accuracy": white, **paired}
        b, c, p = paired["broken_only_by_alternative"], paired["broken_only_by_white_box"], paired["p_value"]
        if p < ALPHA:
            results.append(CheckResult("transfer", "fail", f"adversarial examples of the undefended base model leave "
                                       f"{100 * acc_tr:.0f}% vs {100 * white:.0f}% for white-box PGD on the defense: "
                                       f"they break {b} probe point(s) PGD cannot (PGD alone breaks {c}; sign test "
                                       f"p = {p:.3g} < {ALPHA}): the defense's gradients mislead the attack", True,
                                       details))
        else:
            results.append(CheckResult("transfer", "pass", f"transfer from the base model {100 * acc_tr:.0f}% vs "
                                       f"white-box {100 * white:.0f}%: transfer alone breaks {b} point(s), PGD alone "
                                       f"{c} (sign test p = {p:.3g} ≥ {ALPHA})", True, details))
    model.reset()
    bar.update(len(results) - bar.n)
    bar.close()
    return results
