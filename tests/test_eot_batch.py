"""EOT as one batch: the draws of a stochastic defense evaluated as one forward of the repeated input equal
the sequential forwards draw for draw (logits, EOT gradients, attack results), the batched path is really
taken (the score network sees one batch of E·N rows), and every model that cannot be batched across draws
(deterministic, batch-dependent, stochastic through a shared noise, adjoint mode) is called draw by draw."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import robustkit
from robustkit import Classifier, DefenseTraits
from robustkit.attacks import BPDAEOT, PGD, DiffAttack, DiffHammer, eot_logits
from robustkit.attacks.base import EOT_BATCH, draws_per_forward, eot_chunks
from robustkit.attacks.pgd import eot_gradient
from robustkit.defenses import DiffPureConfig, DiffPurePurifier, PurifiedClassifier
from robustkit.defenses.diffpure import DiffPureNoise, GaussianScoreModel
from robustkit.defenses.purification import DrawBlocks
from robustkit.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")

T_STAR = 0.02  # 20 solver steps of the tiny UNet: fast, and still a stochastic defense


@pytest.fixture(scope="module")
def digits():
    x, y = robustkit.load_dataset("digits", n_examples=4)
    return x, y


def tiny(gradient="exact", seed=None, **kw):
    return robustkit.create_defense("tiny_diffpure.digits", pretrained=True, t_star=T_STAR, gradient=gradient,
                                    seed=seed, **kw)


def rows_seen(defense):
    """Record the batch size of every score-network call of ``defense``'s purifier."""
    seen = []
    defense.purifier.score_model.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    return seen


def reseed(defense, seed):
    torch.manual_seed(1234)  # the global RNG feeds an unseeded defense one seed per forward
    if seed is not None:
        defense.manual_seed(seed)


def sequential_gradient(defense, x, y, draws):
    """The EOT loop as it was written before batching: one forward and one backward per draw."""
    grad = torch.zeros_like(x)
    for _ in range(draws):
        xa = x.detach().clone().requires_grad_(True)
        logits = defense(xa)
        grad += torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), xa)[0]
    return grad / draws, logits.detach()


# -- logits and gradients draw for draw ---------------------------------------------------------------------

@pytest.mark.parametrize("gradient,seed", [("exact", None), ("exact", 7), ("bpda", None), ("bpda", 7),
                                           ("surrogate", 7)])
def test_batched_logits_and_gradient_equal_the_sequential_draws(digits, gradient, seed):
    x, y = digits
    d = tiny(gradient, seed)
    assert d.batches_draws
    seen = rows_seen(d)
    draws = 3
    reseed(d, seed)
    sequential = torch.stack([d(x) for _ in range(draws)])
    assert set(seen) == {x.shape[0]}
    seen.clear()
    reseed(d, seed)
    batched = eot_logits(d, x, draws)
    assert set(seen) == {draws * x.shape[0]} and len(seen) == d.purifier.nfe  # one forward of E·N rows
    torch.testing.assert_close(batched, sequential, rtol=0, atol=1e-5)
    assert torch.equal(batched.argmax(-1), sequential.argmax(-1))
    assert not torch.allclose(sequential[0], sequential[1])  # the draws really differ

    reseed(d, seed)
    want, want_last = sequential_gradient(d, x, y, draws)
    reseed(d, seed)
    got, last = eot_gradient(d, x, y, draws, "ce")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(last, want_last, rtol=0, atol=1e-5)
    assert torch.equal(got.sign(), want.sign()) and float(want.abs().sum()) > 0


def test_the_global_rng_advances_as_in_the_sequential_loop(digits):
    x, _ = digits
    d = tiny()
    torch.manual_seed(0)
    eot_logits(d, x, 4)
    after_batched = torch.get_rng_state()
    torch.manual_seed(0)
    for _ in range(4):
        d(x)
    assert torch.equal(after_batched, torch.get_rng_state())  # later draws are unchanged too


def test_chunks_bound_the_batch_and_keep_the_order(digits):
    x, y = digits
    d = tiny(seed=3)
    seen = rows_seen(d)
    draws, n = 5, x.shape[0]
    max_batch = 2 * n + 1                                          # two draws per forward: chunks 2, 2, 1
    assert draws_per_forward(x, draws, max_batch) == 2
    d.manual_seed(3)
    sequential = torch.stack([d(x) for _ in range(draws)])
    seen.clear()
    d.manual_seed(3)
    chunks = list(eot_chunks(d, x, draws, max_batch=max_batch))
    assert [c.shape[0] for c in chunks] == [2, 2, 1]
    assert sorted(set(seen)) == [n, 2 * n] and max(seen) <= max_batch
    torch.testing.assert_close(torch.cat(chunks), sequential, rtol=0, atol=1e-5)
    d.manual_seed(3)
    want, _ = sequential_gradient(d, x, y, draws)
    d.manual_seed(3)
    got, _ = eot_gradient(d, x, y, draws, "ce", max_batch=max_batch)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # a bound below one draw's rows: one draw per forward, never a smaller batch than the attack's
    assert draws_per_forward(x, draws, 1) == 1 and draws_per_forward(x, draws, None) == draws
    # "auto": at most 256 CIFAR-10 images' worth of input values per forward, whatever the image size
    assert draws_per_forward(x, 20, "auto") == 20                                          # 8×8 digits: all
    assert draws_per_forward(torch.zeros(64, 3, 32, 32), 20, "auto") == 4                  # 256 rows
    assert draws_per_forward(torch.zeros(2, 3, 224, 224), 20, "auto") == 2                 # 5 rows: 2 draws
    assert draws_per_forward(torch.zeros(8, 3, 224, 224), 20, "auto") == 1                 # never below N


@pytest.mark.parametrize("vote", ["logits", "majority"])
def test_sample_voting_is_batched_per_draw(digits, vote):
    x, _ = digits
    d = tiny(seed=11, n_samples=3, vote=vote)
    d.manual_seed(11)
    sequential = torch.stack([d(x) for _ in range(2)])
    d.manual_seed(11)
    batched = d.draw_logits(x, 2)
    torch.testing.assert_close(batched, sequential, rtol=0, atol=1e-5)
    assert torch.equal(batched.argmax(-1), sequential.argmax(-1))


# -- models drawn one by one ---------------------------------------------------------------------------------

class NoisyLogits(Classifier):
    """A stochastic classifier outside robustkit's purifiers: logits plus global-RNG noise."""

    def __init__(self, clf, batch_dependent=False):
        super().__init__(clf.num_classes, clf.input_shape,
                         DefenseTraits(stochastic=True, gradient="exact", batch_dependent=batch_dependent))
        self.clf = clf
        self.batches = []

    def logits(self, x):
        self.batches.append(x.shape[0])
        out = self.clf.logits(x)
        if self.traits.batch_dependent:
            out = out - out.mean(0, keepdim=True)  # depends on the other images of the batch
        return out + torch.randn(out.shape)


@pytest.mark.parametrize("batch_dependent", [False, True])
def test_models_without_draw_batching_are_called_draw_by_draw(digits, batch_dependent):
    x, _ = digits
    clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    m = NoisyLogits(clf, batch_dependent)
    torch.manual_seed(0)
    sequential = torch.stack([m(x) for _ in range(3)])
    m.batches.clear()
    torch.manual_seed(0)
    got = eot_logits(m, x, 3)
    assert m.batches == [x.shape[0]] * 3 and torch.equal(got, sequential)
    # a deterministic model: every draw the same forward
    det = eot_logits(clf, x, 3)
    assert torch.equal(det[0], det[2]) and torch.equal(det[0], clf(x))


def test_batch_dependent_and_adjoint_defenses_are_not_batched(digits):
    x, _ = digits

    class BatchDependentPurifier(DiffPurePurifier):
        batch_dependent = True

    clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    p = BatchDependentPurifier(GaussianScoreModel((1, 8, 8), mean=0.0, std=0.6), DiffPureConfig(t_star=0.05, dt=1e-2))
    d = PurifiedClassifier(p, clf, seed=0)
    assert d.traits.batch_dependent and not d.batches_draws
    seen = rows_seen(d)
    d.manual_seed(0)
    sequential = torch.stack([d(x) for _ in range(3)])
    seen.clear()
    d.manual_seed(0)
    assert torch.equal(eot_logits(d, x, 3), sequential) and set(seen) == {x.shape[0]}
    assert not tiny("adjoint").batches_draws                    # one Brownian motion per call
    from robustkit.defenses import ContrastiveGuidedPurifier, create_rdc
    assert not create_rdc("tiny_rdc.digits", pretrained=True, seed=0, stride=100).batches_draws  # shared noise
    assert not ContrastiveGuidedPurifier.supports_draw_blocks   # a head per purification; batch-dependent
    with pytest.raises(InputError, match="Brownian"):
        tiny("adjoint").purifier.purify_adjoint(x.repeat(2, 1, 1, 1), DrawBlocks((torch.Generator(),) * 2))


# -- attacks: the same result with batching on and off ------------------------------------------------------

def _attack_both_ways(make, defense, x, y):
    results, widest = [], []
    seen = rows_seen(defense)
    for eot_batch in (1, None):
        seen.clear()
        torch.manual_seed(5)
        results.append(make(eot_batch)(defense, x, y))
        widest.append(max(seen))
    assert widest == [x.shape[0], widest[1]] and widest[1] >= 2 * x.shape[0]  # off: N rows; on: draws stacked
    off, on = results
    assert torch.equal(on.x_adv, off.x_adv) and torch.equal(on.robust, off.robust)
    assert (on.forwards, on.backwards) == (off.forwards, off.backwards)
    assert on.info["eot_batch"] is None and off.info["eot_batch"] == 1
    return on, off


def test_pgd_eot_result_is_identical_with_batching_on_and_off(digits):
    x, y = digits
    on, off = _attack_both_ways(lambda b: PGD(eps=0.3, steps=3, eot=3, eot_batch=b, seed=1), tiny(), x, y)
    assert on.forwards >= 3 * 3 * x.shape[0]
    assert not torch.equal(on.x_adv, x)                                                   # it did move
    assert PGD(eps=0.1).protocol()["eot_batch"] == EOT_BATCH


@pytest.mark.parametrize("attack,gradient", [
    (lambda b: BPDAEOT(eps=0.3, steps=2, step_size=0.1, eot=3, recheck=4, eot_batch=b), "bpda"),
    (lambda b: DiffHammer(eps=0.3, steps=2, n_eval=3, eot_batch=b), "exact"),
    (lambda b: DiffAttack(eps=0.3, steps=2, eot=2, eot_batch=b), "exact"),
], ids=["bpda-eot", "diffhammer", "diffattack"])
def test_bpda_eot_diffhammer_and_diffattack_are_identical_with_batching_on_and_off(digits, attack, gradient):
    x, y = digits
    _attack_both_ways(attack, tiny(gradient), x, y)


def test_benchmark_re_evaluations_are_batched_and_equal_the_sequential_draws(digits, monkeypatch):
    """The harness's n_reeval re-classifications (clean and adversarial) go through the batched draws and
    give the same per-example predictions as one forward per draw."""
    import importlib

    bm = importlib.import_module("robustkit.eval.benchmark")  # the module (the package exports the function)
    x, y = digits
    defense = tiny()
    seen = rows_seen(defense)

    def run(batched):
        monkeypatch.setattr(bm, "batches_draws", lambda m: batched and bool(getattr(m, "batches_draws", False)))
        seen.clear()
        with bm._seeded(7, torch.device("cpu")):
            flags, pred = bm._predict_draws(defense, x, y, 5)
        return flags, pred, list(seen)

    flags_b, pred_b, rows_b = run(True)
    flags_s, pred_s, rows_s = run(False)
    assert (flags_b, pred_b) == (flags_s, pred_s)
    assert len(pred_b) == x.shape[0] and all(len(p) == 5 for p in pred_b)
    assert max(rows_b) == 5 * x.shape[0] and max(rows_s) == x.shape[0]  # one stacked batch vs draw by draw


# -- validation ----------------------------------------------------------------------------------------------

def test_bad_options_are_typed_errors(digits):
    x, _ = digits
    for bad in (0, -1, 1.5, True, "8"):
        with pytest.raises(InputError, match="eot_batch"):
            PGD(eps=0.1, eot_batch=bad)
    with pytest.raises(InputError, match="draws"):
        tiny().draw_logits(x, 0)
    with pytest.raises(InputError, match="equal draw blocks"):
        DrawBlocks((torch.Generator(),) * 3).split(x)
    with pytest.raises(InputError, match="Generator"):
        DrawBlocks(())
    noise = DiffPureNoise(torch.zeros(1, 1, 2, 2))

    class Other(DiffPureNoise):
        pass

    with pytest.raises(InputError, match="only DiffPureNoise"):
        DiffPureNoise.cat([noise, Other(noise.init)])
