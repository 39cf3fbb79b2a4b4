"""Clean accuracy of a classifier, batched, with a progress bar and a Wilson interval.

Example::

    >>> import robustkit
    >>> from robustkit.eval import clean_accuracy
    >>> clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    >>> x, y = robustkit.load_dataset("digits")
    >>> acc = clean_accuracy(clf, x, y, batch_size=128)
    >>> acc.n, acc.correct >= 345
    (360, True)
"""

from __future__ import annotations

import logging

import torch

from ..attacks.base import eval_mode
from ..classifier import Classifier, check_images, check_labels, resolve_device
from ..errors import InputError
from ..utils import check_positive_int, progress_bar
from .stats import Accuracy, accuracy_with_ci

log = logging.getLogger(__name__)


def predict(model: Classifier, x: torch.Tensor, *, batch_size: int = 256, device: torch.device | str | None = None,
            progress: bool | None = None, desc: str = "predict") -> torch.Tensor:
    """Predicted labels ``[N]`` (on the CPU), computed in batches without gradients, in eval mode (each
    submodule's training flag is restored afterwards)."""
    if not isinstance(model, Classifier):
        raise InputError(f"model must be a robustkit Classifier, got {type(model).__name__}")
    check_positive_int("batch_size", batch_size)
    check_images(x, model.input_shape)
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    else:
        device = resolve_device(device)
    preds = []
    with eval_mode(model), torch.no_grad():
        for i in progress_bar(range(0, x.shape[0], batch_size), enabled=progress, desc=desc, unit="batch",
                              logger=log):
            preds.append(model(x[i:i + batch_size].to(device)).argmax(1).cpu())
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)


def clean_accuracy(model: Classifier, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 256,
                   device: torch.device | str | None = None, progress: bool | None = None,
                   confidence: float = 0.95) -> Accuracy:
    """Accuracy of ``model`` on ``(x, y)`` with its Wilson ``confidence`` interval."""
    check_labels(y, x.shape[0] if isinstance(x, torch.Tensor) and x.dim() > 0 else -1, model.num_classes)
    pred = predict(model, x, batch_size=batch_size, device=device, progress=progress, desc="accuracy")
    return accuracy_with_ci(pred == y.cpu(), confidence)
