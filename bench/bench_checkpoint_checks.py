"""What the checkpoint value checks cost: ``hub.load_strict`` with and without its dtype / NaN / Inf scan.

``load_strict`` refuses NaN / Inf values and integer / bool / complex tensors where the model has floats
(issue 21 item 5) by scanning every tensor the module would load once more before ``load_state_dict``.
This measures that scan on a model of a given size (random weights: the values do not change the cost)
and reports the median of ``--repeats`` timings of (a) the scan alone (``hub._value_problems``) and (b)
the whole ``load_strict`` call, on the CPU, one thread unless ``--threads`` says otherwise.

Run from the repository root::

    OMP_NUM_THREADS=1 python bench/bench_checkpoint_checks.py --model wrn-28-10 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from robustkit import hub


def _model(name: str) -> torch.nn.Module:
    if name == "wrn-28-10":
        from robustkit.models.wide_resnet import WideResNet

        return WideResNet(depth=28, widen_factor=10)
    if name == "resnet20":
        from robustkit.models.resnet_cifar import resnet_cifar

        return resnet_cifar(20)
    raise SystemExit(f"unknown --model {name!r}; expected wrn-28-10 or resnet20")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="wrn-28-10")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    module = _model(args.model)
    state = {k: v.clone() for k, v in module.state_dict().items()}
    n = sum(v.numel() for v in state.values())
    own = module.state_dict()
    scan, full = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        problems = hub._value_problems(own, state)
        scan.append(time.perf_counter() - t0)
        assert problems == ([], []), problems
        t0 = time.perf_counter()
        hub.load_strict(module, state, source="bench")
        full.append(time.perf_counter() - t0)
    s, f = statistics.median(scan), statistics.median(full)
    print(f"{args.model}: {n / 1e6:.1f}M values, {args.threads} thread(s), median of {args.repeats}: "
          f"scan {1000 * s:.1f} ms, load_strict {1000 * f:.1f} ms (scan = {100 * s / f:.0f}% of it)")


if __name__ == "__main__":
    main()
