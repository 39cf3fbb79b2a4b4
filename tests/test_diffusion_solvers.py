"""VP schedule (continuous and discrete) and the differentiable solvers of robustkit.diffusion.

Numerics are checked against closed forms, against scipy's integration of the forward SDE's moment
equations, against DiffPure's published noising constants, against torchsde's Euler loop, and on a
Gaussian data distribution whose optimal noise predictor is analytic, so every solver's output law is
known.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from robustkit.diffusion.schedule import DiscreteVPSchedule, Marginal, VPSDE
from robustkit.diffusion.score_model import ScoreModel
from robustkit.diffusion.solvers import (
    ddim,
    ddim_indices,
    ddpm_ancestral,
    euler_maruyama,
    probability_flow_euler,
    time_grid,
)
from robustkit.errors import InputError

SDE = VPSDE()
SCHED = DiscreteVPSchedule()
DATA_MEAN, DATA_STD = 0.3, 0.5


# -- models -------------------------------------------------------------------------------------------------

class GaussianEps:
    """The optimal ε-predictor for data N(μ, s² I) under the VP marginal at continuous time t.

    With x_t = a x_0 + σ ε, E[ε | x_t] = σ (x_t − a μ) / (a² s² + σ²). Discrete solvers pass
    ``schedule.time_of(i)``, whose continuous marginal equals step i's (tested below), so the same
    predictor is optimal for them too.
    """

    def __init__(self, mean: float = DATA_MEAN, std: float = DATA_STD):
        self.mean, self.std = mean, std
        self.calls: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        self.calls.append(t.detach().clone())
        a, s = SDE.marginal(t)
        a = a.view(-1, *([1] * (x.dim() - 1)))
        s = s.view(-1, *([1] * (x.dim() - 1)))
        return s * (x - a * self.mean) / (a * a * self.std ** 2 + s * s)

    def marginal_var(self, t: float) -> float:
        a, s = SDE.marginal(torch.tensor(t, dtype=torch.float64))
        return float(a * a * self.std ** 2 + s * s)


class TinyScoreNet(ScoreModel):
    """Two 3×3 convolutions with a time shift and a class embedding: a small real ScoreModel."""

    def __init__(self, channels: int = 3, hidden: int = 16, num_classes: int | None = 3):
        super().__init__((channels, 8, 8), num_classes=num_classes)
        self.conv1 = nn.Conv2d(channels, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, channels, 3, padding=1)
        self.time = nn.Linear(1, hidden)
        self.label = nn.Embedding(num_classes, hidden) if num_classes else None

    def predict_noise(self, x_t, t, y):
        h = self.conv1(x_t) + self.time(t[:, None])[:, :, None, None]
        if y is not None:
            h = h + self.label(y)[:, :, None, None]
        return self.conv2(F.silu(h))


class Counting:
    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self, x, t, y=None):
        self.calls += 1
        return self.model(x, t, y)


@pytest.fixture(scope="module")
def net() -> TinyScoreNet:
    torch.manual_seed(0)  # module-level model init only; solvers never read the global RNG
    return TinyScoreNet().double()


def _gaussian_start(var: float, shape, seed: int = 0, dtype=torch.float64, mean: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return mean + math.sqrt(var) * torch.randn(shape, generator=g, dtype=dtype)


# -- continuous schedule ------------------------------------------------------------------------------------------

def test_vpsde_marginal_matches_closed_form():
    t = torch.tensor([1e-5, 1e-3, 0.1, 0.5, 1.0], dtype=torch.float64)
    a, s = SDE.marginal(t)
    expected_log_a = -t ** 2 * (20.0 - 0.1) / 4 - t * 0.1 / 2
    torch.testing.assert_close(a, torch.exp(expected_log_a), rtol=1e-14, atol=0)
    torch.testing.assert_close(s, torch.sqrt(1 - torch.exp(2 * expected_log_a)), rtol=1e-9, atol=0)
    assert isinstance(SDE.marginal(0.1), Marginal)
    # expm1 keeps float32 accurate at small t, where 1 − exp(·) loses ~20% of s²
    t32 = torch.tensor([1e-6, 1e-5], dtype=torch.float32)
    s32 = SDE.marginal(t32).std
    torch.testing.assert_close(s32.double(), SDE.marginal(t32.double()).std, rtol=1e-6, atol=0)


def test_vpsde_marginal_matches_integrated_forward_sde_moments():
    """mean' = −½β mean, var' = −β var + β (the forward SDE's moment ODEs), integrated by scipy."""
    from scipy.integrate import solve_ivp

    def moments(t, m):
        beta = 0.1 + t * (20.0 - 0.1)
        return [-0.5 * beta * m[0], -beta * m[1] + beta]

    ts = [0.05, 0.1, 0.5, 1.0]
    sol = solve_ivp(moments, (0.0, 1.0), [1.0, 0.0], t_eval=ts, rtol=1e-11, atol=1e-13, method="DOP853")
    a, s = SDE.marginal(torch.tensor(ts, dtype=torch.float64))
    torch.testing.assert_close(a, torch.tensor(sol.y[0]), rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(s ** 2, torch.tensor(sol.y[1]), rtol=1e-8, atol=1e-12)


def test_vpsde_coefficients_and_broadcasting():
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    eps = torch.randn_like(x)
    t = torch.tensor([0.01, 0.3, 0.9], dtype=torch.float64)
    beta = (0.1 + t * 19.9).view(-1, 1, 1, 1)
    std = SDE.marginal(t).std.view(-1, 1, 1, 1)
    torch.testing.assert_close(SDE.drift(x, t), -0.5 * beta * x)
    torch.testing.assert_close(SDE.diffusion(t), torch.sqrt(0.1 + t * 19.9))
    score = SDE.score_from_noise(eps, t)
    torch.testing.assert_close(score, -eps / std)
    torch.testing.assert_close(SDE.reverse_drift(x, t, eps), SDE.drift(x, t) - beta * score)
    torch.testing.assert_close(SDE.ode_drift(x, t, eps), SDE.drift(x, t) - 0.5 * beta * score)
    x0 = torch.randn_like(x)
    a = SDE.marginal(t).mean.view(-1, 1, 1, 1)
    torch.testing.assert_close(SDE.add_noise(x0, eps, t), a * x0 + std * eps)
    # a scalar time broadcasts; dtype follows x
    assert SDE.add_noise(x0.float(), eps.float(), 0.5).dtype == torch.float32
    with pytest.raises(InputError):
        SDE.add_noise(x0, eps, torch.tensor([0.1, 0.2]))
    with pytest.raises(InputError):
        VPSDE(beta_min=0.0)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_sigma_and_t_from_sigma_are_inverse(dtype, tol):
    t = torch.cat([torch.logspace(-5, -1, 30, dtype=torch.float64), torch.linspace(0.1, 1.0, 40, dtype=torch.float64)])
    sigma64 = SDE.sigma(t)
    a, s = SDE.marginal(t)
    torch.testing.assert_close(sigma64, s / a, rtol=1e-10, atol=0)
    back = SDE.t_from_sigma(sigma64.to(dtype)).double()
    assert (back - t).abs().max() < tol
    assert float(SDE.t_from_sigma(torch.tensor(0.0))) == 0.0


# -- discrete schedule --------------------------------------------------------------------------------------------

def test_discrete_betas_are_the_linspace_of_score_sde():
    n = 1000
    i = torch.arange(n, dtype=torch.float64)
    formula = 0.1 / n + i * (20.0 - 0.1) / (n * (n - 1))
    torch.testing.assert_close(SCHED.betas64, formula, rtol=0, atol=1e-15)
    torch.testing.assert_close(SCHED.betas64, torch.linspace(0.1 / n, 20.0 / n, n, dtype=torch.float64),
                               rtol=0, atol=1e-18)
    # float32 linspace (DiffPure's tensor) agrees to its rounding: within one ulp
    torch.testing.assert_close(SCHED.betas, torch.linspace(0.1 / n, 20.0 / n, n), rtol=1.2e-7, atol=0)
    torch.testing.assert_close(SCHED.alphas_cumprod64, torch.cumprod(1 - formula, 0), rtol=1e-13, atol=0)
    assert SCHED.alphas_cumprod.dtype == torch.float32


def test_discrete_diffpure_noise_level_at_t_star():
    """DiffPure noises to ``a[t*·1000 − 1]``: √ᾱ = 0.9471, std = 0.3209 at t* = 0.1 (index 99, not 100)."""
    assert SCHED.index(0.1) == 99
    a, s = SCHED.marginal_at(0.1)
    assert round(float(a), 4) == 0.9471 and round(float(s), 4) == 0.3209
    a100, _ = SCHED.marginal_at_index(100)
    assert round(float(a100), 4) != 0.9471  # the neighbouring step would not reproduce the constants
    assert SCHED.index(0.075) == 74 and SCHED.index(0.15) == 149 and SCHED.index(1.0) == 999
    assert SCHED.index(torch.tensor([0.1, 0.075])).tolist() == [99, 74]
    x0 = torch.randn(2, 3, 4, 4, requires_grad=True)
    e = torch.randn_like(x0)
    xt = SCHED.add_noise(x0, e, 0.1)
    torch.testing.assert_close(xt, x0 * SCHED.alphas_cumprod[99].sqrt() + e * (1 - SCHED.alphas_cumprod[99]).sqrt())
    xt.sum().backward()
    torch.testing.assert_close(x0.grad, torch.full_like(x0, float(a)))
    per_example = SCHED.add_noise(x0.detach(), e, torch.tensor([0.1, 0.15]))
    torch.testing.assert_close(per_example[1], SCHED.add_noise(x0.detach()[1:], e[1:], 0.15)[0])
    for bad in (0.0, 1.2, -0.1):
        with pytest.raises(InputError):
            SCHED.index(bad)
    with pytest.raises(InputError):
        DiscreteVPSchedule(num_steps=1)


def test_discrete_time_of_matches_the_continuous_marginal():
    t = SCHED.timesteps
    a_c, s_c = SDE.marginal(t)
    a_d, s_d = torch.sqrt(SCHED.alphas_cumprod64), torch.sqrt(1 - SCHED.alphas_cumprod64)
    torch.testing.assert_close(a_c, a_d, rtol=1e-12, atol=0)
    torch.testing.assert_close(s_c, s_d, rtol=1e-10, atol=0)
    assert all(SCHED.index(SCHED.time_of(i)) == i for i in range(473))
    assert SCHED.time_of(99) < 0.1 < SCHED.time_of(100)


# -- time grid ---------------------------------------------------------------------------------------------------

def test_time_grid_matches_torchsde_stepping():
    grid = time_grid(0.1, 1e-5, dt=1e-3)
    assert len(grid) - 1 == 100
    assert grid[0] == 0.1 and grid[-1] == 1e-5
    assert grid[-2] - grid[-1] == pytest.approx(0.99e-3, rel=1e-9)
    assert len(time_grid(0.1, 0.0, dt=1e-3)) - 1 == 100  # 0.1/1e-3 = 100.00000000000001, still 100 steps
    assert len(time_grid(1.0, 1e-5, dt=1e-3)) - 1 == 1000
    assert time_grid(0.0, 1.0, steps=4) == [0.0, 0.25, 0.5, 0.75, 1.0]
    for kwargs in ({}, {"dt": 1e-3, "steps": 3}, {"dt": -1e-3}, {"steps": 0}):
        with pytest.raises(InputError):
            time_grid(0.1, 0.0, **kwargs)


def test_em_evaluation_count_and_times_match_torchsde():
    torchsde = pytest.importorskip("torchsde")
    model = GaussianEps()
    x = torch.randn(2, 1, 2, 2, dtype=torch.float64)
    euler_maruyama(model, SDE, x, t_start=0.1, t_end=1e-5, dt=1e-3, generator=torch.Generator().manual_seed(0))
    assert len(model.calls) == 100
    ours = torch.stack([c[0] for c in model.calls])

    seen = []

    class Reversed(nn.Module):  # DiffPure's RevVPSDE shape: reversed time s = 1 − t
        noise_type, sde_type = "diagonal", "ito"

        def f(self, s, y):
            seen.append(1.0 - float(s))
            return torch.zeros_like(y)

        def g(self, s, y):
            return torch.zeros_like(y)

    ts = torch.tensor([1 - 0.1, 1 - 1e-5], dtype=torch.float64)
    torchsde.sdeint(Reversed(), x.view(2, -1), ts, method="euler", dt=1e-3)
    # torchsde evaluates f once at ts[0] to check shapes before integrating
    assert len(seen) == 101 and seen[0] == seen[1]
    seen = seen[1:]
    torch.testing.assert_close(ours, torch.tensor(seen, dtype=torch.float64), rtol=0, atol=1e-12)


def test_em_counts_model_calls_for_diffpure_defaults(net):
    counting = Counting(net)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    euler_maruyama(counting, SDE, x, t_start=0.1, generator=torch.Generator().manual_seed(0))
    assert counting.calls == 100


def test_em_trajectory_equals_torchsde_euler_with_the_same_brownian_increments():
    """Our reverse-time Euler–Maruyama is torchsde's ``sdeint(method='euler')`` on DiffPure's reversed SDE."""
    torchsde = pytest.importorskip("torchsde")
    from torchsde._brownian.brownian_base import BaseBrownian

    model = GaussianEps()
    x = _gaussian_start(model.marginal_var(0.1), (3, 1, 2, 2), seed=1, mean=DATA_MEAN * 0.9467)
    grid = time_grid(0.1, 1e-5, dt=1e-3)
    noise = torch.randn(len(grid) - 1, *x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ours = euler_maruyama(model, SDE, x, 0.1, 1e-5, dt=1e-3, noise=noise)

    s_grid = [1.0 - t for t in grid]

    class TableBrownian(BaseBrownian):
        """W(s_{k+1}) − W(s_k) = sqrt(h_k) z_k on the grid both integrators walk."""

        def __call__(self, ta, tb=None, return_U=False, return_A=False):
            k = min(range(len(s_grid) - 1), key=lambda j: abs(s_grid[j] - float(ta)))
            assert abs(s_grid[k + 1] - float(tb)) < 1e-9
            return noise[k].reshape(x.shape[0], -1) * math.sqrt(float(tb) - float(ta))

        def __repr__(self):
            return "TableBrownian()"

        dtype, device, levy_area_approximation = torch.float64, torch.device("cpu"), "none"
        shape = tuple(x.flatten(1).shape)

    class Reversed(nn.Module):
        noise_type, sde_type = "diagonal", "ito"

        def f(self, s, y):
            t = 1.0 - float(s)
            xs = y.view_as(x)
            return -SDE.reverse_drift(xs, t, model(xs, torch.full((xs.shape[0],), t, dtype=xs.dtype))).flatten(1)

        def g(self, s, y):
            return SDE.diffusion(torch.tensor(1.0 - float(s), dtype=y.dtype)).expand_as(y)

    ts = torch.tensor([1 - 0.1, 1 - 1e-5], dtype=torch.float64)
    ref = torchsde.sdeint(Reversed(), x.flatten(1), ts, method="euler", dt=1e-3, bm=TableBrownian())[-1]
    # torchsde accumulates its times (0.9 + k·dt), we do not: they agree to ~1e-10 (measured 8.6e-11)
    torch.testing.assert_close(ours.flatten(1), ref, rtol=0, atol=1e-9)


# -- exactness on Gaussian data ---------------------------------------------------------------------------------

def test_probability_flow_maps_the_prior_to_the_data_variance():
    model = GaussianEps()
    t0, t1 = 1.0, 1e-3
    x = _gaussian_start(model.marginal_var(t0), (4, 64), seed=0)
    a0 = float(SDE.marginal(torch.tensor(t0, dtype=torch.float64)).mean)
    a1 = float(SDE.marginal(torch.tensor(t1, dtype=torch.float64)).mean)
    out = probability_flow_euler(model, SDE, x + a0 * DATA_MEAN, t0, t1, dt=1e-3)
    # the exact flow is affine: (x_t − a μ) scales by sqrt(v(t1)/v(t0)), so the law N(aμ, v) is transported
    # Euler keeps the map affine, out = c·x + d: fit it, check it is exact, and compare c and d
    xc = x - x.mean()
    c = float((xc * (out - out.mean())).sum() / (xc * xc).sum())
    d = float(out.mean()) - c * float(x.mean())
    assert (out - (c * x + d)).abs().max() < 1e-12
    expected = math.sqrt(model.marginal_var(t1) / model.marginal_var(t0))
    assert abs(c / expected - 1) < 1e-3
    assert abs(d - a1 * DATA_MEAN) < 1e-3
    assert model.marginal_var(t1) == pytest.approx(DATA_STD ** 2, rel=1e-2)


def test_probability_flow_round_trip_returns_the_input():
    model = GaussianEps()
    x = _gaussian_start(DATA_STD ** 2, (4, 16), seed=3, mean=DATA_MEAN)
    z = probability_flow_euler(model, SDE, x, 1e-3, 1.0, steps=2000)
    assert abs(float(z.std()) - 1.0) < 0.2  # it did reach the prior
    back = probability_flow_euler(model, SDE, z, 1.0, 1e-3, steps=2000)
    assert (back - x).abs().max() < 1.5e-3


def test_euler_maruyama_samples_the_data_distribution():
    model = GaussianEps()
    n = 1 << 15
    x = _gaussian_start(model.marginal_var(1.0), (16, n // 16), seed=4, dtype=torch.float32)
    out = euler_maruyama(model, SDE, x, 1.0, 1e-5, dt=1e-3, generator=torch.Generator().manual_seed(5))
    # 4 standard errors of the sample mean/variance plus the O(dt) bias (~0.5% measured)
    assert abs(float(out.mean()) - DATA_MEAN) < 4 * DATA_STD / math.sqrt(n)
    assert abs(float(out.var()) / DATA_STD ** 2 - 1) < 4 * math.sqrt(2 / n) + 0.01


def _discrete_start(k: int, n: int, seed: int) -> torch.Tensor:
    a, s = SCHED.marginal_at_index(k)
    # few examples with many coordinates: the model's per-example time tensor stays small
    x = torch.randn(16, n // 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return float(a) * DATA_MEAN + math.sqrt(float(a) ** 2 * DATA_STD ** 2 + float(s) ** 2) * x


@pytest.mark.parametrize("variance", ["posterior", "beta"])
def test_ddpm_ancestral_samples_the_data_distribution(variance):
    n, k = 1 << 14, 999
    out = ddpm_ancestral(GaussianEps(), SCHED, _discrete_start(k, n, 6), k,
                         generator=torch.Generator().manual_seed(7), variance=variance)
    assert abs(float(out.mean()) - DATA_MEAN) < 4 * DATA_STD / math.sqrt(n)
    assert abs(float(out.var()) / DATA_STD ** 2 - 1) < 4 * math.sqrt(2 / n) + 0.015


def test_ddim_deterministic_maps_the_prior_to_the_data_variance():
    k = 999
    x = _discrete_start(k, 128, 8)
    a, s = SCHED.marginal_at_index(k)
    out = ddim(GaussianEps(), SCHED, x, k, eta=0.0)
    ratio = (out - DATA_MEAN) / (x - float(a) * DATA_MEAN)
    expected = DATA_STD / math.sqrt(float(a) ** 2 * DATA_STD ** 2 + float(s) ** 2)
    assert ratio.std() < 1e-9 * expected
    assert abs(float(ratio.mean()) / expected - 1) < 0.01


def test_ddim_with_eta_one_and_every_step_is_ddpm():
    k = 50
    x = _discrete_start(k, 32, 9)
    noise = torch.randn(k, 16, 2, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    via_ddim = ddim(GaussianEps(), SCHED, x, k, eta=1.0, noise=noise)
    via_ddpm = ddpm_ancestral(GaussianEps(), SCHED, x, k, noise=noise)
    torch.testing.assert_close(via_ddim, via_ddpm, rtol=1e-10, atol=1e-12)


def test_ddim_indices_and_model_calls():
    assert ddim_indices(99, 5) == [99, 74, 50, 25, 0]
    assert ddim_indices(3) == [3, 2, 1, 0]
    assert ddim_indices(7, 1) == [7]
    assert ddim_indices(9, 10) == list(range(9, -1, -1))
    with pytest.raises(InputError):
        ddim_indices(9, 11)
    model = GaussianEps()
    ddim(model, SCHED, torch.randn(4, dtype=torch.float64), 99, steps=5)
    got = torch.stack([c[0] for c in model.calls]).tolist()
    assert got == pytest.approx([SCHED.time_of(i) for i in [99, 74, 50, 25, 0]], rel=1e-12)


def test_ddpm_calls_and_clip_denoised():
    counting = Counting(lambda x, t, y: -10.0 * torch.ones_like(x))  # implies x̂0 far outside [-1, 1]
    out = ddpm_ancestral(counting, SCHED, torch.zeros(2, 3), 9, generator=torch.Generator().manual_seed(0),
                         clip_denoised=True)
    assert counting.calls == 10
    assert float(out.abs().max()) <= 1.0  # the last step returns the (clipped) x̂0


# -- randomness -----------------------------------------------------------------------------------------------------

def _stochastic_runs(model, x, **kw):
    return {
        "em": lambda **r: euler_maruyama(model, SDE, x, 0.1, 1e-5, dt=1e-2, **r, **kw),
        "ddpm": lambda **r: ddpm_ancestral(model, SCHED, x, 9, **r, **kw),
        "ddim": lambda **r: ddim(model, SCHED, x, 20, steps=5, eta=0.7, **r, **kw),
    }


NUM_DRAWS = {"em": 10, "ddpm": 9, "ddim": 4}


@pytest.mark.parametrize("name", ["em", "ddpm", "ddim"])
def test_reproducible_and_global_rng_untouched(name, net):
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.tensor([0, 2])
    run = _stochastic_runs(net, x, y=y)[name]
    state = torch.get_rng_state()
    a = run(generator=torch.Generator().manual_seed(11))
    b = run(generator=torch.Generator().manual_seed(11))
    c = run(generator=torch.Generator().manual_seed(12))
    fresh1, fresh2 = run(), run()  # no generator: private OS-seeded generators
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(fresh1, fresh2)

    g = torch.Generator().manual_seed(11)
    draws = [torch.randn(x.shape, generator=g, dtype=x.dtype) for _ in range(NUM_DRAWS[name])]
    assert torch.equal(run(noise=draws), a)
    assert torch.equal(run(noise=torch.stack(draws)), a)


@pytest.mark.parametrize("name", ["em", "ddpm", "ddim"])
def test_bad_noise_raises(name):
    x = torch.randn(2, 3, dtype=torch.float64)
    run = _stochastic_runs(GaussianEps(), x)[name]
    k = NUM_DRAWS[name]
    for bad in (torch.randn(k + 1, 2, 3), torch.randn(k, 2, 4), [torch.randn(2, 3)] * (k - 1),
                [torch.randn(2, 3)] * (k - 1) + [torch.randn(3, 2)], torch.zeros(k, 2, 3, dtype=torch.long)):
        with pytest.raises(InputError):
            run(noise=bad)
    with pytest.raises(InputError):
        run(noise=torch.randn(k, 2, 3), generator=torch.Generator())


def test_solver_argument_errors():
    x = torch.randn(2, 3, dtype=torch.float64)
    m = GaussianEps()
    with pytest.raises(InputError):
        euler_maruyama(m, SDE, x, 0.1, 0.2)  # forward in time
    with pytest.raises(InputError):
        probability_flow_euler(m, SDE, x, 0.0, 0.5)  # std(0) = 0: no score at t = 0
    with pytest.raises(InputError):
        ddpm_ancestral(m, SCHED, x, 1000)
    with pytest.raises(InputError):
        ddim(m, SCHED, x, 10, eta=0.0, noise=torch.randn(10, 2, 3))  # deterministic: no draws expected
    with pytest.raises(InputError):
        euler_maruyama(m, SDE, x.long(), 0.1)


# -- gradients and checkpointing ---------------------------------------------------------------------------------

def _all_runs(model, x, y, seed=13):
    runs = _stochastic_runs(model, x, y=y)
    g = lambda: torch.Generator().manual_seed(seed)  # noqa: E731
    return {
        "em": lambda ck: runs["em"](generator=g(), checkpoint=ck),
        "pf": lambda ck: probability_flow_euler(model, SDE, x, 0.1, 1e-5, steps=8, y=y, checkpoint=ck),
        "ddpm": lambda ck: runs["ddpm"](generator=g(), checkpoint=ck),
        "ddim": lambda ck: runs["ddim"](generator=g(), checkpoint=ck),
        "ddim_eta0": lambda ck: ddim(model, SCHED, x, 20, steps=6, y=y, checkpoint=ck),
    }


@pytest.mark.parametrize("name", ["em", "pf", "ddpm", "ddim", "ddim_eta0"])
def test_gradients_flow_and_checkpointing_is_exact(name, net):
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64,
                    requires_grad=True)
    y = torch.tensor([1, 0])
    w = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    results = []
    state = torch.get_rng_state()
    for ck in (False, True):
        net.zero_grad()
        x.grad = None
        out = _all_runs(net, x, y)[name](ck)
        (out * w).sum().backward()
        results.append((out.detach(), x.grad.clone(), net.conv1.weight.grad.clone()))
    assert torch.equal(torch.get_rng_state(), state)  # checkpoint's RNG bookkeeping restores the state
    (o0, gx0, gw0), (o1, gx1, gw1) = results
    assert torch.isfinite(gx0).all() and gx0.abs().sum() > 0 and gw0.abs().sum() > 0
    torch.testing.assert_close(o1, o0, rtol=0, atol=1e-5)
    torch.testing.assert_close(gx1, gx0, rtol=0, atol=1e-5)
    torch.testing.assert_close(gw1, gw0, rtol=0, atol=1e-5)


def _saved_bytes(fn) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def _graph_nodes(out: torch.Tensor) -> int:
    seen, stack = set(), [out.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is not None and fn not in seen:
            seen.add(fn)
            stack.extend(f for f, _ in fn.next_functions)
    return len(seen)


def test_checkpointing_keeps_only_the_step_inputs():
    """Per step, plain autograd keeps every activation of the network and a graph node per op;
    checkpointing keeps one graph node in all, nothing saved through autograd, and one buffer that holds
    each step's input state (each step also keeps its noise draw), whatever the network's width."""
    torch.manual_seed(0)
    nets = {h: TinyScoreNet(hidden=h, num_classes=None).requires_grad_(False) for h in (16, 64)}
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    x_bytes = x.numel() * x.element_size()

    def em(model, steps, ck):
        return lambda: euler_maruyama(model, SDE, x, 0.1, 1e-5, steps=steps, checkpoint=ck,
                                      generator=torch.Generator().manual_seed(0))

    plain = {n: _saved_bytes(em(nets[64], n, False)) for n in (10, 40)}
    # without checkpointing the graph grows with the steps (~4x from 10 to 40 steps) ...
    assert 3.8 < plain[40] / plain[10] < 4.2
    # ... with it, the graph is one node on x, nothing is saved through autograd, and the step inputs
    # sit in one buffer of exactly one state per step
    one = em(nets[16], 10, True)()
    for h in (16, 64):
        for n in (10, 40):
            outs = []
            assert _saved_bytes(lambda: outs.append(em(nets[h], n, True)())) == 0
            assert _graph_nodes(outs[0]) == _graph_nodes(one) <= 2
            states = outs[0].grad_fn.states
            assert states.numel() * states.element_size() == n * x_bytes
    pf = probability_flow_euler(nets[64], SDE, x, 0.1, 1e-5, steps=40, checkpoint=True)
    assert pf.grad_fn.states.numel() * pf.grad_fn.states.element_size() == 40 * x_bytes


def test_checkpointing_falls_back_where_it_cannot_see_the_closure(net):
    """A model that is not an nn.Module (a closure) gets torch's per-step checkpoint: exact as well; an
    nn.Module that differentiates into a tensor that is not its parameter is refused, not given a silent
    zero; the flat-memory path is once-differentiable and says so."""
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64,
                    requires_grad=True)
    net = net.double()
    grads = []
    for ck in (False, True):
        out = euler_maruyama(lambda a, t, y: net(a, t, y), SDE, x, 0.1, 1e-5, steps=5, checkpoint=ck,
                             generator=torch.Generator().manual_seed(0))
        grads.append(torch.autograd.grad(out.sum(), x)[0])
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=1e-12)

    scale = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)

    class Closes(nn.Module):
        def forward(self, a, t, y=None):
            return scale * a

    out = euler_maruyama(Closes(), SDE, x, 0.1, 1e-5, steps=3, checkpoint=True,
                         generator=torch.Generator().manual_seed(0))
    with pytest.raises(RuntimeError, match="neither x nor a parameter"):
        out.sum().backward()

    out = euler_maruyama(net.requires_grad_(False), SDE, x, 0.1, 1e-5, steps=3, checkpoint=True,
                         generator=torch.Generator().manual_seed(0))
    with pytest.raises(RuntimeError, match="once-differentiable"):
        torch.autograd.grad(out.sum(), x, create_graph=True)

