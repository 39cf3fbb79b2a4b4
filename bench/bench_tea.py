"""Wall time per adapted batch: TEA vs TENT vs BN vs source, ResNet-20 on CIFAR-10 test images, CPU.

Reproduce (CPU, one thread, batch 200, the paper's TEA settings: SGLD buffer 10,000, 20 steps)::

    ROBUSTKIT_SHARED=../shared PYTHONPATH=. .venv/bin/python bench/bench_tea.py --threads 1 --batch 200

Options: ``--repeats`` timed batches per method (after one warm-up batch), ``--sgld-steps`` to shrink TEA,
``--grad`` to also time a forward+backward w.r.t. the input (what one attack step through the adaptation
costs). Without ``$ROBUSTKIT_SHARED`` it uses random weights and random images (timings are the same).

What is timed: ``model(x)`` on a fresh batch of ``--batch`` images, continual adaptation (no reset), under
``torch.no_grad()`` as an evaluator calls it (the adapters enable grad inside). Reported: the median and the
minimum over the repeats, and TEA's cost relative to source. TEA's forward = 20 SGLD forward+backward passes
on the chains + the energy forwards of test and SGLD batches + one backward + a prediction forward.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch


def load(n: int):
    import robustkit

    shared = os.environ.get("ROBUSTKIT_SHARED")
    if shared and (Path(shared) / "models" / "resnet20-12fca82f.th").is_file():
        clf = robustkit.create_classifier("resnet20.cifar10",
                                          checkpoint=Path(shared) / "models" / "resnet20-12fca82f.th")
        try:
            x, _ = robustkit.load_dataset("cifar10", n_examples=n, data_dir=Path(shared) / "data")
            return clf, x, "cifar10 test images"
        except Exception as e:  # noqa: BLE001 - the timing does not depend on the pixels
            source = f"random images ({type(e).__name__}: {e})"
    else:
        clf = robustkit.create_classifier("resnet20.cifar10")
        source = "random images, random weights"
    return clf, torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0)), source


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sgld-steps", type=int, default=20)
    ap.add_argument("--grad", action="store_true", help="also time forward+backward w.r.t. the input")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from robustkit.defenses import EnergyAdaptedClassifier, NormStatsClassifier, SourceClassifier, TentClassifier

    clf, x_all, source = load(args.batch * (args.repeats + 1))
    batches = x_all.split(args.batch)
    methods = {"source": SourceClassifier(clf), "BN": NormStatsClassifier(clf), "TENT": TentClassifier(clf),
               "TEA": EnergyAdaptedClassifier(clf, sgld_steps=args.sgld_steps)}
    results = {}
    for name, model in methods.items():
        model.eval()
        times, grad_times = [], []
        for i, xb in enumerate(batches):
            t0 = time.perf_counter()
            with torch.no_grad():
                model(xb)
            if i:  # batch 0 is the warm-up
                times.append(time.perf_counter() - t0)
            if args.grad and i:
                xg = xb.clone().requires_grad_(True)
                t0 = time.perf_counter()
                model(xg).logsumexp(1).sum().backward()
                grad_times.append(time.perf_counter() - t0)
        results[name] = {"median_s": statistics.median(times), "min_s": min(times),
                         "forward_passes": model.traits.forward_passes}
        if grad_times:
            results[name]["grad_median_s"] = statistics.median(grad_times)
    base = results["source"]["median_s"]
    for r in results.values():
        r["x_source"] = r["median_s"] / base
    print(json.dumps({"batch": args.batch, "repeats": args.repeats, "threads": args.threads,
                      "sgld_steps": args.sgld_steps, "data": source, "torch": torch.__version__,
                      "results": results}, indent=2))


if __name__ == "__main__":
    main()
