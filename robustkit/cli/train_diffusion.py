"""``robustkit train-diffusion [MODEL] --out DIR [overrides]``: train a registered score model.

Any registry entry with a recipe trains: the U-Nets (``tiny_unet.digits``, ``unet.cifar10``), the DiTs
(``dit_tiny.digits``, ``dit_s2.cifar10``) and the DiffuSSMs (``diffussm_tiny.digits``, ``diffussm_s.cifar10``).
Starts from the entry's recipe (architecture, dataset, hyperparameters; ``tiny_unet.digits`` by default),
applies the overrides given on the command line, and runs :func:`robustkit.diffusion.train` into
``--out``. Rerunning the same command resumes from the last
checkpoint there; ``--stop-after N`` or ``--max-minutes M`` train in chunks. At the end ``--out`` holds
``ema.safetensors`` (load it with ``create_score_model(MODEL, checkpoint=...)``) and ``samples.png``.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from ._args import decay, device, nonnegative_int, positive_float, positive_int, probability, seed

# command-line flag -> DiffusionTrainConfig field
_OVERRIDES = {
    "dataset": "dataset", "n_examples": "n_examples", "steps": "steps", "batch_size": "batch_size", "lr": "lr",
    "warmup_steps": "warmup_steps", "ema_decay": "ema_decay", "p_uncond": "p_uncond", "seed": "seed",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-diffusion", help="train (or resume) a registered diffusion model (U-Net, DiT or "
                                             "DiffuSSM), e.g. tiny_unet.digits or dit_tiny.digits")
    p.add_argument("model", nargs="?", default="tiny_unet.digits",
                   help="registered score model whose architecture and recipe to train, e.g. dit_tiny.digits, "
                        "diffussm_tiny.digits (default: tiny_unet.digits)")
    p.add_argument("--out", required=True, help="run folder: checkpoint, final weights and sample grid")
    p.add_argument("--dataset", default=None, help="dataset (default: the recipe's)")
    p.add_argument("--n-examples", type=positive_int, default=None, help="train on the first N examples")
    p.add_argument("--steps", type=positive_int, default=None, help="total optimiser steps")
    p.add_argument("--batch-size", type=positive_int, default=None)
    p.add_argument("--lr", type=positive_float, default=None)
    p.add_argument("--warmup-steps", type=nonnegative_int, default=None)
    p.add_argument("--ema-decay", type=decay, default=None)
    p.add_argument("--p-uncond", type=probability, default=None, help="label dropout probability")
    p.add_argument("--seed", type=seed, default=None)
    p.add_argument("--device", type=device, default="cpu")
    p.add_argument("--no-amp", action="store_true", help="no bfloat16 autocast on CUDA")
    p.add_argument("--stop-after", type=positive_int, default=None, help="stop (with a checkpoint) after N steps of this run")
    p.add_argument("--max-minutes", type=positive_float, default=None, help="stop (with a checkpoint) after this long")
    p.add_argument("--checkpoint-every", type=positive_int, default=1000)
    p.add_argument("--data-dir", default=None, help="dataset directory (default: $ROBUSTKIT_DATA)")
    p.add_argument("--samples-per-class", type=nonnegative_int, default=10, help="size of the final sample grid (0: none)")
    p.add_argument("--sample-steps", type=positive_int, default=50, help="DDIM steps of the final samples")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..diffusion import score_model_config, train
    from ..errors import InputError

    entry = score_model_config(args.model)
    if entry.recipe is None:
        raise InputError(f"{args.model} has no training recipe in the registry")
    overrides = {field: getattr(args, flag) for flag, field in _OVERRIDES.items() if getattr(args, flag) is not None}
    cfg = replace(entry.recipe, **overrides)
    result = train(cfg, args.out, device=args.device, amp=not args.no_amp, stop_after=args.stop_after,
                   max_time_s=None if args.max_minutes is None else 60 * args.max_minutes,
                   checkpoint_every=args.checkpoint_every, data_dir=args.data_dir,
                   samples_per_class=args.samples_per_class, sample_steps=args.sample_steps)
    recent = result.losses[-100:]
    loss = f"{sum(recent) / len(recent):.4f}" if recent else "n/a"
    head = (f"{args.model} on {cfg.dataset}: step {result.step}/{cfg.steps}, "
            f"mean loss of the last {len(recent)} steps {loss}")
    if result.finished:
        print(f"{head}; weights {result.weights_path}"
              + (f", samples {result.samples_path}" if result.samples_path else "")
              + f" [{result.elapsed_s:.1f}s]")
    else:
        print(f"{head}; checkpoint {result.checkpoint_path} (rerun the same command to resume) "
              f"[{result.elapsed_s:.1f}s]")
    return 0
