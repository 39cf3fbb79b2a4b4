"""Runner overhead: ``benchmark()`` with a run directory against the same attack called directly.

The issue's budget: the harness (sharding, leases with heartbeats, fsynced atomic writes, per-example
records, re-evaluation, aggregation, the record) may add less than 5% to the time of the attack itself.

Reproduce (CPU, ResNet-20 on 128 CIFAR-10 test images, PGD-20, 9 repeats; about 1.5 minutes idle)::

    ROBUSTKIT_SHARED=../shared PYTHONPATH=. .venv/bin/python bench/bench_runner.py --threads 1 --repeats 9

Without the shared folder (bundled digits model, many steps)::

    PYTHONPATH=. python bench/bench_runner.py --model tiny_cnn.digits --eps 0.1 --n 360 --batch 120 --steps 200 --threads 1

What is timed, in interleaved rounds (A/B, then B/A, ...) so a drifting machine load hits both alike:

* ``direct``: for every shard of ``--batch`` examples, ``make_attack("pgd", ...)`` with the seed the
  runner derives for that shard, called on those examples (the attack's own clean and verification
  forwards included): what a user calling the attack in a loop pays.
* ``runner``: ``robustkit.benchmark(..., attacks=["pgd"], checks=False, cascade=False,
  run_dir=<fresh dir>)`` on the same tensors, from the call to the returned record (record.json
  written). ``cascade=False`` makes it attack every example, as the direct loop does (the cascade
  would skip clean errors and make the runner look cheaper than the attack).

Both must agree on every robust flag (checked). Reported, in wall and in process CPU time: the paired
ratio runner/direct of each round, its median and spread (min .. max); and the runner's own work: the
time of a runner call outside its attack calls (``Attack.__call__`` is timed while the bench runs) as
a fraction of the time inside them. That last figure compares two parts of one call, so it holds on a
loaded machine where the paired ratios swing by ±20%. ``--threads 1`` is advised on a shared CPU: with
two threads on two busy cores PyTorch's OpenMP workers spin and times vary by 10×.

Where the overhead went and goes (ResNet-20, PGD-20 stopping early once every point is broken, 2 shards
of 64; docs/results/performance.md has the numbers): the runner made its own clean-accuracy forward
before the attack, which made the same forward first thing (8-9% of this short attack); a deterministic
model's whole-shard attack (``cascade=False`` or the batch threat model) now supplies the clean flags.
What remains: 14 fsyncs per run (manifest, one batch of 5 per shard: its three files, ledger entry and
folder; record), the ledger's sha256 checks, leases, aggregation and the record, about 0.1 s per run.
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


def direct(clf, x, y, *, eps: float, steps: int, batch: int, seed: int) -> tuple[float, float, torch.Tensor]:
    from robustkit.attacks import make_attack
    from robustkit.eval.benchmark import derive_seed

    t0, c0 = time.perf_counter(), time.process_time()
    flags = []
    for start in range(0, x.shape[0], batch):
        attack = make_attack("pgd", eps=eps, steps=steps, seed=derive_seed(seed, start, "attack:pgd"))
        flags.append(attack(clf, x[start:start + batch], y[start:start + batch]).robust)
    return time.perf_counter() - t0, time.process_time() - c0, torch.cat(flags)


class _AttackClock:
    """Accumulates the wall and CPU time spent inside ``Attack.__call__`` (patched while in use), so the
    runner's own work can be measured in the same call as the attack it wraps: robust to machine load."""

    def __enter__(self):
        from robustkit.attacks.base import Attack

        self.wall = self.cpu = 0.0
        self._cls, self._orig = Attack, Attack.__call__
        clock = self

        def timed(attack, *a, **k):
            t, c = time.perf_counter(), time.process_time()
            try:
                return clock._orig(attack, *a, **k)
            finally:
                clock.wall += time.perf_counter() - t
                clock.cpu += time.process_time() - c

        Attack.__call__ = timed
        return self

    def __exit__(self, *exc):
        self._cls.__call__ = self._orig


def runner(clf, x, y, *, dataset: str, eps: float, steps: int, batch: int, seed: int, tmp: str | None):
    import robustkit

    with tempfile.TemporaryDirectory(prefix="bench-runner-", dir=tmp) as d, _AttackClock() as inside:
        run_dir = Path(d) / "run"
        t0, c0 = time.perf_counter(), time.process_time()
        rec = robustkit.benchmark(clf, dataset=dataset, data=(x, y), eps=eps, attacks=["pgd"],
                                  attack_options={"pgd": {"steps": steps}}, batch_size=batch, seed=seed,
                                  checks=False, cascade=False, run_dir=run_dir, progress=False)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        recs = sorted((json.loads(line) for f in (run_dir / "shards").glob("*.jsonl")
                       for line in f.read_text().splitlines()), key=lambda r: r["index"])
        flags = torch.tensor([r["clean"][0] and r["attacks"]["pgd"]["correct"][0] for r in recs])
    return seconds, cpu, flags, rec, inside


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
    cpu = {"direct": [], "runner": []}
    own = {"wall": [], "CPU": []}  # the runner's own work / its attack calls' time, within one runner call
    for r in range(args.repeats):
        order = ("direct", "runner") if r % 2 == 0 else ("runner", "direct")
        for which in order:
            if which == "direct":
                t, c, f_direct = direct(clf, x, y, **kw)
            else:
                t, c, f_runner, rec, inside = runner(clf, x, y, dataset=dataset, tmp=args.tmp, **kw)
                own["wall"].append((t - inside.wall) / inside.wall)
                own["CPU"].append((c - inside.cpu) / inside.cpu)
            times[which].append(t)
            cpu[which].append(c)
        if not torch.equal(f_direct, f_runner):
            print("robust flags differ between the runner and the direct attack", file=sys.stderr)
            return 1
        print(f"repeat {r}: direct {times['direct'][-1]:.3f} s ({cpu['direct'][-1]:.3f} s CPU)   runner "
              f"{times['runner'][-1]:.3f} s ({cpu['runner'][-1]:.3f} s CPU; attack+eval in shards "
              f"{rec.cost['attack_seconds']:.3f} s)")
    print(f"robust accuracy {float(f_direct.float().mean()):.4f} (identical flags)")
    # each repeat ran both back to back (A/B, then B/A): its ratio sees one machine load
    for label, series in (("wall", times), ("CPU", cpu)):
        ratios = sorted(r / d for r, d in zip(series["runner"], series["direct"]))
        med = statistics.median(ratios)
        print(f"{label:>4}: paired ratio runner/direct median {med:.4f} (overhead {100 * (med - 1):+.2f}%), "
              f"spread {ratios[0]:.4f} .. {ratios[-1]:.4f} over {len(ratios)} repeats; medians direct "
              f"{statistics.median(series['direct']):.3f} s, runner {statistics.median(series['runner']):.3f} s")
    for label, fractions in own.items():
        fractions = sorted(fractions)
        print(f"{label:>4}: runner's own work outside the attack calls, per runner call: median "
              f"{100 * statistics.median(fractions):+.2f}% of its attack time, spread {100 * fractions[0]:+.2f}% .. "
              f"{100 * fractions[-1]:+.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
