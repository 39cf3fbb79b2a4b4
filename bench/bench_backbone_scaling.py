"""Backbone scaling: how the cost of the U-Net, DiT and DiffuSSM noise predictors grows with the resolution.

Each backbone is built with random weights at every input side of ``--sizes`` (default 32 and 64; RGB,
10 classes), keeping every architecture hyperparameter and changing only the image size:

* ``unet`` (:class:`~robustkit.diffusion.UNet`): convolutions, cost ∝ pixels. Attention stays at the same
  *levels*: ``attention_resolutions`` are feature-map sides, so they are scaled with the input (a
  32×32 config with attention at 8×8 attends at 16×16 when built for 64×64), and the middle attention
  runs over 4× the pixels.
* ``dit`` (:class:`~robustkit.diffusion.DiT`): the patch size stays fixed, so the token count grows 4×
  from 32 to 64; linear layers cost ∝ tokens, attention ∝ tokens².
* ``diffussm`` (:class:`~robustkit.diffusion.DiffuSSM`): no patchify; the pixel sequence (and the
  hourglass SSM sequence, ``pixels / downsample``) grows 4×; linear layers ∝ tokens, FFT convolutions
  ∝ ``L log L``.

For every (backbone, size) it reports:

* the parameter count, which must be the same at every size (DiT's sine-cosine positions are a buffer,
  not a parameter; no backbone here has a learned position table); a row whose count differs from the
  smallest size's is marked ``(!)``;
* forward FLOPs per image, counted by :class:`torch.utils.flop_counter.FlopCounterMode` over one
  ``torch.no_grad()`` forward at ``--batch`` and divided by the batch (batch-independent work such as
  DiffuSSM's S4D kernels is thus shared by the batch). FlopCounterMode counts ``2·m·n·k`` per
  matrix product (``mm``, ``addmm``, ``bmm``, ``baddbmm``), convolutions, and the CUDA attention
  kernels. It misses, in torch 2.13:

  - FFTs (``_fft_r2c``, ``_fft_c2r``, ``_fft_c2c``: DiffuSSM's convolutions) — added here analytically:
    ``5·N·log2 N`` per complex FFT of length ``N`` and half that, ``2.5·N·log2 N``, per real one
    (``rfft``/``irfft``), for every transformed channel, computed from the shapes of the calls actually
    made;
  - the CPU attention kernel: on CPU ``F.scaled_dot_product_attention`` runs
    ``_scaled_dot_product_flash_attention_for_cpu`` (DiT), which has no formula, so the counter reports
    a DiT without its attention — added here as ``2·b·h·Lq·Lk·(d_qk + d_v)`` (QKᵀ and AV, the formula
    the counter itself uses for the CUDA kernels). The U-Net's attention takes the math path on CPU
    (``bmm`` and softmax), whose matrix products are counted;
  - every elementwise, normalisation, softmax, activation and reduction op (O(activations), no
    matrix product), including the ``exp``/``cos``/``sin`` of S4D's ``[H, N, L]`` kernel powers.

  The table shows the stock count, the analytic additions (and the ops they stand for) and their sum.
  Uncounted work still takes time: DiffuSSM's elementwise work (gating, the S4D kernel's ``H·N·L``
  exp/cos/sin per layer and call, FFT glue) is why its time per FLOP is above DiT's on a CPU;
* wall time per image of a forward at ``--batch`` under ``torch.no_grad()``: the best of ``--repeats``
  runs of ``--calls`` back-to-back calls after one warm-up run, by :func:`bench.bench_solvers.time_forward`,
  single-threaded by default (``--threads 1``);
* the growth of the total FLOPs and of the time per image over the smallest size (``64/32``).

Model sets (``--set``): ``matched`` (default) — :data:`MATCHED`, three configs of about 2.8 M parameters
(within ±5 % of one another; DiT and DiffuSSM share width 192 and depth 4 and both mix 256 tokens at
32×32: DiT over 2×2 patches, DiffuSSM's SSM over groups of 4 pixels); ``registry`` — the CIFAR-10 configs
of :mod:`robustkit.diffusion.zoo` (``unet.cifar10``, ``dit_s2.cifar10``, ``diffussm_s.cifar10``).

Reproduce (from the repository root; runtimes measured on this 2-core machine while other jobs ran)::

    # matched set, batch 8, 1 thread, 3 runs of 3 calls (about 40 s):
    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python bench/bench_backbone_scaling.py --set matched \\
        --json /tmp/scaling_matched.json
    # registry set, batch 8, 1 thread, 3 runs of 2 calls (about 3 minutes; DiT-S/2 at 64×64 is ~63 GFLOP
    # per image, ~0.5 s per image; with --calls 1 --repeats 2 about 80 s):
    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python bench/bench_backbone_scaling.py --set registry \\
        --calls 2 --json /tmp/scaling_registry.json
    # CUDA (FlopCounterMode then sees the CUDA attention kernels, which it counts itself):
    PYTHONPATH=. python bench/bench_backbone_scaling.py --set registry --device cuda --batch 64 --threads 0

Times depend on the machine and its load: compare rows of the same run.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch.utils.flop_counter import FlopCounterMode

if __package__ in (None, ""):  # run as a script: make `bench.bench_solvers` importable like with PYTHONPATH=.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_solvers import time_forward  # noqa: E402
from robustkit.diffusion import DiffuSSM, DiffuSSMConfig, DiT, DiTConfig, UNet, UNetConfig  # noqa: E402
from robustkit.diffusion.score_model import ScoreModel  # noqa: E402
from robustkit.diffusion.zoo import DIFFUSSM_S_CIFAR10, DIT_S2_CIFAR10, UNET_CIFAR10  # noqa: E402

BackboneConfig = Union[UNetConfig, DiTConfig, DiffuSSMConfig]

#: Three backbones of about 2.8 M parameters (equal within ±5 %), defined at 32×32; at 64×64 the forward
#: at batch 8 takes well under 2 s on one CPU core.
MATCHED: dict[str, BackboneConfig] = {
    # unet.cifar10: DDPM layout at 32 channels, levels 32-16-8-4 (at 32×32), attention at 8×8 and in the middle.
    "unet": UNET_CIFAR10,
    # DiT with patch 2: 256 tokens at 32×32, width 192 (3 heads of 64), 4 blocks.
    "dit": DiTConfig(in_channels=3, image_size=32, patch_size=2, hidden_size=192, depth=4, num_heads=3,
                     num_classes=10),
    # DiffuSSM, width 192, 4 blocks, hourglass 4: the SSM runs over 256 steps at 32×32, 16 complex modes.
    "diffussm": DiffuSSMConfig(in_channels=3, image_size=32, hidden_size=192, depth=4, downsample=4, state_size=16,
                               num_classes=10),
}

#: The CIFAR-10 configs of the score-model registry.
REGISTRY: dict[str, BackboneConfig] = {"unet": UNET_CIFAR10, "dit": DIT_S2_CIFAR10, "diffussm": DIFFUSSM_S_CIFAR10}

SETS = {"matched": MATCHED, "registry": REGISTRY}


# ----------------------------------------------------------------------------------------------- models

def at_size(config: BackboneConfig, size: int) -> BackboneConfig:
    """``config`` with input side ``size`` and every other hyperparameter kept.

    For a U-Net the attention sides are scaled with the input, so that attention stays at the same levels
    (and the parameter count is unchanged). Raises ``ValueError`` when a scaled side is not an integer.
    """
    if isinstance(config, UNetConfig):
        sides = []
        for side in config.attention_resolutions:
            if (side * size) % config.image_size:
                raise ValueError(f"attention side {side} of a {config.image_size}-pixel U-Net has no counterpart "
                                 f"at {size} pixels")
            sides.append(side * size // config.image_size)
        return replace(config, image_size=size, attention_resolutions=tuple(sides))
    return replace(config, image_size=size)


def build(config: BackboneConfig) -> ScoreModel:
    """The backbone of ``config`` with random weights (seeded), in eval mode."""
    torch.manual_seed(0)
    if isinstance(config, UNetConfig):
        model = UNet(config)
    elif isinstance(config, DiTConfig):
        model = DiT(config)
    elif isinstance(config, DiffuSSMConfig):
        model = DiffuSSM(config)
    else:
        raise TypeError(f"not a backbone config: {type(config).__name__}")
    return model.eval()


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def mixing(config: BackboneConfig) -> str:
    """What mixes information across the image, and over how many positions."""
    if isinstance(config, UNetConfig):
        sides = [s for s in config.level_sizes if s in config.attention_resolutions]
        if config.mid_attention:
            sides.append(config.level_sizes[-1])
        return "conv; attn over " + (", ".join(f"{s}²" for s in sides) or "none")
    if isinstance(config, DiTConfig):
        return f"attn over {config.grid_size ** 2} tokens"
    return f"SSM over {config.sequence_length // config.downsample} steps"


# ------------------------------------------------------------------------------------------------ FLOPs

aten = torch.ops.aten


def _fft_flops(shape: Sequence[int], dim: Sequence[int], per_point_log: float) -> int:
    """``per_point_log · N · log2 N`` per transform of length ``N = prod(shape[dim])``, times the transforms."""
    n = math.prod(shape[d] for d in dim)
    return round(math.prod(shape) // n * per_point_log * n * math.log2(n)) if n > 1 else 0


def fft_r2c_flop(x_shape, dim, normalization, onesided, out_shape=None, **kwargs) -> int:
    """Real-to-complex FFT (``rfft``): ``2.5·N·log2 N`` per transformed channel (half a complex FFT)."""
    return _fft_flops(x_shape, dim, 2.5)


def fft_c2r_flop(x_shape, dim, normalization, last_dim_size, out_shape=None, **kwargs) -> int:
    """Complex-to-real FFT (``irfft``) of real length ``N``: ``2.5·N·log2 N`` per transformed channel."""
    return _fft_flops(out_shape, dim, 2.5)


def fft_c2c_flop(x_shape, dim, normalization, forward, out_shape=None, **kwargs) -> int:
    """Complex FFT: ``5·N·log2 N`` per transformed channel."""
    return _fft_flops(x_shape, dim, 5.0)


def sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """Attention ``[b, h, Lq, d]``: ``QKᵀ`` and ``AV``, ``2·b·h·Lq·Lk·(d_qk + d_v)`` (softmax not counted)."""
    b, h, lq, d = query_shape
    lk, dv = key_shape[-2], value_shape[-1]
    return 2 * b * h * lq * lk * (d + dv)


#: Analytic formulas for the compute ops FlopCounterMode has none for (keyed as its own registry is).
MISSED_OPS = {
    aten._fft_r2c: fft_r2c_flop,
    aten._fft_c2r: fft_c2r_flop,
    aten._fft_c2c: fft_c2c_flop,
    aten._scaled_dot_product_flash_attention_for_cpu: sdpa_cpu_flop,
}
_MISSED_NAMES = frozenset(str(op) for op in MISSED_OPS)  # how FlopCounterMode names them in its counts


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of one call: ``counted`` by FlopCounterMode's own formulas, ``added`` by :data:`MISSED_OPS`."""

    counted: int
    added: int
    by_op: dict[str, int]

    @property
    def total(self) -> int:
        return self.counted + self.added

    @property
    def added_ops(self) -> tuple[str, ...]:
        return tuple(sorted(k for k, v in self.by_op.items() if k in _MISSED_NAMES and v))


def count_flops(fn, *args, **kwargs) -> FlopCount:
    """FLOPs of ``fn(*args, **kwargs)`` under ``torch.no_grad()``, FlopCounterMode plus :data:`MISSED_OPS`."""
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=MISSED_OPS) as counter:
        fn(*args, **kwargs)
    by_op: dict = defaultdict(int)
    for op, flops in counter.get_flop_counts()["Global"].items():
        by_op[str(op)] += flops
    added = sum(v for k, v in by_op.items() if k in _MISSED_NAMES)
    return FlopCount(counted=sum(by_op.values()) - added, added=added, by_op=dict(by_op))


# ------------------------------------------------------------------------------------------------- rows

@dataclass(frozen=True)
class Row:
    """One backbone at one input size. FLOPs are per image; ``forward_s`` is per call of the whole batch."""

    backbone: str
    size: int
    params: int
    mixing: str
    batch: int
    counted_flops: float
    added_flops: float
    added_ops: tuple[str, ...]
    flops_by_op: dict[str, float]
    forward_s: float
    params_equal: bool = True       # same count as the smallest size
    flops_growth: Optional[float] = None  # over the smallest size
    time_growth: Optional[float] = None

    @property
    def total_flops(self) -> float:
        return self.counted_flops + self.added_flops

    @property
    def image_s(self) -> float:
        return self.forward_s / self.batch


def _inputs(model: ScoreModel, batch: int, device: torch.device):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, *model.input_shape, generator=g).mul_(2).sub_(1).to(device)
    y = torch.randint(0, model.num_classes, (batch,), generator=g).to(device) if model.conditional else None
    return x, y


def bench_backbone(name: str, config: BackboneConfig, sizes: Sequence[int], batch: int, device: torch.device, *,
                   calls: int, repeats: int) -> list[Row]:
    """Measure ``config`` at every size; growth and parameter equality are relative to ``sizes[0]``."""
    rows: list[Row] = []
    for size in sizes:
        cfg = at_size(config, size)
        model = build(cfg).to(device)
        x, y = _inputs(model, batch, device)
        t = torch.full((batch,), 0.05, device=device)
        flops = count_flops(model, x, t, y)
        forward_s = time_forward(model, x, t=0.05, y=y, calls=calls, repeats=repeats, warmup=1)
        row = Row(backbone=name, size=size, params=count_params(model), mixing=mixing(cfg), batch=batch,
                  counted_flops=flops.counted / batch, added_flops=flops.added / batch, added_ops=flops.added_ops,
                  flops_by_op={k: v / batch for k, v in flops.by_op.items()}, forward_s=forward_s)
        if rows:
            base = rows[0]
            row = replace(row, params_equal=row.params == base.params,
                          flops_growth=row.total_flops / base.total_flops, time_growth=row.image_s / base.image_s)
        rows.append(row)
        print(f"{name} {size}×{size}: {row.params:,} parameters, {row.total_flops / 1e9:.3f} GFLOP/image "
              f"({row.added_flops / 1e9:.3f} analytic), {row.image_s * 1e3:.1f} ms/image", flush=True)
        del model
    return rows


def format_table(rows: Sequence[Row]) -> str:
    """Markdown table; growth columns are over the smallest size of the same backbone."""
    head = ["backbone", "size", "params", "mixing", "GFLOP/img counted", "GFLOP/img analytic (missed ops)",
            "GFLOP/img total", "ms/img", "FLOP growth", "time growth"]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ops = ", ".join(op.removeprefix("aten.") for op in r.added_ops)
        cells = [r.backbone, f"{r.size}×{r.size}", f"{r.params:,}" + ("" if r.params_equal else " (!)"), r.mixing,
                 f"{r.counted_flops / 1e9:.3f}",
                 f"{r.added_flops / 1e9:.3f}" + (f" ({ops})" if ops else ""),
                 f"{r.total_flops / 1e9:.3f}", f"{r.image_s * 1e3:.1f}",
                 "" if r.flops_growth is None else f"{r.flops_growth:.2f}×",
                 "" if r.time_growth is None else f"{r.time_growth:.2f}×"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> list[Row]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--set", default="matched", choices=tuple(SETS), help="matched (default) or registry configs")
    p.add_argument("--backbones", default="unet,dit,diffussm", help="comma-separated subset of unet, dit, diffussm")
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64], help="input sides; growth is over the first")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0: torch's default)")
    p.add_argument("--calls", type=int, default=3, help="back-to-back calls per timed run")
    p.add_argument("--repeats", type=int, default=3, help="timed runs; the fastest is reported")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path, default=None, help="also write the settings and all rows here")
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    configs = SETS[args.set]
    names = [s.strip() for s in args.backbones.split(",") if s.strip()]
    unknown = [n for n in names if n not in configs]
    if unknown or not names:
        raise SystemExit(f"unknown backbone(s) {unknown}; choose from {', '.join(configs)}")
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}; set={args.set} "
          f"sizes={args.sizes} batch={args.batch} calls={args.calls} repeats={args.repeats}", flush=True)
    start = time.perf_counter()
    rows: list[Row] = []
    for name in names:
        rows += bench_backbone(name, configs[name], args.sizes, args.batch, device, calls=args.calls,
                               repeats=args.repeats)
    counts = {r.backbone: r.params for r in rows if r.size == args.sizes[0]}
    print(f"\nparameters: {', '.join(f'{k} {v:,}' for k, v in counts.items())} "
          f"(max/min {max(counts.values()) / min(counts.values()):.3f})")
    print("FLOPs: 'counted' is FlopCounterMode's own total; 'analytic' adds ops it has no formula for "
          "(FFT: 2.5·N·log2 N per real FFT; CPU attention: 2·b·h·Lq·Lk·(d_qk+d_v)); "
          "elementwise ops are not counted.")
    print(f"total {time.perf_counter() - start:.0f} s\n")
    print(format_table(rows))
    if args.json is not None:
        record = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                  "torch": torch.__version__, "threads": torch.get_num_threads(),
                  "configs": {n: configs[n].to_dict() for n in names},
                  "rows": [{**asdict(r), "total_flops": r.total_flops, "image_s": r.image_s} for r in rows]}
        args.json.write_text(json.dumps(record, indent=2))
    return rows


if __name__ == "__main__":
    main()
