"""Train the bundled ``tiny_unet.digits`` score model (seeded; a few minutes on 2 CPU cores).

    python scripts/train_tiny_unet_digits.py [--out robustkit/diffusion/weights/tiny_unet_digits.safetensors]

Trains the registry entry's recipe (``robustkit.diffusion.zoo.TINY_UNET_DIGITS_RECIPE``: the digits
train split, class-conditional with label dropout 0.1, EMA, 4000 steps of 128) with
``robustkit.diffusion.train`` in ``--run-dir`` (default: a temporary folder; an existing run there is
resumed; it keeps the checkpoint and a grid of samples, ``samples.png``), then writes the EMA weights,
in float16, to ``--out`` and prints the training time, the final loss and the sha256 to put in
``robustkit/diffusion/zoo.py``. Measure the result with ``scripts/eval_score_model.py``.
Bit-reproducible on a given machine with a given ``--threads``.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from robustkit.diffusion import score_model_config, train
from robustkit.diffusion.train import write_float16_weights
from robustkit.hub import file_digest

DEFAULT_OUT = (Path(__file__).resolve().parents[1] / "robustkit" / "diffusion" / "weights"
               / "tiny_unet_digits.safetensors")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--run-dir", type=Path, default=None, help="training folder (default: temporary)")
    ap.add_argument("--seed", type=int, default=None, help="override the recipe's seed")
    ap.add_argument("--steps", type=int, default=None, help="override the recipe's number of steps")
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads (1: fastest on a busy machine, where 2 threads oversubscribe the cores)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    cfg = score_model_config("tiny_unet.digits").recipe
    overrides = {k: v for k, v in (("seed", args.seed), ("steps", args.steps)) if v is not None}
    cfg = replace(cfg, **overrides)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.run_dir or Path(tmp)
        result = train(cfg, run_dir, checkpoint_every=500, samples_per_class=10, sample_steps=100)
        write_float16_weights(result.weights_path, args.out)  # ~380 KB; loaded back as float32
    last = result.losses[-200:]
    print(f"trained {result.step} steps in {time.perf_counter() - t0:.1f}s "
          f"({torch.get_num_threads()} threads); mean loss of the last {len(last)} steps {sum(last) / len(last):.4f}")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)\nsha256 {file_digest(args.out)}")


if __name__ == "__main__":
    main()
