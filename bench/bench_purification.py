"""DiffPure purification cost: wall time against NFE × one backbone forward, and the peak memory of exact
gradients against the number of solver steps.

Reproduce (CPU, one thread, about 10 minutes on an idle machine)::

    ROBUSTKIT_SHARED=../shared OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python bench/bench_purification.py
    PYTHONPATH=. python bench/bench_purification.py --device cuda --batch 64 --threads 0      # on a GPU

Backbone: score_sde's NCSN++ code path in the ``cifar10_ddpmpp_deep_continuous_small`` config (nf = 16, two
res-blocks per level, 0.62M parameters, 32×32), with the weights of
``$ROBUSTKIT_SHARED/specs/score_sde_ddpmpp_deep_vp_cifar10/small_checkpoint.pth`` when present (random
initialisation otherwise): small enough for a CPU, the same layers and call pattern as the published 107M model.

Time. ``overhead = t_purify / (NFE · t_forward) − 1`` with both measured at the same batch and grad mode
(target ≤ 20 %). The exact (checkpointed) gradient runs each step once without a graph, then again with
one inside the backward pass, and differentiates it: its reference is ``NFE · (t_forward +
t_forward_backward)``, and its ratio to naive backprop through the same steps (target ≤ 1.3) has the floor
``1 + t_forward / t_forward_backward`` when naive backprop costs no more than NFE isolated forward/backward
passes. Naive backprop is timed against ``NFE · t_forward_backward``, and the torchsde adjoint (DiffPure's
own gradient path) against the exact gradient.
Timings interleave the measured calls and keep the best of the repeats; on a CPU they are process-CPU
seconds (one thread), which other processes on a shared machine disturb far less than wall time.

Memory. Each (steps, mode, allocator) point runs in a fresh subprocess that resets the kernel's peak-RSS
mark (``/proc/self/clear_refs``) after building the model and inputs, runs purification + backward once,
and reports ``VmHWM − VmRSS(before)`` (on CUDA: ``max_memory_allocated`` growth). ``checkpoint`` is the
library's exact mode; ``naive`` is plain autograd through every step (``checkpoint=False``). The allocator
``default`` is glibc as users run it (the RSS they read); ``live`` sets ``MALLOC_MMAP_THRESHOLD_=65536``,
so large blocks are returned to the kernel on free and RSS follows the live tensors. The slope per step is
the number that matters (target: ≤ 1 % of the 100-step peak): naive backprop stores every layer's
activations of every step; the exact gradient stores one state per step. ``--method contrastive
--skip-time`` measures the same for contrastive-guided purification, whose guidance (a classifier forward
and backward per step, differentiated twice by the attack) is checkpointed alongside the score step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

import robustkit
from robustkit.defenses import ContrastiveGuidanceConfig, ContrastiveGuidedPurifier, DiffPureConfig, DiffPurePurifier
from robustkit.diffusion.ncsnpp import NCSNpp
from robustkit.diffusion.score_sde import ScoreSDEScoreModel, get_score_sde_config, load_score_sde

CONFIG = "cifar10_ddpmpp_deep_continuous_small"
T_STAR, T_END = 0.1, 1e-5


def build_model(device: str) -> tuple[torch.nn.Module, str]:
    shared = os.environ.get("ROBUSTKIT_SHARED")
    ckpt = Path(shared) / "specs" / "score_sde_ddpmpp_deep_vp_cifar10" / "small_checkpoint.pth" if shared else None
    if ckpt is not None and ckpt.is_file():
        model, source = load_score_sde(ckpt, CONFIG), str(ckpt)
    else:
        model = ScoreSDEScoreModel(NCSNpp(get_score_sde_config(CONFIG), generator=torch.Generator().manual_seed(0)))
        source = "random init (seed 0)"
    return model.to(device).eval().requires_grad_(False), source


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class _Clock:
    """Wall and process-CPU seconds of calls, keeping the best (least disturbed) of each label's runs.

    On a shared CPU, other processes inflate wall time in bursts; process CPU time (with one intra-op thread)
    is what the computation itself costs, so the CPU overheads are computed from it. On CUDA, wall time.
    """

    def __init__(self, device: str):
        self.device = device
        self.best: dict[str, tuple[float, float]] = {}

    def __call__(self, label: str, fn, reps: int = 1) -> None:
        _sync(self.device)
        w0, c0 = time.perf_counter(), time.process_time()
        for _ in range(reps):
            fn()
        _sync(self.device)
        w, c = (time.perf_counter() - w0) / reps, (time.process_time() - c0) / reps
        old = self.best.get(label)
        self.best[label] = (w, c) if old is None else (min(old[0], w), min(old[1], c))

    def seconds(self, label: str) -> float:
        w, c = self.best[label]
        return w if self.device.startswith("cuda") else c


def bench_time(model, batch: int, repeats: int, device: str, adjoint: bool, grad_t_star: float) -> dict:
    x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(device)
    x_t = (2 * x - 1).mul(0.947).add(0.32 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(device))
    t = torch.full((batch,), 0.05, device=device)
    purifier = DiffPurePurifier(model, DiffPureConfig(t_star=T_STAR))
    short = DiffPurePurifier(model, DiffPureConfig(t_star=grad_t_star))
    nfe, nfe_g = purifier.nfe, short.nfe

    def fwd():
        with torch.no_grad():
            model(x_t, t)

    def purify():
        with torch.no_grad():
            purifier.purify(x, torch.Generator().manual_seed(2))

    def fwd_graph():  # a forward that records the graph (what the backward's recomputation does)
        model(x_t.clone().requires_grad_(), t)

    def fwd_bwd():
        xi = x_t.clone().requires_grad_()
        model(xi, t).sum().backward()

    def naive_grad():
        xi = x.clone().requires_grad_()
        short.purify_with_noise(xi, short.draw_noise(x, torch.Generator().manual_seed(2)),
                                checkpoint=False).sum().backward()

    def exact_grad():
        xi = x.clone().requires_grad_()
        short.purify(xi, torch.Generator().manual_seed(2)).sum().backward()

    def adjoint_grad():
        xi = x.clone().requires_grad_()
        short.purify_adjoint(xi, torch.Generator().manual_seed(2)).sum().backward()

    clock = _Clock(device)
    fwd(), fwd_bwd()  # warm-up
    for _ in range(repeats):  # interleaved, so a burst of load hits both sides of each ratio alike
        clock("forward", fwd, nfe)
        clock("purify", purify)
        clock("forward_graph", fwd_graph, nfe_g)
        clock("forward_backward", fwd_bwd, nfe_g)
        clock("exact_grad", exact_grad)
        clock("naive_grad", naive_grad)
    if adjoint:
        clock("adjoint_grad", adjoint_grad)
    sec = clock.seconds
    out = {"batch": batch, "nfe": nfe, "grad_nfe": nfe_g,
           "clock": "wall" if device.startswith("cuda") else "process cpu",
           "forward_s": sec("forward"), "purify_s": sec("purify"), "purify_wall_s": clock.best["purify"][0],
           "purify_s_per_image": sec("purify") / batch, "purify_overhead": sec("purify") / (nfe * sec("forward")) - 1,
           "forward_backward_s": sec("forward_backward"), "exact_grad_s": sec("exact_grad"),
           "exact_grad_s_per_image": sec("exact_grad") / batch,
           "forward_graph_s": sec("forward_graph"), "naive_grad_s": sec("naive_grad"),
           "exact_grad_overhead": sec("exact_grad") / (nfe_g * (sec("forward") + sec("forward_backward"))) - 1,
           "exact_over_naive": sec("exact_grad") / sec("naive_grad"),
           "naive_grad_overhead": sec("naive_grad") / (nfe_g * sec("forward_backward")) - 1}
    if adjoint:
        out.update({"adjoint_grad_s": sec("adjoint_grad"),
                    "adjoint_over_exact": sec("adjoint_grad") / sec("exact_grad")})
    return out


# -- memory: one subprocess per point ------------------------------------------------------------------------

def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_memory(steps: int, checkpoint: bool, batch: int, device: str, method: str = "diffpure") -> dict:
    model, _ = build_model(device)
    cfg = DiffPureConfig(t_star=T_STAR, t_end=T_END, dt=(T_STAR - T_END) / steps, checkpoint=checkpoint)
    purifier = DiffPurePurifier(model, cfg)
    assert purifier.nfe == steps, (purifier.nfe, steps)
    if method == "contrastive":  # guided from step 1 by a (randomly initialised) ResNet-20's logits
        clf = robustkit.create_classifier("resnet20.cifar10").to(device)
        purifier = ContrastiveGuidedPurifier(model, clf, cfg, ContrastiveGuidanceConfig.preset("paired", start_step=1))
    x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(device).requires_grad_()
    noise = purifier.draw_noise(x.detach(), torch.Generator().manual_seed(1))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark (Linux >= 4.0)
        before = _status_kib("VmRSS") * 1024
    out = purifier.purify_with_noise(x, noise).sum()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        graph = torch.cuda.memory_allocated()
    else:
        graph = _status_kib("VmRSS") * 1024
    out.backward()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _status_kib("VmHWM") * 1024
    return {"method": method, "steps": steps, "mode": "checkpoint" if checkpoint else "naive", "batch": batch,
            "graph_mib": (graph - before) / 2 ** 20, "peak_mib": (peak - before) / 2 ** 20,
            "grad_norm": float(x.grad.norm())}


#: ``default``: the C allocator as users run it (what they read as RSS); ``live``: large blocks straight from
#: mmap and returned on free, so RSS follows the live tensors rather than what glibc keeps cached.
ALLOCATORS = {"default": {}, "live": {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}}


def bench_memory(step_counts: list[int], naive_max: int, batch: int, device: str, threads: int,
                 method: str = "diffpure", allocators: tuple[str, ...] = ("default", "live")) -> list[dict]:
    rows = []
    for allocator in allocators:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        env.update(ALLOCATORS[allocator])
        for steps in step_counts:
            for ckpt in (True, False):
                if not ckpt and steps > naive_max:
                    continue
                cmd = [sys.executable, __file__, "--_measure", str(steps), "--_checkpoint", str(int(ckpt)),
                       "--batch", str(batch), "--device", device, "--threads", str(threads), "--method", method]
                res = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
                rows.append({**json.loads(res.stdout.strip().splitlines()[-1]), "allocator": allocator})
    return rows


def _slope(rows: list[dict], mode: str, what: str, allocator: str) -> float | None:
    """Least-squares MiB per solver step of ``what`` over the measured step counts."""
    pts = [(r["steps"], r[what]) for r in rows if r["mode"] == mode and r["allocator"] == allocator]
    if len(pts) < 2:
        return None
    n = len(pts)
    mx, my = sum(p[0] for p in pts) / n, sum(p[1] for p in pts) / n
    return sum((s - mx) * (m - my) for s, m in pts) / sum((s - mx) ** 2 for s, _ in pts)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--grad-t-star", type=float, default=0.02, help="t* of the gradient timings (0.02: 20 NFE)")
    ap.add_argument("--memory-steps", default="10,50,100,200")
    ap.add_argument("--allocator", default="both", choices=[*ALLOCATORS, "both"],
                    help="glibc settings of the memory subprocesses (default: as users run; live: RSS follows live "
                         "tensors)")
    ap.add_argument("--naive-max-steps", type=int, default=10, help="largest step count for naive backprop")
    ap.add_argument("--no-adjoint", action="store_true", help="skip timing the torchsde adjoint")
    ap.add_argument("--skip-time", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--method", default="diffpure", choices=["diffpure", "contrastive"],
                    help="the memory part's purifier: DiffPure, or DiffPure with contrastive guidance (λ = 500, "
                         "every step guided through a ResNet-20 classifier)")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--_measure", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--_checkpoint", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args._measure is not None:
        print(json.dumps(measure_memory(args._measure, bool(args._checkpoint), args.batch, args.device, args.method)))
        return

    model, source = build_model(args.device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"backbone: NCSN++ {CONFIG} ({n_params / 1e6:.2f}M parameters), weights: {source}")
    print(f"device {args.device}, {torch.get_num_threads()} thread(s), batch {args.batch}, torch {torch.__version__}")
    results: dict = {"backbone": CONFIG, "params": n_params, "weights": source, "device": args.device,
                     "threads": torch.get_num_threads()}
    if not args.skip_time:
        r = bench_time(model, args.batch, args.repeats, args.device, not args.no_adjoint, args.grad_t_star)
        results["time"] = r
        print(f"\n-- time ({r['clock']} seconds, best of {args.repeats} interleaved runs) --")
        print(f"backbone forward                {r['forward_s'] * 1e3:9.2f} ms / batch")
        print(f"purify, t* = {T_STAR} ({r['nfe']} NFE)     {r['purify_s']:9.3f} s  / batch = "
              f"{r['purify_s_per_image'] * 1e3:.1f} ms / image (wall {r['purify_wall_s']:.3f} s);"
              f"  overhead vs NFE x forward: {100 * r['purify_overhead']:+.1f} %  (target <= 20 %)")
        print(f"backbone forward, graph kept    {r['forward_graph_s'] * 1e3:9.2f} ms / batch")
        print(f"backbone forward+backward       {r['forward_backward_s'] * 1e3:9.2f} ms / batch")
        print(f"exact gradient ({r['grad_nfe']} NFE)        {r['exact_grad_s']:9.3f} s  / batch = "
              f"{r['exact_grad_s_per_image'] * 1e3:.1f} ms / image;"
              f"  overhead vs NFE x (no-grad fwd + fwd/bwd): {100 * r['exact_grad_overhead']:+.1f} %")
        print(f"naive backprop ({r['grad_nfe']} NFE)        {r['naive_grad_s']:9.3f} s  / batch;"
              f"  overhead vs NFE x fwd/bwd: {100 * r['naive_grad_overhead']:+.1f} %")
        print(f"exact gradient / naive backprop   {r['exact_over_naive']:9.3f} x  (target <= 1.3; recomputing each step "
              f"costs 1 + fwd / (fwd/bwd) = {1 + r['forward_s'] / r['forward_backward_s']:.3f} x NFE isolated "
              "fwd/bwd passes, and naive backprop pays its overhead above over those)")
        if "adjoint_grad_s" in r:
            print(f"torchsde adjoint ({r['grad_nfe']} NFE)      {r['adjoint_grad_s']:9.3f} s  / batch "
                  f"({r['adjoint_over_exact']:.2f}x exact)")
    if not args.skip_memory:
        steps = [int(s) for s in args.memory_steps.split(",")]
        allocators = tuple(ALLOCATORS) if args.allocator == "both" else (args.allocator,)
        rows = bench_memory(steps, args.naive_max_steps, args.batch, args.device, args.threads, args.method,
                            allocators)
        results["memory"] = rows
        state_mib = args.batch * 3 * 32 * 32 * 4 / 2 ** 20
        for allocator in allocators:
            print(f"\n-- {args.method}: exact-gradient peak RSS growth, allocator {allocator!r} (batch {args.batch}; "
                  f"one state = {state_mib:.3f} MiB) --")
            print(f"{'steps':>6} {'checkpoint graph':>17} {'checkpoint peak':>16} {'naive graph':>12} "
                  f"{'naive peak':>11}  (MiB)")
            for s in steps:
                got = {r["mode"]: r for r in rows if r["steps"] == s and r["allocator"] == allocator}
                c = got["checkpoint"]
                naive = (f"{got['naive']['graph_mib']:12.1f} {got['naive']['peak_mib']:11.1f}" if "naive" in got
                         else f"{'-':>12} {'-':>11}")
                print(f"{s:>6} {c['graph_mib']:17.1f} {c['peak_mib']:16.1f} {naive}")
            for mode in ("checkpoint", "naive"):
                for what in ("graph_mib", "peak_mib"):
                    slope = _slope(rows, mode, what, allocator)
                    if slope is not None:
                        results[f"{allocator}_{mode}_{what}_per_step"] = slope
                        print(f"{mode} {what[:-4]}: {slope:.3f} MiB per step ({slope / state_mib:.1f} states of "
                              "the batch)")
            at100 = [r["peak_mib"] for r in rows if r["mode"] == "checkpoint" and r["allocator"] == allocator
                     and r["steps"] == 100]
            slope = _slope(rows, "checkpoint", "peak_mib", allocator)
            if at100 and slope is not None:
                results[f"{allocator}_checkpoint_growth_per_step_over_peak100"] = slope / at100[0]
                print(f"checkpoint peak growth per step / 100-step peak: {100 * slope / at100[0]:.2f} % "
                      "(target <= 1 %)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
