"""create_defense builds every registered name with the builder of its method, and refuses the rest."""

import pytest
import torch

import robustkit
from robustkit import InputError, RegistryError
from robustkit.defenses import (ContrastivePurifiedClassifier, EnergyAdaptedClassifier, NormStatsClassifier,
                                PurifiedClassifier, RobustDiffusionClassifier, TentClassifier, create_diffpure,
                                defense_config, register_builder)


@pytest.mark.parametrize("name, cls, options", [
    ("tiny_diffpure.digits", PurifiedClassifier, {"seed": 0}),
    ("tiny_contrastive_purification.digits", ContrastivePurifiedClassifier, {"seed": 0}),
    ("tiny_rdc.digits", RobustDiffusionClassifier, {"seed": 0, "mode": "adaptive"}),
    ("tea.tiny_cnn.digits", EnergyAdaptedClassifier, {"buffer_size": 16, "sgld_steps": 1}),
    ("tent.tiny_cnn.digits", TentClassifier, {}),
    ("bn.tiny_cnn.digits", NormStatsClassifier, {}),
])
def test_every_family_builds_through_create_defense(name, cls, options):
    d = robustkit.create_defense(name, pretrained=True, **options)
    assert type(d) is cls and not d.training
    x, _ = robustkit.load_dataset("digits", n_examples=4)
    with torch.no_grad():
        logits = d(x)
    assert logits.shape == (4, 10) and torch.isfinite(logits).all()


def test_options_are_checked_by_the_family_builder():
    with pytest.raises(InputError, match="unknown argument"):
        robustkit.create_defense("tiny_rdc.digits", pretrained=True, t_star=0.1)  # a DiffPure option
    with pytest.raises(InputError, match="not a DiffPure defense"):
        create_diffpure("tiny_rdc.digits", pretrained=True)
    with pytest.raises(RegistryError):
        robustkit.create_defense("no_such.defense")
    # the two purification builders check the classifier argument alike, before loading anything
    digits_clf = robustkit.create_classifier("tiny_cnn.digits")
    for name in ("diffpure.cifar10", "contrastive_purification.cifar10"):
        with pytest.raises(InputError, match=r"defends \[N, 3, 32, 32\] images; the classifier takes \[N, 1, 8, 8\]"):
            robustkit.create_defense(name, pretrained=True, classifier=digits_clf)
        with pytest.raises(InputError, match="a robustkit Classifier or a registered name"):
            robustkit.create_defense(name, pretrained=True, classifier=3)
    for name in ("tiny_rdc.digits", "tent.tiny_cnn.digits", "tiny_diffpure.digits",
                 "tiny_contrastive_purification.digits"):
        with pytest.raises(InputError, match="pretrained must be a bool"):
            robustkit.create_defense(name, pretrained="yes")
    with pytest.raises(InputError, match="not an RDC defense"):
        robustkit.defenses.create_rdc("tiny_diffpure.digits")


def test_builders_are_named_and_registered_once():
    def other(name, *, pretrained=False):
        raise AssertionError("never called")

    with pytest.raises(RegistryError, match="lambda"):
        register_builder("X", lambda name, **kw: None)
    with pytest.raises(RegistryError, match="already has"):
        register_builder(defense_config("tiny_diffpure.digits").method, other)
