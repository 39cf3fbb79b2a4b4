"""Attacks on defenses that adapt at test time or depend on the batch: the batch threat model.

Every query an attack makes must be ``reset()`` + forward of the batch — the function the verification
forward scores — and the harness must attack the whole batch even when cascading. A stateless
batch-dependent defense (``traits.batch_dependent``) gets the same whole-batch treatment without resets.
"""

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import robustkit
from robustkit.attacks import APGD, PGD, project
from robustkit.defenses import TentClassifier, create_defense


def _tent(lr: float = 0.05) -> TentClassifier:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))
    return TentClassifier(robustkit.wrap_classifier(net, input_shape=(1, 8, 8)), lr=lr)


def test_every_attack_query_starts_from_the_reset_state():
    tent = _tent()
    seen = []
    tent.register_forward_pre_hook(lambda mod, args: seen.append(int(mod.adam_step)))
    x, y = torch.rand(6, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    res = PGD(eps=0.1, steps=4, step_size=0.03, early_stop=False, seed=0)(tent, x, y)
    assert len(seen) == 4 + 2  # clean + 4 gradient queries + verification
    assert seen == [0] * len(seen)  # without the per-query reset the k-th query would see adam_step == k
    assert res.info["test_time_state"].startswith("reset() before every query")
    assert res.info["partial_batch_queries"] == 0
    assert int(tent.adam_step) == 1  # the verification forward adapted once


def test_attack_gradients_are_those_of_the_scored_function():
    tent = _tent(lr=0.5)  # a large step, so an adapted model's gradient would differ visibly
    x, y = torch.rand(6, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    eps, alpha = 0.2, 0.05

    def scored_gradient(z: torch.Tensor) -> torch.Tensor:  # reset() + forward, as the verification
        tent.reset()
        z = z.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(tent(z), y, reduction="sum"), z)
        return g

    expected = x.clone()
    for _ in range(3):
        expected = project(expected + alpha * scored_gradient(expected).sign(), x, eps, "Linf")
    res = PGD(eps=eps, steps=3, step_size=alpha, random_start=False, early_stop=False, seed=0)(tent, x, y)
    clean_wrong = ~res.clean_correct
    expected[clean_wrong] = x[clean_wrong]  # the harness leaves clean-misclassified points unperturbed
    torch.testing.assert_close(res.x_adv, expected, rtol=0, atol=1e-6)


def test_harness_attacks_the_whole_batch_of_an_adapting_defense(tmp_path):
    tent = create_defense("tent.tiny_cnn.digits", pretrained=True)
    batch_size = 16
    rec = robustkit.benchmark(tent, dataset="digits", eps=0.3, attacks=["pgd", "pgd-eot"], n_examples=24,
                              batch_size=batch_size, checks=False, cascade=True,
                              attack_options={"pgd": {"steps": 10}, "pgd-eot": {"steps": 2, "eot": 1}},
                              run_dir=tmp_path / "run")
    per_example = [json.loads(line) for f in sorted((tmp_path / "run" / "shards").glob("*.jsonl"))
                   for line in f.read_text().splitlines()]
    assert len(per_example) == 24
    # eps = 0.3 breaks most points with the first attack; a cascade would skip them in the second, which
    # would change the batch the defense adapts on. Here every example is attacked by both.
    assert all(r["attacks"]["pgd-eot"] is not None for r in per_example)
    threat = rec.attacks[0]["batch_threat_model"]
    assert threat["batch_size"] == batch_size and "reset() before every query" in threat["composition"]
    assert rec.per_attack["pgd"]["single_draw"].value < rec.clean["single_draw"].value


def test_subset_queries_of_an_adapting_model_are_flagged():
    """pyautoattack's APGD attacks only the points classified right at the start: for an adapting model
    those queries see a different batch than the one scored, which the result must say."""
    tent = _tent()
    x, y = torch.rand(6, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    with torch.no_grad():
        right = tent(x).argmax(1) == y
    assert 0 < int(right.sum()) < 6  # some points start misclassified, so APGD drops them
    with pytest.warns(RuntimeWarning, match="subset of the batch"):
        res = APGD(eps=0.1, steps=3, seed=0)(tent, x, y)
    assert res.info["partial_batch_queries"] > 0


class _BatchCentred(robustkit.Classifier):
    """Stateless but batch-dependent: subtracts the batch's mean image (declared ``batch_dependent``)."""

    def __init__(self, base):
        super().__init__(base.num_classes, base.input_shape, robustkit.DefenseTraits(batch_dependent=True))
        self.base = base

    def logits(self, x):
        return self.base((x - x.mean(0, keepdim=True) + 0.5).clamp(0, 1))


def test_harness_attacks_the_whole_batch_of_a_batch_dependent_defense(tmp_path):
    model = _BatchCentred(robustkit.create_classifier("tiny_cnn.digits", pretrained=True))
    assert model.traits.batch_threat_model and not model.traits.adapts_at_test_time
    rec = robustkit.benchmark(model, dataset="digits", eps=0.3, attacks=["pgd", "pgd-eot"], n_examples=24,
                              batch_size=12, checks=False, cascade=True,
                              attack_options={"pgd": {"steps": 10}, "pgd-eot": {"steps": 2, "eot": 1}},
                              run_dir=tmp_path / "run")
    per_example = [json.loads(line) for f in sorted((tmp_path / "run" / "shards").glob("*.jsonl"))
                   for line in f.read_text().splitlines()]
    assert all(r["attacks"]["pgd-eot"] is not None for r in per_example)  # no cascade skipping
    threat = rec.attacks[0]["batch_threat_model"]
    assert threat["batch_size"] == 12 and "reset()" not in threat["composition"]
    assert "test_time_state" not in rec.attacks[0]
    from robustkit.eval.benchmark import resolve_attacks

    assert resolve_attacks(model, "auto") == ["pgd-eot", "autoattack-rand", "autoattack-standard"]  # issue 23 item 2


def test_subset_queries_of_a_batch_dependent_model_are_flagged():
    model = _BatchCentred(robustkit.create_classifier("tiny_cnn.digits", pretrained=True))
    x, y = robustkit.load_dataset("digits", n_examples=16)
    res = PGD(eps=0.05, steps=3, seed=0)(model, x, y)
    assert res.info["partial_batch_queries"] == 0 and "test_time_state" not in res.info
    with pytest.warns(RuntimeWarning, match="batch-dependent"):
        res = APGD(eps=0.2, steps=5, seed=0)(model, x, y)
    assert res.info["partial_batch_queries"] > 0
