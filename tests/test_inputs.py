"""Input contracts beyond the fuzz sweep: what conversions produce, devices, the caller's model kept in place,
eps against the data range, misspelt names, and the monotone_eps check on a flat curve (issue 21 item 4)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

import robustkit
from robustkit import InputError, RegistryError
from robustkit.classifier import kept_placement, module_placement, resolve_device
from robustkit.eval.arguments import check_eps
from robustkit.eval.checks import run_checks
from robustkit.utils import did_you_mean


def tiny(dtype=torch.float32) -> robustkit.Classifier:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5)).to(dtype)
    return robustkit.wrap_classifier(net, input_shape=(3, 4, 4))


def test_half_and_double_images_give_the_float32_logits_of_their_values():
    clf, x = tiny(), torch.rand(6, 3, 4, 4)
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        xd = x.to(dtype)
        # the conversion is exactly x.to(float32) of the given values, not of the original ones
        assert torch.equal(clf(xd), clf(xd.float()))


def test_integer_labels_become_int64_on_the_images_device():
    y = torch.tensor([4, 0, 3], dtype=torch.int16)
    out = robustkit.check_labels(y, 3, 5, device=torch.device("cpu"))
    assert out.dtype == torch.int64 and out.tolist() == [4, 0, 3]


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    for bad in ("foo", "", "cuda:x", 1.5, True, None, "meta"):
        with pytest.raises(InputError, match="device"):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            resolve_device("cuda")
    else:
        with pytest.raises(InputError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_kept_placement_restores_training_flags_after_a_failure():
    clf = tiny()
    clf.net[1].train()  # a mixed state: the wrapper in eval, one layer in train mode
    flags = [m.training for m in clf.modules()]
    with pytest.raises(RuntimeError, match="boom"):
        with kept_placement(clf):
            clf.train()
            raise RuntimeError("boom")
    assert [m.training for m in clf.modules()] == flags


class _FailsLater(robustkit.Classifier):
    """A working classifier that breaks at its third forward (inside the run, after setup)."""

    def __init__(self):
        super().__init__(5, (3, 4, 4))
        self.net = tiny().net
        self.calls = 0

    def logits(self, x):
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("boom")
        return self.net(x)


def test_benchmark_leaves_the_model_as_it_was_after_a_failure():
    clf = _FailsLater()
    clf.train()  # the caller's mode, whatever it is, comes back
    before = {k: v.clone() for k, v in clf.state_dict().items()}
    x, y = torch.rand(4, 3, 4, 4), torch.arange(4)
    with pytest.raises(RuntimeError, match="boom"):
        robustkit.benchmark(clf, dataset="t", data=(x, y), eps=0.1, attacks=["pgd"], checks=False,
                            attack_options={"pgd": {"steps": 3}})
    assert clf.calls == 3 and all(m.training for m in clf.modules())
    assert all(torch.equal(v, before[k]) for k, v in clf.state_dict().items())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_benchmark_on_cuda_leaves_a_cpu_model_on_the_cpu():
    clf = tiny()
    x, y = torch.rand(8, 3, 4, 4), torch.arange(8) % 5
    rec = robustkit.benchmark(clf, dataset="t", data=(x, y), eps=0.1, attacks=["pgd"], checks=False,
                              device="cuda", attack_options={"pgd": {"steps": 2}})
    assert rec.cost["device"].startswith("cuda")
    assert module_placement(clf)[0] == torch.device("cpu")
    with pytest.raises(InputError, match="are on cpu but the classifier is on cuda"):
        clf.cuda()(x)


def test_eps_against_the_threat_model_and_the_data_range():
    check_eps(8 / 255, "Linf", (3, 32, 32))
    check_eps(0.999, "Linf", (3, 32, 32))
    with pytest.raises(InputError, match=r"did you mean 8/255 \(= 0.03137\)"):
        check_eps(8, "Linf", (3, 32, 32))
    with pytest.raises(InputError, match=r">= 1"):
        check_eps(1.5, "Linf", (3, 32, 32))
    diameter = math.sqrt(3 * 32 * 32)  # 55.43: from the all-0 image to the all-1 image
    check_eps(diameter * 0.999, "L2", (3, 32, 32))
    with pytest.raises(InputError, match="55.43"):
        check_eps(diameter, "L2", (3, 32, 32))
    with pytest.raises(InputError, match="did you mean 128/255"):
        check_eps(128, "L2", (3, 32, 32))
    with pytest.raises(InputError, match="did you mean"):
        robustkit.benchmark(tiny(), dataset="t", data=(torch.rand(2, 3, 4, 4), torch.arange(2)), eps="8")


@pytest.mark.parametrize("typed, meant", [("ResNet20.CIFAR10", "resnet20.cifar10"), ("resnet-20.cifar-10", "resnet20.cifar10"),
                                          ("tiny_cnn_digits", "tiny_cnn.digits"), ("TinyCNN.Digits", "tiny_cnn.digits"),
                                          ("resnet20.cifar", "resnet20.cifar10")])
def test_misspelt_classifier_names_are_suggested(typed, meant):
    with pytest.raises(RegistryError, match=f"did you mean .*{meant.replace('.', '[.]')}"):
        robustkit.create_classifier(typed)


def test_did_you_mean_stays_silent_for_unrelated_names():
    assert did_you_mean("zzz", ["resnet20.cifar10", "tiny_cnn.digits"]) == ""
    assert did_you_mean(3, ["a"]) == ""


class _Ignores(robustkit.Classifier):
    """Logits that do not depend on the input (x·0): every attack budget is useless, the curve flat."""

    def __init__(self):
        super().__init__(3, (1, 4, 4))
        self.bias = nn.Parameter(torch.tensor([5.0, 0.0, 0.0]))

    def logits(self, x):
        return self.bias + 0 * x.flatten(1).sum(1, keepdim=True)


def test_monotone_eps_fails_on_a_flat_curve():
    x, y = torch.rand(16, 1, 4, 4), torch.zeros(16, dtype=torch.long)  # all correct, none breakable
    results = {c.name: c for c in run_checks(_Ignores(), x, y, eps=0.1, norm="Linf", steps=2, square_queries=10)}
    mono = results["monotone_eps"]
    assert mono.status == "fail" and mono.blocking and "flat" in mono.message
    assert mono.details["accuracy"] == [1.0, 1.0, 1.0, 1.0]


def test_monotone_eps_passes_a_falling_curve():
    clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    x, y = robustkit.load_dataset("digits", n_examples=16)
    results = {c.name: c for c in run_checks(clf, x, y, eps=0.1, norm="Linf", steps=10, square_queries=10)}
    mono = results["monotone_eps"]
    acc = mono.details["accuracy"]
    assert mono.status == "pass", mono.message
    assert acc[0] > acc[3], acc  # it falls


def test_check_type_follows_the_annotation():
    from typing import Literal, Optional

    from robustkit.utils import check_type

    for value, hint in ((1, float), (0.5, float), (3, int), (True, bool), ("a", str), (None, Optional[int]),
                        (4, int | None), ("ode", Literal["sde", "ode"]), ((0.9, 0.99), tuple[float, float])):
        check_type("f", value, hint)  # accepted
    for value, hint in ((True, float), (math.nan, float), (math.inf, float), ("1", float), (True, int), (2.5, int),
                        (2 ** 64, int), (1, bool), (3, str), ("x", int | None), ("SDE", Literal["sde", "ode"]),
                        (1, Literal[True, False]), (0.9, tuple[float, float])):
        with pytest.raises(InputError, match="^f must be"):
            check_type("f", value, hint)


def test_defense_overrides_are_checked_against_their_fields():
    from robustkit.defenses import create_defense

    with pytest.raises(InputError, match="t_star must be a finite number, got '0.1'"):
        create_defense("tiny_diffpure.digits", t_star="0.1")
    with pytest.raises(InputError, match="seed must be int or None"):
        create_defense("tiny_rdc.digits", seed="x")
    d = create_defense("tiny_diffpure.digits", t_star=0.2)  # a right value still goes through
    assert d.purifier.config.t_star == 0.2


def test_a_failed_benchmark_leaves_no_adapted_state(monkeypatch):
    from robustkit.attacks.pgd import PGD
    from robustkit.defenses import create_defense

    tent = create_defense("tent.tiny_cnn.digits", pretrained=True)
    before = {k: v.clone() for k, v in tent.state_dict().items()}
    x, y = robustkit.load_dataset("digits", n_examples=8)

    def fail(self, *args, **kwargs):
        tent(x)  # the attack's first query adapts the model ...
        raise RuntimeError("attack failed")  # ... then the run fails

    monkeypatch.setattr(PGD, "perturb", fail)
    with pytest.raises(RuntimeError, match="attack failed"):
        robustkit.benchmark(tent, dataset="digits", data=(x, y), eps=0.1, attacks=["pgd"], checks=False)
    after = tent.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
