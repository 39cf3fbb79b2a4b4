"""Train the ``unet.cifar10`` score model, resumably in chunks, on a CPU or a GPU (bf16 autocast).

    python scripts/train_unet_cifar10.py --out runs/unet_cifar10 --max-minutes 55   # repeat until finished
    python scripts/train_unet_cifar10.py --out runs/unet_cifar10 --device cuda       # same recipe on a GPU

Trains the registry entry's recipe (``robustkit.diffusion.zoo.UNET_CIFAR10_RECIPE``: the compact
class-conditional U-Net, 5,000 steps of 64 with label dropout 0.1; about 2 hours on one CPU core) with
``robustkit.diffusion.train``. Every invocation resumes from ``--out/checkpoint.pt`` (written
atomically every ``--checkpoint-every`` steps and when a chunk ends), so the same command can be
repeated — by hand, from a job array, after a pre-emption — until it reports the run finished. Then
``--out/ema.safetensors`` holds the EMA weights, and the script writes them in float16 to ``--weights``
(default: the package's ``robustkit/diffusion/weights/unet_cifar10.safetensors``, where
``create_score_model("unet.cifar10", pretrained=True)`` finds them) and prints their sha256 (the
registry's ``UNET_CIFAR10_SHA256``). ``bench/compare_backbones.py --dataset cifar10`` trains the same
recipe: its ``unet`` run folder can be passed as ``--out``.

The data come from ``--data-dir`` (default: ``$ROBUSTKIT_DATA``; see ``robustkit.data.cifar10``).
Overrides (``--steps``, ``--batch-size``, ``--n-examples``, ``--seed``) change the config, and a run
folder only resumes with the config it was started with.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path

import torch

from robustkit.diffusion import score_model_config, train
from robustkit.diffusion.train import write_float16_weights
from robustkit.hub import file_digest

DEFAULT_WEIGHTS = (Path(__file__).resolve().parents[1] / "robustkit" / "diffusion" / "weights"
                   / "unet_cifar10.safetensors")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="run folder (resumed when it holds a checkpoint)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--chunk-steps", type=int, default=None, help="stop after this many steps (resume later)")
    ap.add_argument("--max-minutes", type=float, default=None, help="stop after this long (resume later)")
    ap.add_argument("--checkpoint-every", type=int, default=2000)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--n-examples", type=int, default=None)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--samples-per-class", type=int, default=10)
    ap.add_argument("--sample-steps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    ap.add_argument("--no-amp", action="store_true", help="no bfloat16 autocast on CUDA")
    ap.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS,
                    help="where the finished EMA weights go, in float16 (default: the package's bundled file)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    entry = score_model_config("unet.cifar10")
    overrides = {k: getattr(args, k) for k in ("steps", "batch_size", "n_examples", "seed")
                 if getattr(args, k) is not None}
    cfg = replace(entry.recipe, **overrides)
    result = train(cfg, args.out, device=args.device, amp=not args.no_amp, stop_after=args.chunk_steps,
                   max_time_s=None if args.max_minutes is None else 60 * args.max_minutes,
                   checkpoint_every=args.checkpoint_every, data_dir=args.data_dir,
                   samples_per_class=args.samples_per_class, sample_steps=args.sample_steps)
    recent = result.losses[-1000:]
    print(f"step {result.step}/{cfg.steps} in {result.elapsed_s:.1f}s this run; mean loss of the last "
          f"{len(recent)} steps {sum(recent) / max(len(recent), 1):.4f}")
    if not result.finished:
        print(f"checkpoint {result.checkpoint_path}; run the same command again to continue")
        return
    write_float16_weights(result.weights_path, args.weights)  # ~5.6 MB; loaded back as float32
    print(f"finished: samples {result.samples_path}")
    print(f"wrote {args.weights} ({args.weights.stat().st_size / 2**20:.1f} MiB)\nsha256 {file_digest(args.weights)}")


if __name__ == "__main__":
    main()
