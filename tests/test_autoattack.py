"""robustkit's AutoAttack is pyautoattack: identical flags to calling it directly with the same seed."""

import logging

import pytest
import torch

import robustkit
from robustkit.attacks import AutoAttack, TorchAttack
from robustkit import InputError


def test_custom_version_validation():
    with pytest.raises(InputError):
        AutoAttack(eps=0.1, version="plus")
    with pytest.raises(InputError):
        AutoAttack(eps=0.1, version="custom")
    with pytest.raises(InputError):
        AutoAttack(eps=0.1, version="custom", attacks=("apgd-ce", "bogus"))
    with pytest.raises(InputError):
        AutoAttack(eps=0.1, version="standard", attacks=("apgd-ce",))
    p = AutoAttack(eps=0.1, version="rand").protocol()
    assert p["sub_attacks"] == ["apgd-ce", "apgd-dlr"] and p["eot"] == 20 and p["steps"] == 100


def test_torchattacks_autoattack_is_refused():
    with pytest.raises(InputError, match="10 iterations"):
        TorchAttack("AutoAttack", eps=0.1)
    with pytest.raises(InputError, match="no attack named"):
        TorchAttack("Nope", eps=0.1)


def test_global_rng_is_untouched_by_pyautoattack():
    clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    x, y = robustkit.load_dataset("digits", n_examples=8)
    before = torch.random.get_rng_state()
    AutoAttack(eps=0.1, version="custom", attacks=("apgd-ce",), seed=5)(clf, x, y)
    assert torch.equal(before, torch.random.get_rng_state())


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.NOTSET)
        self.names: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.names.append(record.name)


@pytest.mark.parametrize("root_level, leaks", [(logging.WARNING, False), (logging.DEBUG, True)])
def test_cascade_is_read_without_leaking_debug_lines_to_the_users_handlers(root_level, leaks):
    clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    x, y = robustkit.load_dataset("digits", n_examples=8)
    root, seen = logging.getLogger(), _Records()
    old_level = root.level
    root.addHandler(seen)
    root.setLevel(root_level)
    try:
        res = AutoAttack(eps=0.1, version="custom", attacks=("apgd-ce",), seed=5)(clf, x, y)
    finally:
        root.removeHandler(seen)
        root.setLevel(old_level)
    assert "apgd-ce" in res.info["cascade"]  # our handler still read pyautoattack's cascade line
    assert ("auto-attack" in seen.names) == leaks
    assert logging.getLogger("auto-attack").propagate


@pytest.mark.slow
def test_standard_flags_equal_direct_pyautoattack_on_resnet20(shared_dir):
    from pyautoattack import AutoAttack as Original

    clf = robustkit.create_classifier("resnet20.cifar10", checkpoint=shared_dir / "models" / "resnet20-12fca82f.th")
    x, y = robustkit.load_dataset("cifar10", n_examples=100, data_dir=shared_dir / "data")
    ours = AutoAttack(eps=8 / 255, version="standard", seed=0)(clf, x, y)
    torch.manual_seed(0)
    direct = Original(clf, norm="Linf", eps=8 / 255, version="standard", seed=0)
    x_adv, _ = direct.run_standard_evaluation(x, y, batch_size=250)
    with torch.no_grad():
        flags = clf(x_adv).argmax(1) == y
    assert torch.equal(ours.robust, flags)
    # bit-exact points: the wrapper's projection leaves pyautoattack's (feasible) points untouched
    assert torch.equal(ours.x_adv, x_adv)
    assert ours.info["cascade"]["apgd-ce"] >= ours.robust_accuracy


@pytest.mark.slow
def test_flags_equal_direct_pyautoattack_when_points_survive_the_cascade():
    """At 8/255 every ResNet-20 point falls to APGD-CE, so its flags are all False; here some survive
    APGD-CE and Square runs on the survivors only, so the flags (and indexing) are informative."""
    from pyautoattack import AutoAttack as Original

    clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    x, y = robustkit.load_dataset("digits", n_examples=24)
    subs = ("apgd-ce", "square")
    ours = AutoAttack(eps=0.05, version="custom", attacks=subs, square_queries=200, seed=3)(clf, x, y)
    direct = Original(clf, norm="Linf", eps=0.05, version="custom", attacks=list(subs), seed=3)
    direct.square.n_queries = 200
    x_adv, _ = direct.run_standard_evaluation(x, y, batch_size=250)
    with torch.no_grad():
        flags = clf(x_adv).argmax(1) == y
    assert 0 < int(flags.sum()) < int(ours.clean_correct.sum())  # the comparison is informative
    assert torch.equal(ours.robust, flags)
    assert torch.equal(ours.x_adv, x_adv)
    assert ours.info["cascade"]["square"] == pytest.approx(ours.robust_accuracy, abs=1e-4)


def test_reduced_steps_match_a_freshly_built_apgd_and_are_recorded():
    from pyautoattack.autopgd_base import APGDAttack

    from robustkit.attacks.autoattack import _set_apgd_steps

    for steps in (1, 7, 10, 37, 250):
        built = APGDAttack(torch.nn.Identity(), n_iter=100, eps=0.1)
        _set_apgd_steps(built, steps)
        fresh = APGDAttack(torch.nn.Identity(), n_iter=steps, eps=0.1)
        for attr in ("n_iter", "n_iter_orig", "n_iter_2", "n_iter_min", "size_decr"):
            assert getattr(built, attr) == getattr(fresh, attr), (steps, attr)
    p = AutoAttack(eps=0.1, version="rand", steps=10, eot=2).protocol()
    assert (p["steps"], p["eot"]) == (10, 2)
    with pytest.raises(InputError, match="steps"):
        AutoAttack(eps=0.1, version="rand", steps=0)


class _CountingForwards(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def test_reduced_steps_run_that_many_iterations():
    # eps so small that no point breaks: both sub-attacks of 'rand' (1 restart, EOT 1) run every
    # iteration on the whole batch, so 5 fewer steps mean exactly 2 x 5 fewer forwards
    clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    x, y = robustkit.load_dataset("digits", n_examples=8)
    calls = {}
    for steps in (5, 10):
        model = _CountingForwards(clf)
        AutoAttack(eps=1e-6, version="rand", steps=steps, eot=1, seed=0).perturb(model, x, y, torch.Generator())
        calls[steps] = model.calls
    assert calls[10] - calls[5] == 2 * 5


def test_fab_steps_run_that_many_fab_iterations_per_target():
    # FAB-T of 'standard' attacks 9 target classes; each iteration costs two forwards (the logit-difference
    # gradients, then the step's check), and at eps 1e-6 no point breaks, so every iteration runs
    clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    x, y = robustkit.load_dataset("digits", n_examples=8)
    calls = {}
    for steps in (3, 6, 9):
        model = _CountingForwards(clf)
        attack = AutoAttack(eps=1e-6, version="custom", attacks=("fab-t",), fab_steps=steps, seed=0)
        attack.perturb(model, x, y, torch.Generator())
        calls[steps] = model.calls
        assert attack.protocol()["fab_steps"] == steps
    assert calls[6] - calls[3] == calls[9] - calls[6] == 3 * 2 * 9
    assert AutoAttack(eps=0.1).protocol()["fab_steps"] == 100  # pyautoattack's default, recorded
    assert AutoAttack(eps=0.1, version="rand").protocol()["fab_steps"] == 0  # no FAB in 'rand'
    with pytest.raises(InputError, match="fab_steps"):
        AutoAttack(eps=0.1, fab_steps=0)


@pytest.mark.parametrize("sub", ["apgd-t", "fab-t"])
def test_target_classes_sets_how_many_classes_the_targeted_attacks_run(sub):
    # at eps 1e-6 no point breaks, so each target class costs the same fixed number of forwards
    clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    x, y = robustkit.load_dataset("digits", n_examples=8)
    calls = {}
    for k in (1, 2, 4):
        model = _CountingForwards(clf)
        attack = AutoAttack(eps=1e-6, version="custom", attacks=(sub,), steps=3, fab_steps=3, target_classes=k,
                            seed=0)
        attack.perturb(model, x, y, torch.Generator())
        calls[k] = model.calls
        assert attack.protocol()["target_classes"] == k
    per_target = calls[2] - calls[1]
    assert per_target > 0 and calls[4] - calls[2] == 2 * per_target
    assert AutoAttack(eps=0.1).protocol()["target_classes"] == 9  # pyautoattack's default, recorded
    assert AutoAttack(eps=0.1, version="rand").protocol()["target_classes"] == 0  # nothing targeted in 'rand'
    with pytest.raises(InputError, match="target_classes"):
        AutoAttack(eps=0.1, target_classes=True)
    with pytest.raises(InputError, match="only 9 wrong classes"):
        AutoAttack(eps=0.1, target_classes=10).perturb(clf, x, y, torch.Generator())


@pytest.mark.parametrize("version,attacks,skipped", [("custom", ("apgd-ce",), 7), ("rand", None, 2)])
def test_upstream_checks_cost_forwards_and_are_off_by_default(version, attacks, skipped):
    # pyautoattack's pre-attack checks forward the batch 5 times (randomized? not in 'rand'), once
    # (probabilities?) and once under sys.settrace (dynamic?): robustkit's own checks cover them
    import pyautoattack.autoattack as upstream

    clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    x, y = robustkit.load_dataset("digits", n_examples=8)
    calls, advs = {}, {}
    for on in (True, False):
        n = [0]
        hook = clf.register_forward_pre_hook(lambda *_: n.__setitem__(0, n[0] + 1))
        try:
            attack = AutoAttack(eps=0.1, version=version, attacks=attacks, steps=3, eot=1, upstream_checks=on,
                                seed=0)
            res = attack(clf, x, y)
        finally:
            hook.remove()
        calls[on], advs[on] = n[0], res.x_adv
        assert res.info["upstream_checks"] is on
    assert calls[True] - calls[False] == skipped
    assert torch.equal(advs[True], advs[False])  # the attack itself is untouched
    assert upstream.checks.__name__ == "pyautoattack.checks"  # the module is restored afterwards
    # a bare module has no num_classes: only the output-range check, which counts the classes, still runs
    bare = {}
    for on in (True, False):
        model = _CountingForwards(clf)
        AutoAttack(eps=0.1, version=version, attacks=attacks, steps=3, eot=1, upstream_checks=on,
                   seed=0).perturb(model, x, y, torch.Generator())
        bare[on] = model.calls
    assert bare[True] - bare[False] == skipped - 1
    with pytest.raises(InputError, match="upstream_checks"):
        AutoAttack(eps=0.1, upstream_checks="no")


def test_target_count_is_validated_through_the_counting_wrapper():
    clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    x, y = robustkit.load_dataset("digits", n_examples=4)
    with pytest.raises(InputError, match="only 9 wrong classes"):
        AutoAttack(eps=0.1, target_classes=10)(clf, x, y)


def test_building_the_attack_logs_nothing_at_info(caplog):
    # pyautoattack announces its version at INFO whenever it is built (protocol() builds it too)
    with caplog.at_level("INFO"):
        AutoAttack(eps=0.1, version="standard").protocol()
        AutoAttack(eps=0.1, version="rand").protocol()
    assert not [r for r in caplog.records if r.name == "auto-attack"]
    assert logging.getLogger("auto-attack").level == logging.NOTSET  # its level is restored
