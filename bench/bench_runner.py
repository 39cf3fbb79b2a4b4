"""Runner overhead: ``benchmark()`` with a run directory against the same attack called directly.

The issue's budget: the harness (sharding, leases with heartbeats, fsynced atomic writes, per-example
records, re-evaluation, aggregation, the record) may add less than 5% to the time of the attack itself.

Reproduce (CPU, ResNet-20 on 128 CIFAR-10 test images, PGD-20, 7 repeats; about 1.5 minutes)::

    ROBUSTKIT_SHARED=/work/shared PYTHONPATH=. .venv/bin/python bench/bench_runner.py --threads 1

Without the shared folder (bundled digits model, many steps)::

    PYTHONPATH=. python bench/bench_runner.py --model tiny_cnn.digits --eps 0.1 --n 360 --batch 120 --steps 200 --threads 1

What is timed, alternating the order every repeat so a drifting machine load hits both alike:

* ``direct``: for every shard of ``--batch`` examples, ``make_attack("pgd", ...)`` with the seed the
  runner derives for that shard, called on those examples (the attack's own clean and verification
  forwards included): what a user calling the attack in a loop pays.
* ``runner``: ``robustkit.benchmark(..., attacks=["pgd"], checks=False, cascade=False,
  run_dir=<fresh dir>)`` on the same tensors, from the call to the returned record (record.json
  written). ``cascade=False`` makes it attack every example, as the direct loop does (the cascade
  would skip clean errors and make the runner look cheaper than the attack).

Both must agree on every robust flag (checked). Reported: each repeat, the median and the minimum, and
the overhead ``runner / direct - 1`` of the medians and of the minima. ``--threads 1`` is advised on a
shared CPU: with two threads on two busy cores PyTorch's OpenMP workers spin and times vary by 10×.

Where the overhead goes (ResNet-20, PGD-20, 2 shards of 64, measured on a 2-core CPU): the runner's
clean-accuracy forward (~2% of PGD-20; it lets the cascade skip clean errors, which more than pays for
it with ``cascade=True``), and ~0.06 s per run of fsynced writes, manifest and record. Measured there:
overhead +1.8% (median of 7) / +1.9% (min); with PGD-100 on 64 images it is within the noise (+0.7%).
On a loaded machine single repeats swing by ±2%; read the minimum.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def load(model: str, n: int):
    import robustkit

    if model == "resnet20.cifar10":
        shared = os.environ.get("ROBUSTKIT_SHARED")
        if not shared:
            sys.exit("ROBUSTKIT_SHARED must name the shared folder (models/ and data/cifar10/), "
                     "or use --model tiny_cnn.digits")
        shared = Path(shared)
        clf = robustkit.create_classifier(model, checkpoint=shared / "models" / "resnet20-12fca82f.th")
        x, y = robustkit.load_dataset("cifar10", n_examples=n, data_dir=shared / "data")
        return clf, x, y, "cifar10"
    clf = robustkit.create_classifier(model, pretrained=True)
    x, y = robustkit.load_dataset("digits", n_examples=n)
    return clf, x, y, "digits"


def direct(clf, x, y, *, eps: float, steps: int, batch: int, seed: int) -> tuple[float, torch.Tensor]:
    from robustkit.attacks import make_attack
    from robustkit.eval.benchmark import derive_seed

    t0 = time.perf_counter()
    flags = []
    for start in range(0, x.shape[0], batch):
        attack = make_attack("pgd", eps=eps, steps=steps, seed=derive_seed(seed, start, "attack:pgd"))
        flags.append(attack(clf, x[start:start + batch], y[start:start + batch]).robust)
    return time.perf_counter() - t0, torch.cat(flags)


def runner(clf, x, y, *, dataset: str, eps: float, steps: int, batch: int, seed: int, tmp: str | None):
    import robustkit

    with tempfile.TemporaryDirectory(prefix="bench-runner-", dir=tmp) as d:
        run_dir = Path(d) / "run"
        t0 = time.perf_counter()
        rec = robustkit.benchmark(clf, dataset=dataset, data=(x, y), eps=eps, attacks=["pgd"],
                                  attack_options={"pgd": {"steps": steps}}, batch_size=batch, seed=seed,
                                  checks=False, cascade=False, run_dir=run_dir, progress=False)
        seconds = time.perf_counter() - t0
        recs = sorted((json.loads(line) for f in (run_dir / "shards").glob("*.jsonl")
                       for line in f.read_text().splitlines()), key=lambda r: r["index"])
        flags = torch.tensor([r["clean"][0] and r["attacks"]["pgd"]["correct"][0] for r in recs])
    return seconds, flags, rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet20.cifar10", choices=("resnet20.cifar10", "tiny_cnn.digits"))
    ap.add_argument("--n", type=int, default=128, help="examples")
    ap.add_argument("--batch", type=int, default=64, help="examples per shard (and per direct call)")
    ap.add_argument("--steps", type=int, default=20, help="PGD steps")
    ap.add_argument("--eps", type=float, default=8 / 255)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--tmp", default=None, help="parent folder of the run directories (its filesystem's fsync is timed)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    clf, x, y, dataset = load(args.model, args.n)
    kw = dict(eps=args.eps, steps=args.steps, batch=args.batch, seed=args.seed)
    print(f"{args.model}: {x.shape[0]} examples, shards of {args.batch}, PGD-{args.steps} eps={args.eps:.4g}, "
          f"{torch.get_num_threads()} thread(s), torch {torch.__version__}")
    # warm-up (allocator, oneDNN kernels, imports of the runner's modules), not timed
    direct(clf, x[:args.batch], y[:args.batch], **{**kw, "steps": 2})
    runner(clf, x[:args.batch], y[:args.batch], dataset=dataset, tmp=args.tmp, **{**kw, "steps": 2})

    times = {"direct": [], "runner": []}
    for r in range(args.repeats):
        order = ("direct", "runner") if r % 2 == 0 else ("runner", "direct")
        for which in order:
            if which == "direct":
                t, f_direct = direct(clf, x, y, **kw)
            else:
                t, f_runner, rec = runner(clf, x, y, dataset=dataset, tmp=args.tmp, **kw)
            times[which].append(t)
        if not torch.equal(f_direct, f_runner):
            print("robust flags differ between the runner and the direct attack", file=sys.stderr)
            return 1
        print(f"repeat {r}: direct {times['direct'][-1]:.3f} s   runner {times['runner'][-1]:.3f} s   "
              f"(runner: attack+eval in shards {rec.cost['attack_seconds']:.3f} s)")
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    print(f"robust accuracy {float(f_direct.float().mean()):.4f} (identical flags)")
    print(f"median: direct {med['direct']:.3f} s, runner {med['runner']:.3f} s, "
          f"overhead {100 * (med['runner'] / med['direct'] - 1):+.2f}%")
    print(f"min:    direct {best['direct']:.3f} s, runner {best['runner']:.3f} s, "
          f"overhead {100 * (best['runner'] / best['direct'] - 1):+.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
