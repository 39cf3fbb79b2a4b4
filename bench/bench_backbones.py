"""Backbone cost: forward (and forward + input-gradient) time of each published diffusion backbone.

Every backbone is built in its full published configuration with random weights (nothing is downloaded):

==============  ===============================================================  ============  ============
name            published checkpoint                                             parameters    input
==============  ===============================================================  ============  ============
``score_sde``   score_sde ``vp/cifar10_ddpmpp_deep_continuous`` (DiffPure CIFAR)  106,632,579   3×32×32
``edm_cond``    EDM ``edm-cifar10-32x32-cond-vp`` (RDC's ``edm_cifar_cond.pt``)    55,735,299   3×32×32 + y
``edm_uncond``  EDM ``edm-cifar10-32x32-uncond-vp`` (``edm_cifar_uncond_vp.pt``)   55,733,891   3×32×32
``adm256``      guided-diffusion ``256x256_diffusion_uncond.pt`` (DiffPure IN)    552,814,086   3×256×256
==============  ===============================================================  ============  ============

For each backbone and batch size it prints the parameter count (checked against the published one), the
time of one ``eps = model(x_t, t, y)`` call and per image, optionally the forward + input-gradient time
(``--backward``: what one attack gradient through one step costs), and optionally a solver run against
``NFE × t_forward`` (``--solver``): the solver overhead. Wall times are the best of ``--repeats`` runs of
``--calls`` back-to-back calls, by :func:`bench.bench_solvers.time_forward` / :func:`~bench.bench_solvers.time_solver`.
Beside them it reports process CPU seconds per call (after warm-up) and per solver run: on a shared CPU
they move much less with other load than wall time does, so with ``--threads 1`` the CPU overhead column
is the solver overhead to trust there.

Reproduce (from the repository root)::

    # CPU (2 cores, shared): one CIFAR-10 backbone at a time, batch 1, 2 and 4, forward and forward+gradient,
    # and the EM solver at 5 steps against 5 forwards (about 3-5 minutes each on a loaded 2-core machine):
    PYTHONPATH=. .venv/bin/python bench/bench_backbones.py --device cpu --threads 1 --backbones score_sde \\
        --batch 1 2 4 --backward --solver em --steps 5 --calls 2 --repeats 2
    #   ... and the same with --backbones edm_cond, --backbones edm_uncond
    # CPU, ADM 256 at batch 1, forward only (about 2 minutes and 3.3 GB of memory on 2 cores):
    PYTHONPATH=. .venv/bin/python bench/bench_backbones.py --device cpu --threads 2 --backbones adm256 \\
        --adm-batch 1 --calls 1 --repeats 1
    # CUDA, everything, DiffPure's 100-step EM solver, larger batches:
    PYTHONPATH=. python bench/bench_backbones.py --device cuda --backbones all --batch 1 16 64 --adm-batch 1 4 \\
        --backward --solver em --steps 100 --json bench_backbones_cuda.json

``--backbones`` takes comma-separated names, ``cifar10`` (the default: the first three) or ``all``;
``--batch`` sets the CIFAR-10 batch sizes and ``--adm-batch`` those of ``adm256`` (default 1). Numbers depend
on the machine and its load: compare rows of the same run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

if __package__ in (None, ""):  # run as a script: make `bench.bench_solvers` importable like with PYTHONPATH=.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_solvers import SOLVERS, time_forward, time_solver  # noqa: E402
from robustkit.diffusion.adm import ADMScoreModel, ADMUNet, adm_config  # noqa: E402
from robustkit.diffusion.edm import EDMConfig, EDMPrecond, EDMScoreModel  # noqa: E402
from robustkit.diffusion.ncsnpp import NCSNpp  # noqa: E402
from robustkit.diffusion.score_model import ScoreModel  # noqa: E402
from robustkit.diffusion.score_sde import ScoreSDEScoreModel, get_score_sde_config  # noqa: E402


# -------------------------------------------------------------------------------------------- backbones

def build_score_sde() -> ScoreModel:
    cfg = get_score_sde_config("cifar10_ddpmpp_deep_continuous")
    return ScoreSDEScoreModel(NCSNpp(cfg, generator=torch.Generator().manual_seed(0)))


def build_edm_cond() -> ScoreModel:
    return EDMScoreModel(EDMPrecond(EDMConfig.ddpmpp_cifar10(conditional=True)))


def build_edm_uncond() -> ScoreModel:
    return EDMScoreModel(EDMPrecond(EDMConfig.ddpmpp_cifar10(conditional=False)))


def build_adm256() -> ScoreModel:
    return ADMScoreModel(ADMUNet(adm_config("imagenet256_uncond")))


@dataclass(frozen=True)
class Backbone:
    name: str
    checkpoint: str
    build: Callable[[], ScoreModel]
    published_params: int
    heavy: bool = False  # batch sizes come from --adm-batch (default 1)


BACKBONES: dict[str, Backbone] = {b.name: b for b in (
    Backbone("score_sde", "score_sde vp/cifar10_ddpmpp_deep_continuous", build_score_sde, 106_632_579),
    Backbone("edm_cond", "EDM edm-cifar10-32x32-cond-vp", build_edm_cond, 55_735_299),
    Backbone("edm_uncond", "EDM edm-cifar10-32x32-uncond-vp", build_edm_uncond, 55_733_891),
    Backbone("adm256", "guided-diffusion 256x256_diffusion_uncond", build_adm256, 552_814_086, heavy=True),
)}
CIFAR10 = ("score_sde", "edm_cond", "edm_uncond")


# ------------------------------------------------------------------------------------------------ rows

@dataclass(frozen=True)
class Row:
    """One backbone at one batch size; times in seconds (``None`` where not measured)."""

    backbone: str
    params: int
    published_params: int
    batch: int
    forward_s: float
    backward_s: Optional[float]
    forward_cpu_s: Optional[float] = None
    solver: Optional[str] = None
    nfe: Optional[int] = None
    solver_s: Optional[float] = None
    overhead_s: Optional[float] = None
    solver_cpu_s: Optional[float] = None
    overhead_cpu_s: Optional[float] = None

    @property
    def params_ok(self) -> bool:
        return self.params == self.published_params


def _inputs(model: ScoreModel, batch: int, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *model.input_shape, generator=g).to(device)
    y = torch.randint(0, model.num_classes, (batch,), generator=g).to(device) if model.conditional else None
    return x, y


def bench_backbone(backbone: Backbone, batches: Sequence[int], device: torch.device, *, backward: bool,
                   solver: Optional[str], steps: int, calls: int, repeats: int, warmup: int) -> list[Row]:
    t0 = time.perf_counter()
    model = backbone.build().to(device).eval().requires_grad_(False)  # input gradients only, as attacks take
    params = sum(p.numel() for p in model.parameters())
    flag = "ok" if params == backbone.published_params else f"MISMATCH: published {backbone.published_params:,}"
    print(f"\n{backbone.name}: {backbone.checkpoint}, {params:,} parameters ({flag}), "
          f"input {'x'.join(map(str, model.input_shape))}{' + label' if model.conditional else ''}; "
          f"built in {time.perf_counter() - t0:.1f} s", flush=True)
    rows = []
    for batch in batches:
        x, y = _inputs(model, batch, device)
        # Warm up here (the first calls at a new shape build kernels), so that the process CPU seconds of the
        # timed calls alone can be read: on a shared CPU they move less with other load than wall time does
        # (with one thread: the compute time of a call; with T threads: their sum).
        time_forward(model, x, y=y, calls=calls, repeats=warmup, warmup=0)
        cpu0 = time.process_time()
        fwd = time_forward(model, x, y=y, calls=calls, repeats=repeats, warmup=0)
        cpu = (time.process_time() - cpu0) / (repeats * calls)
        line = (f"  batch {batch:>3}: forward {fwd * 1e3:9.1f} ms ({fwd / batch * 1e3:8.1f} ms/image; "
                f"CPU {cpu * 1e3:.1f} ms/call)")
        bwd = None
        if backward:
            bwd = time_forward(model, x, y=y, backward=True, calls=calls, repeats=repeats, warmup=warmup)
            line += f", forward+grad {bwd * 1e3:9.1f} ms ({bwd / batch * 1e3:8.1f} ms/image, {bwd / fwd:.2f}x)"
        print(line, flush=True)
        row = Row(backbone.name, params, backbone.published_params, batch, fwd, bwd, cpu)
        if solver is not None:
            cpu0 = time.process_time()
            r = time_solver(model, x, solver=solver, steps=steps, y=y, repeats=repeats, warmup=min(warmup, 1),
                            forward_s=fwd)
            # time_solver makes one untimed NFE-counting run, the warm-up runs and the timed runs.
            solver_cpu = (time.process_time() - cpu0) / (1 + min(warmup, 1) + repeats)
            print(f"             {solver} solver, {r.nfe} NFE: {r.solver_s * 1e3:9.1f} ms vs NFE x forward "
                  f"{r.nfe * fwd * 1e3:9.1f} ms: overhead {r.overhead_s * 1e3:8.1f} ms "
                  f"({r.overhead_frac * 100:.1f}%); CPU {solver_cpu * 1e3:.1f} ms vs {r.nfe * cpu * 1e3:.1f} ms: "
                  f"overhead {(solver_cpu - r.nfe * cpu) * 1e3:.1f} ms "
                  f"({100 * (solver_cpu - r.nfe * cpu) / solver_cpu:.1f}%)", flush=True)
            row = Row(backbone.name, params, backbone.published_params, batch, fwd, bwd, cpu, solver, r.nfe,
                      r.solver_s, r.overhead_s, solver_cpu, solver_cpu - r.nfe * cpu)
        rows.append(row)
    del model
    return rows


def format_table(rows: Sequence[Row]) -> str:
    """A Markdown table of the rows (ms; per-image columns divide by the batch)."""
    head = ["backbone", "params", "batch", "fwd ms", "fwd ms/img", "fwd CPU ms", "fwd+grad ms", "fwd+grad ms/img",
            "solver", "NFE", "solver ms", "overhead ms", "overhead %", "solver CPU ms", "CPU overhead %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---:" if i > 0 else "---" for i in range(len(head))) + "|"]

    def ms(v: Optional[float], div: int = 1) -> str:
        return "" if v is None else f"{v / div * 1e3:.1f}"

    for r in rows:
        cells = [r.backbone, f"{r.params:,}" + ("" if r.params_ok else " (!)"), str(r.batch), ms(r.forward_s),
                 ms(r.forward_s, r.batch), ms(r.forward_cpu_s), ms(r.backward_s), ms(r.backward_s, r.batch),
                 r.solver or "",
                 "" if r.nfe is None else str(r.nfe), ms(r.solver_s), ms(r.overhead_s),
                 "" if r.overhead_s is None else f"{100 * r.overhead_s / r.solver_s:.1f}",
                 ms(r.solver_cpu_s),
                 "" if r.overhead_cpu_s is None else f"{100 * r.overhead_cpu_s / r.solver_cpu_s:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _backbone_names(spec: str) -> list[str]:
    if spec == "all":
        return list(BACKBONES)
    if spec == "cifar10":
        return list(CIFAR10)
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in BACKBONES]
    if unknown or not names:
        raise SystemExit(f"unknown backbone(s) {unknown}; choose from {', '.join(BACKBONES)}, 'cifar10' or 'all'")
    return names


def main(argv: Optional[list[str]] = None) -> list[Row]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--backbones", default="cifar10",
                   help=f"comma-separated names ({', '.join(BACKBONES)}), 'cifar10' (default) or 'all'")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4], help="batch sizes of the CIFAR-10 backbones")
    p.add_argument("--adm-batch", type=int, nargs="+", default=[1], help="batch sizes of adm256")
    p.add_argument("--backward", action="store_true", help="also time forward + gradient to the input")
    p.add_argument("--solver", default="none", choices=(*SOLVERS, "none"),
                   help="also time a solver run against NFE x forward (bench_solvers' settings)")
    p.add_argument("--steps", type=int, default=10, help="solver steps (model evaluations)")
    p.add_argument("--calls", type=int, default=5, help="back-to-back calls per timed forward run")
    p.add_argument("--repeats", type=int, default=3, help="timed runs; the fastest is reported")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows and the settings here")
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names = _backbone_names(args.backbones)
    solver = None if args.solver == "none" else args.solver
    print(f"torch {torch.__version__}, device {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}; "
          f"calls={args.calls} repeats={args.repeats} warmup={args.warmup}")
    rows: list[Row] = []
    for name in names:
        backbone = BACKBONES[name]
        batches = args.adm_batch if backbone.heavy else args.batch
        rows += bench_backbone(backbone, batches, device, backward=args.backward, solver=solver,
                               steps=args.steps, calls=args.calls, repeats=args.repeats, warmup=args.warmup)
    print()
    print(format_table(rows))
    if args.json is not None:
        record = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                  "torch": torch.__version__, "threads": torch.get_num_threads(),
                  "rows": [asdict(r) for r in rows]}
        args.json.write_text(json.dumps(record, indent=2))
    return rows


if __name__ == "__main__":
    main()
