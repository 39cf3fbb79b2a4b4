"""DiffuSSM: the S4D FFT convolution against its recurrence, adaLN-Zero identity at init, shapes, config
errors (gradients, training, save/load and registry entries: tests/test_diffusion_backbones.py)."""

from __future__ import annotations

import pytest
import torch

from helpers import perturbed
from robustkit.diffusion import DiffuSSM, DiffuSSMConfig, S4DLayer, ScoreModel
from robustkit.diffusion.diffussm import DiffuSSMBlock, GatedBiSSM
from robustkit.errors import InputError

TINY = DiffuSSMConfig(in_channels=1, image_size=8, hidden_size=16, depth=2, downsample=2, state_size=8,
                      num_classes=10, frequency_size=32)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add contention


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_s4d_fft_convolution_equals_the_recurrence(dtype, tol):
    torch.manual_seed(0)
    layer = S4DLayer(channels=3, state_size=8, dt_min=0.01, dt_max=0.5).to(dtype)
    u = torch.randn(2, 3, 24, dtype=dtype)
    fft, rec = layer(u).detach(), layer.recurrent(u).detach()
    assert fft.shape == u.shape
    assert (fft - rec).abs().max() < tol * max(1.0, float(rec.abs().max()))
    # S4D-Lin init: A_n = -1/2 + iπn; a stable discretisation
    a_bar, _, _ = layer.discretize()
    assert (a_bar.abs() < 1).all()
    assert torch.allclose(layer.a_imag[0].double(), torch.pi * torch.arange(8, dtype=torch.float64))


def _complex_kernel(params: dict[str, torch.Tensor], length: int) -> torch.Tensor:
    """The S4D kernel by the complex Vandermonde formula, written out from the raw parameters:
    ``K_l = Re(Σ_n C_n B̄_n exp(l ΔA_n))`` with ``B̄ = (exp(ΔA) − 1)/A · B`` (the complex ``exp`` path)."""
    a = torch.complex(-torch.exp(params["log_a_real"]), params["a_imag"])
    dt_a = a * torch.exp(params["log_dt"])[:, None]
    b_bar = (torch.exp(dt_a) - 1) / a * torch.complex(params["b"][..., 0], params["b"][..., 1])
    c = torch.complex(params["c"][..., 0], params["c"][..., 1])
    steps = torch.arange(length, dtype=params["log_dt"].dtype)
    return torch.einsum("hn,hnl->hl", c * b_bar, torch.exp(dt_a[:, :, None] * steps)).real


def _random_s4d(seed: int, channels: int, state: int, dt_min: float, dt_max: float, dtype) -> S4DLayer:
    torch.manual_seed(seed)
    layer = S4DLayer(channels, state, dt_min, dt_max)
    with torch.no_grad():  # away from the init: random B, spread Re A, perturbed Im A
        layer.b.normal_()
        layer.log_a_real.add_(torch.randn(channels, state))
        layer.a_imag.add_(torch.randn(channels, state))
    return layer.to(dtype)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
@pytest.mark.parametrize("seed, channels, state, dt_min, dt_max, length", [
    (0, 4, 8, 0.001, 0.1, 256),
    (1, 3, 16, 0.01, 0.5, 1024),
    (2, 5, 3, 0.1, 1.0, 37),
])
def test_s4d_real_kernel_equals_the_complex_vandermonde_formula(dtype, tol, seed, channels, state, dt_min, dt_max,
                                                                length):
    layer = _random_s4d(seed, channels, state, dt_min, dt_max, dtype)
    params = {n: p for n, p in layer.named_parameters() if n != "d"}  # the skip D is not in the kernel
    k = layer.kernel(length)
    ref = _complex_kernel(params, length)
    assert k.dtype == dtype and k.shape == (channels, length)
    assert float((k - ref).detach().abs().max()) <= tol * float(ref.detach().abs().max())
    # the same gradients w.r.t. every parameter (a random linear functional of the kernel)
    w = torch.randn(channels, length, dtype=dtype, generator=torch.Generator().manual_seed(seed))
    grads = torch.autograd.grad((k * w).sum(), list(params.values()))
    refs = torch.autograd.grad((ref * w).sum(), list(params.values()))
    for name, g, r in zip(params, grads, refs):
        assert float((g - r).abs().max()) <= 10 * tol * max(1.0, float(r.abs().max())), name


def test_s4d_gradcheck_wrt_every_parameter_and_the_input():
    """Finite differences through the real-arithmetic kernel and the FFT convolution (float64)."""
    layer = _random_s4d(3, 2, 3, 0.05, 0.5, torch.float64)
    names = [n for n, _ in layer.named_parameters()]

    def layer_of(u, *values):
        return torch.func.functional_call(layer, dict(zip(names, values)), (u,), strict=True)

    u = torch.randn(2, 2, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    inputs = (u, *(p.detach().clone() for p in layer.parameters()))
    assert torch.autograd.gradcheck(layer_of, tuple(x.requires_grad_() for x in inputs))


def test_s4d_is_causal_and_the_bidirectional_layer_is_not():
    torch.manual_seed(0)
    layer = S4DLayer(channels=2, state_size=4)
    u = torch.randn(1, 2, 16)
    v = u.clone()
    v[..., 10:] += 1.0
    assert torch.allclose(layer(u)[..., :10], layer(v)[..., :10], atol=1e-6)
    bi = GatedBiSSM(dim=4, inner=4, state_size=4, dt_min=0.01, dt_max=0.5)
    h = torch.randn(1, 16, 4)
    g = h.clone()
    g[:, 10:] += 1.0
    assert not torch.allclose(bi(h)[:, :10], bi(g)[:, :10], atol=1e-6)  # sees the future via the reversed SSM


def test_shapes_conditional_and_unconditional():
    torch.manual_seed(0)
    model = perturbed(DiffuSSM(TINY))
    assert isinstance(model, ScoreModel) and model.null_label == 10
    x = torch.randn(3, 1, 8, 8)
    out = model(x, torch.tensor([0.0, 0.5, 1.0]), torch.tensor([0, 4, 9]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert torch.allclose(model(x, 0.5), model(x, 0.5, torch.full((3,), 10)))
    assert not torch.allclose(model(x, 0.5), model(x, 0.5, torch.tensor([0, 4, 9])))
    uncond = perturbed(DiffuSSM(DiffuSSMConfig(in_channels=3, image_size=4, hidden_size=8, depth=1, downsample=4,
                                                state_size=4, num_classes=None, frequency_size=16)))
    assert uncond.cond.label_emb is None and uncond.null_label is None
    assert uncond(torch.randn(2, 3, 4, 4), 0.3).shape == (2, 3, 4, 4)
    with pytest.raises(InputError, match="class labels"):
        model(x, 0.5, torch.tensor([0, -1, 2]))
    assert DiffuSSM(TINY).cond.label_emb.num_embeddings == 11


def test_every_block_is_the_identity_at_init_and_the_output_is_zero():
    torch.manual_seed(0)
    model = DiffuSSM(TINY)
    x, c = torch.randn(3, 64, 16), torch.randn(3, 16)
    for block in model.blocks:
        assert isinstance(block, DiffuSSMBlock)
        assert torch.equal(block(x, c), x)
    out = model(torch.randn(3, 1, 8, 8), torch.rand(3), torch.tensor([1, 2, 10]))
    assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("kwargs, match", [
    (dict(image_size=5, downsample=2), "not divisible by downsample"),
    (dict(state_size=0), "state_size"),
    (dict(dt_min=0.5, dt_max=0.1), "dt_min"),
    (dict(expand=-1.0), "expand"),
    (dict(num_classes=True), "num_classes"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(InputError, match=match):
        DiffuSSMConfig(**kwargs)
    with pytest.raises(InputError, match="DiffuSSMConfig"):
        DiffuSSM(TINY.to_dict())
