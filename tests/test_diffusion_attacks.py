"""DiffHammer and DiffAttack: their selection/weighting and deviation losses against hand computation, the
replayed and segment-wise gradients against plain autograd, and both attacks end to end on a tiny DiffPure."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import robustkit
from robustkit.attacks import DiffAttack, DiffHammer, make_attack
from robustkit.attacks.diffhammer import select_rows
from robustkit.defenses import DiffPureConfig, DiffPurePurifier, PurifiedClassifier
from robustkit.defenses.diffpure import GaussianScoreModel
from robustkit.errors import InputError


def test_em_selection_and_weights_by_hand():
    """Two draws, one example, two pixels (Linf: unit = sign)."""
    att = DiffHammer(eps=0.5, lam=5.0)
    losses = torch.tensor([[0.2], [-1.0]])                    # [n, B]
    grads = torch.tensor([[[1.0, -2.0]], [[3.0, 1.0]]])        # [n, B, d]
    # ⟨sign(g_a), g_b⟩: a=0: (1,-1)·(1,-2)=3, (1,-1)·(3,1)=2;  a=1: (1,1)·(1,-2)=-1, (1,1)·(3,1)=4
    elu = F.elu
    e0 = elu(torch.tensor(0.2 + 0.5 * 3)) + elu(torch.tensor(-1.0 + 0.5 * 2))
    e1 = elu(torch.tensor(0.2 + 0.5 * -1)) + elu(torch.tensor(-1.0 + 0.5 * 4))
    want_sel = int(e1 > e0)
    sel, g = att._em(losses, grads)
    assert sel.tolist() == [want_sel]
    s = torch.tensor([1.0, -1.0]) if want_sel == 0 else torch.tensor([1.0, 1.0])
    w = torch.sigmoid(5.0 * torch.tensor([0.2 + float(s @ grads[0, 0]), -1.0 + float(s @ grads[1, 0])]))
    want = (w[0] * grads[0, 0] + w[1] * grads[1, 0]) / w.sum()
    torch.testing.assert_close(g[0], want)


def _purifier(sampler: str = "sde", dtype=torch.float32, t_star: float = 0.03) -> DiffPurePurifier:
    model = GaussianScoreModel((1, 4, 4), mean=0.1, std=0.4)
    return DiffPurePurifier(model, DiffPureConfig(t_star=t_star, sampler=sampler))


def test_replayed_rows_reproduce_each_examples_draw():
    p = _purifier()
    x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    noises = [p.draw_noise(x, g) for _ in range(3)]
    sel = torch.tensor([2, 0, 1])
    mixed = p.purify_with_noise(x, select_rows(noises, sel))
    for i, j in enumerate(sel.tolist()):
        torch.testing.assert_close(mixed[i], p.purify_with_noise(x, noises[j])[i], rtol=0, atol=0)


@pytest.mark.parametrize("sampler", ["sde", "ode"])
def test_deviation_by_hand_and_segmentwise_gradient_is_exact(sampler):
    p = _purifier(sampler).double()
    x = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    noise = p.draw_noise(x, torch.Generator().manual_seed(3))
    att = DiffAttack(eps=0.1)
    traj = p.purify_trajectory(x, noise)
    # by hand: Σ_k ᾱ_k/2 · mean (x̂_k − (a_k (2x−1) + σ_k ε))² / K, with a_k, σ_k of the VP SDE
    sde = p._sampler.sde
    total = torch.zeros(2, dtype=torch.float64)
    for state, t in zip(traj.states, traj.times):
        a = math.exp(-0.25 * t * t * (sde.beta_max - sde.beta_min) - 0.5 * t * sde.beta_min)
        s = math.sqrt(1 - a * a)
        total += 0.5 * a * a * ((state - (a * (2 * x - 1) + s * noise.init)) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(att.deviation(p, x, traj, noise.init), total / len(traj.states))
    # exact gradients: one flat-memory segment per step equals plain autograd through the same steps
    grads = []
    for ck in (True, False):
        p.config = DiffPureConfig(t_star=0.03, sampler=sampler, checkpoint=ck)
        xa = x.clone().requires_grad_(True)
        tr = p.purify_trajectory(xa, noise)
        loss = (tr.purified * torch.linspace(-1, 1, 16, dtype=torch.float64).view(1, 1, 4, 4)).sum() \
            + att.deviation(p, xa, tr, noise.init).sum()
        grads.append(torch.autograd.grad(loss, xa)[0])
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-12)
    assert grads[0].abs().sum() > 0


def _tiny_defense() -> PurifiedClassifier:
    return robustkit.create_defense("tiny_diffpure.digits", pretrained=True, t_star=0.02, seed=0)


def test_diffhammer_end_to_end_records_the_n_evaluation_protocol():
    d = _tiny_defense()
    x, y = robustkit.load_dataset("digits", n_examples=16)
    res = DiffHammer(eps=0.15, steps=4, n_eval=3, seed=0)(d, x, y)
    ne = res.info["n_evaluation"]
    assert ne["n_eval"] == 3 and 3 <= ne["evaluations"] <= 15 and len(ne["survived"]) == 16
    assert res.info["attack"] == "diffhammer" and res.info["lam"] == 5.0 and res.info["steps"] == 4
    survived = torch.tensor(ne["survived"]) & res.clean_correct
    assert survived.float().mean() < res.clean_accuracy  # the attack broke something under N-evaluation
    assert res.forwards >= 16 * 3 and res.backwards >= 16
    assert (res.x_adv - x).abs().max() <= 0.15 + 1e-6


def test_diffattack_end_to_end_and_presets():
    d = _tiny_defense()
    x, y = robustkit.load_dataset("digits", n_examples=16)
    res = DiffAttack(eps=0.15, steps=3, eot=1, seed=0)(d, x, y)
    assert res.robust_accuracy <= res.clean_accuracy
    assert res.info["deviation_weight"] == 1.0 and res.info["loss"] == "margin + deviated reconstruction"
    a = make_attack("diffattack", eps=8 / 255)
    assert (a.steps, a.eot, a.step_size) == (200, 20, 0.007)
    h = make_attack("diffhammer", eps=8 / 255)
    assert (h.steps, h.n_eval, h.lam, h.alpha) == (50, 10, 5.0, 0.5)


def test_both_refuse_what_they_cannot_attack():
    clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    x, y = robustkit.load_dataset("digits", n_examples=2)
    for attack in (DiffHammer(eps=0.1, steps=1, n_eval=1), DiffAttack(eps=0.1, steps=1)):
        with pytest.raises(InputError, match="PurifiedClassifier"):
            attack(clf, x, y)
    d = robustkit.create_defense("tiny_diffpure.digits", pretrained=True, t_star=0.02, sampler="ddim")
    with pytest.raises(InputError, match="'sde' or 'ode'"):
        DiffAttack(eps=0.1, steps=1)(d, x, y)
    with pytest.raises(InputError, match="n_eval"):
        DiffHammer(eps=0.1, n_eval=0)
    with pytest.raises(InputError, match="deviation_weight"):
        DiffAttack(eps=0.1, deviation_weight=-1)


def test_benchmark_records_the_n_evaluation_protocol_over_all_shards(tmp_path):
    """DiffHammer's N-evaluation outcome is summed over every shard of a run into the record's protocol."""
    d = _tiny_defense()
    rec = robustkit.benchmark(d, dataset="digits", eps=0.15, attacks=["diffhammer"], n_examples=6, batch_size=3,
                              n_reeval=2, checks=False, cascade=False, run_dir=tmp_path / "run",
                              attack_options={"diffhammer": {"steps": 1, "n_eval": 2}})
    ne = rec.attacks[0]["n_evaluation"]
    assert ne["n"] == 6 and ne["n_eval"] == 2 and 0 <= ne["robust"] <= 6
    assert ne["robust_accuracy"] == ne["robust"] / 6
    from robustkit.eval.runner import RunDir

    run = RunDir.load(tmp_path / "run")
    survived = [v for s in run.shards for v in run.read_meta(s)["attack_info"]["diffhammer"]["n_evaluation"]["survived"]]
    assert len(survived) == 6 and sum(survived) == ne["robust"]
