"""Load any RobustBench model zoo entry as a robustkit Classifier (optional extra ``robustkit[robustbench]``).

RobustBench needs torchvision and downloads weights from its zoo at load time, so it is an optional
extra: install it with ``pip install 'robustkit[robustbench]'`` on a machine with internet access. On a
CPU-only machine, torchvision from PyPI may pull a CUDA build of torch; see the README.

Example (needs robustbench and network access; not run in tests)::

    clf = robustkit.models.from_robustbench("Standard", "cifar10", "Linf")
"""

from __future__ import annotations

from ..classifier import Classifier, wrap_classifier
from ..errors import InputError
from .. import hub

_SHAPES = {"cifar10": ((3, 32, 32), 10), "cifar100": ((3, 32, 32), 100), "imagenet": ((3, 224, 224), 1000)}
_THREATS = ("Linf", "L2", "corruptions")


def from_robustbench(name: str, dataset: str = "cifar10", threat_model: str = "Linf") -> Classifier:
    """Wrap ``robustbench.utils.load_model(name, dataset=..., threat_model=...)`` as a Classifier.

    Weights are cached under ``$ROBUSTKIT_HOME/robustbench``. RobustBench models take [0, 1] pixels and
    carry any normalisation themselves, so none is added here.
    """
    if dataset not in _SHAPES:
        raise InputError(f"dataset must be one of {sorted(_SHAPES)}, got {dataset!r}")
    if threat_model not in _THREATS:
        raise InputError(f"threat_model must be one of {_THREATS}, got {threat_model!r}")
    try:
        from robustbench.utils import load_model
    except ImportError as e:
        raise ImportError("from_robustbench needs the optional extra: pip install 'robustkit[robustbench]' "
                          f"(import failed: {e})") from e
    model_dir = hub.home() / "robustbench"
    model_dir.mkdir(parents=True, exist_ok=True)
    net = load_model(model_name=name, model_dir=str(model_dir), dataset=dataset, threat_model=threat_model)
    input_shape, num_classes = _SHAPES[dataset]
    clf = wrap_classifier(net, num_classes=num_classes, input_shape=input_shape)
    clf.name = f"robustbench:{dataset}/{threat_model}/{name}"
    return clf
