"""RDC's diffusion classifier: network evaluations (NFE), wall time and clean accuracy per prediction for the
full K×T sum, strided subsets, the adaptive scheme and the guaranteed (branch-and-bound) scheme.

Reproduce (CPU, one thread, ~5 minutes for 50 images)::

    ROBUSTKIT_SHARED=../shared PYTHONPATH=. .venv/bin/python bench/bench_rdc.py --n 50
    PYTHONPATH=. .venv/bin/python bench/bench_rdc.py --model unet.cifar10 --data-dir ../shared/data/cifar10 --n 16
    PYTHONPATH=. python bench/bench_rdc.py --device cuda --threads 0 --n 500                 # on a GPU

Model: the bundled ``tiny_unet.digits`` (10 classes, 1000 DDPM steps, so K×T = 10,000 network evaluations per
image), the first ``--n`` digits test images, and one fixed noise draw shared by every variant (seed 0), so
the variants differ only in which (class, step) terms they evaluate. ``agree`` is the fraction of images
whose prediction equals the reference's (the first variant run: the full sum unless ``--variants`` drops it).
``--model unet.cifar10`` runs the same on CIFAR-10 test images with the bundled CIFAR-10 U-Net. NFE is counted per image (rows of network batches); wall time is
per image with all images in one call, best of ``--repeats``. Numbers go to stdout as JSON lines.

Measured (2026-12-01, all 360 digits test images, 1 CPU thread on a shared 2-core machine, chunk 2048):

=========================  ==========  ==========  =========  ========  ===============
variant                    NFE/image   of K×T      s/image    clean %   agrees w/ full
=========================  ==========  ==========  =========  ========  ===============
full K×T                   10,000      100 %       1.85       99.44     —
stride 10                  1,000       10 %        0.116      99.44     100 %
stride 40                  250         2.5 %       0.029      99.17     99.72 %
adaptive 25→250, keep 2    700         7 %         0.080      99.44     99.72 %
adaptive 10→100, keep 2    280         2.8 %       0.034      99.17     99.72 %
guaranteed (= full)        5,101       51 %        0.60       99.44     100 %
guaranteed (= stride 10)   577         5.8 %       0.068      99.44     100 %
=========================  ==========  ==========  =========  ========  ===============

The digits are easy for this model (the full sum errs on 2 of 360), so these numbers cannot separate the
variants' accuracies beyond about ±1 pt; CIFAR-10 with the EDM networks needs its own run (GPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

import robustkit
from robustkit.defenses import DiffusionClassifier, DiffusionClassifierConfig
from robustkit.diffusion import create_score_model


def variants() -> list[tuple[str, DiffusionClassifierConfig]]:
    return [
        ("full K×T", DiffusionClassifierConfig()),
        ("stride 10", DiffusionClassifierConfig(stride=10)),
        ("stride 40", DiffusionClassifierConfig(stride=40)),
        ("adaptive 25→250, keep 2", DiffusionClassifierConfig(mode="adaptive")),
        ("adaptive 10→100, keep 2", DiffusionClassifierConfig(mode="adaptive", coarse_steps=10, fine_steps=100)),
        ("guaranteed (= full)", DiffusionClassifierConfig(mode="guaranteed")),
        ("guaranteed (= stride 10)", DiffusionClassifierConfig(mode="guaranteed", stride=10, block_steps=10)),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=50, help="test images (the first N)")
    ap.add_argument("--model", default="tiny_unet.digits",
                    help="registered class-conditional score model (bundled weights), e.g. unet.cifar10")
    ap.add_argument("--dataset", default=None, help="its dataset (default: the model name's suffix)")
    ap.add_argument("--data-dir", default=None, help="dataset directory (CIFAR-10: $ROBUSTKIT_SHARED/data/cifar10)")
    ap.add_argument("--variants", default=None,
                    help="variant names to run, separated by ';' (default: all; the first one run is the reference)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: leave as is)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=2048, help="chunk_size (rows per network batch)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = create_score_model(args.model, pretrained=True).to(args.device)
    dataset = args.dataset or args.model.rsplit(".", 1)[-1]
    x, y = robustkit.load_dataset(dataset, n_examples=args.n, data_dir=args.data_dir)
    x, y = x.to(args.device), y.to(args.device)
    steps = DiffusionClassifierConfig().num_timesteps
    k_times_t = model.num_classes * steps
    base = torch.randn(steps, *model.input_shape, generator=torch.Generator().manual_seed(0))  # ε_k per step k
    chosen = variants()
    if args.variants:
        wanted = [v.strip() for v in args.variants.split(";")]
        unknown = sorted(set(wanted) - {name for name, _ in chosen})
        if unknown:
            ap.error(f"unknown variant(s) {unknown}; choose from {[name for name, _ in chosen]}")
        chosen = [(name, cfg) for name, cfg in chosen if name in wanted]
    print(json.dumps({"model": args.model, "dataset": dataset, "n": args.n, "K_times_T": k_times_t,
                      "device": args.device, "threads": torch.get_num_threads(), "torch": torch.__version__}),
          flush=True)
    ref_pred = None
    for name, cfg in chosen:
        cfg = dataclasses.replace(cfg, chunk_size=args.chunk)
        dc = DiffusionClassifier(model, cfg)
        noise = base[torch.arange(0, steps, cfg.stride)]   # the same ε_k at every evaluated step k
        best = float("inf")
        for _ in range(args.repeats):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.no_grad():
                pred = (-dc.losses(x, noise=noise)).argmax(1)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        if ref_pred is None:
            ref_pred = pred
        nfe = dc.last_nfe / args.n
        print(json.dumps({
            "variant": name, "n": args.n, "nfe_per_image": round(nfe, 1),
            "fraction_of_KxT": round(nfe / k_times_t, 4), "declared_forward_passes": dc.traits.forward_passes,
            "seconds_per_image": round(best / args.n, 4),
            "clean_accuracy": round(float((pred == y).float().mean()) * 100, 2),
            "agree_with_reference": round(float((pred == ref_pred).float().mean()) * 100, 2)}), flush=True)


if __name__ == "__main__":
    main()
