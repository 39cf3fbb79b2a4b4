"""The Classifier contract: validation, wrapping, traits."""

import math

import pytest
import torch
import torch.nn as nn

import robustkit
from robustkit import Classifier, DefenseTraits, InputError, wrap_classifier
from robustkit.classifier import check_images, check_labels


def tiny(input_shape=(3, 4, 4), k=5):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), k))
    return wrap_classifier(net, input_shape=input_shape)


@pytest.mark.parametrize("bad, match", [
    (torch.rand(3, 4, 4), r"rank 4.*got rank 3"),
    (torch.rand(2, 1, 4, 4), r"\[N, 3, 4, 4\], got \[2, 1, 4, 4\]"),
    (torch.rand(2, 3, 5, 4), r"\[N, 3, 4, 4\], got \[2, 3, 5, 4\]"),
    ((torch.rand(2, 3, 4, 4) * 255).to(torch.uint8), r"floating-point.*uint8"),
    (torch.full((2, 3, 4, 4), float("nan")), r"NaN/Inf"),
    (torch.tensor([[[[float("inf")]]]]).expand(2, 3, 4, 4).clone(), r"NaN/Inf"),
    (torch.rand(2, 3, 4, 4) + 1.01, r"\[0, 1\].*got values in"),
    (torch.rand(2, 3, 4, 4) - 0.5, r"\[0, 1\]"),
    ([[0.5]], r"torch.Tensor.*list"),
])
def test_forward_rejects_bad_images(bad, match):
    with pytest.raises(InputError, match=match):
        tiny()(bad)


def test_inputerror_is_valueerror_and_tolerance():
    assert issubclass(InputError, ValueError)
    clf = tiny()
    x = torch.rand(2, 3, 4, 4)
    x[0, 0, 0, 0] = 1 + 5e-7  # within the 1e-6 tolerance
    x[1, 0, 0, 0] = -5e-7
    assert clf(x).shape == (2, 5)
    x[0, 0, 0, 0] = 1 + 2e-6
    with pytest.raises(InputError):
        clf(x)


def test_float64_and_empty_batch_accepted():
    clf = tiny().double()
    assert clf(torch.rand(2, 3, 4, 4, dtype=torch.float64)).dtype == torch.float64
    assert check_images(torch.rand(0, 3, 4, 4), (3, 4, 4)).shape[0] == 0


@pytest.mark.parametrize("labels, match", [
    (torch.tensor([0, 1, 2]), r"shape \[4\], got \[3\]"),
    (torch.tensor([[0, 1, 2, 3]]), r"shape \[4\]"),
    (torch.tensor([0.0, 1.0, 2.0, 3.0]), r"integer.*float32"),
    (torch.tensor([0, 1, 2, 5]), r"\[0, 4\], got values in \[0, 5\]"),
    (torch.tensor([-1, 1, 2, 3]), r"\[0, 4\]"),
    (torch.tensor([True, False, True, False]), r"integer.*bool"),
    ([0, 1, 2, 3], r"torch.Tensor"),
])
def test_check_labels(labels, match):
    with pytest.raises(InputError, match=match):
        check_labels(labels, 4, 5)


def test_check_labels_accepts_int32():
    assert check_labels(torch.tensor([0, 4], dtype=torch.int32), 2, 5).tolist() == [0, 4]


def test_wrap_classifier_normalisation_is_inside():
    class Echo(nn.Module):  # logits = mean of each normalised channel
        def forward(self, z):
            return z.mean(dim=(2, 3))
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    clf = wrap_classifier(Echo(), mean=mean, std=std, input_shape=(3, 2, 2))
    assert clf.num_classes == 3  # inferred by one forward
    x = torch.rand(4, 3, 2, 2)
    expected = torch.stack([(x[:, c].mean(dim=(1, 2)) - mean[c]) / std[c] for c in range(3)], 1)
    torch.testing.assert_close(clf(x), expected)
    assert not clf.training


def test_wrap_classifier_errors():
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    with pytest.raises(InputError, match="input_shape"):
        wrap_classifier(net)
    with pytest.raises(InputError, match="1 or 3 values"):
        wrap_classifier(net, mean=(0.5, 0.5), input_shape=(3, 2, 2))
    with pytest.raises(InputError, match="positive"):
        wrap_classifier(net, std=(1.0, 0.0, 1.0), input_shape=(3, 2, 2))
    with pytest.raises(InputError, match="already a robustkit Classifier"):
        wrap_classifier(tiny())
    with pytest.raises(InputError, match="nn.Module"):
        wrap_classifier(lambda x: x, input_shape=(3, 2, 2))
    with pytest.raises(InputError, match="could not infer num_classes"):
        wrap_classifier(nn.Flatten(0), input_shape=(3, 2, 2))
    bad = wrap_classifier(net, num_classes=4, input_shape=(3, 2, 2))  # declared K disagrees with the net
    with pytest.raises(InputError, match=r"expected \[N, 4\]"):
        bad(torch.rand(1, 3, 2, 2))


def test_traits_validation_and_defaults():
    t = DefenseTraits()
    assert (t.stochastic, t.adapts_at_test_time, t.gradient, t.forward_passes) == (False, False, "exact", 1)
    with pytest.raises(InputError):
        DefenseTraits(gradient="fd")
    with pytest.raises(InputError):
        DefenseTraits(forward_passes=0)
    with pytest.raises(InputError):
        DefenseTraits(stochastic=1)
    with pytest.raises(InputError, match="batch_dependent"):
        DefenseTraits(batch_dependent=1)
    assert not t.batch_dependent and not t.batch_threat_model
    assert DefenseTraits(batch_dependent=True).batch_threat_model
    assert DefenseTraits(adapts_at_test_time=True).batch_threat_model  # adapting on a batch depends on it
    with pytest.raises(Exception):  # frozen
        t.stochastic = True  # type: ignore[misc]


def test_custom_classifier_subclass_validates_and_resets():
    class Counter(Classifier):
        def __init__(self):
            super().__init__(2, (1, 2, 2), DefenseTraits(adapts_at_test_time=True))
            self.seen = 0

        def logits(self, x):
            self.seen += x.shape[0]
            return torch.zeros(x.shape[0], 2)

        def reset(self):
            self.seen = 0

    c = Counter()
    c(torch.rand(3, 1, 2, 2))
    assert c.seen == 3
    with pytest.raises(InputError):
        c(torch.rand(3, 1, 2, 2) * 3)
    assert c.seen == 3  # rejected input never reached the model
    c.reset()
    assert c.seen == 0 and c.traits.adapts_at_test_time
    with pytest.raises(InputError):
        Counter.__mro__[1](1, (1, 2, 2))  # num_classes < 2


def test_public_api_exports():
    for name in ("Classifier", "DefenseTraits", "wrap_classifier", "create_classifier", "list_classifiers",
                 "load_dataset", "InputError", "CheckpointError", "DatasetError"):
        assert hasattr(robustkit, name), name
