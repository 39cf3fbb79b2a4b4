"""RDC's chunk size (rows (image, class, step) per network batch) against the released code's loop.

The reference is the structure of the released ``unet_loss_without_grad`` (huanranchen/DiffusionClassifier
@ 8a82504, ``EDMDC.py``): for each image, for each class, the steps in batches of 64 (its ``batch_size``),
one network call per batch, summed. robustkit evaluates all (image, class, step) rows of a call in chunks
of ``chunk_size`` rows. Both run the same network on the same rows with the same noise; the bench checks
that they give the same losses, then times them in interleaved rounds (every round runs every variant
once, in a rotated order), so load drift on a shared machine hits all variants alike. The reported ratio
is the median over rounds of (variant time / reference time in the same round).

Reproduce (CPU, one thread; about 3 minutes on a loaded 2-core machine)::

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python bench/bench_rdc_chunk.py --rounds 5
    PYTHONPATH=. python bench/bench_rdc_chunk.py --device cuda --threads 0 --n 32 --stride 1 \\
        --chunks 1024,2048,4096,8192,16384                                           # on a GPU

Model: the bundled ``tiny_unet.digits`` (10 classes), the first ``--n`` digits test images, every
``--stride``-th of the 1000 steps. Numbers go to stdout as JSON lines; the last line is the summary
(``best_chunk``: the fastest size; ``ratio``: median time / reference per size). The chosen defaults are
``robustkit.defenses.rdc.CHUNK_SIZES`` (used when ``chunk_size=None``); docs/results/performance.md, "RDC
chunk size", has the measurement behind them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import robustkit
from robustkit.defenses import DiffusionClassifier, DiffusionClassifierConfig
from robustkit.diffusion import create_score_model

REFERENCE_BATCH = 64  # the released unet_loss_without_grad's batch_size


def reference_losses(dc: DiffusionClassifier, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """L_y(x) ``[N, K]`` the released way: per image, per class, the steps in batches of 64."""
    n, k, tp = x.shape[0], dc.num_classes, dc.config.evaluated_steps
    out = x.new_zeros(n, k)
    steps = torch.arange(tp)
    for i in range(n):
        img = torch.full((tp,), i, dtype=torch.long)
        for y in range(k):
            cls = torch.full((tp,), y, dtype=torch.long)
            total = x.new_zeros(())
            for lo in range(0, tp, REFERENCE_BATCH):
                sl = slice(lo, lo + REFERENCE_BATCH)
                total = total + dc._chunk_terms(2 * x - 1, noise, img[sl], cls[sl], steps[sl]).sum()
            out[i, y] = total
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=4, help="test images (the first N)")
    ap.add_argument("--stride", type=int, default=4, help="evaluate every STRIDE-th of the 1000 steps")
    ap.add_argument("--chunks", default="64,128,256,500,512,1000,1024,2048",
                    help="chunk sizes to time, comma-separated")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: leave as is)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    chunks = [int(c) for c in args.chunks.split(",")]
    model = create_score_model("tiny_unet.digits", pretrained=True).to(args.device)
    x, _ = robustkit.load_dataset("digits", n_examples=args.n)
    x = x.to(args.device)
    variants = {f"chunk {c}": DiffusionClassifier(model, DiffusionClassifierConfig(stride=args.stride, chunk_size=c))
                for c in chunks}
    ref_dc = next(iter(variants.values()))
    noise = ref_dc.draw_noise(torch.Generator().manual_seed(0)).to(args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def run(name: str) -> torch.Tensor:
        with torch.no_grad():
            if name == "reference":
                return reference_losses(ref_dc, x, noise)
            return variants[name].losses(x, noise=noise)

    names = ["reference", *variants]
    want = run("reference")
    for name in variants:  # the same rows: the same losses (up to summation order)
        torch.testing.assert_close(run(name), want, rtol=1e-5, atol=1e-6)
    print(json.dumps({"model": "tiny_unet.digits", "n": args.n, "stride": args.stride,
                      "rows_per_call": args.n * ref_dc.num_classes * ref_dc.config.evaluated_steps,
                      "device": args.device, "threads": torch.get_num_threads(), "torch": torch.__version__,
                      "reference": f"per image and class, batches of {REFERENCE_BATCH} steps"}), flush=True)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            sync()
            t0 = time.perf_counter()
            run(name)
            sync()
            times[name].append(time.perf_counter() - t0)
        print(json.dumps({"round": r, **{name: round(times[name][-1], 4) for name in names}}), flush=True)
    ratio = {name: round(statistics.median(t / ref for t, ref in zip(times[name], times["reference"])), 3)
             for name in variants}
    print(json.dumps({"summary": True, "rounds": args.rounds,
                      "reference_median_s": round(statistics.median(times["reference"]), 4),
                      "median_s": {name: round(statistics.median(times[name]), 4) for name in variants},
                      "ratio": ratio, "best_chunk": min(ratio, key=ratio.get)}), flush=True)


if __name__ == "__main__":
    main()
