"""PGD and the Attack template, checked against closed-form robustness of linear models."""

import pytest
import torch
import torch.nn as nn

import robustkit
from robustkit import InputError, wrap_classifier
from robustkit.attacks import PGD, Attack, eval_mode, perturbation_norm, project


def linear_binary(seed=0, d=(1, 4, 4)):
    """A 2-class linear classifier and inputs near the centre of [0,1]^d (box constraints inactive)."""
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(d[0] * d[1] * d[2], 2)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(2, lin.in_features, generator=g))
        lin.bias.copy_(-0.5 * lin.weight.sum(1))  # both logits equal at x = 0.5: margins spread around 0
    clf = wrap_classifier(nn.Sequential(nn.Flatten(), lin), input_shape=d)
    x = 0.5 + 0.4 * (torch.rand(64, *d, generator=g) - 0.5)  # in [0.3, 0.7]: the box never binds
    with torch.no_grad():
        y = clf(x).argmax(1)
    y[::4] = 1 - y[::4]  # some clean errors too
    return clf, lin, x, y


@pytest.mark.parametrize("norm, dual", [("Linf", 1), ("L2", 2)])
def test_pgd_matches_closed_form_robustness_of_linear_model(norm, dual):
    clf, lin, x, y = linear_binary()
    eps = 0.02 if norm == "Linf" else 0.1
    dw = (lin.weight[1] - lin.weight[0]).detach()
    with torch.no_grad():
        logits = clf(x)
    margin = (logits.gather(1, y[:, None]) - logits.gather(1, (1 - y)[:, None])).squeeze(1)
    # worst case over the ball: margin - eps * ||w_y - w_other||_dual-norm
    expected = (margin > 0) & (margin - eps * dw.norm(p=dual) > 0)
    assert 0 < int(expected.sum()) < int((margin > 0).sum())  # the test is informative
    res = PGD(eps=eps, norm=norm, steps=20, step_size=eps / 4, random_start=False)(clf, x, y)
    assert torch.equal(res.robust, expected)
    assert torch.equal(res.clean_correct, margin > 0)
    assert bool((perturbation_norm(res.x_adv, x, norm) <= eps + 1e-6).all())


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_pgd_stays_in_threat_model_and_box(norm):
    clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    x, y = robustkit.load_dataset("digits", n_examples=40)
    eps = 0.3 if norm == "Linf" else 1.5
    res = PGD(eps=eps, norm=norm, steps=10, seed=3)(clf, x, y)
    assert bool((perturbation_norm(res.x_adv, x, norm) <= eps * (1 + 1e-5)).all())
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0
    assert res.robust_accuracy < res.clean_accuracy  # the attack does something
    # verification: flags equal a fresh evaluation of the returned points
    with torch.no_grad():
        assert torch.equal(res.robust, res.clean_correct & (clf(res.x_adv).argmax(1) == y))


def test_eps_zero_changes_nothing_and_accuracy_monotone_in_eps():
    clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    x, y = robustkit.load_dataset("digits", n_examples=100)
    res0 = PGD(eps=0.0, steps=3)(clf, x, y)
    assert torch.equal(res0.robust, res0.clean_correct) and torch.equal(res0.x_adv, x)
    accs = [PGD(eps=e, steps=20, seed=0)(clf, x, y).robust_accuracy for e in (0.02, 0.06, 0.12, 0.25)]
    assert accs == sorted(accs, reverse=True) and accs[-1] < accs[0]


def test_seeded_reproducibility_and_counts():
    clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    x, y = robustkit.load_dataset("digits", n_examples=20)
    a = PGD(eps=0.1, steps=5, eot=2, seed=1)(clf, x, y)
    b = PGD(eps=0.1, steps=5, eot=2, seed=1)(clf, x, y)
    c = PGD(eps=0.1, steps=5, eot=2, seed=2)(clf, x, y)
    assert torch.equal(a.x_adv, b.x_adv) and not torch.equal(a.x_adv, c.x_adv)
    assert a.backwards == 20 * 5 * 2 and a.forwards == 20 * (5 * 2 + 1)
    assert a.info["eot"] == 2 and a.info["steps"] == 5 and a.info["gradient"] == "exact"
    assert a.info["n_examples"] == 20 and a.info["seed"] == 1


def test_global_rng_untouched():
    clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    x, y = robustkit.load_dataset("digits", n_examples=8)
    state = torch.random.get_rng_state()
    PGD(eps=0.1, steps=2, seed=0)(clf, x, y)
    assert torch.equal(state, torch.random.get_rng_state())


def test_attack_restores_mode_and_resets():
    clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    resets = []
    clf.reset = lambda: resets.append(1)
    clf.train()
    x, y = robustkit.load_dataset("digits", n_examples=8)
    PGD(eps=0.1, steps=2)(clf, x, y)
    assert clf.training and len(resets) >= 2


def test_attack_contract_errors():
    clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    x, y = robustkit.load_dataset("digits", n_examples=8)
    with pytest.raises(InputError, match="Classifier"):
        PGD(eps=0.1)(clf.net, x, y)
    with pytest.raises(InputError, match="labels"):
        PGD(eps=0.1)(clf, x, y[:4])
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        PGD(eps=0.1)(clf, x * 4, y)
    for kwargs in ({"eps": -1}, {"eps": 0.1, "norm": "L1"}, {"eps": 0.1, "steps": 0}, {"eps": 0.1, "eot": 0}):
        with pytest.raises(InputError):
            PGD(**kwargs)
    with pytest.raises(TypeError, match="must not override"):
        class Bad(Attack):
            def __call__(self, model, x, y):
                return None

            def perturb(self, model, x, y, generator):
                return x


def test_project_l2_lands_inside_ball_and_box():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(10, 3, 4, 4, generator=g)
    xa = x + torch.randn(10, 3, 4, 4, generator=g)
    p = project(xa, x, 0.5, "L2")
    assert bool((perturbation_norm(p, x, "L2") <= 0.5 + 1e-6).all())
    assert float(p.min()) >= 0 and float(p.max()) <= 1
    with pytest.raises(InputError):
        project(xa, x, 0.5, "L1")


@pytest.mark.parametrize("norm, eps", [("Linf", 8 / 255), ("L2", 0.5)])
def test_project_returns_feasible_points_bit_for_bit(norm, eps):
    """x + (x_adv - x) is not x_adv in floating point; the projection must not move points that are
    already inside the threat model (else wrapped attacks' outputs change in the last bits)."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(16, 3, 8, 8, generator=g)
    once = project(x + torch.randn(16, 3, 8, 8, generator=g), x, eps, norm)
    assert torch.equal(project(once, x, eps, norm), once)  # idempotent
    inside = (x + (torch.rand(16, 3, 8, 8, generator=g) * 2 - 1) * 1e-3).clamp(0, 1)
    inside = inside + 1e-7  # values x + δ that x + (inside - x) does not reproduce exactly
    inside = inside.clamp(0, 1)
    assert not torch.equal(x + (inside - x), inside)  # the hazard is real on these points
    assert torch.equal(project(inside, x, eps, norm), inside)


def test_eval_mode_restores_each_submodule_flag():
    base = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    assert not base.training

    class Wrapper(robustkit.Classifier):  # nn.Module starts in training mode; the base is in eval mode
        def __init__(self):
            super().__init__(10, (1, 8, 8))
            self.base = base

        def logits(self, x):
            assert not self.training and not self.base.training
            return self.base(x)

    w = Wrapper()
    x, y = robustkit.load_dataset("digits", n_examples=8)
    PGD(eps=0.1, steps=2)(w, x, y)
    assert w.training and not base.training  # not flipped to training (BatchNorm would use batch stats)
    with eval_mode(w, None):
        assert not w.training
    assert w.training


def test_pgd_without_early_stop_returns_the_last_iterate():
    clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    x, y = robustkit.load_dataset("digits", n_examples=32)
    first = PGD(eps=0.2, steps=10, seed=0)(clf, x, y)
    last = PGD(eps=0.2, steps=10, seed=0, early_stop=False)(clf, x, y)
    assert last.info["early_stop"] is False and first.info["early_stop"] is True
    # the last iterate has (much) higher loss: it is pushed far past the decision boundary
    with torch.no_grad():
        l_first = torch.nn.functional.cross_entropy(clf(first.x_adv), y)
        l_last = torch.nn.functional.cross_entropy(clf(last.x_adv), y)
    assert l_last > l_first
    assert not torch.equal(first.x_adv, last.x_adv)
    assert bool((perturbation_norm(last.x_adv, x, "Linf") <= 0.2 + 1e-6).all())


class _LogitNoise(robustkit.Classifier):
    """The digits CNN with N(0, sigma²) noise added to its logits: a stochastic model with known decisions."""

    def __init__(self, base, sigma=1.0):
        super().__init__(10, (1, 8, 8), robustkit.DefenseTraits(stochastic=True))
        self.base, self.sigma = base, sigma

    def logits(self, x):
        out = self.base(x)
        return out + self.sigma * torch.randn_like(out)


def test_pgd_does_not_stop_at_a_lucky_draw_of_a_stochastic_model():
    clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    noisy = _LogitNoise(clf)
    x, y = robustkit.load_dataset("digits", n_examples=200)
    kw = dict(eps=0.3, steps=20, step_size=0.0375, eot=2, loss="margin", seed=0)
    torch.manual_seed(0)
    auto = PGD(**kw)(noisy, x, y)
    torch.manual_seed(0)
    stopped = PGD(early_stop=True, **kw)(noisy, x, y)
    assert auto.info["early_stop"] is False and stopped.info["early_stop"] is True
    # eps 0.3 turns any digit into another: ascending to the end breaks all; stopping at the first draw
    # seen misclassified leaves points just past the boundary, which the verification draw often gets right
    assert auto.robust_accuracy <= 0.02 and stopped.robust_accuracy >= 0.1, (auto.robust_accuracy,
                                                                             stopped.robust_accuracy)
    # a deterministic model keeps early stopping under "auto": the same examples as early_stop=True
    det = PGD(eps=0.2, steps=10, seed=0)(clf, x[:32], y[:32])
    assert det.info["early_stop"] is True
    assert torch.equal(det.x_adv, PGD(eps=0.2, steps=10, seed=0, early_stop=True)(clf, x[:32], y[:32]).x_adv)
    with pytest.raises(InputError, match="early_stop"):
        PGD(eps=0.1, early_stop="sometimes")


def test_pgd_stops_once_every_example_is_broken_with_the_same_answer():
    clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    x, y = robustkit.load_dataset("digits", n_examples=16)

    class Counting(nn.Module):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, z):
            self.calls += 1
            return clf(z)

    pgd = PGD(eps=0.5, steps=50, step_size=0.1, random_start=False, seed=0)
    counted = Counting()
    x_adv = pgd.perturb(counted, x, y, torch.Generator().manual_seed(0)).x_adv
    assert bool((clf(x_adv).argmax(1) != y).all())  # eps 0.5 breaks every digit...
    assert counted.calls < 50  # ...long before the 50th step, and the attack stopped there
    # the answer is the one the full loop gives: each example's first misclassified iterate
    full = PGD(eps=0.5, steps=50, step_size=0.1, random_start=False, seed=0)
    x_ref, found = x.clone(), torch.zeros(16, dtype=torch.bool)
    xa = x.clone()
    for _ in range(50):
        grad, correct = full._gradient(clf, xa, y)
        newly = ~correct & ~found
        x_ref[newly] = xa[newly]
        found |= newly
        xa = project(xa + full._step(grad), x, 0.5, "Linf").detach()
    assert torch.equal(x_adv, x_ref)
