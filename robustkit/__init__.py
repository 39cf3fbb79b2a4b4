"""robustkit: honest evaluation of adversarial-robustness defenses.

Public API::

    >>> import robustkit
    >>> clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    >>> x, y = robustkit.load_dataset("digits", n_examples=8)
    >>> clf(x).argmax(1).shape
    torch.Size([8])
"""

__version__ = "0.1.0"

from .classifier import Classifier, DefenseTraits, WrappedClassifier, check_images, check_labels, wrap_classifier
from .data import load_dataset
from .errors import CheckpointError, DatasetError, InputError, RegistryError, RobustkitError
from .registry import create_classifier, list_classifiers
from .eval import BenchmarkRecord, benchmark
from .defenses import PurifiedClassifier, create_defense, list_defenses

__all__ = [
    "BenchmarkRecord",
    "benchmark",
    "CheckpointError",
    "Classifier",
    "DatasetError",
    "DefenseTraits",
    "PurifiedClassifier",
    "InputError",
    "RegistryError",
    "RobustkitError",
    "WrappedClassifier",
    "check_images",
    "check_labels",
    "create_classifier",
    "create_defense",
    "list_classifiers",
    "list_defenses",
    "load_dataset",
    "wrap_classifier",
]
