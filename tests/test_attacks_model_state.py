"""Harness-wide guarantee: an attack never changes the model it attacks, and always verifies in eval mode.

Every registered attack (each preset, ``transfer``, and every torchattacks attack through the adapter)
runs on a classifier with BatchNorm and Dropout whose predictions differ between train and eval mode.
After the attack its state_dict and every submodule's training flag are what they were, every forward
ran in eval mode, and ``robust`` equals an independent eval-mode re-classification of ``x_adv``.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn

import robustkit
from robustkit.attacks import TorchAttack, TransferAttack, list_attacks, make_attack
from robustkit.attacks.torchattacks_adapter import REFUSED

EPS = 0.1


class _ModeProbe(nn.Module):
    """Identity that logs whether each forward ran in training mode."""

    def __init__(self):
        super().__init__()
        self.modes: list[bool] = []

    def forward(self, x):
        self.modes.append(self.training)
        return x


def _bn_classifier(seed: int = 0) -> tuple[robustkit.Classifier, _ModeProbe]:
    torch.manual_seed(seed)
    probe = _ModeProbe()
    net = nn.Sequential(probe, nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.3),
                        nn.Flatten(), nn.Linear(8 * 8 * 8, 10))
    with torch.no_grad():  # running statistics far from any batch's: train mode predicts differently
        net[2].running_mean.uniform_(-1, 1)
        net[2].running_var.uniform_(0.5, 2)
    return robustkit.wrap_classifier(net, input_shape=(1, 8, 8)), probe


def _data(clf: robustkit.Classifier, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    clf.eval()
    with torch.no_grad():
        y = clf(x).argmax(1)  # every example clean-correct in eval mode
    y[-1] = (y[-1] + 1) % 10  # and one that is not
    return x, y


# small budgets: the guarantee does not depend on them
PRESET_OPTIONS = {
    "autoattack-standard": {"steps": 3, "fab_steps": 3, "square_queries": 20, "target_classes": 2},
    "autoattack-rand": {"steps": 3, "eot": 2},
    "autoattack-custom": {"attacks": "apgd-ce,square", "steps": 3, "square_queries": 20},
    "pgd": {"steps": 3}, "pgd-eot": {"steps": 3, "eot": 2}, "apgd-ce": {"steps": 3}, "apgd-dlr": {"steps": 3},
    "apgd-eot": {"steps": 3, "eot": 2}, "bpda-eot": {"steps": 3, "eot": 2, "recheck": 3},
    "square": {"square_queries": 20},
    "diffhammer": {"steps": 2, "n_eval": 2}, "diffattack": {"steps": 2, "eot": 1},
}
# attacks on diffusion purification: run on the classifier behind a (small, analytic) DiffPure
PURIFICATION_ATTACKS = {"diffhammer", "diffattack"}
TORCHATTACKS_OPTIONS = {
    "APGD": {"steps": 3}, "APGDT": {"steps": 3}, "BIM": {"steps": 3}, "CW": {"steps": 5},
    "DIFGSM": {"steps": 3}, "DeepFool": {"steps": 3}, "EADEN": {"max_iterations": 10, "binary_search_steps": 2},
    "EADL1": {"max_iterations": 10, "binary_search_steps": 2}, "EOTPGD": {"steps": 3}, "FAB": {"steps": 3},
    "FFGSM": {}, "FGSM": {}, "GN": {}, "Jitter": {"steps": 3}, "MIFGSM": {"steps": 3}, "NIFGSM": {"steps": 3},
    "OnePixel": {"steps": 2, "popsize": 4}, "PGD": {"steps": 3}, "PGDRS": {"steps": 2, "noise_batch_size": 2},
    "RFGSM": {"steps": 3}, "SINIFGSM": {"steps": 3, "m": 2}, "SPSA": {"nb_iter": 2, "nb_sample": 16},
    "SparseFool": {"steps": 2}, "Square": {"n_queries": 20}, "TPGD": {"steps": 3}, "UPGD": {"steps": 3},
    "VANILA": {}, "VMIFGSM": {"steps": 3, "N": 2}, "VNIFGSM": {"steps": 3, "N": 2},
}
# not run here, and why (each is still refused or usable as documented)
TORCHATTACKS_LEFT_OUT = {
    "LGV": "needs a training loader to fine-tune surrogate models",
    "JSMA": "targeted saliency-map attack whose Jacobian loop costs minutes even on this model",
    "Pixle": "restarts x iterations of per-image searches: minutes even on this model",
    "PIFGSM": "its 'max_epsilon' replaces eps (the adapter passes eps), and it needs 3-channel images",
    "PIFGSMPP": "as PIFGSM",
    "TIFGSM": "its 15x15 kernel is for 3-channel images",
    "PGDRSL2": "an L2 attack (this test runs Linf)",
    "PGDL2": "an L2 attack (this test runs Linf)",
}


def _torchattacks_names() -> list[str]:
    import torchattacks

    return sorted(n for n in dir(torchattacks) if isinstance(getattr(torchattacks, n), type)
                  and issubclass(getattr(torchattacks, n), torchattacks.attack.Attack)
                  and n not in ("Attack", *REFUSED))


def test_every_torchattacks_attack_is_run_or_left_out_with_a_reason():
    names = set(_torchattacks_names())
    assert names == set(TORCHATTACKS_OPTIONS) | set(TORCHATTACKS_LEFT_OUT)
    assert set(PRESET_OPTIONS) == set(list_attacks())


def _attack(name: str, clf: robustkit.Classifier):
    if name == "transfer":
        source, _ = _bn_classifier(seed=3)
        return TransferAttack(source, make_attack("pgd", eps=EPS, steps=3))
    if name.startswith("torchattacks:"):
        short = name.split(":", 1)[1]
        return TorchAttack(short, eps=EPS, **TORCHATTACKS_OPTIONS[short])
    return make_attack(name, eps=EPS, **PRESET_OPTIONS[name])


@pytest.mark.parametrize("name", [*sorted(PRESET_OPTIONS), "transfer",
                                  *(f"torchattacks:{n}" for n in sorted(TORCHATTACKS_OPTIONS))])
def test_attack_leaves_the_model_unchanged_and_verifies_in_eval_mode(name):
    clf, probe = _bn_classifier()
    x, y = _data(clf)
    clf.train()
    clf.net[4].eval()  # a mix of flags: each must come back as it was
    flags = {k: m.training for k, m in clf.named_modules()}
    state = {k: v.clone() for k, v in clf.state_dict().items()}
    probe.modes.clear()
    attack = _attack(name, clf)
    target = clf
    if name in PURIFICATION_ATTACKS:
        from robustkit.defenses import DiffPureConfig, DiffPurePurifier, PurifiedClassifier
        from robustkit.defenses.diffpure import GaussianScoreModel

        target = PurifiedClassifier(DiffPurePurifier(GaussianScoreModel((1, 8, 8)), DiffPureConfig(t_star=0.01)),
                                    clf, seed=0)
        target.train()
        clf.net[4].eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no restoration was needed
        res = attack(target, x, y)
    assert {k: m.training for k, m in clf.named_modules()} == flags
    for k, v in clf.state_dict().items():
        assert torch.equal(v, state[k]), f"{name} changed {k}"
    assert probe.modes and not any(probe.modes), f"{name}: {sum(probe.modes)} forward(s) in training mode"
    assert "model_state_restored" not in res.info
    if target is not clf:  # a stochastic defense: the verification is one more draw, not re-checkable here
        return
    clf.eval()
    with torch.no_grad():
        truth = (clf(x).argmax(1) == y) & (clf(res.x_adv).argmax(1) == y)
    assert torch.equal(res.robust, truth)
    assert not bool(res.robust[-1])


class _TrainModeAttack(robustkit.attacks.Attack):
    """An attack that, like torchattacks with ``set_model_training_mode``, runs its queries in training mode."""

    name = "train-mode"

    def perturb(self, model, x, y, generator):
        inner = model.model
        inner.train()  # reaches past the counting wrapper: the harness must still query in eval mode
        with torch.no_grad():
            inner(x)  # a forward in training mode updates BatchNorm's running statistics
        return x


def test_an_attack_that_switches_the_model_to_training_mode_is_undone_and_recorded():
    clf, probe = _bn_classifier()
    x, y = _data(clf)
    clf.eval()
    state = {k: v.clone() for k, v in clf.state_dict().items()}
    with pytest.warns(RuntimeWarning, match="restored before the verification"):
        res = _TrainModeAttack(eps=EPS)(clf, x, y)
    assert "net.2.running_mean" in res.info["model_state_restored"]
    for k, v in clf.state_dict().items():
        assert torch.equal(v, state[k])
    assert not clf.training and probe.modes[-1] is False  # the verification forward ran in eval mode
    assert res.robust[:-1].all()  # x_adv = x: robust wherever clean-correct, as the eval-mode model says


def test_torchattacks_queries_outside_the_box_are_clamped_and_recorded():
    clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    x, y = robustkit.load_dataset("digits", n_examples=16)
    # Nesterov look-ahead x_adv + decay * alpha * momentum leaves [0, 1]: the Classifier would refuse it
    res = TorchAttack("NIFGSM", eps=EPS, steps=5, alpha=0.05)(clf, x, y)
    assert res.info["queries_clamped_to_box"] > 0 and res.info["max_query_excursion_outside_box"] > 0
    assert res.robust_accuracy < res.clean_accuracy
    res = TorchAttack("FGSM", eps=EPS)(clf, x, y)  # one gradient at x itself: nothing to clamp
    assert res.info["queries_clamped_to_box"] == 0 and res.info["max_query_excursion_outside_box"] == 0.0


def test_autoattack_custom_string_is_one_name_or_a_comma_separated_list():
    from robustkit.attacks import AutoAttack

    assert AutoAttack(eps=EPS, version="custom", attacks="apgd-ce").attacks == ("apgd-ce",)
    assert AutoAttack(eps=EPS, version="custom", attacks="apgd-ce, square").attacks == ("apgd-ce", "square")
    assert make_attack("autoattack-custom", eps=EPS, attacks="square").protocol()["sub_attacks"] == ["square"]
    with pytest.raises(robustkit.InputError, match=r"\['apgd-x'\]"):
        AutoAttack(eps=EPS, version="custom", attacks="apgd-ce,apgd-x")
