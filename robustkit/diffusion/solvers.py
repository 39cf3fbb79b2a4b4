"""Differentiable samplers for VP diffusion models: reverse SDE, probability-flow ODE, DDPM, DDIM.

Every solver takes a noise predictor ``eps = model(x_t, t, y)`` (the :class:`ScoreModel` contract:
``t`` is a float tensor ``[N]`` of continuous VP times), a schedule, the start state and where to stop,
and returns the state at the end. All of them are plain autograd graphs: gradients reach ``x`` and
anything the model closes over (attacks differentiate through purification), and nothing here touches
grad mode.

Randomness. Stochastic solvers draw one standard-normal tensor of ``x``'s shape per stochastic step,
either from ``generator`` (a ``torch.Generator``; draws are made on the generator's device and moved to
``x``'s, so a CPU generator reproduces the same trajectory on any device) or from a caller-supplied
``noise`` — a tensor ``[num_draws, *x.shape]`` or a sequence of ``num_draws`` tensors of ``x``'s shape —
so an attack can fix the randomness. Supplying ``noise`` equal to what ``generator`` would have drawn
gives the identical result. With neither, a fresh generator is seeded from OS entropy; the global RNG
is never used.

Memory. ``checkpoint=True`` (exact gradients at memory flat in the number of steps) runs the solver
forward without recording a graph, keeping only each step's input state in one buffer allocated up
front (one ``x``-sized slot per step); the backward pass walks the steps in reverse, recomputes each
step's forward with a graph and differentiates it at once, so at any time at most one step's
activations exist. This is the segment-wise forwarding-backwarding of DiffAttack (Kang et al., NeurIPS
2023) with segments of one step, written as one :class:`torch.autograd.Function` rather than one
``torch.utils.checkpoint`` per step: the forward builds no per-step autograd graph (whose thousands of
small nodes, interleaved with the freed activations of each step, made the C allocator's heap, and so
the process's RSS, grow by megabytes per step), and no saved-tensor hooks run. Its cost is one extra
no-grad forward per step: ``(F_nograd + F_graph + B) / (F_graph + B)`` of naive backprop
(``bench/bench_purification.py``, ``docs/results/performance.md``). The gradients reach ``x`` and the
parameters of ``model`` (an ``nn.Module``); they are once-differentiable (a second-order derivative
through the solver needs ``checkpoint=False``). A ``model`` that is not an ``nn.Module`` (whose closure
robustkit cannot see), labels or noise that require grad fall back to ``torch.utils.checkpoint`` per step,
exact as well. The step's noise is drawn before the loop and bound to its step, so recomputation is
exact and the generator is not advanced twice.

Reference:
    Song et al., "Score-Based Generative Modeling through Stochastic Differential Equations", ICLR 2021
    (reverse SDE Eq. 6, probability flow Eq. 13), github.com/yang-song/score_sde_pytorch.
    Nie et al., "Diffusion Models for Adversarial Purification", ICML 2022, github.com/NVlabs/DiffPure
    (torchsde ``sdeint(method='euler', dt=1e-3)`` from t* to 1e-5).
    Ho et al., "Denoising Diffusion Probabilistic Models", NeurIPS 2020 (Algorithm 2).
    Song, Meng, Ermon, "Denoising Diffusion Implicit Models", ICLR 2021 (Eq. 12).
    Chen et al., "Training Deep Nets with Sublinear Memory Cost", 2016 (gradient checkpointing).

Example::

    >>> import torch
    >>> from robustkit.diffusion.schedule import VPSDE
    >>> model = lambda x, t, y: 0.5 * x          # any eps-predictor works for a shape check
    >>> x = torch.randn(2, 1, 4, 4, requires_grad=True)
    >>> out = euler_maruyama(model, VPSDE(), x, t_start=0.1, generator=torch.Generator().manual_seed(0))
    >>> out.shape, len(time_grid(0.1, 1e-5, dt=1e-3)) - 1
    (torch.Size([2, 1, 4, 4]), 100)
    >>> out.sum().backward(); bool(x.grad.abs().sum() > 0)
    True
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Literal, Optional, Sequence, Union

import torch
from torch.utils.checkpoint import checkpoint as _torch_checkpoint

from ..errors import InputError
from ..utils import check_positive_int
from .schedule import DiscreteVPSchedule, VPSDE

__all__ = [
    "EpsModel",
    "NoiseArg",
    "time_grid",
    "ddim_indices",
    "euler_maruyama",
    "probability_flow_euler",
    "ddpm_ancestral",
    "ddim",
]

#: ``eps = model(x_t, t, y)``: ``x_t`` ``[N, ...]``, ``t`` float ``[N]`` in (0, 1], ``y`` labels or None.
EpsModel = Callable[[torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]
#: Caller-supplied noise: ``[num_draws, *x.shape]`` or a sequence of ``num_draws`` tensors.
NoiseArg = Union[torch.Tensor, Sequence[torch.Tensor]]

# A step count within this many steps of an integer is that integer: (0.1 − 0)/1e-3 evaluates to
# 100.00000000000001 in floating point, which must not become 101 steps.
_STEP_TOL = 1e-6


# -- time grids ----------------------------------------------------------------------------------------

def time_grid(t_start: float, t_end: float, *, dt: float | None = None, steps: int | None = None) -> list[float]:
    """The times ``[t_0 = t_start, ..., t_n = t_end]`` a fixed-step solver visits (either direction).

    With ``steps``: ``n = steps`` equal steps. With ``dt``: full steps of ``dt`` and, when ``|t_end −
    t_start|`` is not a multiple of ``dt``, one final partial step that lands exactly on ``t_end`` —
    torchsde's fixed-step loop (``next_t = min(t + dt, ts[-1])``) does the same, so DiffPure's
    t* = 0.1 → 1e-5 with dt = 1e-3 is 99 full steps plus one of 0.99e-3: 100 steps. Times are
    computed as ``t_start ± k·dt`` rather than accumulated, so no rounding drift adds a step.
    """
    t_start, t_end = float(t_start), float(t_end)
    if not (math.isfinite(t_start) and math.isfinite(t_end)) or t_start == t_end:
        raise InputError(f"t_start and t_end must be finite and distinct, got {t_start} and {t_end}")
    if (dt is None) == (steps is None):
        raise InputError(f"pass exactly one of dt and steps, got dt={dt!r}, steps={steps!r}")
    span = t_end - t_start
    if steps is not None:
        check_positive_int("steps", steps)
        return [t_start + span * k / steps for k in range(steps)] + [t_end]
    dt = float(dt)
    if not (dt > 0 and math.isfinite(dt)):
        raise InputError(f"dt must be positive (the direction comes from t_start and t_end), got {dt}")
    n = max(1, math.ceil(abs(span) / dt - _STEP_TOL))
    step = math.copysign(dt, span)
    return [t_start + k * step for k in range(n)] + [t_end]


def ddim_indices(start_index: int, steps: int | None = None) -> list[int]:
    """Decreasing discrete steps ``start_index = τ_1 > ... > τ_S = 0`` visited by :func:`ddim`.

    ``steps=None`` visits every step (``S = start_index + 1``); otherwise ``S = steps`` steps evenly
    spaced and rounded (DDIM's "linear" sub-sequence, Song et al. 2021 §4.2).
    """
    if isinstance(start_index, bool) or not isinstance(start_index, int) or start_index < 0:
        raise InputError(f"start_index must be a non-negative int, got {start_index!r}")
    if steps is None:
        return list(range(start_index, -1, -1))
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= start_index + 1:
        raise InputError(f"steps must be an int in [1, start_index + 1 = {start_index + 1}], got {steps!r}")
    if steps == 1:
        return [start_index]
    m = steps - 1
    # round(start · (m − j)/m), half up, in integer arithmetic; spacing ≥ 1 keeps the indices distinct.
    return [(2 * start_index * (m - j) + m) // (2 * m) for j in range(steps)]


# -- shared plumbing --------------------------------------------------------------------------------------

def _check_state(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 1:
        raise InputError(f"x must be a floating tensor [N, ...], got "
                         f"{type(x).__name__ if not isinstance(x, torch.Tensor) else (x.dtype, list(x.shape))}")


def _check_times(t_start: float, t_end: float) -> None:
    # Every evaluated time is t_start or lies strictly between t_start and t_end, so t_start > 0 keeps
    # std(t) > 0 in the score −ε/std.
    if not (0.0 < float(t_start) <= 1.0 and 0.0 <= float(t_end) <= 1.0):
        raise InputError(f"need 0 < t_start <= 1 and 0 <= t_end <= 1, got t_start={t_start}, t_end={t_end}")


class _Noise:
    """Per-step standard-normal draws from a supplied tensor/sequence or a generator (validated up front)."""

    def __init__(self, x: torch.Tensor, num_draws: int, generator: torch.Generator | None,
                 noise: NoiseArg | None):
        self._x = x
        self._supplied: list[torch.Tensor] | None = None
        self._generator = generator
        if noise is not None:
            if generator is not None:
                raise InputError("pass either generator or noise, not both")
            shape = tuple(x.shape)
            if isinstance(noise, torch.Tensor):
                if tuple(noise.shape) != (num_draws, *shape):
                    raise InputError(f"noise must have shape [{num_draws}, {', '.join(map(str, shape))}] "
                                     f"(one draw per stochastic step), got {list(noise.shape)}")
                items = list(noise.unbind(0))
            else:
                items = list(noise)
                if len(items) != num_draws:
                    raise InputError(f"noise must hold {num_draws} tensors (one per stochastic step), "
                                     f"got {len(items)}")
                for k, z in enumerate(items):
                    if not isinstance(z, torch.Tensor) or tuple(z.shape) != shape:
                        raise InputError(f"noise[{k}] must be a tensor of shape {list(shape)}, got "
                                         f"{list(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__}")
            for z in items:
                if not z.is_floating_point():
                    raise InputError(f"noise must be floating point, got {z.dtype}")
            self._supplied = [z.to(device=x.device, dtype=x.dtype) for z in items]
        elif num_draws > 0 and generator is None:
            # No global RNG: a private generator seeded from OS entropy (std::random_device).
            self._generator = torch.Generator(device=x.device)
            self._generator.seed()

    def draw(self, k: int) -> torch.Tensor:
        if self._supplied is not None:
            return self._supplied[k]
        g = self._generator
        z = torch.randn(self._x.shape, generator=g, device=g.device, dtype=self._x.dtype)
        return z.to(self._x.device)


Step = Callable[[torch.Tensor], torch.Tensor]


class _RecomputedSteps(torch.autograd.Function):
    """``x ← step_k(x)`` for every step: no graph in the forward, each step recomputed and differentiated
    in reverse in the backward (module docstring, "Memory"). Inputs: the steps, ``x`` and the tensors the
    steps close over that need gradients (the model's trainable parameters)."""

    @staticmethod
    def forward(ctx, steps: Sequence[Step], x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        # One buffer for every step's input, allocated before any activation: the states never sit
        # between freed activation blocks, and nothing else outlives a step.
        states = x.new_empty((len(steps), *x.shape))
        for k, step in enumerate(steps):
            states[k].copy_(x)
            x = step(x)
        ctx.steps, ctx.states = steps, states
        ctx.save_for_backward(*params)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if torch.is_grad_enabled():  # create_graph=True: the recomputed steps start from detached states
            raise RuntimeError("a solver run with checkpoint=True is once-differentiable: a second derivative "
                               "through it needs checkpoint=False")
        params = ctx.saved_tensors
        param_grads: list[torch.Tensor | None] = [None] * len(params)
        for k in range(len(ctx.steps) - 1, -1, -1):
            with torch.enable_grad():
                xk = ctx.states[k].detach().requires_grad_(True)
                out = ctx.steps[k](xk)
                if k == len(ctx.steps) - 1:
                    _check_closure(out, (xk, *params))
                grads = torch.autograd.grad(out, (xk, *params), grad, allow_unused=True)
            grad = grads[0] if grads[0] is not None else torch.zeros_like(xk)
            for i, g in enumerate(grads[1:]):
                if g is not None:
                    param_grads[i] = g if param_grads[i] is None else param_grads[i] + g
        del ctx.states, ctx.steps
        return (None, grad, *param_grads)


def _check_closure(out: torch.Tensor, known: Sequence[torch.Tensor]) -> None:
    """Refuse a step whose graph reaches a leaf that requires grad but is not among ``known``: its
    gradient would be silently lost (the model closes over a tensor that is not one of its parameters)."""
    ids = {id(t) for t in known}
    seen, stack = set(), [out.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        var = getattr(fn, "variable", None)  # AccumulateGrad: a leaf that requires grad
        if var is not None and id(var) not in ids:
            raise RuntimeError(f"a solver step reaches a tensor of shape {list(var.shape)} that requires grad "
                               "but is neither x nor a parameter of the model, so checkpoint=True cannot give it "
                               "a gradient: register it as a parameter of the model or use checkpoint=False")
        stack.extend(f for f, _ in fn.next_functions)


def _integrate(model: EpsModel, y: torch.Tensor | None, x: torch.Tensor, num_steps: int,
               step: Callable[[int, torch.Tensor, torch.Tensor | None], torch.Tensor],
               draw: Callable[[int], torch.Tensor | None], checkpoint: bool) -> torch.Tensor:
    """``x ← step(k, x, draw(k))`` for ``k < num_steps``; with ``checkpoint`` and a graph being recorded, at
    memory flat in the number of steps (module docstring, "Memory"). Without one, each draw is made just
    before its step, so a long no-grad sampling run never holds all its noise at once."""
    if not (checkpoint and torch.is_grad_enabled()):
        for k in range(num_steps):
            x = step(k, x, draw(k))
        return x
    zs = [draw(k) for k in range(num_steps)]  # bound to their steps: recomputation must not redraw
    steps = [functools.partial(step, k, z=zs[k]) for k in range(num_steps)]
    params = _differentiable_closure(model, y, zs)
    if params is None:
        for s in steps:
            x = _torch_checkpoint(s, x, use_reentrant=False)
        return x
    if not (x.requires_grad or params):
        for s in steps:
            x = s(x)
        return x
    return _RecomputedSteps.apply(steps, x, *params)


def _differentiable_closure(model: EpsModel, y: torch.Tensor | None,
                            noise: Sequence[torch.Tensor | None]) -> list[torch.Tensor] | None:
    """The tensors besides ``x`` that a step differentiates into: the model's trainable parameters, or
    None when robustkit cannot see them all (a model that is not an ``nn.Module``; labels or noise that
    require grad)."""
    if not isinstance(model, torch.nn.Module):
        return None
    if (isinstance(y, torch.Tensor) and y.requires_grad) or any(z is not None and z.requires_grad for z in noise):
        return None
    return [p for p in model.parameters() if p.requires_grad]


def _time_batch(x: torch.Tensor, t: float) -> torch.Tensor:
    return torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)


# -- continuous time: reverse SDE and probability-flow ODE ---------------------------------------------------

def _step_coefficients(sde: VPSDE, times: Sequence[float]) -> tuple[list[float], list[float]]:
    """β(t_k) and s(t_k) as Python floats, computed once in float64 from ``sde`` (constants of the graph:
    no per-step host-to-device copies, and float64-accurate whatever ``x``'s dtype)."""
    t = torch.tensor(list(times), dtype=torch.float64)
    return sde.beta(t).tolist(), sde.marginal(t).std.tolist()


def _em_step(model: EpsModel, y: torch.Tensor | None, t: float, h: float, beta: float, std: float,
             x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    # Euler–Maruyama on the reverse SDE dx = [f − g²∇log p] dt + g dw̄ with dt = −h (Song et al. Eq. 6):
    # x ← x − (f − g² s)(x, t)·h + g(t)·sqrt(h)·z, where f − g² s = −½β x + β ε/s(t)
    # (VPSDE.reverse_drift; the test against torchsde integrates that method directly).
    eps = model(x, _time_batch(x, t), y)
    return x + (0.5 * beta * h) * x - (beta * h / std) * eps + math.sqrt(beta * h) * z


def euler_maruyama(model: EpsModel, sde: VPSDE, x: torch.Tensor, t_start: float, t_end: float = 1e-5, *,
                   dt: float | None = None, steps: int | None = None, y: torch.Tensor | None = None,
                   generator: torch.Generator | None = None, noise: NoiseArg | None = None,
                   checkpoint: bool = False) -> torch.Tensor:
    """Integrate the reverse-time VP SDE from ``t_start`` down to ``t_end`` with Euler–Maruyama.

    DiffPure's sampler: torchsde ``sdeint(method='euler', dt=1e-3)`` in reversed time over
    ``[1 − t*, 1 − 1e-5]``. Step k uses the drift and diffusion at its start time ``t_k``; the grid is
    :func:`time_grid` (full steps of ``dt`` and a final partial step onto ``t_end``), so t* = 0.1,
    ``t_end = 1e-5``, ``dt = 1e-3`` makes exactly 100 model evaluations. Noise is added at every step,
    the last included, and the result is not clamped (as in DiffPure).

    Args:
        model: ``eps = model(x_t, t, y)``.
        sde: the :class:`VPSDE` the model was trained with.
        x: the state at ``t_start`` (VP scaling).
        t_start, t_end: ``1 ≥ t_start > t_end ≥ 0``.
        dt: step size (default 1e-3 when ``steps`` is not given); ``steps``: number of equal steps.
        y: labels passed to the model.
        generator, noise: the randomness (module docstring); ``noise`` holds one draw per step.
        checkpoint: recompute each step in the backward pass instead of storing its activations.

    Shape:
        ``x``: ``[N, ...]``; ``noise``: ``[num_steps, N, ...]``; returns ``x``'s shape.
    """
    _check_state(x)
    _check_times(t_start, t_end)
    if not float(t_start) > float(t_end):
        raise InputError(f"the reverse SDE runs backwards in time: need t_start > t_end, got {t_start}, {t_end}")
    grid = time_grid(t_start, t_end, dt=1e-3 if dt is None and steps is None else dt, steps=steps)
    draws = _Noise(x, len(grid) - 1, generator, noise)
    betas, stds = _step_coefficients(sde, grid[:-1])

    def step(k: int, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return _em_step(model, y, grid[k], grid[k] - grid[k + 1], betas[k], stds[k], x, z)

    return _integrate(model, y, x, len(grid) - 1, step, draws.draw, checkpoint)


def _pf_step(model: EpsModel, y: torch.Tensor | None, t: float, h: float, beta: float, std: float,
             x: torch.Tensor) -> torch.Tensor:
    # Euler on dx/dt = f − ½ g² ∇log p = −½β (x − ε/s(t)) (Song et al. Eq. 13; VPSDE.ode_drift);
    # h = t_next − t may have either sign.
    eps = model(x, _time_batch(x, t), y)
    return x - (0.5 * beta * h) * (x - eps / std)


def probability_flow_euler(model: EpsModel, sde: VPSDE, x: torch.Tensor, t_start: float, t_end: float = 1e-5,
                           *, dt: float | None = None, steps: int | None = None, y: torch.Tensor | None = None,
                           checkpoint: bool = False) -> torch.Tensor:
    """Euler integration of the probability-flow ODE from ``t_start`` to ``t_end`` (deterministic).

    Runs in either direction: ``t_start > t_end`` generates/denoises, ``t_start < t_end`` encodes
    (data → noise). Step k evaluates the model at ``t_k`` (grid as in :func:`time_grid`; default
    ``dt = 1e-3``).

    Args:
        model, sde, x, y, checkpoint: as in :func:`euler_maruyama`.
        t_start, t_end: distinct times in ``(0, 1]`` and ``[0, 1]``.
        dt, steps: step size or number of equal steps.

    Shape:
        ``x``: ``[N, ...]``; returns ``x``'s shape.
    """
    _check_state(x)
    _check_times(t_start, t_end)
    grid = time_grid(t_start, t_end, dt=1e-3 if dt is None and steps is None else dt, steps=steps)
    betas, stds = _step_coefficients(sde, grid[:-1])

    def step(k: int, x: torch.Tensor, z: None) -> torch.Tensor:
        return _pf_step(model, y, grid[k], grid[k + 1] - grid[k], betas[k], stds[k], x)

    return _integrate(model, y, x, len(grid) - 1, step, lambda k: None, checkpoint)


# -- discrete time: DDPM ancestral sampling and DDIM ------------------------------------------------------------

def _check_start_index(schedule: DiscreteVPSchedule, start_index: int) -> None:
    if not isinstance(schedule, DiscreteVPSchedule):
        raise InputError(f"schedule must be a DiscreteVPSchedule, got {type(schedule).__name__}")
    if isinstance(start_index, bool) or not isinstance(start_index, int) \
            or not 0 <= start_index < schedule.num_steps:
        raise InputError(f"start_index must be an int in [0, {schedule.num_steps - 1}], got {start_index!r}")


def _x0_from_eps(x: torch.Tensor, eps: torch.Tensor, acp: float, clip: bool) -> torch.Tensor:
    x0 = (x - math.sqrt(1.0 - acp) * eps) / math.sqrt(acp)
    return x0.clamp(-1.0, 1.0) if clip else x0


def _ddpm_step(model: EpsModel, y: torch.Tensor | None, t: float, c_x0: float, c_xt: float, std: float,
               acp: float, clip: bool, x: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
    # Posterior mean of q(x_{i−1} | x_i, x̂0) (Ho et al. Eq. 7), written through x̂0 so that clipping
    # (guided-diffusion's clip_denoised) is possible; without clipping it equals Eq. 11's ε form.
    eps = model(x, _time_batch(x, t), y)
    mean = c_x0 * _x0_from_eps(x, eps, acp, clip) + c_xt * x
    return mean if z is None else mean + std * z


def ddpm_ancestral(model: EpsModel, schedule: DiscreteVPSchedule, x: torch.Tensor, start_index: int, *,
                   y: torch.Tensor | None = None, generator: torch.Generator | None = None,
                   noise: NoiseArg | None = None, variance: Literal["posterior", "beta"] = "posterior",
                   clip_denoised: bool = False, checkpoint: bool = False) -> torch.Tensor:
    """DDPM ancestral sampling from step ``start_index`` down to clean data (Ho et al. Algorithm 2).

    ``x`` is at step ``k = start_index`` (``sqrt(ᾱ_k) x_0 + sqrt(1 − ᾱ_k) ε``, e.g. DiffPure's guided
    variant with ``k = schedule.index(t*)``); steps ``i = k, ..., 0`` each call the model once at
    ``t = schedule.time_of(i)`` (k + 1 evaluations) and move to ``mean + σ_i z``, except the last,
    which returns the mean (Algorithm 2's ``z = 0`` at the final step).

    Args:
        model: ``eps = model(x_t, t, y)``.
        schedule: the discrete schedule.
        x: the state at ``start_index``.
        start_index: ``0 <= k < schedule.num_steps``.
        variance: ``"posterior"``: σ_i² = β̃_i = β_i (1 − ᾱ_{i−1})/(1 − ᾱ_i) (DDPM "fixedsmall");
            ``"beta"``: σ_i² = β_i ("fixedlarge").
        clip_denoised: clamp the implied x̂0 to [−1, 1] before forming the mean (guided-diffusion and
            DiffPure's ImageNet sampler do; gradients through clamped pixels are zero).
        generator, noise: the randomness; ``noise`` holds ``k`` draws (steps ``k, ..., 1``).
        y, checkpoint: as in :func:`euler_maruyama`.

    Shape:
        ``x``: ``[N, ...]``; ``noise``: ``[start_index, N, ...]``; returns ``x``'s shape.
    """
    _check_state(x)
    _check_start_index(schedule, start_index)
    if variance not in ("posterior", "beta"):
        raise InputError(f"variance must be 'posterior' or 'beta', got {variance!r}")
    betas, acps = schedule.betas64.tolist(), schedule.alphas_cumprod64.tolist()
    times = schedule.timesteps.tolist()  # = schedule.time_of(i), read once instead of per step
    draws = _Noise(x, start_index, generator, noise)

    def step(k: int, x: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        i = start_index - k
        beta, acp = betas[i], acps[i]
        acp_prev = acps[i - 1] if i > 0 else 1.0
        c_x0 = math.sqrt(acp_prev) * beta / (1.0 - acp)
        c_xt = math.sqrt(1.0 - beta) * (1.0 - acp_prev) / (1.0 - acp)
        var = beta * (1.0 - acp_prev) / (1.0 - acp) if variance == "posterior" else beta
        return _ddpm_step(model, y, times[i], c_x0, c_xt, math.sqrt(var), acp, clip_denoised, x, z)

    # Step k goes from i = start_index − k to i − 1; the last (i = 0) adds no noise.
    return _integrate(model, y, x, start_index + 1, step, lambda k: draws.draw(k) if k < start_index else None,
                      checkpoint)


def _ddim_step(model: EpsModel, y: torch.Tensor | None, t: float, acp: float, acp_prev: float, sigma: float,
               clip: bool, x: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
    # Song, Meng, Ermon Eq. 12: x_prev = sqrt(ᾱ') x̂0 + sqrt(1 − ᾱ' − σ²) ε + σ z.
    eps = model(x, _time_batch(x, t), y)
    x0 = _x0_from_eps(x, eps, acp, clip)
    out = math.sqrt(acp_prev) * x0 + math.sqrt(max(1.0 - acp_prev - sigma * sigma, 0.0)) * eps
    return out if z is None else out + sigma * z


def ddim(model: EpsModel, schedule: DiscreteVPSchedule, x: torch.Tensor, start_index: int, *,
         steps: int | None = None, eta: float = 0.0, y: torch.Tensor | None = None,
         generator: torch.Generator | None = None, noise: NoiseArg | None = None, clip_denoised: bool = False,
         checkpoint: bool = False) -> torch.Tensor:
    """DDIM sampling from step ``start_index`` down to clean data (deterministic for ``eta = 0``).

    Visits ``τ = ddim_indices(start_index, steps)`` (one model call each, at ``schedule.time_of(τ_j)``);
    from ``τ_j`` it jumps to ``τ_{j+1}``, and from the last (step 0) to ᾱ = 1, i.e. it returns x̂0 of
    step 0. ``σ_j = eta · sqrt((1 − ᾱ')/(1 − ᾱ)) · sqrt(1 − ᾱ/ᾱ')``; ``eta = 1`` with all steps is
    DDPM with the posterior variance.

    Args:
        model, schedule, x, start_index, y, clip_denoised, checkpoint: as in :func:`ddpm_ancestral`.
        steps: number of model evaluations (``None``: every step, ``start_index + 1``).
        eta: stochasticity, ``>= 0``.
        generator, noise: the randomness; ``noise`` holds ``S − 1`` draws when ``eta > 0`` (the last
            jump has σ = 0), none when ``eta = 0``.

    Shape:
        ``x``: ``[N, ...]``; ``noise``: ``[S − 1, N, ...]`` (``[0, N, ...]`` or omitted for eta = 0).
    """
    _check_state(x)
    _check_start_index(schedule, start_index)
    eta = float(eta)
    if not (eta >= 0 and math.isfinite(eta)):
        raise InputError(f"eta must be a finite number >= 0, got {eta}")
    taus = ddim_indices(start_index, steps)
    acps, times = schedule.alphas_cumprod64.tolist(), schedule.timesteps.tolist()
    stochastic = eta > 0
    draws = _Noise(x, len(taus) - 1 if stochastic else 0, generator, noise)

    def step(j: int, x: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        i = taus[j]
        acp = acps[i]
        acp_prev = acps[taus[j + 1]] if j + 1 < len(taus) else 1.0
        sigma = eta * math.sqrt((1.0 - acp_prev) / (1.0 - acp) * (1.0 - acp / acp_prev))
        return _ddim_step(model, y, times[i], acp, acp_prev, sigma, clip_denoised, x, z)

    return _integrate(model, y, x, len(taus), step,
                      lambda j: draws.draw(j) if stochastic and j + 1 < len(taus) else None, checkpoint)
