"""Measure the bundled ``tiny_unet.digits`` score model (or any digits U-Net weights file).

    python scripts/eval_tiny_unet_digits.py [--checkpoint FILE] [--per-class 20] [--sample-steps 100]

Two numbers, on data the model never saw:

* the denoising loss ``mean (ε̂(x_t, t, y) − ε)²`` per t on the digits **test** split (360 images ×
  ``--draws`` noise draws, seeded), with the true label and with the null label (y = None), next to
  the loss of predicting ε̂ = 0 on the same noise (≈ 1);
* the fraction of class-conditional samples (``--per-class`` per class, deterministic DDIM with
  ``--sample-steps`` steps from pure noise, seeded) that the bundled classifier ``tiny_cnn.digits``
  assigns to their conditioning class, with a 95% Wilson interval, for the plain conditional model
  (w = 0) and with classifier-free guidance (``--guidance``); the classifier's accuracy on the real
  test split is printed for reference.

``--out FILE.png`` also writes the sample grid (one row per class).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import robustkit
from robustkit.diffusion import VPSDE, create_score_model, denoising_loss, sample_images, save_image_grid
from robustkit.eval.stats import accuracy_with_ci

TIMES = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0)


def _sde_of(model) -> VPSDE:
    """The SDE a model was trained under: its registry entry's, else the default ``VPSDE()``."""
    return model.registry_config.sde if hasattr(model, "registry_config") else VPSDE()


def loss_per_t(model, x0: torch.Tensor, y: torch.Tensor, *, draws: int, seed: int = 0,
               times: tuple[float, ...] = TIMES, sde: VPSDE | None = None) -> list[dict]:
    """Mean denoising loss per t: conditional, unconditional, and the zero predictor (same noise).

    ``sde``: the SDE the model was trained under (default: see :func:`_sde_of`).
    """
    sde = sde if sde is not None else _sde_of(model)
    xs, ys = x0.repeat(draws, 1, 1, 1), y.repeat(draws)
    rows = []
    for t in times:
        def zero(x, tt, yy):
            return torch.zeros_like(x)
        losses = {}
        for name, m, labels in (("cond", model, ys), ("uncond", model, None), ("zero", zero, None)):
            g = torch.Generator().manual_seed(seed * 1000 + int(round(t * 100)))  # same noise for all three
            with torch.no_grad():
                losses[name] = float(denoising_loss(m, xs, t, y=labels, sde=sde, generator=g).mean())
        rows.append({"t": t, **losses})
    return rows


def class_conditional_accuracy(model, classifier, *, per_class: int, steps: int, guidance: float = 0.0,
                               seed: int = 0, sde: VPSDE | None = None):
    """``(accuracy with its Wilson interval, images)``: ``per_class`` DDIM samples (``steps`` steps, CFG weight
    ``guidance``, seeded) of every class of ``model``, judged by ``classifier``: the fraction it assigns to
    their conditioning class. ``sde``: the SDE the model was trained under (default: see :func:`_sde_of`)."""
    sde = sde if sde is not None else _sde_of(model)
    labels = torch.arange(model.num_classes).repeat_interleave(per_class)
    with torch.no_grad():
        imgs = sample_images(model, labels, steps=steps, guidance_scale=guidance, beta_min=sde.beta_min,
                             beta_max=sde.beta_max, generator=torch.Generator().manual_seed(seed))
        pred = classifier(imgs).argmax(1).cpu()
    return accuracy_with_ci(pred == labels), imgs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=None, help="weights file (default: the bundled ones)")
    ap.add_argument("--per-class", type=int, default=20)
    ap.add_argument("--sample-steps", type=int, default=100)
    ap.add_argument("--draws", type=int, default=8, help="noise draws per test image for the loss")
    ap.add_argument("--guidance", type=float, default=1.0, help="extra run with this CFG weight (0: skip)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="write the w = 0 sample grid here")
    args = ap.parse_args()
    t0 = time.perf_counter()
    model = create_score_model("tiny_unet.digits", pretrained=args.checkpoint is None, checkpoint=args.checkpoint)
    x, y = robustkit.load_dataset("digits", split="test")
    print(f"weights: {model.weights_path}")
    print(f"denoising loss on the digits test split ({len(y)} images x {args.draws} noise draws):")
    print(f"{'t':>6} {'cond':>8} {'uncond':>8} {'zero':>8} {'cond/zero':>10}")
    for r in loss_per_t(model, x * 2 - 1, y, draws=args.draws, seed=args.seed):
        print(f"{r['t']:>6.2f} {r['cond']:>8.4f} {r['uncond']:>8.4f} {r['zero']:>8.4f} {r['cond'] / r['zero']:>10.3f}")
    clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    with torch.no_grad():
        ref = accuracy_with_ci(clf(x).argmax(1) == y)
    print(f"tiny_cnn.digits on the real test split: {ref}")
    for w in (0.0, args.guidance) if args.guidance else (0.0,):
        acc, imgs = class_conditional_accuracy(model, clf, per_class=args.per_class, steps=args.sample_steps,
                                               guidance=w, seed=args.seed)
        print(f"class-conditional samples (DDIM {args.sample_steps} steps, w = {w:g}) classified as their "
              f"class: {acc}")
        if w == 0 and args.out is not None:
            save_image_grid(imgs, args.out, nrow=args.per_class, scale=4)
            print(f"wrote {args.out}")
    print(f"[{time.perf_counter() - t0:.1f}s]")


if __name__ == "__main__":
    main()
