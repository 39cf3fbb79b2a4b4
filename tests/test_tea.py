"""TEA (EnergyAdaptedClassifier) and the adaptation baselines (source, BN, TENT).

Most tests use a tiny BatchNorm CNN; the parameter-count test uses the real ResNet-20 from
``$ROBUSTKIT_SHARED/models`` (skipped when unset). Every test runs torch on one thread.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn

import robustkit
from robustkit import InputError
from robustkit.defenses import (EnergyAdaptedClassifier, NoNormLayersError, NormStatsClassifier, SourceClassifier,
                                TEAConfig, TentClassifier, create_adapted_defense, list_defenses)
from robustkit.defenses.tea import energy

SHAPE = (1, 8, 8)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: threads only add contention


def tiny_net(seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2),
                        nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(16, 5))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g))
    return net.eval()


def tiny_classifier(seed: int = 0, dtype=torch.float32):
    return robustkit.wrap_classifier(tiny_net(seed).to(dtype), mean=(0.5,), std=(0.25,), input_shape=SHAPE)


def images(n: int, seed: int = 1, dtype=torch.float32) -> torch.Tensor:
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def reference_net(clf) -> nn.Module:
    """An independent copy of the network normalising with batch statistics (train-mode BN)."""
    net = copy.deepcopy(clf.net).train()
    return net


def ref_logits(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return net((x - 0.5) / 0.25)


def bn_params(net: nn.Module) -> list[nn.Parameter]:
    return [p for m in net.modules() if isinstance(m, nn.BatchNorm2d) for p in (m.weight, m.bias)]


# ------------------------------------------------------------------------------------------------ real model

def test_only_norm_affine_parameters_change_resnet20(shared_dir):
    path = shared_dir / "models" / "resnet20-12fca82f.th"
    clf = robustkit.create_classifier("resnet20.cifar10", checkpoint=path)
    base_before = copy.deepcopy(clf.state_dict())
    tea = EnergyAdaptedClassifier(clf, buffer_size=16, sgld_steps=1)
    assert tea.num_adapted_parameters == 1376  # 19 BN layers: 2 x (7*16 + 6*32 + 6*64)
    trainable = {n: p for n, p in tea.model.named_parameters() if p.requires_grad}
    assert sorted(trainable) == sorted(tea.adapted_parameter_names)
    assert sum(p.numel() for p in trainable.values()) == 1376
    before = {n: p.detach().clone() for n, p in tea.model.named_parameters()}
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    tea(x)
    changed = {n for n, p in tea.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= set(tea.adapted_parameter_names)
    n_changed = sum(int((p != before[n]).sum()) for n, p in tea.model.named_parameters())
    assert n_changed >= 0.95 * 1376  # Adam moves every element with a non-zero gradient by ~lr
    after = clf.state_dict()  # the static base model is untouched
    assert all(torch.equal(base_before[k], after[k]) for k in base_before)


# ------------------------------------------------------------------------------------------------ the step

def test_loss_update_and_prediction_match_independent_computation():
    clf = tiny_classifier()
    tea = EnergyAdaptedClassifier(clf, buffer_size=8)
    x, xs = images(6, seed=1), images(6, seed=2)
    tea.sgld_sample = lambda n: xs  # fix the model samples; the rest is checked against a plain computation
    ref = reference_net(clf)
    loss = -torch.logsumexp(ref_logits(ref, x), 1).mean() + torch.logsumexp(ref_logits(ref, xs), 1).mean()
    got_loss, _ = tea.adaptation_loss(lambda z: tea._logits_at(list(tea._params), z), x)
    torch.testing.assert_close(got_loss, loss)
    torch.testing.assert_close(energy(ref_logits(ref, x)), -torch.logsumexp(ref_logits(ref, x), 1))
    opt = torch.optim.Adam(bn_params(ref), lr=1e-3)
    ref.requires_grad_(False)
    for p in bn_params(ref):
        p.requires_grad_(True)
    opt.zero_grad()
    loss.backward()
    opt.step()
    out = tea(x)
    for p_ref, p in zip(bn_params(ref), bn_params(tea.model.net)):
        torch.testing.assert_close(p, p_ref, rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        torch.testing.assert_close(out, ref_logits(ref, x))  # the prediction is a fresh post-update forward


def test_tent_matches_official_rule_and_returns_pre_update_logits():
    clf = tiny_classifier()
    tent = TentClassifier(clf)
    ref = reference_net(clf)
    x = images(6)
    logits = ref_logits(ref, x)
    loss = -(logits.softmax(1) * logits.log_softmax(1)).sum(1).mean()
    opt = torch.optim.Adam(bn_params(ref), lr=1e-3)
    loss.backward()
    opt.step()
    out = tent(x)
    torch.testing.assert_close(out, logits.detach())  # TENT's code returns the adaptation forward's logits
    for p_ref, p in zip(bn_params(ref), bn_params(tent.model.net)):
        torch.testing.assert_close(p, p_ref, rtol=1e-5, atol=1e-7)


def test_bn_adaptation_uses_batch_statistics_and_source_does_not():
    clf = tiny_classifier()
    x = images(6)
    with torch.no_grad():
        torch.testing.assert_close(NormStatsClassifier(clf)(x), ref_logits(reference_net(clf), x))
        torch.testing.assert_close(SourceClassifier(clf)(x), clf(x))
    assert not SourceClassifier(clf).traits.adapts_at_test_time


# ------------------------------------------------------------------------------------------------ SGLD

def test_sgld_step_without_noise_is_gradient_ascent_on_logsumexp():
    clf = tiny_classifier()
    tea = EnergyAdaptedClassifier(clf, buffer_size=8)
    x = images(5, seed=3)
    z = x.clone().requires_grad_(True)
    torch.logsumexp(ref_logits(reference_net(clf), z), 1).sum().backward()
    got = tea.sgld_step(x, noise=torch.zeros_like(x))
    torch.testing.assert_close(got, x + 0.1 * z.grad)


def test_sgld_reinit_frequency_and_sources():
    tea = EnergyAdaptedClassifier(tiny_classifier(), buffer_size=50, reinit_prob=0.05)
    tea.sgld_buffer.fill_(7.0)  # outside the noise range, so buffer-started chains are recognisable
    n = 20_000
    chains = tea.sgld_init(n)
    freq = chains.reinit.double().mean().item()
    # Binomial(20000, 0.05): sd = sqrt(.05 * .95 / 20000) = 0.00154; tolerance 5 sd (false alarm ~6e-7)
    assert abs(freq - 0.05) < 5 * math.sqrt(0.05 * 0.95 / n)
    assert bool((chains.x[~chains.reinit] == 7.0).all())
    noise = chains.x[chains.reinit]  # the official U(-1, 1): sd 1/sqrt(3) = 0.577
    assert noise.min() >= -1 and noise.max() <= 1 and noise.min() < -0.9 and abs(noise.std() - 0.577) < 0.02
    assert chains.indices.min() >= 0 and chains.indices.max() < 50 and len(chains.indices.unique()) == 50


def test_sgld_samples_are_written_back_to_their_slots():
    tea = EnergyAdaptedClassifier(tiny_classifier(), buffer_size=64, sgld_steps=3)
    before = tea.sgld_buffer.clone()
    state = tea.generator(torch.device("cpu")).get_state()
    idx = tea.sgld_init(10).indices
    tea.generator(torch.device("cpu")).set_state(state)
    x = tea.sgld_sample(10)
    last = {int(i): j for j, i in enumerate(idx)}  # the last write wins for repeated slots
    for slot, j in last.items():
        torch.testing.assert_close(tea.sgld_buffer[slot], x[j])
    untouched = torch.ones(64, dtype=torch.bool)
    untouched[idx] = False
    assert torch.equal(tea.sgld_buffer[untouched], before[untouched])


def test_official_buffer_range_is_the_default_and_in_domain_is_an_option():
    # yuanyige/tea core/adazoo/energy.py: init_random = uniform_(-1, 1), in the [0, 1] pixel space of
    # RobustBench's WRN-28-10 (no normalisation), i.e. in robustkit's input convention as it is
    assert TEAConfig().buffer_range == (-1.0, 1.0)
    default = EnergyAdaptedClassifier(tiny_classifier(), buffer_size=2000)
    buf = default.sgld_buffer
    assert buf.min() >= -1 and buf.max() <= 1 and buf.min() < -0.99 and buf.max() > 0.99
    assert abs(float((buf < 0).double().mean()) - 0.5) < 0.01  # half of each pixel range outside [0, 1]
    inside = EnergyAdaptedClassifier(tiny_classifier(), buffer_size=500, buffer_range=(0.0, 1.0))
    assert inside.sgld_buffer.min() >= 0 and inside.sgld_buffer.max() <= 1
    assert inside.sgld_init(2000).x.min() >= 0


# ------------------------------------------------------------------------------------------------ state

def test_reset_restores_parameters_and_optimiser_state_and_optionally_the_buffer():
    tea = EnergyAdaptedClassifier(tiny_classifier(), buffer_size=16, sgld_steps=2)
    init = [p.detach().clone() for p in tea._params]
    tea(images(6))
    tea(images(6, seed=2))
    assert int(tea.adam_step) == 2 and any(not torch.equal(p, q) for p, q in zip(tea._params, init))
    buf = tea.sgld_buffer.clone()
    tea.reset()
    assert int(tea.adam_step) == 0
    assert all(torch.equal(p, q) for p, q in zip(tea._params, init))
    assert all(float(getattr(tea, f"exp_avg{s}_{i}").abs().sum()) == 0
               for i in range(len(init)) for s in ("", "_sq"))
    assert torch.equal(tea.sgld_buffer, buf)  # the authors' code keeps the buffer
    tea2 = EnergyAdaptedClassifier(tiny_classifier(), buffer_size=16, sgld_steps=2, reset_buffer=True)
    tea2(images(6))
    buf2 = tea2.sgld_buffer.clone()
    tea2.reset()
    assert not torch.equal(tea2.sgld_buffer, buf2) and tea2.sgld_buffer.min() >= -1 and tea2.sgld_buffer.max() <= 1


@pytest.mark.parametrize("cls", [EnergyAdaptedClassifier, TentClassifier, NormStatsClassifier])
def test_snapshot_and_restore_cover_parameters_optimiser_and_buffer(cls):
    kw = {"buffer_size": 16, "sgld_steps": 2} if cls is EnergyAdaptedClassifier else {}
    m = cls(tiny_classifier(), **kw)
    m(images(6, seed=7))
    snap = m.snapshot_state()
    names = {"adam_step", *(f"{k}_{i}" for k in ("param", "exp_avg", "exp_avg_sq") for i in range(len(m._params)))}
    assert set(snap) == names | ({"sgld_buffer"} if cls is EnergyAdaptedClassifier else set())
    before = {k: v.clone() for k, v in snap.items()}
    out = m(images(6, seed=8))
    if cls is not NormStatsClassifier:  # BN keeps no state: nothing to change
        assert any(not torch.equal(m.snapshot_state()[k], before[k]) for k in before)
    m.restore_state(snap)
    assert all(torch.equal(m.snapshot_state()[k], before[k]) for k in before)
    if cls is not EnergyAdaptedClassifier:  # deterministic: the same state gives the same prediction
        torch.testing.assert_close(m(images(6, seed=8)), out)
    snap.pop("adam_step")
    with pytest.raises(InputError, match="does not fit"):
        m.restore_state(snap)


def test_restored_buffer_makes_tea_repeat_given_the_same_noise():
    tea = EnergyAdaptedClassifier(tiny_classifier(), buffer_size=16, sgld_steps=2, seed=1)
    tea(images(6, seed=3))
    snap = tea.snapshot_state()
    rng = tea.generator(torch.device("cpu")).get_state()
    first = tea(images(6))
    tea.restore_state(snap)
    tea.generator(torch.device("cpu")).set_state(rng)
    torch.testing.assert_close(tea(images(6)), first)
    tea.reset()  # the source parameters and optimiser, but (authors' code) the evolved buffer
    tea.generator(torch.device("cpu")).set_state(rng)
    assert not torch.allclose(tea(images(6)), first)


def test_reset_makes_the_next_prediction_match_a_fresh_model():
    x = images(6)
    a, b = TentClassifier(tiny_classifier()), TentClassifier(tiny_classifier())
    a(images(6, seed=5))
    a.reset()
    torch.testing.assert_close(a(x), b(x))


def test_episodic_versus_continual():
    x = images(6)
    cont, epi = TentClassifier(tiny_classifier()), TentClassifier(tiny_classifier(), episodic=True)
    c1, c2 = cont(x), cont(x)
    e1, e2 = epi(x), epi(x)
    assert int(cont.adam_step) == 2 and int(epi.adam_step) == 1
    torch.testing.assert_close(e1, e2)
    torch.testing.assert_close(c1, e1)
    assert not torch.allclose(c2, e2)


def test_global_rng_untouched_and_seeded_runs_repeat():
    clfs = [tiny_classifier(), tiny_classifier()]  # nn.Module initialisers draw from the global RNG: build first
    state = torch.random.get_rng_state()
    outs = []
    for clf in clfs:
        tea = EnergyAdaptedClassifier(clf, buffer_size=16, sgld_steps=2, seed=3)
        outs.append(tea(images(6)))
        tea.reset()
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.testing.assert_close(outs[0], outs[1])
    other = EnergyAdaptedClassifier(tiny_classifier(), buffer_size=16, sgld_steps=2, seed=4)
    assert not torch.equal(other.sgld_buffer, tea.sgld_buffer)


def test_forward_under_no_grad_still_adapts():
    tea = EnergyAdaptedClassifier(tiny_classifier(), buffer_size=16, sgld_steps=1)
    with torch.no_grad():
        out = tea(images(6))
    assert not out.requires_grad and int(tea.adam_step) == 1


# ------------------------------------------------------------------------------------------------ gradients

def _snapshot(model):
    snap = {"state": copy.deepcopy(model.state_dict())}
    if isinstance(model, EnergyAdaptedClassifier):
        snap["buffer"] = model.sgld_buffer.clone()
        snap["rng"] = model.generator(torch.device("cpu")).get_state()
    return snap


def _restore(model, snap):
    model.load_state_dict(snap["state"])
    if "buffer" in snap:
        model.sgld_buffer.copy_(snap["buffer"])
        model.generator(torch.device("cpu")).set_state(snap["rng"])


@pytest.mark.parametrize("cls", [TentClassifier, EnergyAdaptedClassifier])
def test_input_gradient_is_exact_through_the_update(cls):
    kw = {"buffer_size": 16, "sgld_steps": 2} if cls is EnergyAdaptedClassifier else {}
    model = cls(tiny_classifier(dtype=torch.float64), predict_after_update=True, **kw).double()
    model(images(6, seed=9, dtype=torch.float64))  # one continual step first: Adam past its sign-like first step
    x = 0.25 + 0.5 * images(6, seed=1, dtype=torch.float64)
    d = images(6, seed=2, dtype=torch.float64) - 0.5
    w = images(1, seed=3, dtype=torch.float64).flatten()[:5]
    snap = _snapshot(model)
    xg = x.clone().requires_grad_(True)
    (model(xg) @ w).sum().backward()
    analytic = float((xg.grad * d).sum())
    h = 1e-5
    vals = []
    for sign in (1, -1):
        _restore(model, snap)
        with torch.no_grad():
            vals.append(float((model(x + sign * h * d) @ w).sum()))
    numeric = (vals[0] - vals[1]) / (2 * h)
    assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-8)
    # and the path through the update is really there: freezing it changes the gradient
    _restore(model, snap)
    xg2 = x.clone().requires_grad_(True)
    model.model.net.train()
    frozen = (ref_logits_from(model, xg2) @ w).sum()
    (g2,) = torch.autograd.grad(frozen, xg2)
    assert abs(float((g2 * d).sum()) - analytic) > 1e-9


def ref_logits_from(model, x):
    return model.model.logits(x)  # batch statistics, current (pre-update) parameters, no adaptation step


# ------------------------------------------------------------------------------------ traits, errors, registry

def test_traits_are_declared_honestly():
    clf = tiny_classifier()
    t = EnergyAdaptedClassifier(clf, buffer_size=4).traits
    assert (t.stochastic, t.adapts_at_test_time, t.gradient, t.forward_passes) == (True, True, "exact", 23)
    t = TentClassifier(clf).traits
    assert (t.stochastic, t.adapts_at_test_time, t.forward_passes) == (False, True, 1)
    assert TentClassifier(clf, predict_after_update=True).traits.forward_passes == 2
    with pytest.raises(InputError, match="no adaptation hyperparameters"):
        SourceClassifier(clf, episodic=True)
    assert NormStatsClassifier(clf).traits.adapts_at_test_time
    assert EnergyAdaptedClassifier(clf, buffer_size=4).base_classifier is clf


def test_errors():
    flat = robustkit.wrap_classifier(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), input_shape=SHAPE)
    for cls in (EnergyAdaptedClassifier, TentClassifier, NormStatsClassifier):
        with pytest.raises(NoNormLayersError, match="no BatchNorm"):
            cls(flat)
    assert issubclass(NoNormLayersError, InputError)
    clf = tiny_classifier()
    with pytest.raises(InputError, match="robustkit Classifier"):
        EnergyAdaptedClassifier(tiny_net())
    with pytest.raises(InputError, match="unknown TEAConfig"):
        EnergyAdaptedClassifier(clf, sgld_lr=1.0)
    with pytest.raises(InputError, match="buffer_range"):
        TEAConfig(buffer_range=(1.0, 0.0))
    with pytest.raises(InputError, match="steps"):
        TEAConfig(steps=0)
    with pytest.raises(InputError, match="reinit_prob"):
        TEAConfig(reinit_prob=1.5)
    with pytest.raises(InputError, match="must be a TEAConfig"):
        EnergyAdaptedClassifier(clf, config=robustkit.defenses.TentConfig())
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        EnergyAdaptedClassifier(clf, buffer_size=4)(images(2) + 2)


def test_registry_entries():
    names = list_defenses("*.cifar10")
    for method in ("tea", "tent", "bn"):
        for arch in ("resnet20", "resnet56", "wrn28_10"):
            assert f"{method}.{arch}.cifar10" in names
        assert f"{method}.tiny_cnn.digits" in list_defenses("*.digits")
    tea = create_adapted_defense("tea.tiny_cnn.digits", pretrained=True, buffer_size=8, sgld_steps=1)
    assert isinstance(tea, EnergyAdaptedClassifier) and tea.config.lr == 1e-3 and tea.config.sgld_noise == 0.01
    assert isinstance(create_adapted_defense("tent.tiny_cnn.digits", pretrained=True), TentClassifier)
    assert isinstance(create_adapted_defense("bn.tiny_cnn.digits", pretrained=True), NormStatsClassifier)
    r20 = create_adapted_defense("tea.resnet20.cifar10", buffer_size=4)  # random weights: no file needed
    assert r20.num_adapted_parameters == 1376 and r20.input_shape == (3, 32, 32)
    wrn = create_adapted_defense("tent.wrn28_10.cifar10")  # random weights: no file needed
    assert isinstance(wrn, TentClassifier) and wrn.defense_config.classifier == "wrn28_10.cifar10"
    # WRN-28-10's 25 BN layers: 4 blocks (bn1, bn2) per group of widths 160/320/640, then the final bn1
    channels = (16 + 160 + 3 * 320) + (160 + 320 + 6 * 320) + (320 + 640 + 6 * 640) + 640
    assert wrn.num_adapted_parameters == 2 * channels == 17_952
    with pytest.raises(InputError, match="not a test-time adaptation defense"):
        create_adapted_defense("tiny_diffpure.digits")
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert tea(x).shape == (8, 10)
