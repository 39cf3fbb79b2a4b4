"""PurifiedClassifier: gradient modes, traits, votes, randomness, validation, and the benchmark harness."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import robustkit
from robustkit import DefenseTraits, InputError, PurifiedClassifier
from robustkit.defenses import DiffPureConfig, DiffPurePurifier, GaussianScoreModel, Purifier

SHAPE = (1, 8, 8)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: threads only add contention


@pytest.fixture(scope="module")
def clf():
    return robustkit.create_classifier("tiny_cnn.digits", pretrained=True)


@pytest.fixture(scope="module")
def digits():
    return robustkit.load_dataset("digits", n_examples=8)


def tiny_purifier(**kw) -> DiffPurePurifier:
    """5 Euler–Maruyama steps of an analytic score model: a purifier that costs nothing."""
    cfg = dict(t_star=0.05, dt=1e-2)
    cfg.update(kw)
    return DiffPurePurifier(GaussianScoreModel(SHAPE, mean=0.0, std=0.6), DiffPureConfig(**cfg))


def _grad(fn, x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    xi = x.clone().requires_grad_()
    out = fn(xi)
    (out * w).sum().backward()
    return out.detach(), xi.grad


# -- gradient modes --------------------------------------------------------------------------------------

def test_exact_mode_is_autograd_through_the_purifier(clf, digits):
    x, _ = digits
    p = tiny_purifier()
    d = PurifiedClassifier(p, clf, gradient="exact")
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    out, g = _grad(lambda z: d.purify(z, torch.Generator().manual_seed(0)), x, w)
    ref, g_ref = _grad(lambda z: p.purify(z, torch.Generator().manual_seed(0)), x, w)
    assert torch.equal(out, ref) and torch.equal(g, g_ref)
    # Gaussian score model: d purified/d x is a constant gain < 1 (not the identity)
    assert float(g.abs().sum()) > 0 and not torch.allclose(g, w)


def test_bpda_backward_is_the_identity_and_forward_the_real_purifier(clf, digits):
    x, _ = digits
    p = tiny_purifier()
    d = PurifiedClassifier(p, clf, gradient="bpda")
    assert d.traits.gradient == "bpda"
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    out, g = _grad(lambda z: d.purify(z, torch.Generator().manual_seed(0)), x, w)
    assert torch.equal(g, w)                                            # identity backward
    assert torch.equal(out, p.purify(x, torch.Generator().manual_seed(0)))   # real forward


def test_surrogate_value_is_the_real_purification_and_gradient_the_surrogates(clf, digits):
    x, _ = digits
    p = tiny_purifier(surrogate_dt=2.5e-2)
    assert p.surrogate_nfe == 2 and p.nfe == 5
    d = PurifiedClassifier(p, clf, gradient="surrogate")
    assert d.traits.gradient == "surrogate"
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    out, g = _grad(lambda z: d.purify(z, torch.Generator().manual_seed(0)), x, w)
    assert torch.equal(out, p.purify(x, torch.Generator().manual_seed(0)))   # exact in value
    with torch.no_grad():                                       # and without a graph, the same value
        assert torch.equal(d.purify(x, torch.Generator().manual_seed(0)), out)
    xi = x.clone().requires_grad_()
    (p.purify_surrogate(xi, torch.Generator().manual_seed(0)).surrogate * w).sum().backward()
    assert torch.allclose(g, xi.grad)
    _, g_exact = _grad(lambda z: p.purify(z, torch.Generator().manual_seed(0)), x, w)
    assert not torch.equal(g, g_exact) and torch.allclose(g, g_exact, rtol=0.05, atol=1e-3)


def test_adjoint_mode(clf, digits):
    x, y = digits
    p = tiny_purifier()
    d = PurifiedClassifier(p, clf, gradient="adjoint", seed=0)
    assert d.traits.gradient == "exact" and d.config.gradient == "adjoint"
    assert d.traits.forward_passes == (p.nfe + 1) + 1   # torchsde evaluates the drift once more
    xi = x.clone().requires_grad_()
    nn.functional.cross_entropy(d(xi), y).backward()
    assert float(xi.grad.abs().sum()) > 0
    with pytest.raises(InputError, match="adjoint"):
        PurifiedClassifier(tiny_purifier(sampler="ode"), clf, gradient="adjoint")


# -- traits, votes, randomness -----------------------------------------------------------------------------

def test_traits(clf):
    p = tiny_purifier()
    d = PurifiedClassifier(p, clf, n_samples=3)
    assert d.traits == DefenseTraits(stochastic=True, gradient="exact", forward_passes=3 * (5 + 1))
    assert PurifiedClassifier(p, clf, n_samples=3, vote="majority").traits.gradient == "surrogate"
    assert PurifiedClassifier(p, clf, n_samples=1, vote="majority").traits.gradient == "exact"
    bpda_clf = robustkit.wrap_classifier(clf.net, mean=(0.5,), std=(0.5,), input_shape=SHAPE,
                                         traits=DefenseTraits(gradient="bpda"))
    assert PurifiedClassifier(p, bpda_clf).traits.gradient == "bpda"
    assert d.base_classifier is clf
    cfg = d.config
    assert (cfg.purifier, cfg.purifier_config.t_star, cfg.n_samples, cfg.vote) == \
        ("DiffPurePurifier", 0.05, 3, "logits")


@pytest.mark.parametrize("vote", ["logits", "majority"])
def test_votes_over_samples(clf, digits, vote):
    x, _ = digits
    p = tiny_purifier(t_star=0.3, dt=5e-2)   # strong noise: the samples disagree
    n = 5
    d = PurifiedClassifier(p, clf, n_samples=n, vote=vote, seed=3)
    got = d(x)
    # the same draws by hand: one batch of n·N rows, row r·N + i is sample r of example i
    purified = p.purify(x.repeat(n, 1, 1, 1), torch.Generator().manual_seed(3))
    per_sample = clf.logits(purified).view(n, x.shape[0], -1)
    if vote == "logits":
        assert torch.allclose(got, per_sample.mean(0), atol=1e-6)
    else:
        votes = nn.functional.one_hot(per_sample.argmax(-1), 10).sum(0)
        assert torch.equal(got.argmax(1), (votes + 1e-3 * per_sample.mean(0).softmax(-1)).argmax(1))
        assert torch.allclose(got.exp() * n, votes.float(), atol=2e-3)   # scores: log vote shares
        xi = x.clone().requires_grad_()
        d.manual_seed(3)
        d(xi)[:, 0].sum().backward()                        # straight-through: the mean logits' gradient
        assert float(xi.grad.abs().sum()) > 0


def test_randomness_seeded_or_from_the_global_rng(clf, digits):
    x, _ = digits
    p = tiny_purifier()
    # a seed: a private stream, reproducible, the global RNG untouched
    a, b = PurifiedClassifier(p, clf, seed=7), PurifiedClassifier(p, clf, seed=7)
    state = torch.get_rng_state()
    first, second = a(x), a(x)
    assert torch.equal(first, b(x)) and not torch.equal(first, second)
    assert torch.equal(torch.get_rng_state(), state)
    # no seed: one seed per forward from torch's global RNG (what robustkit.benchmark seeds)
    d = PurifiedClassifier(p, clf)
    torch.manual_seed(0)
    u1, u2 = d(x), d(x)
    torch.manual_seed(0)
    assert torch.equal(d(x), u1) and torch.equal(d(x), u2) and not torch.equal(u1, u2)


# -- validation ------------------------------------------------------------------------------------------

def test_validation(clf):
    p = tiny_purifier()
    d = PurifiedClassifier(p, clf)
    for bad in (torch.full((1, *SHAPE), 1.5), torch.rand(1, 3, 8, 8), torch.rand(8, 8), [[0.0]],
                torch.full((1, *SHAPE), float("nan"))):
        with pytest.raises(InputError):
            d(bad)
    for kwargs, match in (({"gradient": "reinforce"}, "gradient"), ({"n_samples": 0}, "n_samples"),
                          ({"vote": "mean"}, "vote"), ({"seed": 1.5}, "seed")):
        with pytest.raises(InputError, match=match):
            PurifiedClassifier(p, clf, **kwargs)
    with pytest.raises(InputError, match="Purifier"):
        PurifiedClassifier(nn.Identity(), clf)
    with pytest.raises(InputError, match="Classifier"):
        PurifiedClassifier(p, clf.net)
    with pytest.raises(InputError, match="do not fit"):   # score model 8×8 vs CIFAR-10 classifier
        PurifiedClassifier(p, robustkit.wrap_classifier(nn.Sequential(nn.Flatten(), nn.Linear(3072, 10)),
                                                       input_shape=(3, 32, 32)))

    class Plain(Purifier):                               # a purifier with only the required method
        stochastic = False

        @property
        def nfe(self) -> int:
            return 0

        def purify(self, x, generator=None):
            return x.clamp(0.1, 0.9)

    with pytest.raises(InputError, match="surrogate"):
        PurifiedClassifier(Plain(), clf, gradient="surrogate")
    plain = PurifiedClassifier(Plain(), clf, gradient="bpda")
    assert plain.traits == DefenseTraits(stochastic=False, gradient="bpda", forward_passes=1)


# -- the harness -----------------------------------------------------------------------------------------

def test_benchmark_runs_pgd_and_records_stochastic_traits(clf):
    d = PurifiedClassifier(tiny_purifier(), clf)
    kw = dict(dataset="digits", eps=0.1, attacks=["pgd"], attack_options={"pgd": {"steps": 3}}, n_examples=8,
              batch_size=8, n_reeval=2, seed=1, checks=False)
    rec = robustkit.benchmark(d, **kw)
    assert rec.traits["stochastic"] is True and rec.traits["gradient"] == "exact"
    assert rec.traits["forward_passes"] == 6 and rec.n_reeval == 2
    assert rec.defense_config["config"]["purifier_config"]["t_star"] == 0.05
    assert rec.robust["worst_of_m"].value <= rec.clean["worst_of_m"].value
    assert rec.cost["backward_passes"] > 0
    again = robustkit.benchmark(d, **kw)               # reproducible: the benchmark seeds the global RNG
    assert again.robust == rec.robust and again.clean == rec.clean
