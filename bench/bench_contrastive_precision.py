"""How well float32 computes exact gradients through contrastive-guided purification, against float64.

Reproduce (CPU, one thread, about 3 minutes)::

    ROBUSTKIT_SHARED=../shared PYTHONPATH=. .venv/bin/python bench/bench_contrastive_precision.py

For each purifier (``diffpure_unet.cifar10`` and ``contrastive_purification_unet.cifar10``, both around
``resnet56.cifar10``) the same images, the same purification noise (drawn once in float64, then cast) and
the same random projection ``w`` are run in float64 and in float32. Reported: the largest difference of
the purified images, and for the gradient of ``<purify(x), w>`` with respect to ``x`` its cosine with the
float64 gradient and the relative error ``‖g32 − g64‖ / ‖g64‖``. Also the float32 gradient computed the two
ways robustkit can (guidance checkpointed or not), which agree to rounding in float64.

The ResNet-56 weights come from ``$ROBUSTKIT_SHARED/models`` (the published file, offline).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

import robustkit
from robustkit.defenses.diffpure import DiffPureNoise


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a * b).sum() / (a.norm() * b.norm()))


def measure(name: str, classifier_file: Path, n: int) -> dict:
    clf = robustkit.create_classifier("resnet56.cifar10", checkpoint=str(classifier_file))
    x64 = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    w64 = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    out, grads, noise64 = {}, {}, None
    for dtype in (torch.float64, torch.float32):
        # the numbers in the module docstring were measured with the "paired" variant (a fixed head)
        extra = {"preset": "paired"} if "contrastive" in name else {}
        purifier = robustkit.create_defense(name, pretrained=True, classifier=clf, **extra).purifier.to(dtype)
        x = x64.to(dtype).requires_grad_(True)
        if noise64 is None:
            noise64 = purifier.draw_noise(x, torch.Generator().manual_seed(1))
        noise = DiffPureNoise(noise64.init.to(dtype), tuple(z.to(dtype) for z in noise64.steps))
        for checkpoint in (True, False):
            y = purifier.purify_with_noise(x, noise, checkpoint=checkpoint)
            g, = torch.autograd.grad((y * w64.to(dtype)).sum(), x)
            out[dtype, checkpoint], grads[dtype, checkpoint] = y.detach().double(), g.double()
    ref = grads[torch.float64, True]
    return {"purifier": name, "n": n,
            "float64_checkpoint_vs_not_rel": float((grads[torch.float64, False] - ref).norm() / ref.norm()),
            "float32_max_abs_output_diff": float((out[torch.float32, True] - out[torch.float64, True]).abs().max()),
            "float32_grad_cos": _cos(grads[torch.float32, True], ref),
            "float32_grad_rel_err": float((grads[torch.float32, True] - ref).norm() / ref.norm()),
            "float32_checkpoint_vs_not_cos": _cos(grads[torch.float32, True], grads[torch.float32, False])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2, help="images")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--classifier-file", type=Path,
                    default=Path(os.environ.get("ROBUSTKIT_SHARED", "../shared")) / "models/resnet56-4bfd9763.th")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for name in ("diffpure_unet.cifar10", "contrastive_purification_unet.cifar10"):
        print(json.dumps(measure(name, args.classifier_file, args.n)), flush=True)


if __name__ == "__main__":
    main()
