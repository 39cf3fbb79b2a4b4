"""ContrastiveGuidedPurifier: the losses and the guidance against independent computations, the guided solve
against a naive loop written here, exact gradients against finite differences, randomness, the online-head
declaration, input validation and the registry entries.

The reference loss below is written per anchor from Robinson et al. (ICLR 2021, Eqs. 3–5), independently of
the vectorised code under test; NT-Xent is checked in its cross-entropy form.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import warnings
import weakref

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import robustkit
from robustkit.defenses import (CONTRASTIVE_PRESETS, ContrastiveNoise, GatedProjectionHead, HeadState,
                                official_contrastive_loss,
                                ContrastiveGuidanceConfig, ContrastiveGuidedPurifier, ContrastivePurifiedClassifier,
                                ContrastiveScoreModel,
                                DiffPureConfig, DiffPurePurifier, GaussianScoreModel, PurifiedClassifier,
                                create_contrastive_purification, create_defense, debiased_contrastive_loss,
                                defense_config, info_nce_loss, list_defenses)
from robustkit.diffusion.schedule import VPSDE
from robustkit.errors import InputError

SHAPE = (1, 4, 4)
CFG = DiffPureConfig(t_star=0.1, dt=0.02)  # 5 Euler steps; guided from step 2: 3 guided steps


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: threads only add contention


class Wavy(GaussianScoreModel):
    """The Gaussian optimum plus a smooth nonlinear term (so the score model's Jacobian is not trivial)."""

    def predict_noise(self, x_t, t, y):
        return super().predict_noise(x_t, t, y) + 0.1 * torch.sin(2.0 * x_t)


def _classifier(dtype=torch.float64) -> robustkit.Classifier:
    g = torch.Generator().manual_seed(3)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 6), nn.Tanh(), nn.Linear(6, 3))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return robustkit.wrap_classifier(net.to(dtype), num_classes=3, input_shape=SHAPE)


PAIRED = ContrastiveGuidanceConfig.preset("paired")


def _purifier(guidance: ContrastiveGuidanceConfig | None = PAIRED, config: DiffPureConfig = CFG,
              dtype=torch.float64) -> ContrastiveGuidedPurifier:
    p = ContrastiveGuidedPurifier(Wavy(SHAPE, std=0.5), _classifier(dtype), config, guidance)
    return p.to(dtype)


def _images(n: int = 4, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ------------------------------------------------------------------------------- independent references

def ref_debiased(zp: torch.Tensor, zc: torch.Tensor, tau: float, beta: float, temp: float) -> torch.Tensor:
    """Robinson et al.'s hard-negative debiased loss, one anchor at a time."""
    z = torch.cat([zp, zc], 0)
    b2 = z.shape[0]
    b = b2 // 2

    def s(i, j):
        return torch.exp(F.cosine_similarity(z[i], z[j], dim=0) / temp)

    total = 0.0
    for i in range(b2):
        p = (i + b) % b2
        negs = [s(i, j) for j in range(b2) if j not in (i, p)]
        m = len(negs)
        w = [n ** beta for n in negs]
        reweighted = sum(wi * ni for wi, ni in zip(w, negs)) / (sum(w) / m)
        ng = torch.clamp((reweighted - tau * m * s(i, p)) / (1 - tau), min=m * math.exp(-1 / temp))
        total = total - torch.log(s(i, p) / (s(i, p) + ng))
    return total / b2


def ref_nt_xent(zp: torch.Tensor, zc: torch.Tensor, temp: float) -> torch.Tensor:
    """NT-Xent (SimCLR) as a cross-entropy over cosine logits with the self-similarity masked."""
    z = F.normalize(torch.cat([zp, zc], 0), dim=1)
    b2 = z.shape[0]
    logits = (z @ z.T / temp).masked_fill(torch.eye(b2, dtype=torch.bool), float("-inf"))
    target = (torch.arange(b2) + b2 // 2) % b2
    return F.cross_entropy(logits, target)


def ref_embed(p: ContrastiveGuidedPurifier, x_t: torch.Tensor) -> torch.Tensor:
    return p.head(p.classifier.logits((x_t + 1) / 2))


def ref_guidance(p: ContrastiveGuidedPurifier, x_t, x_prev, create_graph: bool) -> torch.Tensor:
    g = p.guidance
    loss = ref_debiased(ref_embed(p, x_prev), ref_embed(p, x_t), g.tau_plus, g.beta, g.temperature)
    grad, = torch.autograd.grad(loss, x_t, create_graph=create_graph)
    return g.guidance_scale * grad


def naive_euler(p: ContrastiveGuidedPurifier, x: torch.Tensor, noise, guide) -> torch.Tensor:
    """The guided Euler–Maruyama loop written out: x ← x + ½βh x − βh/σ (ε̂ + g) + sqrt(βh) z, with
    ``g = guide(k, x_t, x_prev)`` (0 for no guidance; it may return a new ``x_t`` to differentiate)."""
    sde = VPSDE()
    x_t = p.noise_mean * (2 * x - 1) + p.noise_std * noise.init
    n = len(noise.steps)
    times = [0.1 - k * 0.02 for k in range(n)] + [1e-5]
    prev = None
    for k in range(n):
        t, h = times[k], times[k] - times[k + 1]
        tt = torch.tensor(t, dtype=torch.float64)
        beta, std = float(sde.beta(tt)), float(sde.marginal(tt).std)
        x_t, g = guide(k, x_t, prev)
        eps = p.score_model(x_t, torch.full((x.shape[0],), t, dtype=x.dtype)) + g
        nxt = x_t + 0.5 * beta * h * x_t - beta * h / std * eps + math.sqrt(beta * h) * noise.steps[k]
        prev, x_t = x_t, nxt
    return (x_t + 1) / 2


def naive_purify(p: ContrastiveGuidedPurifier, x: torch.Tensor, noise, second_order: bool = True) -> torch.Tensor:
    """The paired guidance from the per-anchor reference loss, differentiated (or frozen) per step."""

    def guide(k, x_t, prev):
        if k < p.guidance.start_step:
            return x_t, 0.0
        if not x_t.requires_grad:
            x_t = x_t.detach().requires_grad_(True)
        g = ref_guidance(p, x_t, prev, create_graph=True)
        return x_t, (g if second_order else g.detach())

    return naive_euler(p, x, noise, guide)


# ---------------------------------------------------------------------------------------------- losses

def test_debiased_loss_matches_per_anchor_formula():
    g = torch.Generator().manual_seed(1)
    zp, zc = torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(5, 4, generator=g, dtype=torch.float64)
    for tau, beta, temp in [(0.1, 1.0, 1.0), (0.3, 0.5, 0.5), (0.0, 2.0, 2.0)]:
        got = debiased_contrastive_loss(zp, zc, tau_plus=tau, beta=beta, temperature=temp)
        assert torch.allclose(got, ref_debiased(zp, zc, tau, beta, temp), rtol=1e-12, atol=1e-12)


def test_clamp_of_negatives_is_active_for_large_tau_plus():
    # Close pairs and a large τ⁺ drive (Σ w n − τ⁺ M p)/(1 − τ⁺) below M e^{−1/T}: the clamp decides.
    zp = torch.eye(3, dtype=torch.float64)
    got = debiased_contrastive_loss(zp, zp, tau_plus=0.9, beta=1.0, temperature=1.0)
    m = 4
    expect = -math.log(math.e / (math.e + m * math.exp(-1.0)))
    assert abs(float(got) - expect) < 1e-12
    assert torch.allclose(got, ref_debiased(zp, zp, 0.9, 1.0, 1.0))


def test_debiased_loss_reduces_to_info_nce_at_tau0_beta0():
    g = torch.Generator().manual_seed(2)
    zp, zc = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(6, 3, generator=g, dtype=torch.float64)
    for temp in (1.0, 0.3):
        d = debiased_contrastive_loss(zp, zc, tau_plus=0.0, beta=0.0, temperature=temp)
        assert torch.allclose(d, info_nce_loss(zp, zc, temperature=temp), rtol=1e-12)
        assert torch.allclose(d, ref_nt_xent(zp, zc, temp), rtol=1e-12)


def test_batch_of_one_has_no_negatives_and_no_guidance():
    z = torch.randn(1, 3, dtype=torch.float64)
    assert float(debiased_contrastive_loss(z, z + 1)) == 0.0 and float(info_nce_loss(z, z + 1)) == 0.0
    p = _purifier()
    x = _images(1)
    ref = DiffPurePurifier(p.score_model, CFG)
    with pytest.warns(UserWarning, match="batch of one"):
        a = p.purify(x, torch.Generator().manual_seed(4))
    b = ref.purify(x, torch.Generator().manual_seed(4))
    assert torch.allclose(a, b, rtol=0, atol=1e-12)


# -------------------------------------------------------------------------------------------- guidance

def test_guidance_term_equals_independent_lambda_grad():
    p = _purifier()
    x_prev = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    x_t = (x_prev + 0.05 * torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(6),
                                       dtype=torch.float64)).requires_grad_(True)
    got = p.guidance_term(x_t, x_prev)
    expect = ref_guidance(p, x_t, x_prev, create_graph=False)
    assert float(expect.abs().max()) > 1e-3  # the guidance is not trivially zero
    assert torch.allclose(got, expect, rtol=1e-10, atol=1e-12)
    # graph-free path (no_grad, as in BPDA/inference) gives the same numbers
    with torch.no_grad():
        assert torch.allclose(p.guidance_term(x_t.detach(), x_prev), expect, rtol=1e-10, atol=1e-12)
    # ε̃ = ε̂ + λ∇ℓ
    t = torch.full((4,), 0.05, dtype=torch.float64)
    assert torch.allclose(p.guided_noise(x_t, x_prev, t), p.score_model(x_t, t) + expect, rtol=1e-10, atol=1e-12)


def test_lambda_zero_is_diffpure_bit_for_bit():
    x = _images(4, dtype=torch.float32)
    for guidance in (ContrastiveGuidanceConfig(guidance_scale=0.0), ContrastiveGuidanceConfig(start_step=5)):
        p = _purifier(guidance, dtype=torch.float32)
        assert p.guided_steps == 0 and not p.batch_dependent  # no guidance, no negatives
        ref = DiffPurePurifier(p.score_model, CFG)
        a = p.purify(x, torch.Generator().manual_seed(7))
        b = ref.purify(x, torch.Generator().manual_seed(7))
        assert torch.equal(a, b)


def test_guided_purification_matches_naive_loop_values_and_gradients():
    p = _purifier()
    x = _images(4, seed=8).requires_grad_(True)
    noise = p.draw_noise(x, torch.Generator().manual_seed(9))
    w = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(10), dtype=torch.float64)

    out = p.purify_with_noise(x, noise, checkpoint=True)
    ref = naive_purify(p, x, noise)
    assert torch.allclose(out, ref, rtol=1e-10, atol=1e-10)
    # the guidance moved the images away from DiffPure's
    plain = DiffPurePurifier(p.score_model, CFG).purify_with_noise(x, noise)
    assert float((out - plain).detach().abs().max()) > 1e-3

    g_ckpt, = torch.autograd.grad((out * w).sum(), x)
    g_plain, = torch.autograd.grad((p.purify_with_noise(x, noise, checkpoint=False) * w).sum(), x)
    g_ref, = torch.autograd.grad((ref * w).sum(), x)
    assert torch.allclose(g_ckpt, g_ref, rtol=1e-9, atol=1e-10)
    assert torch.allclose(g_plain, g_ref, rtol=1e-9, atol=1e-10)
    # second-order terms matter: freezing the guidance gives a different gradient
    g_first, = torch.autograd.grad((naive_purify(p, x, noise, second_order=False) * w).sum(), x)
    assert float((g_first - g_ref).abs().max()) > 1e-4 * float(g_ref.abs().max())


def _check_central_differences(f, x0: torch.Tensor, grad: torch.Tensor, h: float, rel: float) -> None:
    """``grad`` against central differences of the scalar ``f`` at a few pixels of ``x0`` (``[3, 1, 4, 4]``)."""
    for idx in [(0, 0, 0, 0), (1, 0, 2, 3), (2, 0, 1, 1), (0, 0, 3, 2)]:
        e = torch.zeros_like(x0)
        e[idx] = h
        with torch.no_grad():
            fd = (f(x0 + e) - f(x0 - e)) / (2 * h)
        assert abs(float(fd) - float(grad[idx])) < rel * max(1.0, abs(float(fd)))


def test_exact_gradient_matches_finite_differences():
    p = _purifier()
    x0 = _images(3, seed=11)
    noise = p.draw_noise(x0, torch.Generator().manual_seed(12))
    w = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(13), dtype=torch.float64)

    def f(x):
        return (p.purify_with_noise(x, noise) * w).sum()

    x = x0.clone().requires_grad_(True)
    grad, = torch.autograd.grad(f(x), x)
    _check_central_differences(f, x0, grad, h=1e-6, rel=1e-6)


def test_bpda_and_surrogate_modes_predict_with_the_guided_purification():
    p = _purifier()
    x = _images(4, seed=16)
    with torch.no_grad():
        guided = p.classifier.logits(p.purify(x, torch.Generator().manual_seed(17)))
    for mode in ("bpda", "surrogate"):
        d = ContrastivePurifiedClassifier(p, p.classifier, gradient=mode, seed=17)
        xr = x.clone().requires_grad_(True)
        out = d(xr)
        assert torch.allclose(out, guided, rtol=1e-10, atol=1e-12)
        grad, = torch.autograd.grad(out.sum(), xr)
        assert torch.isfinite(grad).all() and float(grad.abs().sum()) > 0
        assert d.traits.gradient == mode


# ------------------------------------------------------------------------------------------ online head

OFFICIAL = ContrastiveGuidanceConfig.preset("official")


def naive_official_purify(p: ContrastiveGuidedPurifier, x: torch.Tensor, noise) -> torch.Tensor:
    """The official algorithm written as the released module runs it: a copy of the head re-initialised per
    purification, a cache of the previous score input, and a stateful ``torch.optim.Adam`` stepped after δ
    is read (values only)."""
    import copy

    head = copy.deepcopy(p.head).requires_grad_(True)
    if getattr(noise, "head", None) is not None:  # this purification's fresh initial weights
        with torch.no_grad():
            for q, w in zip(head.parameters(), noise.head):
                q.copy_(w)
    opt = torch.optim.Adam(head.parameters(), lr=p.guidance.head_lr)

    def guide(k, x_t, cache):
        if cache is None or k < p.guidance.start_step:
            return x_t, 0.0
        with torch.no_grad():
            z0 = p.classifier.logits(cache)  # the raw [-1, 1] state, no (x + 1)/2
        d = torch.zeros_like(x_t, requires_grad=True)
        loss = official_contrastive_loss(head(z0), head(p.classifier.logits(x_t + d)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        return x_t, p.guidance.guidance_scale * d.grad

    return naive_euler(p, x, noise, guide)


@pytest.mark.parametrize("head_init", ["per_purification", "fixed"])
def test_official_online_purification_matches_the_stateful_official_loop(head_init):
    p = _purifier(dataclasses.replace(OFFICIAL, head_init=head_init))
    x = _images(4, seed=20)
    noise = p.draw_noise(x, torch.Generator().manual_seed(21))
    assert (getattr(noise, "head", None) is not None) == (head_init == "per_purification")
    init = [w.clone() for w in p.head.parameters()]
    with torch.no_grad():
        out = p.purify_with_noise(x, noise)
    assert torch.allclose(out, naive_official_purify(p, x, noise), rtol=1e-10, atol=1e-10)
    assert all(torch.equal(a, b) for a, b in zip(init, p.head.parameters()))  # the module is not trained
    # the online training matters: a fixed head (same initial weights) purifies differently
    fixed = ContrastiveGuidedPurifier(p.score_model, p.classifier, CFG,
                                      dataclasses.replace(p.guidance, online_head=False), initial_head=p.head)
    with torch.no_grad():
        assert float((fixed.purify_with_noise(x, noise) - out).abs().max()) > 1e-6
    # and every purification restarts from its initial weights: the same noise gives the same images
    with torch.no_grad():
        assert torch.equal(p.purify_with_noise(x, noise), out)


def test_per_purification_head_is_drawn_after_diffpure_from_the_purification_generator():
    p = _purifier(OFFICIAL)
    x = _images(4)
    a, b = (p.draw_noise(x, torch.Generator().manual_seed(5)) for _ in range(2))
    plain = DiffPurePurifier(p.score_model, CFG).draw_noise(x, torch.Generator().manual_seed(5))
    assert torch.equal(a.init, plain.init) and all(torch.equal(u, v) for u, v in zip(a.steps, plain.steps))
    assert all(torch.equal(u, v) for u, v in zip(a.head, b.head))  # reproducible from the seed
    c = p.draw_noise(x, torch.Generator().manual_seed(6))
    assert not torch.equal(a.head[0], c.head[0])  # a fresh head per draw, as the official re-initialisation
    for w, q, fan_in in zip(a.head, p.head.parameters(), [3, 3, 6] * 3):  # U(±1/sqrt(fan_in)), nn.Linear's law
        assert w.shape == q.shape and w.dtype == q.dtype and float(w.abs().max()) <= 1 / math.sqrt(fan_in)
    with pytest.raises(InputError, match="noise.head"):
        p.purify_with_noise(x, ContrastiveNoise(a.init, a.steps, a.head[:2]))


@pytest.mark.parametrize("checkpoint,head_init", [(True, "per_purification"), (False, "per_purification"),
                                                 (True, "fixed")])
def test_online_head_gradient_is_exact_against_finite_differences(checkpoint, head_init):
    """The unrolled Adam steps make the official (online) purification exactly differentiable."""
    p = _purifier(dataclasses.replace(OFFICIAL, head_init=head_init))
    x0 = _images(3, seed=14)
    noise = p.draw_noise(x0, torch.Generator().manual_seed(16))
    w = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(16), dtype=torch.float64)

    def f(x):
        return (p.purify_with_noise(x, noise, checkpoint=checkpoint) * w).sum()

    x = x0.clone().requires_grad_(True)
    grad, = torch.autograd.grad(f(x), x)
    # Adam's first steps are nearly lr·sign(g): where a head gradient entry is tiny the map curves on a
    # scale of ~1e-6 in x, so the central difference needs h = 1e-8 (at h = 1e-5 it is off by 60 %)
    _check_central_differences(f, x0, grad, h=1e-8, rel=2e-6)
    # the head's training is in the gradient: freezing its trajectory changes the gradient
    frozen = p.guidance_step

    def detached_head_step(x_t, x_prev, head=None, *, create_graph=None):
        if head is not None:
            head = HeadState(tuple(t.detach() for t in head.weights), tuple(t.detach() for t in head.exp_avg),
                             tuple(t.detach() for t in head.exp_avg_sq), head.step)
        return frozen(x_t, x_prev, head, create_graph=create_graph)

    p.guidance_step = detached_head_step
    g_frozen, = torch.autograd.grad(f(x), x)
    del p.guidance_step
    # (how much is setting-dependent: over eight tiny settings 0.7-25 % in norm, but 5e-7 in one; 4-9 % here)
    assert float((g_frozen - grad).norm()) > 1e-2 * float(grad.norm())


def test_unrolled_online_step_passes_gradcheck():
    """One online step (δ and the Adam-updated head) as a function of x_t, x_prev and the head's weights."""
    p = _purifier(OFFICIAL)
    g = torch.Generator().manual_seed(30)
    x_prev = torch.randn(3, *SHAPE, generator=g, dtype=torch.float64)
    x_t = x_prev + 0.05 * torch.randn(3, *SHAPE, generator=g, dtype=torch.float64)
    s0 = p.initial_head_state()
    s1 = p.guidance_step(x_t, x_prev, s0)  # a state with non-zero moments: the second step is checked
    weights = tuple(t.clone().requires_grad_(True) for t in s1.head.weights)

    def fn(a, b, *ws):
        out = p.guidance_step(a, b, HeadState(ws, s1.head.exp_avg, s1.head.exp_avg_sq, s1.head.step),
                              create_graph=True)
        return (out.delta, *out.head.weights)

    inputs = (x_t.clone().requires_grad_(True), x_prev.clone().requires_grad_(True), *weights)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


def test_online_head_is_declared_exact_and_keeps_the_module_untouched():
    p = _purifier(OFFICIAL)
    assert p.online_head and isinstance(p.head, GatedProjectionHead)
    d = ContrastivePurifiedClassifier(p, p.classifier, gradient="exact", seed=0)
    assert d.traits.gradient == "exact" and d.traits.stochastic and d.traits.batch_dependent
    assert not any(q.requires_grad for q in p.head.parameters())
    cfg = d.config.purifier_config
    assert cfg.variant == "official" and cfg.guidance == OFFICIAL and cfg.diffpure == CFG


def test_official_batch_of_one_is_guided_without_warning():
    p = _purifier(OFFICIAL)
    x = _images(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = p.purify(x, torch.Generator().manual_seed(4))
    b = DiffPurePurifier(p.score_model, CFG).purify(x, torch.Generator().manual_seed(4))
    assert float((a - b).abs().max()) > 1e-6


def test_bpda_works_on_the_official_variant():
    p = _purifier(OFFICIAL)
    x = _images(4, seed=16)
    with torch.no_grad():
        guided = p.classifier.logits(p.purify(x, torch.Generator().manual_seed(17)))
    d = ContrastivePurifiedClassifier(p, p.classifier, gradient="bpda", seed=17)
    xr = x.clone().requires_grad_(True)
    out = d(xr)
    assert torch.allclose(out, guided, rtol=1e-10, atol=1e-12)
    grad, = torch.autograd.grad(out.sum(), xr)
    # BPDA: the identity backward through the purification, so the gradient is the classifier's at the
    # purified images
    purified = p.purify(x, torch.Generator().manual_seed(17)).requires_grad_(True)
    expect, = torch.autograd.grad(p.classifier.logits(purified).sum(), purified)
    assert torch.allclose(grad, expect, rtol=1e-10, atol=1e-12) and d.traits.gradient == "bpda"


def test_presets_and_variant_names():
    assert ContrastiveGuidanceConfig() == CONTRASTIVE_PRESETS["official"]
    assert ContrastiveGuidanceConfig().variant == "official"
    assert ContrastiveGuidanceConfig.preset("official", start_step=40).variant == "official_bpda"
    assert ContrastiveGuidanceConfig.preset("paired", guidance_scale=1.0).variant == "custom"
    with pytest.raises(InputError, match="preset"):
        ContrastiveGuidanceConfig.preset("paper")
    with pytest.raises(InputError, match="initial_head"):
        ContrastiveGuidedPurifier(Wavy(SHAPE), _classifier(), CFG, OFFICIAL, initial_head=nn.Linear(3, 3))


# ------------------------------------------------------------------------------------------- randomness

def test_global_rng_untouched():
    fixed, online = _purifier(), _purifier(OFFICIAL)
    x = _images(4)
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    for p in (fixed, online):
        p.purify(x, torch.Generator().manual_seed(0))
        p.purify(x)  # OS-seeded private generator
    d = ContrastivePurifiedClassifier(fixed, fixed.classifier, seed=3)
    d(x.float().double())
    assert torch.equal(torch.get_rng_state(), torch_state)
    after = np.random.get_state()
    assert np.array_equal(after[1], np_state[1]) and after[2] == np_state[2]


# ------------------------------------------------------------------------------------------- validation

@pytest.mark.parametrize("kwargs", [dict(tau_plus=1.0), dict(tau_plus=-0.1), dict(beta=-1.0), dict(temperature=0.0),
                                    dict(start_step=0), dict(start_step=1.5), dict(loss="nce"),
                                    dict(guidance_scale=-1.0), dict(guidance_scale=float("nan")),
                                    dict(online_head="yes"), dict(head_lr=0.0), dict(head_hidden=0),
                                    dict(head="mlp"), dict(classifier_input="pm1"), dict(loss="soft"),
                                    dict(head_init="global")])
def test_config_validation(kwargs):
    with pytest.raises(InputError):
        ContrastiveGuidanceConfig(**kwargs)


def test_input_validation():
    model, clf = Wavy(SHAPE), _classifier()
    with pytest.raises(InputError, match="sampler"):
        ContrastiveGuidedPurifier(model, clf, DiffPureConfig(sampler="ode"))
    with pytest.raises(InputError, match="Classifier"):
        ContrastiveGuidedPurifier(model, nn.Linear(16, 3), CFG)
    with pytest.raises(InputError):
        ContrastiveGuidedPurifier(model, clf, CFG, guidance=dict(guidance_scale=1.0))
    other = robustkit.wrap_classifier(nn.Sequential(nn.Flatten(), nn.Linear(36, 3)), num_classes=3,
                                      input_shape=(1, 6, 6))
    with pytest.raises(InputError):
        ContrastiveGuidedPurifier(model, other, CFG)
    with pytest.raises(InputError):
        debiased_contrastive_loss(torch.zeros(3, 2), torch.zeros(4, 2))
    p = _purifier()
    with pytest.raises(InputError):
        p.purify(torch.full((2, *SHAPE), 2.0, dtype=torch.float64))
    with pytest.raises(InputError, match="adjoint"):
        PurifiedClassifier(p, p.classifier, gradient="adjoint")
    with pytest.raises(InputError):
        ContrastivePurifiedClassifier(DiffPurePurifier(Wavy(SHAPE), CFG), clf)


# --------------------------------------------------------------------------------------------- registry

NAMES = ("contrastive_purification.cifar10", "contrastive_purification_unet.cifar10",
         "tiny_contrastive_purification.digits", "contrastive_purification_paired.cifar10",
         "contrastive_purification_unet_paired.cifar10", "tiny_contrastive_purification_paired.digits")


def test_registry_entries():
    assert set(NAMES) <= set(list_defenses("*contrastive*"))
    assert defense_config("contrastive_purification.cifar10").classifier == defense_config("diffpure.cifar10").classifier
    assert defense_config("contrastive_purification.cifar10").weights == defense_config("diffpure.cifar10").weights
    assert defense_config("contrastive_purification_unet.cifar10").classifier == \
        defense_config("diffpure_unet.cifar10").classifier
    assert defense_config("tiny_contrastive_purification.digits").classifier == "tiny_cnn.digits"
    with pytest.raises(InputError, match="not a contrastive"):
        create_contrastive_purification("diffpure.cifar10")
    with pytest.raises(InputError, match="unknown"):
        create_contrastive_purification("tiny_contrastive_purification.digits", lamda=1)


def test_create_defense_builds_the_contrastive_entry():
    d = create_defense("tiny_contrastive_purification.digits", pretrained=True, seed=0, dt=1e-2)
    assert isinstance(d, ContrastivePurifiedClassifier) and isinstance(d.purifier, ContrastiveGuidedPurifier)
    assert d.purifier.guidance == ContrastiveGuidanceConfig() and d.purifier.guidance.variant == "official"
    paired = create_defense("tiny_contrastive_purification_paired.digits", pretrained=True, seed=0, dt=1e-2)
    assert paired.purifier.guidance == CONTRASTIVE_PRESETS["paired"]
    assert paired.config.purifier_config.variant == "paired"
    bpda = create_defense("tiny_contrastive_purification.digits", preset="official_bpda", gradient="bpda")
    assert bpda.purifier.guidance.start_step == 40 and bpda.traits.gradient == "bpda"
    assert not isinstance(d.purifier.score_model, ContrastiveScoreModel)  # the real score model, unwrapped
    with pytest.raises(InputError, match="create_defense"):
        ContrastiveScoreModel(d.purifier.score_model)(torch.rand(2, 1, 8, 8), 0.5)


def test_tiny_digits_entry_runs_and_classifies():
    d = create_contrastive_purification("tiny_contrastive_purification.digits", pretrained=True, seed=0, dt=1e-2)
    assert isinstance(d.purifier, ContrastiveGuidedPurifier) and d.traits.gradient == "exact"
    assert d.purifier.batch_dependent and d.traits.batch_dependent  # the negatives are the rest of the batch
    assert d.purifier.guidance == ContrastiveGuidanceConfig()
    x, y = robustkit.load_dataset("digits", n_examples=50)
    with torch.no_grad():
        pred = d(x).argmax(1)
    acc = float((pred == y).float().mean())
    assert acc > 0.8
    fixed = create_contrastive_purification("tiny_contrastive_purification.digits", pretrained=True, seed=0,
                                            dt=1e-2, online_head=False)
    assert fixed.traits.gradient == "exact" and not fixed.purifier.guidance.online_head


def _saved_bytes_of_exact_forward(p: ContrastiveGuidedPurifier, checkpoint: bool) -> int:
    """Bytes autograd still holds for the backward pass once one purification has run: every tensor
    packed for a backward and alive at the end (a checkpointed region's own graph is built and freed
    inside it, so its tensors are dead by then), each storage counted once."""
    packed: list[weakref.ref] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        packed.append(weakref.ref(t))
        return t

    x = _images(4, seed=3).requires_grad_(True)
    noise = p.draw_noise(x, torch.Generator().manual_seed(4))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = p.purify_with_noise(x, noise, checkpoint=checkpoint)
    gc.collect()
    alive = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in (r() for r in packed)
             if t is not None}
    del out
    return sum(alive.values())


def test_checkpointed_guidance_keeps_memory_flat_in_the_number_of_guided_steps():
    few = _purifier(config=DiffPureConfig(t_star=0.1, dt=0.02))    # 5 steps, 3 guided
    many = _purifier(config=DiffPureConfig(t_star=0.1, dt=0.005))  # 20 steps, 18 guided
    flat = [_saved_bytes_of_exact_forward(p, checkpoint=True) for p in (few, many)]
    grows = [_saved_bytes_of_exact_forward(p, checkpoint=False) for p in (few, many)]
    assert grows[1] > 4 * grows[0]  # without checkpoints every guided step's graph is kept
    # with them each step keeps only a few batch-sized tensors (its inputs), not its graph
    batch_bytes = 4 * 16 * 8  # 4 images x 16 pixels x float64
    assert flat[1] - flat[0] <= 15 * 6 * batch_bytes
    assert grows[1] - grows[0] > 4 * (flat[1] - flat[0])


def test_checkpointed_online_head_keeps_only_inputs_and_head_state_per_step():
    few = _purifier(OFFICIAL, config=DiffPureConfig(t_star=0.1, dt=0.02))    # 5 steps, 4 guided
    many = _purifier(OFFICIAL, config=DiffPureConfig(t_star=0.1, dt=0.005))  # 20 steps, 19 guided
    flat = [_saved_bytes_of_exact_forward(p, checkpoint=True) for p in (few, many)]
    grows = [_saved_bytes_of_exact_forward(p, checkpoint=False) for p in (few, many)]
    batch_bytes = 4 * 16 * 8
    head_bytes = sum(q.numel() for q in few.head.parameters()) * 8
    # per extra guided step: a few batch-sized tensors and the head's state (weights, two Adam moments)
    assert flat[1] - flat[0] <= 15 * (6 * batch_bytes + 4 * head_bytes)
    assert grows[1] - grows[0] > 3 * (flat[1] - flat[0])


def test_benchmark_description_stores_the_guidance_and_its_variant():
    from robustkit.eval.benchmark import describe_defense

    for preset in ("official", "paired"):
        p = _purifier(ContrastiveGuidanceConfig.preset(preset))
        desc = describe_defense(ContrastivePurifiedClassifier(p, p.classifier, seed=0))
        cfg = desc["config"]["purifier_config"]
        assert cfg["variant"] == preset and cfg["diffpure"]["dt"] == CFG.dt
        assert cfg["guidance"] == dataclasses.asdict(CONTRASTIVE_PRESETS[preset])
