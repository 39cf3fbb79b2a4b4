"""Solver overhead: a full solver run against NFE × one forward pass of the same model.

Run (CPU defaults finish in well under a minute)::

    PYTHONPATH=. python bench/bench_solvers.py --device cpu --steps 100
    PYTHONPATH=. python bench/bench_solvers.py --device cuda --solver all --batch 64 --backward --checkpoint

The solver time minus ``NFE × t_forward`` is what the sampler loop itself costs (coefficient arithmetic,
noise draws, Python overhead, and with ``--backward --checkpoint`` the recomputation). With a 100M-
parameter backbone the overhead should vanish; with the tiny default model it is an upper bound.

The timing helpers (:func:`time_forward`, :func:`time_solver`) take any ``eps = model(x, t, y)`` callable,
so backbone benchmarks can import them::

    from bench.bench_solvers import time_solver
    timing = time_solver(model, x, solver="em", steps=100)
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from robustkit.diffusion.schedule import DiscreteVPSchedule, VPSDE
from robustkit.diffusion.solvers import ddim, ddpm_ancestral, euler_maruyama, probability_flow_euler

SOLVERS = ("em", "pf", "ddpm", "ddim")


@dataclass(frozen=True)
class SolverTiming:
    """Best-of-repeats wall-clock seconds of one solver run and of one model call (same batch, same grad mode)."""

    solver: str
    steps: int
    nfe: int
    solver_s: float
    forward_s: float
    backward: bool
    checkpoint: bool

    @property
    def overhead_s(self) -> float:
        """Solver time not explained by ``nfe`` model calls (for ``--backward``: forward+backward calls)."""
        return self.solver_s - self.nfe * self.forward_s

    @property
    def overhead_frac(self) -> float:
        return self.overhead_s / self.solver_s


class _Counting:
    def __init__(self, model: Callable):
        self.model, self.calls = model, 0

    def __call__(self, x, t, y=None):
        self.calls += 1
        return self.model(x, t, y)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_time(fn: Callable[[], None], device: torch.device, repeats: int, warmup: int) -> float:
    """Fastest of ``repeats`` timed runs after ``warmup`` untimed ones (the minimum is the estimate least
    disturbed by other load on the machine)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def time_forward(model: Callable, x: torch.Tensor, t: float = 0.05, y: Optional[torch.Tensor] = None, *,
                 backward: bool = False, calls: int = 20, repeats: int = 3, warmup: int = 1) -> float:
    """Seconds per ``model(x, t, y)`` call (with ``backward``: plus the input-gradient pass).

    Each timed run makes ``calls`` back-to-back calls, like a solver loop does, so the per-call time is
    comparable with a solver run of ``calls`` steps (a lone call timed in isolation reads faster).
    """
    tt = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)

    def run() -> None:
        for _ in range(calls):
            if backward:
                xi = x.detach().requires_grad_(True)
                torch.autograd.grad(model(xi, tt, y).sum(), xi)
            else:
                with torch.no_grad():
                    model(x, tt, y)

    return _best_time(run, x.device, repeats, warmup) / calls


def _solver_call(name: str, model: Callable, x: torch.Tensor, steps: int, y, checkpoint: bool,
                 seed: int) -> torch.Tensor:
    g = torch.Generator(device=x.device).manual_seed(seed)
    if name == "em":  # DiffPure's setting: from t* = 0.1 with dt = (0.1 − 1e-5)/steps
        return euler_maruyama(model, VPSDE(), x, 0.1, 1e-5, steps=steps, y=y, generator=g, checkpoint=checkpoint)
    if name == "pf":
        return probability_flow_euler(model, VPSDE(), x, 0.1, 1e-5, steps=steps, y=y, checkpoint=checkpoint)
    sched = DiscreteVPSchedule()
    if name == "ddpm":
        return ddpm_ancestral(model, sched, x, steps - 1, y=y, generator=g, checkpoint=checkpoint)
    if name == "ddim":
        return ddim(model, sched, x, 99 if steps <= 100 else steps - 1, steps=steps, y=y, checkpoint=checkpoint)
    raise ValueError(f"unknown solver {name!r}; choose from {SOLVERS}")


def time_solver(model: Callable, x: torch.Tensor, *, solver: str = "em", steps: int = 100,
                y: Optional[torch.Tensor] = None, backward: bool = False, checkpoint: bool = False,
                repeats: int = 3, warmup: int = 1, forward_s: Optional[float] = None) -> SolverTiming:
    """Time one run of ``solver`` (``"em" | "pf" | "ddpm" | "ddim"``) with ``steps`` model calls.

    Without ``backward`` both the solver and the single forward run under ``torch.no_grad()``; with it,
    each is followed by a backward pass to the input. ``forward_s`` reuses a measured per-call time.
    """
    # NFE from one counted dry run: counting inside the timed runs would also count the
    # recomputations of checkpoint=True, which are overhead, not evaluations of the sampler.
    counting = _Counting(model)
    with torch.no_grad():
        _solver_call(solver, counting, x, steps, y, False, 0)
    nfe = counting.calls

    def once() -> None:
        if backward:
            xi = x.detach().requires_grad_(True)
            torch.autograd.grad(_solver_call(solver, model, xi, steps, y, checkpoint, 0).sum(), xi)
        else:
            with torch.no_grad():
                _solver_call(solver, model, x, steps, y, checkpoint, 0)

    solver_s = _best_time(once, x.device, repeats, warmup)
    if forward_s is None:
        forward_s = time_forward(model, x, y=y, backward=backward, calls=nfe, repeats=repeats, warmup=warmup)
    return SolverTiming(solver=solver, steps=steps, nfe=nfe, solver_s=solver_s, forward_s=forward_s,
                        backward=backward, checkpoint=checkpoint)


class SmallEpsNet(nn.Module):
    """A small conv noise predictor (~20k parameters at the default width 32) standing in for a backbone."""

    def __init__(self, channels: int = 3, hidden: int = 64):
        super().__init__()
        self.inp = nn.Conv2d(channels, hidden, 3, padding=1)
        self.mid = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.out = nn.Conv2d(hidden, channels, 3, padding=1)
        self.time = nn.Linear(1, hidden)

    def forward(self, x, t, y=None):
        h = F.silu(self.inp(x) + self.time(t[:, None])[:, :, None, None])
        return self.out(F.silu(self.mid(h)))


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=100, help="model evaluations per solver run")
    p.add_argument("--solver", default="em", choices=(*SOLVERS, "all"))
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--size", type=int, default=16, help="image side (3 channels)")
    p.add_argument("--hidden", type=int, default=32, help="width of the small model")
    p.add_argument("--backward", action="store_true", help="time forward+backward to the input")
    p.add_argument("--checkpoint", action="store_true", help="solvers with checkpoint=True")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads; 0 keeps torch's default (1 gives steadier CPU timings)")
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = SmallEpsNet(hidden=args.hidden).to(device).eval()
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    forward_s = time_forward(model, x, backward=args.backward, calls=args.steps, repeats=args.repeats)
    print(f"device={device} threads={torch.get_num_threads()} batch={args.batch} size={args.size} hidden={args.hidden} "
          f"backward={args.backward} checkpoint={args.checkpoint}")
    print(f"single model call: {forward_s * 1e3:.3f} ms")
    print(f"{'solver':>6} {'nfe':>5} {'solver ms':>10} {'nfe*fwd ms':>11} {'overhead ms':>12} {'overhead':>9}")
    for name in (SOLVERS if args.solver == "all" else (args.solver,)):
        r = time_solver(model, x, solver=name, steps=args.steps, backward=args.backward,
                        checkpoint=args.checkpoint, repeats=args.repeats, forward_s=forward_s)
        print(f"{r.solver:>6} {r.nfe:>5} {r.solver_s * 1e3:>10.2f} {r.nfe * r.forward_s * 1e3:>11.2f} "
              f"{r.overhead_s * 1e3:>12.2f} {r.overhead_frac * 100:>8.1f}%")


if __name__ == "__main__":
    main()
