"""RDC against its released code (huanranchen/DiffusionClassifier @ 8a82504): the vectors in
``$ROBUSTKIT_SHARED/specs/official/rdc_{weights,logits,lm}`` were computed by the official functions
themselves (see that folder's README, sections 4-6). Everything here reads the stored inputs, so the same
tests check any other set computed the same way (another seed, other small-network weights).

Tolerances: float64 items rtol 1e-10 (the README's); float32 weights rtol 1e-5 (the README suggests 1e-6:
the released float32 ``exp``/``log`` are SIMD kernels whose last bit depends on the CPU; we see 1.0e-6);
logits atol 1e-5, their input gradient atol 1e-6, likelihood maximisation atol 1e-4 (the README's).
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

import robustkit
from robustkit.defenses import DiffusionClassifier, DiffusionClassifierConfig, LikelihoodMaximizationConfig, \
    LikelihoodMaximizationPurifier, create_rdc
from robustkit.defenses.likelihood import edm_lambda, edm_sigma_density, edm_time_weights
from robustkit.defenses.rdc import timestep_grid
from robustkit.diffusion import create_score_model
from robustkit.diffusion.edm import EDMConfig, load_edm
from robustkit.errors import InputError
from robustkit.eval.benchmark import describe_defense

pytestmark = pytest.mark.usefixtures("one_thread")

GRIDS = {"grid1000_f32": (1001, torch.float32), "grid1000_f64": (1001, torch.float64),
         "demo126_f32": (126, torch.float32)}


def _official(shared_dir, item):
    from safetensors.torch import load_file

    folder = shared_dir / "specs" / "official" / item
    return load_file(str(folder / "vectors.safetensors")), json.loads((folder / "meta.json").read_text())


def _small_edm(shared_dir, conditional):
    folder = "edm_ddpmpp_cifar10_cond" if conditional else "edm_ddpmpp_cifar10_uncond"
    return load_edm(shared_dir / "specs" / folder / "small_model.pt", conditional,
                    config=EDMConfig.ddpmpp_cifar10_small(conditional))


def _rtol(dtype):
    return 1e-10 if dtype == torch.float64 else 1e-5


# -- item 2: the time weights ------------------------------------------------------------------------------

@pytest.mark.parametrize("grid", sorted(GRIDS))
def test_official_time_weights_reproduce_the_released_grid(shared_dir, grid):
    vec, meta = _official(shared_dir, "rdc_weights")
    n, dtype = GRIDS[grid]
    got = edm_time_weights(torch.linspace(1e-4, 3, n, dtype=dtype), density="official")
    for key, field in (("sigma", "sigma"), ("dt", "dt"), ("p_x", "p_x"), ("lambda", "lam"), ("weight", "weight")):
        want = vec[f"{grid}.{key}"]
        assert getattr(got, field).dtype == want.dtype
        torch.testing.assert_close(getattr(got, field), want, rtol=_rtol(dtype), atol=0, msg=f"{grid}.{key}")
    assert float(got.weight.double().sum()) == pytest.approx(meta["grids"][grid]["sum_weight"], rel=1e-6)


def test_official_density_at_the_gauss_quadrature_nodes(shared_dir):
    """EDMGaussQuadratureDC's λ·p at its Legendre nodes: the same slipped density, float64."""
    vec, _ = _official(shared_dir, "rdc_weights")
    sigma = vec["gauss1000_f64.sigma"]
    got = edm_lambda(sigma) * edm_sigma_density(sigma, density="official")
    torch.testing.assert_close(got, vec["gauss1000_f64.lambda_p"], rtol=1e-10, atol=0)


def test_density_variants_and_their_weight_above_sigma_one(shared_dir):
    """"official" is the released expression (its ratio to the log-normal density is the README's at the
    stored σ); "lognormal" integrates to 1 over σ; the ε-space share of weight at σ ≥ 1 is the README's
    for the official grid and moves above one half with the density as defined."""
    vec, meta = _official(shared_dir, "rdc_weights")
    grid = vec["grid1000_f64.sigma"]
    for s, ratio in meta["p_x_official_over_lognormal_at"].items():  # keyed by the rounded grid point
        sigma = grid[(grid - float(s)).abs().argmin()].view(1)
        got = edm_sigma_density(sigma, density="official") / edm_sigma_density(sigma, density="lognormal")
        assert float(got) == pytest.approx(ratio, rel=1e-9)
    z = torch.linspace(-12, 12, 200001, dtype=torch.float64)   # ∫ p(σ) dσ = ∫ p(e^z) e^z dz
    mass = torch.trapezoid(edm_sigma_density(z.exp(), density="lognormal") * z.exp(), z)
    assert float(mass) == pytest.approx(1.0, abs=1e-9)
    share = {}
    for density in ("official", "lognormal"):
        g = timestep_grid(DiffusionClassifierConfig(weighting="edm", sigma_density=density))
        share[density] = float(g.w[g.sigma >= 1].sum() / g.w.sum())
    assert share["official"] == pytest.approx(meta["grids"]["grid1000_f32"]["eps_space_share_sigma_ge_1"], rel=1e-5)
    assert share["lognormal"] > 0.5 > share["official"]
    with pytest.raises(InputError, match="sigma_density"):
        DiffusionClassifierConfig(weighting="edm", sigma_density="slipped")


def test_classifier_default_grid_is_the_released_class_default(shared_dir):
    vec, _ = _official(shared_dir, "rdc_weights")
    g = timestep_grid(DiffusionClassifierConfig(weighting="edm"))
    torch.testing.assert_close(g.w_x, vec["grid1000_f32.weight"].double(), rtol=1e-5, atol=0)
    torch.testing.assert_close(g.sigma, vec["grid1000_f32.sigma"].double(), rtol=0, atol=0)


# -- item 1: the logits --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def logits_case(shared_dir):
    vec, _ = _official(shared_dir, "rdc_logits")
    net = _small_edm(shared_dir, True)
    n_sigma = vec["sigma"].numel()
    dc = DiffusionClassifier(net, DiffusionClassifierConfig(weighting="edm", num_timesteps=n_sigma))
    x = vec["x"].clone().requires_grad_(True)
    logits = -dc.losses(x, noise=vec["noise"])         # [N, T', C, H, W]: the released per-image noise
    (grad,) = torch.autograd.grad((logits * vec["grad_cotangent"]).sum(), x)
    return vec, net, dc, logits.detach(), grad


def test_official_logits_reproduce_the_released_classifier(logits_case):
    vec, _, dc, logits, _ = logits_case
    torch.testing.assert_close(dc._grid.sigma.float(), vec["sigma"], rtol=0, atol=0)
    torch.testing.assert_close(dc._grid.w_x.float(), vec["weight"], rtol=1e-5, atol=0)
    torch.testing.assert_close(logits, vec["logits_mean"], rtol=0, atol=1e-5)
    assert torch.equal(logits.argmax(1), vec["logits_mean"].argmax(1))


def test_official_logits_input_gradient(logits_case):
    vec, _, _, _, grad = logits_case
    assert float(vec["grad_x"].abs().max()) > 1e-4   # a gradient worth comparing
    torch.testing.assert_close(grad, vec["grad_x"], rtol=0, atol=1e-6)


def test_sum_reduction_is_the_released_function_with_sums(logits_case):
    vec, net, _, _, _ = logits_case
    dc = DiffusionClassifier(net, DiffusionClassifierConfig(weighting="edm", num_timesteps=vec["sigma"].numel(),
                                                            reduction="sum"))
    with torch.no_grad():
        logits = -dc.losses(vec["x"], noise=vec["noise"])
    torch.testing.assert_close(logits, vec["logits_sum"], rtol=1e-5, atol=0)


def test_per_image_noise_must_match_the_batch(logits_case):
    vec, _, dc, _, _ = logits_case
    with pytest.raises(InputError, match="noise must have shape"):
        dc.losses(vec["x"][:1], noise=vec["noise"])


def test_cross_entropy_gradients_reach_the_input_on_tiny_rdc_digits():
    """Issue 22 item 1: at the released scale the softmax of ``tiny_rdc.digits``'s classifier is not
    saturated, so every image's CE input gradient is non-zero; ``"sum"`` is the same logits × 64·T (where 15 of 16 gradients were exactly 0)."""
    x, y = robustkit.load_dataset("digits", n_examples=16)
    model = create_score_model("tiny_unet.digits", pretrained=True)
    noise = torch.randn(10, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    out = {}
    for reduction in ("mean", "sum"):
        dc = DiffusionClassifier(model, DiffusionClassifierConfig(stride=100, reduction=reduction))
        xa = x.clone().requires_grad_(True)
        logits = -dc.losses(xa, noise=noise)
        (g,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), xa)
        out[reduction] = (logits.detach(), g.flatten(1).abs().amax(1))
    assert bool((out["mean"][1] > 0).all()), out["mean"][1]
    torch.testing.assert_close(out["sum"][0], out["mean"][0] * 64 * 1000, rtol=1e-4, atol=1e-3)
    assert torch.equal(out["sum"][0].argmax(1), out["mean"][0].argmax(1))


# -- item 3: likelihood maximisation ------------------------------------------------------------------------

def test_released_likelihood_maximisation_with_the_stored_draws(shared_dir):
    vec, meta = _official(shared_dir, "rdc_lm")
    lm = LikelihoodMaximizationPurifier(_small_edm(shared_dir, False))   # the default is the released demo
    assert lm.config.update == "adam" and lm.config.sigma_law == "uniform"
    for k in range(lm.config.steps):
        sigma, _ = lm.levels(vec["u"][k])
        torch.testing.assert_close(sigma.float(), vec["sigma"][k], rtol=0, atol=0)
    out = lm.purify(vec["x"], u=vec["u"], noise=vec["eps"])
    torch.testing.assert_close(out, vec["x_purified"], rtol=0, atol=1e-4)
    moved = (out - vec["x"]).abs().max()
    assert float(moved) > 100 * 1e-4  # the comparison is not trivially the input


def test_likelihood_maximisation_draws_are_validated(shared_dir):
    lm = LikelihoodMaximizationPurifier(create_score_model("tiny_unet.digits", pretrained=True))
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(InputError, match="both u and noise"):
        lm.purify(x, u=torch.rand(5, 2))
    with pytest.raises(InputError, match="u must have shape"):
        lm.purify(x, u=torch.rand(4, 2), noise=torch.randn(5, 2, 1, 8, 8))
    with pytest.raises(InputError, match=r"\[0, 1\)"):
        lm.purify(x, u=torch.ones(5, 2), noise=torch.randn(5, 2, 1, 8, 8))
    with pytest.raises(InputError, match="update"):
        LikelihoodMaximizationConfig(update="sgd")
    with pytest.raises(InputError, match="sigma_law"):
        LikelihoodMaximizationConfig(sigma_law="normal")


def test_adam_likelihood_maximisation_exact_gradient_matches_finite_differences():
    """The Adam update is written out, so the exact gradient through its steps (moments included) is
    defined: against central differences in float64, with the draws passed in."""
    model = copy.deepcopy(create_score_model("tiny_unet.digits", pretrained=True)).double()
    lm = LikelihoodMaximizationPurifier(model, LikelihoodMaximizationConfig(steps=3, lr=0.02))
    gen = torch.Generator().manual_seed(0)
    x = 0.3 + 0.4 * torch.rand(2, 1, 8, 8, generator=gen, dtype=torch.float64)   # the final clamp inactive
    u = torch.rand(3, 2, generator=gen, dtype=torch.float64)
    noise = torch.randn(3, 2, 1, 8, 8, generator=gen, dtype=torch.float64)
    v = torch.randn(2, 1, 8, 8, generator=gen, dtype=torch.float64)
    d = torch.randn(2, 1, 8, 8, generator=gen, dtype=torch.float64)

    def f(z):
        return (v * lm.purify(z, u=u, noise=noise)).sum()

    xa = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(xa), xa)
    h = 1e-6
    with torch.no_grad():
        fd = (f(x + h * d) - f(x - h * d)) / (2 * h)
    assert float((g * d).sum()) == pytest.approx(float(fd), rel=1e-5, abs=1e-8)
    assert float((g - v).abs().max()) > 1e-3   # not the identity (BPDA)


# -- registry and records ------------------------------------------------------------------------------------

def test_rdc_entries_say_their_variant_and_records_store_it():
    for name in robustkit.list_defenses("*rdc*"):
        assert "variant: official" in robustkit.defenses.defense_config(name).notes, name
    rdc = create_rdc("tiny_rdc.digits", pretrained=True, seed=0, stride=200, reduction="sum",
                     purifier_options={"update": "mifgsm", "sigma_law": "training"})
    cfg = describe_defense(rdc)["config"]
    assert cfg["classifier_config"]["reduction"] == "sum"
    assert cfg["classifier_config"]["sigma_density"] == "official"
    assert cfg["purifier_config"]["update"] == "mifgsm" and cfg["purifier_config"]["sigma_law"] == "training"
    default = describe_defense(create_rdc("tiny_rdc.digits", seed=0))["config"]
    assert default["classifier_config"]["reduction"] == "mean" and default["purifier_config"]["update"] == "adam"
    with pytest.raises(InputError, match="unknown purifier option"):
        create_rdc("tiny_rdc.digits", purifier_options={"momentum_decay": 0.5})
