"""A registry entry's reduced default evaluation budget (issue 23 item 5's target).

``robustkit bench --defense tiny_diffpure.digits --eps 0.1`` with nothing else must fit 10 minutes on 2 CPU
cores: the entry declares an :class:`~robustkit.defenses.EvaluationBudget` that fills what the user does not
give, the record says what it filled, the user's options win key by key, and real entries keep the presets.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

import robustkit
from robustkit.attacks import make_attack
from robustkit.cli import main
from robustkit.defenses import EvaluationBudget, defense_config, list_defenses
from robustkit.errors import InputError
from robustkit.eval.benchmark import (DEFAULT_N_REEVAL, DEFAULT_PROBE_SIZE, _estimated_attack_passes, plan_budget,
                                      resolve_attacks)
from robustkit.eval.checks import plan_check_budget

TINY = "tiny_diffpure.digits"
#: Measured with the default command at faca6a1 (docs/results/performance.md, "Default budget of
#: tiny_diffpure.digits"): 385 s wall for 10,095 forward-equivalents (a forward 1, a forward + backward
#: GRAD_COST), checks included, one thread on the shared 2-core machine.
MEASURED_SECONDS_PER_PASS = 385.2 / 10_095
TARGET_SECONDS = 600.0


@pytest.fixture(scope="module")
def tiny():
    # t* = 0.02 (20 solver steps instead of 100): the budget belongs to the entry, whatever its purifier options
    return robustkit.create_defense(TINY, pretrained=True, t_star=0.02, seed=0)


def _plan(defense, **given):
    args = {"n_examples": None, "n_reeval": None, "probe_size": None, "attack_options": None, "check_options": None,
            "examples_chosen": False, **given}
    return plan_budget(defense, resolve_attacks(defense, "auto"), **args)


def test_the_entry_budget_fills_every_option_the_user_does_not_give(tiny):
    budget = defense_config(TINY).default_budget
    plan = _plan(tiny)
    assert (plan.n_examples, plan.n_reeval, plan.probe_size) == (budget.n_examples, budget.n_reeval, budget.probe_size)
    assert plan.n_examples < 360 and plan.n_reeval < DEFAULT_N_REEVAL  # reduced: the test split has 360 images
    assert plan.attack_options == budget.attack_options and plan.check_options == budget.check_options
    assert set(plan.attack_options) == {"autoattack-rand", "autoattack-standard", "pgd-eot"}  # auto's attacks, all kept
    assert plan.filled == {"n_examples": budget.n_examples, "n_reeval": budget.n_reeval,
                           "probe_size": budget.probe_size, "attack_options": budget.attack_options,
                           "check_options": budget.check_options}
    # without the checks, their probe and budget are not the entry's to fill
    assert set(_plan(tiny, checks=False).filled) == {"n_examples", "n_reeval", "attack_options"}
    # only the attacks that run get the entry's options
    only_pgd = plan_budget(tiny, ["pgd-eot"], n_examples=None, n_reeval=None, probe_size=None, attack_options=None,
                           examples_chosen=False)
    assert only_pgd.attack_options == {"pgd-eot": budget.attack_options["pgd-eot"]}


def test_user_options_win_key_by_key(tiny):
    budget = defense_config(TINY).default_budget
    step_size = budget.attack_options["pgd-eot"]["step_size"]
    rand_steps = budget.attack_options["autoattack-rand"]["steps"]
    plan = _plan(tiny, n_examples=5, n_reeval=3, probe_size=4, check_options={"square_queries": 300},
                 attack_options={"pgd-eot": {"steps": 7, "eot": 3}, "autoattack-rand": {"eot": 20}})
    entry_checks = {k: v for k, v in budget.check_options.items() if k != "square_queries"}
    assert (plan.n_examples, plan.n_reeval, plan.probe_size) == (5, 3, 4)
    assert plan.check_options == {**entry_checks, "square_queries": 300}
    assert plan.attack_options["pgd-eot"] == {"steps": 7, "eot": 3, "step_size": step_size}
    assert plan.attack_options["autoattack-rand"] == {"steps": rand_steps, "eot": 20}
    assert plan.filled == {"attack_options": {"pgd-eot": {"step_size": step_size},
                                              "autoattack-rand": {"steps": rand_steps},
                                              "autoattack-standard": budget.attack_options["autoattack-standard"]},
                           "check_options": entry_checks}
    # examples chosen by indices or data: the entry does not cap them
    assert _plan(tiny, examples_chosen=True).n_examples is None
    # entry_budget=False: the presets and benchmark's own defaults
    full = _plan(tiny, use_entry_budget=False)
    assert (full.n_examples, full.n_reeval, full.probe_size, full.attack_options, full.check_options, full.filled) == (
        None, DEFAULT_N_REEVAL, DEFAULT_PROBE_SIZE, {}, {}, {})


def test_real_entries_and_plain_models_keep_the_presets():
    tiny_entries = {n for n in list_defenses() if n.startswith("tiny_") or ".tiny_cnn." in n}
    assert TINY in tiny_entries
    for name in set(list_defenses()) - tiny_entries:
        assert defense_config(name).default_budget is None, name
    for model in (robustkit.create_defense("tent.resnet20.cifar10"),  # a real entry (weights do not matter here)
                  robustkit.create_classifier("tiny_cnn.digits", pretrained=True)):  # not a defense entry
        plan = _plan(model)
        assert (plan.n_examples, plan.n_reeval, plan.probe_size, plan.attack_options, plan.check_options,
                plan.filled) == (None, DEFAULT_N_REEVAL, DEFAULT_PROBE_SIZE, {}, {}, {})


def test_every_entry_budget_builds_its_attacks():
    for name in list_defenses():
        budget = defense_config(name).default_budget
        for attack, options in (budget.attack_options.items() if budget else ()):
            built = make_attack(attack, eps=0.1, **options).protocol()  # a misspelt key is a TypeError here
            assert all(built[k] == v for k, v in options.items() if k in built), (name, attack)
    with pytest.raises(InputError, match="n_reeval"):
        EvaluationBudget(n_reeval=0)
    with pytest.raises(InputError, match="attack_options"):
        EvaluationBudget(attack_options={"pgd-eot": 10})
    with pytest.raises(InputError, match="square_queries"):
        EvaluationBudget(check_options={"square_queries": 0})
    with pytest.raises(InputError, match="probe_size"):
        EvaluationBudget(check_options={"probe_size": 8})


def test_the_record_states_the_entry_budget_and_the_run_warns(tiny, tmp_path, caplog):
    budget = defense_config(TINY).default_budget
    with caplog.at_level(logging.WARNING, logger="robustkit"):
        rec = robustkit.benchmark(tiny, dataset="digits", eps=0.1, attacks=["pgd-eot"], n_examples=2, checks=False,
                                  attack_options={"pgd-eot": {"steps": 1}}, run_dir=tmp_path / "run")
    filled_pgd = {k: v for k, v in budget.attack_options["pgd-eot"].items() if k != "steps"}
    # no probe_size: the checks did not run
    assert rec.defense_config["default_budget"] == {"n_reeval": budget.n_reeval,
                                                    "attack_options": {"pgd-eot": filled_pgd}}
    assert rec.n_reeval == budget.n_reeval and rec.n_examples == 2
    protocol = rec.attacks[0]
    assert protocol["steps"] == 1 and all(protocol[k] == v for k, v in filled_pgd.items())
    message = " ".join(r.getMessage() for r in caplog.records if "default budget" in r.getMessage())
    assert "pgd-eot.eot=" in message and "entry_budget=False" in message and "--full-budget" in message
    # str(record), what bench prints, says it too: every filled value, and that it is not a result to cite
    line = next(s for s in str(rec).splitlines() if s.startswith("REDUCED DEFAULT BUDGET"))
    assert "not a result to cite" in line and f"n_reeval={budget.n_reeval}" in line
    assert all(f"pgd-eot.{k}={v}" in line for k, v in filled_pgd.items())
    # its cost line counts example-passes, and names the network evaluations (101 per forward) apart
    cost = str(rec).splitlines()[-1]
    assert cost.startswith(f"cost: {rec.cost['forward_passes']} forward / {rec.cost['backward_passes']} backward "
                           f"example-passes ({rec.cost['forward_nfe']} / {rec.cost['backward_nfe']} network evaluations)")
    assert rec.cost["forward_nfe"] == rec.traits["forward_passes"] * rec.cost["forward_passes"]
    # asked for the full budget: the preset's values, nothing filled, no warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="robustkit"):
        full = robustkit.benchmark(tiny, dataset="digits", eps=0.1, attacks=["pgd-eot"], n_examples=2, n_reeval=1,
                                   checks=False, attack_options={"pgd-eot": {"steps": 1, "eot": 1}},
                                   run_dir=tmp_path / "full", entry_budget=False)
    assert "default_budget" not in full.defense_config and full.attacks[0]["step_size"] == 0.007
    assert "REDUCED DEFAULT BUDGET" not in str(full)
    assert not [r for r in caplog.records if "default budget" in r.getMessage()]


def test_cli_warns_on_stderr_and_full_budget_turns_the_entry_budget_off(tmp_path, capsys):
    common = ["bench", "--defense", TINY, "--eps", "0.1", "--attacks", "pgd-eot", "--attack-option", "pgd-eot.steps=1",
              "--attack-option", "pgd-eot.eot=1", "--n-examples", "1", "--n-reeval", "1", "--no-checks", "--json"]
    assert main(common) == 0
    reduced = json.loads(capsys.readouterr().out)
    step_size = defense_config(TINY).default_budget.attack_options["pgd-eot"]["step_size"]
    assert reduced["defense_config"]["default_budget"] == {"attack_options": {"pgd-eot": {"step_size": step_size}}}
    assert reduced["attacks"][0]["step_size"] == step_size
    assert main([*common, "--full-budget"]) == 0
    full = json.loads(capsys.readouterr().out)
    assert "default_budget" not in full["defense_config"] and full["attacks"][0]["step_size"] == 0.007
    # what a user sees: the warning on stderr, naming what was filled in and the flag for the full budget
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "robustkit", *common[:-1], "--run-dir", str(tmp_path / "cli")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "reduced default budget" in run.stderr and f"pgd-eot.step_size={step_size:g}" in run.stderr
    assert "--full-budget" in run.stderr and "reduced default budget" not in run.stdout


def test_the_default_budget_s_estimated_cost_fits_ten_minutes(tiny):
    """The cost model's upper bound (every attack on every example, no cascade, plus the checks' estimate) of
    the default command, at the pass rate measured with it, stays under 10 minutes; the presets' does not."""
    names = resolve_attacks(tiny, "auto")

    def estimate(plan):
        n = plan.n_examples or 360  # the digits test split
        attacks = _estimated_attack_passes(names, plan.attack_options, 0.1, "Linf", n, plan.n_reeval)
        _, sizing = plan_check_budget(stochastic=True, probe_size=plan.probe_size, attack_passes=attacks,
                                      asked=plan.check_options)
        return attacks + sizing["check_passes_estimate"], sizing["estimated_fraction"]

    total, check_fraction = estimate(_plan(tiny))
    assert check_fraction <= 0.3  # the checks stay on, within their share
    assert total * MEASURED_SECONDS_PER_PASS <= TARGET_SECONDS, total
    full, _ = estimate(_plan(tiny, use_entry_budget=False))
    assert full * MEASURED_SECONDS_PER_PASS > 100 * 3600  # the presets: 12.5M forward-equivalents, days
