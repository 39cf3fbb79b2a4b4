"""TorchAttack on resnet20.cifar10 (the first 32 CIFAR-10 test images, Linf 8/255): the robust accuracy
the adapter reports against an independent eval-mode re-classification of x_adv, and how many state
tensors of the classifier the call changed (issue 21 item 8).

    ROBUSTKIT_SHARED=../shared python scripts/torchattacks_model_state.py
"""

import os
import time
from pathlib import Path

import torch

import robustkit
from robustkit.attacks import TorchAttack

shared = Path(os.environ["ROBUSTKIT_SHARED"])
clf = robustkit.create_classifier("resnet20.cifar10", checkpoint=shared / "models" / "resnet20-12fca82f.th").eval()
x, y = robustkit.load_dataset("cifar10", n_examples=32, data_dir=shared / "data" / "cifar10")
for name, kw in (("CW", {}), ("FAB", {"steps": 10}), ("Square", {"n_queries": 1000})):
    state = {k: v.clone() for k, v in clf.state_dict().items()}
    t0 = time.perf_counter()
    res = TorchAttack(name, eps=8 / 255, **kw)(clf, x, y)
    changed = sum(not torch.equal(v, state[k]) for k, v in clf.state_dict().items())
    clf.load_state_dict(state)
    clf.eval()
    with torch.no_grad():
        truth = ((clf(x).argmax(1) == y) & (clf(res.x_adv).argmax(1) == y)).float().mean().item()
    print(f"{name} {kw}: reported {100 * res.robust_accuracy:.2f}%, eval-mode truth {100 * truth:.2f}%, "
          f"state tensors changed {changed} ({time.perf_counter() - t0:.0f} s)")
