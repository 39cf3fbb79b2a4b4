"""The compact U-Net ScoreModel: shapes, conditioning with the null label, gradients, config errors."""

from __future__ import annotations

import inspect

import pytest
import torch

from helpers import perturbed
from robustkit.diffusion import ClassifierFreeGuidance, ScoreModel, UNet, UNetConfig, ddim, DiscreteVPSchedule
from robustkit.diffusion import unet as unet_module
from robustkit.errors import InputError

TINY = UNetConfig(in_channels=1, image_size=8, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                  attention_resolutions=(4,), num_groups=4, num_classes=10, dropout=0.0)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add contention


@pytest.fixture(scope="module")
def model() -> UNet:
    torch.manual_seed(0)
    return perturbed(UNet(TINY))


def test_is_a_score_model_with_shapes(model):
    assert isinstance(model, ScoreModel)
    assert model.input_shape == (1, 8, 8) and model.num_classes == 10 and model.null_label == 10
    x = torch.randn(3, 1, 8, 8)
    for t in (0.3, torch.tensor(0.3), torch.tensor([0.0, 0.5, 1.0])):
        out = model(x, t, torch.tensor([0, 4, 9]))
        assert out.shape == x.shape and out.dtype == x.dtype and torch.isfinite(out).all()
    # computed in the parameters' dtype, returned in x_t's
    assert model(x.double(), 0.5).dtype == torch.float64
    assert torch.allclose(model(x.double(), 0.5).float(), model(x, 0.5))


def test_zero_initialised_output():
    out = UNet(TINY)(torch.randn(2, 1, 8, 8), 0.5, torch.tensor([1, 2]))
    assert torch.equal(out, torch.zeros_like(out))


def test_conditional_and_unconditional(model):
    x = torch.randn(4, 1, 8, 8)
    t = torch.full((4,), 0.4)
    y_a, y_b = torch.tensor([0, 1, 2, 3]), torch.tensor([5, 6, 7, 8])
    out_a, out_b = model(x, t, y_a), model(x, t, y_b)
    assert not torch.allclose(out_a, out_b)  # the label matters
    uncond = model(x, t)
    assert torch.equal(uncond, model(x, t, torch.full((4,), 10)))  # y=None is the null label
    assert not torch.allclose(uncond, out_a)
    # per-example: batching does not mix examples
    assert torch.allclose(model(x[:1], t[:1], y_a[:1]), out_a[:1], atol=1e-6)
    # time matters
    assert not torch.allclose(model(x, 0.1, y_a), model(x, 0.9, y_a))


def test_unconditional_model():
    cfg = UNetConfig(in_channels=3, image_size=8, base_channels=8, channel_mult=(1, 2), num_res_blocks=2,
                     attention_resolutions=(8, 4), num_heads=2, num_groups=4, num_classes=None)
    m = perturbed(UNet(cfg))
    assert m.label_emb is None and not m.conditional and m.null_label is None
    assert m(torch.randn(2, 3, 8, 8), 0.5).shape == (2, 3, 8, 8)
    with pytest.raises(InputError, match="unconditional"):
        m(torch.randn(2, 3, 8, 8), 0.5, torch.tensor([0, 1]))


def test_gradient_reaches_input(model):
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    eps = model(x, torch.tensor([0.2, 0.8]), torch.tensor([3, 10]))
    (eps ** 2).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_gradcheck_through_a_solver():
    """Autograd through the U-Net inside a 2-step DDIM matches finite differences (float64)."""
    cfg = UNetConfig(in_channels=1, image_size=4, base_channels=4, channel_mult=(1, 2), num_res_blocks=1,
                     attention_resolutions=(2,), num_groups=2, num_classes=3, dropout=0.0)
    torch.manual_seed(1)
    m = perturbed(UNet(cfg)).double().requires_grad_(False)
    sched = DiscreteVPSchedule()
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([2])
    assert torch.autograd.gradcheck(lambda z: ddim(m, sched, z, 300, steps=2, y=y), (x,), eps=1e-6, atol=1e-5)


def test_no_grad_mode_switch_in_source():
    src = inspect.getsource(unet_module)
    for switch in ("no_grad", "inference_mode", "set_grad_enabled", ".detach("):
        assert switch not in src


def test_classifier_free_guidance(model):
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([0.3, 0.6]), torch.tensor([1, 7])
    cond, uncond = model(x, t, y), model(x, t)
    guided = ClassifierFreeGuidance(model, 2.0)(x, t, y)
    assert torch.allclose(guided, 3.0 * cond - 2.0 * uncond, atol=1e-5)
    assert torch.equal(ClassifierFreeGuidance(model, 0.0)(x, t, y), cond)
    with pytest.raises(InputError, match="guidance_scale"):
        ClassifierFreeGuidance(model, -1.0)


def test_parameter_count_scales():
    n_tiny = sum(p.numel() for p in UNet(TINY).parameters())
    cfg = UNetConfig(in_channels=3, image_size=32, base_channels=16, channel_mult=(1, 2, 2), num_res_blocks=1,
                     attention_resolutions=(16,), num_groups=8)
    assert UNet(cfg)(torch.zeros(1, 3, 32, 32), 0.5, torch.tensor([0])).shape == (1, 3, 32, 32)
    assert sum(p.numel() for p in UNet(cfg).parameters()) > n_tiny


@pytest.mark.parametrize("kwargs, match", [
    (dict(image_size=6, channel_mult=(1, 2, 2)), "divisible by 2"),
    (dict(base_channels=6), "num_groups"),
    (dict(attention_resolutions=(3,)), "attention resolution 3"),
    (dict(num_heads=3), "num_heads"),
    (dict(channel_mult=()), "at least one level"),
    (dict(dropout=1.0), "dropout"),
    (dict(num_classes=0), "num_classes"),
    (dict(base_channels=True), "base_channels"),
    (dict(time_scale=float("nan")), "time_scale"),
])
def test_config_errors(kwargs, match):
    base = dict(in_channels=1, image_size=8, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                attention_resolutions=(4,), num_groups=4, num_classes=10)
    with pytest.raises(InputError, match=match):
        UNetConfig(**{**base, **kwargs})


def test_input_errors(model):
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(InputError, match="shape"):
        model(torch.randn(2, 3, 8, 8), 0.5)
    with pytest.raises(InputError, match="class labels"):
        model(x, 0.5, torch.tensor([0, 11]))
    with pytest.raises(InputError, match="class labels"):
        model(x, 0.5, torch.tensor([-1, 0]))
    with pytest.raises(InputError, match="integer"):
        model(x, 0.5, torch.tensor([0.0, 1.0]))
    with pytest.raises(InputError, match=r"t must lie in \[0, 1\]"):
        model(x, torch.tensor([0.5, 999.0]))  # a step index instead of a time
    with pytest.raises(InputError, match=r"t must lie in \[0, 1\]"):
        model(x, -0.1)
    with pytest.raises(InputError, match="UNetConfig"):
        UNet({"in_channels": 1})
