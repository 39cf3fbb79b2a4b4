"""EOT as one batch: time of EOT-averaged logits and of one EOT-averaged input gradient of a DiffPure defense,
its ``E`` draws evaluated one by one (``eot_batch=1``) against one batched forward (``eot_batch=None``).

Reproduce (CPU, one thread, about two minutes on an idle machine)::

    ROBUSTKIT_SHARED=../shared OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python bench/bench_eot_batch.py
    PYTHONPATH=. python bench/bench_eot_batch.py --device cuda --n 16 --eot 16 --threads 0        # on a GPU

Both ways compute the same numbers draw for draw (checked before timing: the logits of the two ways must
agree to ``--atol``; ``tests/test_eot_batch.py`` asserts it). Defenses: ``tiny_diffpure.digits`` (8×8 digits,
``tiny_unet.digits``) and ``diffpure_unet.cifar10`` (robustkit's 2.8M-parameter CIFAR-10 U-Net and the
akamaster ResNet-56, whose weights are read from ``$ROBUSTKIT_SHARED/models`` when present); both at the
registered t* = 0.1 (100 Euler–Maruyama steps) unless ``--t-star`` says otherwise, exact gradients
(checkpointed solver). Timings interleave the two ways and keep the best of ``--repeats`` (wall seconds; on
CUDA after a synchronize). The ratio is sequential / batched: above 1, batching is faster.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

import robustkit
from robustkit.attacks.base import eot_logits
from robustkit.attacks.pgd import eot_gradient

DEFENSES = ("tiny_diffpure.digits", "diffpure_unet.cifar10")


def build(name: str, device: str, t_star: float | None):
    options = {} if t_star is None else {"t_star": t_star}
    shared = os.environ.get("ROBUSTKIT_SHARED")
    weights = Path(shared) / "models" / "resnet56-4bfd9763.th" if shared else None
    if name == "diffpure_unet.cifar10" and weights is not None and weights.is_file():
        options["classifier"] = robustkit.create_classifier("resnet56.cifar10", checkpoint=weights)
    return robustkit.create_defense(name, pretrained=True, **options).to(device).eval()


def timed(fn, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t


def bench(name: str, args) -> dict:
    d = build(name, args.device, args.t_star)
    shared = os.environ.get("ROBUSTKIT_SHARED")
    data_dir = args.data_dir or (Path(shared) / "data" if shared and name.endswith("cifar10") else None)
    x, y = robustkit.load_dataset(name.split(".")[-1], n_examples=args.n, data_dir=data_dir)
    x, y = x.to(args.device), y.to(args.device)
    ways = {"sequential": 1, "batched": None}

    def logits(batch):
        with torch.no_grad():
            return eot_logits(d, x, args.eot, max_batch=batch)

    def gradient(batch):
        return eot_gradient(d, x, y, args.eot, "ce", max_batch=batch)[0]

    torch.manual_seed(0)
    seq = logits(1)
    torch.manual_seed(0)
    bat = logits(None)
    diff = float((seq - bat).abs().max())
    if diff > args.atol or not torch.equal(seq.argmax(-1), bat.argmax(-1)):
        raise SystemExit(f"{name}: batched and sequential logits differ by {diff:.3g} (atol {args.atol})")
    torch.manual_seed(0)
    g_seq = gradient(1)
    torch.manual_seed(0)
    g_bat = gradient(None)
    gdiff = float((g_seq - g_bat).abs().max() / g_seq.abs().max().clamp_min(1e-30))
    best: dict[tuple[str, str], float] = {}
    for r in range(args.repeats):
        order = list(ways.items()) if r % 2 == 0 else list(reversed(ways.items()))
        for what, fn in (("logits", logits), ("gradient", gradient)):
            for way, batch in order:
                t = timed(lambda: fn(batch), args.device)
                best[(what, way)] = min(best.get((what, way), float("inf")), t)
    out = {"defense": name, "n": args.n, "eot": args.eot, "nfe": d.purifier.nfe,
           "max_abs_logit_difference": diff, "max_rel_gradient_difference": gdiff}
    for what in ("logits", "gradient"):
        s, b = best[(what, "sequential")], best[(what, "batched")]
        out[what] = {"sequential_s": round(s, 4), "batched_s": round(b, 4), "ratio": round(s / b, 3)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--defenses", default=",".join(DEFENSES))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n", type=int, default=4, help="images (default 4)")
    ap.add_argument("--eot", type=int, default=8, help="EOT draws (default 8)")
    ap.add_argument("--t-star", type=float, default=None, help="override the registered t* (default: registered)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--atol", type=float, default=1e-4, help="largest logit difference accepted between the ways")
    ap.add_argument("--data-dir", default=None, help="CIFAR-10's folder's parent (default: $ROBUSTKIT_SHARED/data)")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    env = {"device": args.device if not args.device.startswith("cuda") else torch.cuda.get_device_name(args.device),
           "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
           "command": " ".join(["python", *sys.argv])}
    print(json.dumps(env))
    results = []
    for name in args.defenses.split(","):
        r = bench(name, args)
        results.append(r)
        print(json.dumps(r))
        for what in ("logits", "gradient"):
            v = r[what]
            print(f"{name:24s} {what:8s} N={args.n} EOT={args.eot}: sequential {v['sequential_s']:.3f} s, "
                  f"batched {v['batched_s']:.3f} s, ratio {v['ratio']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"env": env, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
