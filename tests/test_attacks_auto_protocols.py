"""What ``attacks="auto"`` and the sanity checks choose from the declared traits, and what they cost.

Issue 23: scale-free losses for generative classifiers (item 1), AutoAttack standard for batch-dependent
defenses scored as the per-example minimum (item 2), and checks that honour their budget, are sized to
the attack budget and show progress (item 5).
"""

from __future__ import annotations

import json
import logging

import pytest

import robustkit
from robustkit import DefenseTraits, InputError
from robustkit.attacks import PGD, make_attack
from robustkit.eval.benchmark import resolve_attacks
from robustkit.eval.checks import estimated_check_passes, run_checks


class _Generative(robustkit.Classifier):
    """The digits CNN with logits x1000, declared a generative classifier: like a diffusion classifier's
    −L_y, the class gaps saturate the float32 softmax and cross-entropy input gradients are exactly 0."""

    def __init__(self, base, stochastic: bool = False):
        super().__init__(10, (1, 8, 8), DefenseTraits(generative=True, stochastic=stochastic))
        self.base = base

    def logits(self, x):
        return 1000.0 * self.base(x)


class _BatchCentred(robustkit.Classifier):
    """Stateless but batch-dependent: subtracts the batch's mean image."""

    def __init__(self, base):
        super().__init__(base.num_classes, base.input_shape, DefenseTraits(batch_dependent=True))
        self.base = base

    def logits(self, x):
        return self.base((x - x.mean(0, keepdim=True) + 0.5).clamp(0, 1))


@pytest.fixture(scope="module")
def base():
    return robustkit.create_classifier("tiny_cnn.digits", pretrained=True)


AA_SMALL = {"steps": 10, "fab_steps": 5, "square_queries": 100, "target_classes": 3}


def test_generative_trait_is_a_validated_bool_that_purification_keeps():
    with pytest.raises(InputError, match="generative"):
        DefenseTraits(generative=1)
    rdc = robustkit.create_defense("tiny_rdc.digits")
    assert rdc.traits.generative
    assert not robustkit.create_defense("tiny_diffpure.digits").traits.generative


def test_a_ce_only_evaluation_overstates_a_saturating_classifier_and_auto_does_not(base):
    model = _Generative(base)
    kw = dict(dataset="digits", eps=0.1, n_examples=48, batch_size=48, checks=False)
    ce_only = robustkit.benchmark(model, attacks=["apgd-ce"], attack_options={"apgd-ce": {"steps": 10}}, **kw)
    auto = robustkit.benchmark(model, attacks="auto", attack_options={"autoattack-standard": AA_SMALL}, **kw)
    # the unscaled model makes the same decisions everywhere: its robust accuracy is the truth
    truth = robustkit.benchmark(base, attacks=["apgd-ce"], attack_options={"apgd-ce": {"steps": 10}}, **kw)
    ce, au, tr = (r.robust["single_draw"].value for r in (ce_only, auto, truth))
    assert ce_only.clean["single_draw"].value == ce > tr + 0.5  # APGD-CE sees no gradient at all
    assert au <= tr + 2 / 48
    assert [a["name"] for a in auto.attacks] == ["autoattack-standard"]


def test_pgd_eot_and_checks_use_the_margin_on_a_generative_classifier(base):
    x, y = robustkit.load_dataset("digits", n_examples=32)
    model = _Generative(base)
    res = make_attack("pgd-eot", eps=0.1, steps=10, step_size=0.02, eot=1)(model, x, y)
    ce = make_attack("pgd-eot", eps=0.1, steps=10, step_size=0.02, eot=1, loss="ce")(model, x, y)
    plain = make_attack("pgd-eot", eps=0.1, steps=10, step_size=0.02, eot=1)(base, x, y)
    assert res.info["loss"] == "margin" and ce.info["loss"] == "ce" and plain.info["loss"] == "ce"
    assert res.robust_accuracy <= plain.robust_accuracy + 1 / 32 and ce.robust_accuracy == ce.clean_accuracy
    stochastic = _Generative(base, stochastic=True)
    assert "pgd-eot" in resolve_attacks(stochastic, "auto")
    checks = {c.name: c for c in run_checks(model, x[:8], y[:8], eps=0.1, norm="Linf", steps=5,
                                            square_queries=50, base_classifier=base)}
    assert checks["gradients"].details["protocol"]["loss"] == "margin"
    assert checks["gradients"].status == "warn"  # margin gradients fine, CE ones zero: named, not blocking
    assert checks["unbounded_attack"].status == "pass"


def test_batch_dependent_auto_adds_standard_and_scores_the_per_example_minimum(base, tmp_path):
    model = _BatchCentred(base)
    assert resolve_attacks(model, "auto") == ["pgd-eot", "autoattack-rand", "autoattack-standard"]
    rec = robustkit.benchmark(model, dataset="digits", eps=0.1, attacks="auto", n_examples=24, batch_size=12,
                              checks=False, run_dir=tmp_path / "run", attack_options={
                                  "pgd-eot": {"steps": 3, "eot": 1, "step_size": 0.03},
                                  "autoattack-rand": {"steps": 3, "eot": 1}, "autoattack-standard": AA_SMALL})
    names = ["pgd-eot", "autoattack-rand", "autoattack-standard"]
    assert sorted(a["name"] for a in rec.attacks) == sorted(names)
    recs = [json.loads(line) for f in sorted((tmp_path / "run" / "shards").glob("*.jsonl"))
            for line in f.read_text().splitlines()]
    assert all(r["attacks"][n] is not None for r in recs for n in names)  # whole batches, no cascade skips
    minimum = [r["clean"][0] and all(r["attacks"][n]["correct"][0] for n in names) for r in recs]
    assert rec.robust["single_draw"].value == pytest.approx(sum(minimum) / len(minimum))
    assert all(rec.robust["single_draw"].value <= rec.per_attack[n]["single_draw"].value for n in names)


def _exact_cost(n: int, steps: int, eot: int) -> int:
    """Backward passes of run_checks on a generative model whose PGD never stops early: the gradients
    check's ``eot`` draws of the margin and ``eot`` of the cross-entropy (to diagnose saturation), and seven
    PGD runs (unbounded, four eps, more_steps at twice the steps) of ``steps x eot``."""
    return n * eot * (2 + 7 * steps)


def test_every_check_honours_its_budget_and_reports_its_cost(base):
    x, y = robustkit.load_dataset("digits", n_examples=8)
    model = _Generative(base, stochastic=True)  # stochastic: PGD takes every step (no early stop)
    cost: dict[str, float] = {}
    results = run_checks(model, x, y, eps=0.1, norm="Linf", steps=3, eot=2, square_queries=30, cost=cost)
    assert cost["backwards"] == _exact_cost(8, 3, 2)  # the unbounded check too (it used to run >= 50 steps)
    # forwards: every gradient query, plus stochasticity 3, logits 1, test_time_state 1, batch_dependence 4
    # (skipped after 2: the model is not random), the attacks' clean and verification passes, Square's queries
    assert cost["forwards"] >= cost["backwards"] + 8 * 30
    assert cost["forwards"] * 1 + 2 * cost["backwards"] <= 8 * estimated_check_passes(steps=3, eot=2,
                                                                                       square_queries=30)
    assert {r.details["protocol"]["steps"] for r in results} == {3}


def test_default_check_budget_is_sized_to_at_most_30_percent_of_the_run(base, tmp_path):
    kw = dict(dataset="digits", eps=0.1, attacks=["pgd"], n_examples=48, batch_size=48, probe_size=4)
    cheap = {"pgd": {"steps": 20, "early_stop": False}}
    rec = robustkit.benchmark(base, attack_options=cheap, run_dir=tmp_path / "a", **kw)
    protocol = rec.checks[0].details["protocol"]
    assert protocol["sizing"]["sized"] and protocol["steps"] == 5 and protocol["square_queries"] == 125
    assert protocol["sizing"]["estimated_fraction"] <= 0.3
    # measured, in forward-equivalents (a backward costs two forwards): the checks' share of the model's work
    c = rec.cost
    checks = c["checks_forward_passes"] + 2 * c["checks_backward_passes"]
    attacks = c["forward_passes"] + 2 * c["backward_passes"]
    assert checks / (checks + attacks) <= 0.3
    # an explicit budget is kept as asked, and a rich attack budget keeps the defaults
    asked = robustkit.benchmark(base, attack_options=cheap, check_options={"steps": 12, "probe_size": 2},
                                run_dir=tmp_path / "b", **kw)
    assert asked.checks[0].details["protocol"]["steps"] == 12
    assert asked.checks[0].details["protocol"]["probe_size"] == 2  # the check option overrides probe_size=4
    rich = robustkit.benchmark(base, attack_options={"pgd": {"steps": 400}}, run_dir=tmp_path / "c", **kw)
    assert rich.checks[0].details["protocol"]["steps"] == 20 and not rich.checks[0].details["protocol"]["sizing"]["sized"]


def test_attacks_log_a_line_per_group_of_steps(base, caplog):
    x, y = robustkit.load_dataset("digits", n_examples=4)
    with caplog.at_level(logging.INFO, logger="robustkit.attacks"):
        PGD(eps=0.1, steps=20, early_stop=False)(base, x, y)
    lines = [r.getMessage() for r in caplog.records if r.name == "robustkit.attacks.base"]
    assert len(lines) == 10 and lines[0].startswith("pgd: step 2/20") and lines[-1].startswith("pgd: step 20/20")
