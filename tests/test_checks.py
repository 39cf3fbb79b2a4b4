"""Sanity checks: planted obfuscated or mis-declared defenses are flagged; a clean model is not."""

import pytest
import torch

import robustkit
from robustkit import Classifier, DefenseTraits
from robustkit.eval import benchmark, run_checks
from robustkit.eval.checks import sign_test_p


@pytest.fixture(scope="module")
def clf():
    return robustkit.create_classifier("tiny_cnn.digits", pretrained=True)


@pytest.fixture(scope="module")
def probe():
    return robustkit.load_dataset("digits", n_examples=24)


class Quantized(Classifier):
    """The digits model behind a 4-level quantiser: torch.round has zero gradient (shattered gradients)."""

    def __init__(self, base):
        super().__init__(10, (1, 8, 8))
        self.base = base

    def logits(self, x):
        return self.base(torch.round(x * 3) / 3)


class SecretlyRandom(Classifier):
    """Adds input noise but declares itself deterministic."""

    def __init__(self, base):
        super().__init__(10, (1, 8, 8))
        self.base = base

    def logits(self, x):
        return self.base((x + 0.3 * torch.randn_like(x)).clamp(0, 1))


class Softmaxed(Classifier):
    def __init__(self, base):
        super().__init__(10, (1, 8, 8))
        self.base = base

    def logits(self, x):
        return self.base(x).softmax(1)


class Adapting(Classifier):
    """Updates a buffer on every forward without declaring it."""

    def __init__(self, base):
        super().__init__(10, (1, 8, 8))
        self.base = base
        self.register_buffer("seen", torch.zeros(()))

    def logits(self, x):
        self.seen += x.shape[0]
        return self.base(x)


def by_name(results):
    return {r.name: r for r in results}


def test_clean_model_passes_every_check(clf, probe):
    res = by_name(run_checks(clf, *probe, eps=0.1, norm="Linf", base_classifier=clf))
    assert not any(r.is_blocking_failure for r in res.values()), {k: r.message for k, r in res.items()}
    assert all(r.status == "pass" for r in res.values()), {k: (r.status, r.message) for k, r in res.items()}


def test_sign_test():
    assert sign_test_p(0, 0) == 1.0
    assert sign_test_p(6, 0) == 1 / 64
    assert sign_test_p(3, 3) == 42 / 64  # P[Bin(6, 1/2) >= 3]
    assert sign_test_p(0, 5) == 1.0


def test_quantizer_is_flagged_as_obfuscated(clf, probe):
    q = Quantized(clf)  # a fresh wrapper is in training mode, the classifier inside it in eval mode
    res = by_name(run_checks(q, *probe, eps=0.1, norm="Linf", base_classifier=clf))
    assert q.training and not clf.training  # checks run in eval mode and restore each module's own flag
    assert res["gradients"].status == "fail" and res["gradients"].blocking
    assert "zero" in res["gradients"].message
    assert res["unbounded_attack"].status == "fail"
    assert res["black_box"].status == "fail"  # Square beats the gradient attack
    assert res["transfer"].status == "fail"  # the base model's gradients beat the defense's own
    # paired on the same probe points: transfer breaks points white-box PGD cannot, never the reverse
    assert res["transfer"].details["broken_only_by_alternative"] >= 5
    assert res["transfer"].details["broken_only_by_white_box"] == 0


def test_hidden_randomness_is_flagged(clf, probe):
    res = by_name(run_checks(SecretlyRandom(clf), *probe, eps=0.1, norm="Linf"))
    assert res["stochasticity"].status == "fail" and res["stochasticity"].blocking
    assert "declared deterministic" in res["stochasticity"].message


def test_probabilities_and_undeclared_adaptation_are_flagged(clf, probe):
    assert by_name(run_checks(Softmaxed(clf), *probe, eps=0.1, norm="Linf"))["logits"].status == "fail"
    res = by_name(run_checks(Adapting(clf), *probe, eps=0.1, norm="Linf"))
    assert res["test_time_state"].status == "fail" and "adapts_at_test_time" in res["test_time_state"].message


def test_declared_stochastic_but_deterministic_is_only_a_warning(clf, probe):
    class Declared(Quantized):
        traits = DefenseTraits(stochastic=True)

        def logits(self, x):
            return self.base(x)

    res = by_name(run_checks(Declared(clf), *probe, eps=0.1, norm="Linf"))
    assert res["stochasticity"].status == "warn" and not res["stochasticity"].is_blocking_failure


def test_benchmark_marks_obfuscated_defense_unreliable(clf):
    kw = dict(dataset="digits", eps=0.1, attacks=["pgd"], attack_options={"pgd": {"steps": 10}}, n_examples=24,
              batch_size=24, probe_size=24)
    bad = benchmark(Quantized(clf), **kw)
    assert bad.unreliable and "UNRELIABLE" in bad.summary()
    good = benchmark(clf, **kw)
    assert not good.unreliable
    # the obfuscated model looks *more* robust to the white-box attack: exactly what the checks catch
    assert bad.robust["single_draw"].value > good.robust["single_draw"].value


class _Saturated(robustkit.Classifier):
    """The digits model with its logits scaled by 1000: the softmax saturates (like a diffusion classifier's
    −L_y, whose class gaps run into the thousands), so cross-entropy gradients are exactly zero."""

    def __init__(self, base):
        super().__init__(10, (1, 8, 8))
        self.base = base

    def logits(self, x):
        return 1000.0 * self.base(x)


def test_saturated_softmax_is_diagnosed_and_the_margin_loss_still_attacks():
    from robustkit.attacks import PGD
    from robustkit.eval.checks import check_gradients

    base = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    model = _Saturated(base)
    x, y = robustkit.load_dataset("digits", n_examples=16)
    res = check_gradients(model, x, y, 1)
    assert res.status == "fail" and "saturate the softmax" in res.message and "margin" in res.message
    assert res.details["fraction_zero_margin_gradient"] == 0
    ce = PGD(eps=0.1, steps=10, seed=0)(model, x, y)
    margin = PGD(eps=0.1, steps=10, seed=0, loss="margin")(model, x, y)
    assert margin.info["loss"] == "margin"
    # the same attack on the unscaled model, which has the same decisions: the margin loss recovers it
    plain = PGD(eps=0.1, steps=10, seed=0)(base, x, y)
    assert margin.robust_accuracy <= plain.robust_accuracy + 1 / 16 < ce.robust_accuracy


def test_margin_checks_attack_a_saturated_model_that_ce_checks_cannot():
    from robustkit.eval.checks import check_gradients, validate_check_options

    base = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    model = _Saturated(base)
    x, y = robustkit.load_dataset("digits", n_examples=16)
    # margin is the verdict's loss: it has gradients everywhere, so only a (non-blocking) warning remains,
    # and it still says that CE-based attacks in the record are blind
    res = check_gradients(model, x, y, 1, "margin")
    assert res.status == "warn" and not res.blocking and "saturate the softmax" in res.message
    assert res.details["loss"] == "margin" and res.details["fraction_zero_gradient"] == 0
    assert res.details["fraction_zero_ce_gradient"] > 0.5
    assert check_gradients(base, x, y, 1, "margin").status == "pass"  # the unscaled model: nothing to say
    kw = dict(eps=0.1, norm="Linf", steps=5, square_queries=20, base_classifier=base)
    ce = by_name(run_checks(model, x, y, **kw))
    margin = by_name(run_checks(model, x, y, loss="margin", **kw))
    # the unbounded attack gets nowhere with CE's zero gradients, and reaches every image with the margin
    assert ce["unbounded_attack"].status == "fail" and margin["unbounded_attack"].status == "pass"
    assert margin["unbounded_attack"].details["accuracy"] == 0.0
    assert margin["gradients"].details["protocol"]["loss"] == "margin"
    with pytest.raises(robustkit.InputError, match="loss must be one of"):
        validate_check_options({"loss": "hinge"})


def test_check_budgets_are_used_recorded_and_keyed_in_the_run_dir(clf, tmp_path):
    kw = dict(dataset="digits", eps=0.1, attacks=["pgd"], attack_options={"pgd": {"steps": 5}}, n_examples=12,
              batch_size=12, probe_size=6, run_dir=tmp_path / "run")
    rec = benchmark(clf, check_options={"steps": 3, "eot": 2, "square_queries": 40}, **kw)
    checks = by_name(rec.checks)
    assert checks["more_steps"].details["steps"] == [3, 6]
    assert checks["black_box"].details["queries"] == 40
    for name in ("stochasticity", "monotone_eps", "transfer"):
        protocol = dict(checks[name].details["protocol"])
        assert protocol.pop("sizing")["max_fraction"] == 0.3
        assert protocol == {"probe_size": 6, "steps": 3, "eot": 2, "square_queries": 40, "loss": "ce",
                            "seed": protocol["seed"]}
    assert rec.cost["checks_forward_passes"] > 0 and rec.cost["checks_backward_passes"] > 0
    # resuming with the same budgets reuses the stored checks; other budgets run them again
    again = benchmark(clf, check_options={"steps": 3, "eot": 2, "square_queries": 40}, **kw)
    assert again.cost["checks_seconds"] == rec.cost["checks_seconds"]
    other = benchmark(clf, check_options={"steps": 4}, **kw)
    assert by_name(other.checks)["more_steps"].details["steps"] == [4, 8]
    assert by_name(other.checks)["more_steps"].details["protocol"]["eot"] == 1  # deterministic model's default
    with pytest.raises(robustkit.InputError, match="unknown check option"):
        benchmark(clf, check_options={"restarts": 2}, **kw)
    with pytest.raises(robustkit.InputError, match="positive int"):
        benchmark(clf, check_options={"steps": 0}, **kw)


class BatchCentred(Classifier):
    """Subtracts the batch mean image before classifying: each prediction depends on the rest of the batch."""

    def __init__(self, base, declare):
        super().__init__(10, (1, 8, 8), DefenseTraits(batch_dependent=declare))
        self.base = base

    def logits(self, x):
        return self.base((x - x.mean(0, keepdim=True) + 0.5).clamp(0, 1))


class DeclaredButIndependent(Classifier):
    def __init__(self, base):
        super().__init__(10, (1, 8, 8), DefenseTraits(batch_dependent=True))
        self.base = base

    def logits(self, x):
        return self.base(x)


def test_batch_dependence_check(clf, probe):
    from robustkit.eval.checks import check_batch_dependence

    x = probe[0]
    undeclared = check_batch_dependence(BatchCentred(clf, declare=False), x)
    assert undeclared.status == "fail" and undeclared.blocking and "batch_dependent" in undeclared.message
    assert undeclared.details["max_relative_logit_difference_split"] > 1e-2
    assert check_batch_dependence(BatchCentred(clf, declare=True), x).status == "pass"
    plain = check_batch_dependence(clf, x)
    assert plain.status == "pass" and plain.details["max_relative_logit_difference_split"] < 1e-5
    assert check_batch_dependence(DeclaredButIndependent(clf), x).status == "warn"
    # its own noise would hide a split's effect: skipped, never passed
    assert check_batch_dependence(SecretlyRandom(clf), x).status == "skipped"
    assert check_batch_dependence(clf, x[:1]).status == "skipped"
