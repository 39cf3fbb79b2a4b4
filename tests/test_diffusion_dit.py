"""DiT: shapes, patch layout, positions, adaLN-Zero identity at init, zero output at init, config errors (gradients,
training, save/load and registry entries: tests/test_diffusion_backbones.py)."""

from __future__ import annotations

import pytest
import torch

from helpers import perturbed
from robustkit.diffusion import DiT, DiTConfig, ScoreModel
from robustkit.diffusion.dit import DiTBlock, sincos_positions_2d
from robustkit.errors import InputError

TINY = DiTConfig(in_channels=1, image_size=8, patch_size=2, hidden_size=32, depth=2, num_heads=2, num_classes=10,
                 frequency_size=32)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add contention


def test_shapes_conditional_and_unconditional():
    torch.manual_seed(0)
    model = perturbed(DiT(TINY))
    assert isinstance(model, ScoreModel) and model.null_label == 10 and model.input_shape == (1, 8, 8)
    x = torch.randn(3, 1, 8, 8)
    out = model(x, torch.tensor([0.0, 0.5, 1.0]), torch.tensor([0, 4, 9]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    # y=None is the null label
    assert torch.allclose(model(x, 0.5), model(x, 0.5, torch.full((3,), 10)))
    assert not torch.allclose(model(x, 0.5), model(x, 0.5, torch.tensor([0, 4, 9])))
    uncond = perturbed(DiT(DiTConfig(in_channels=3, image_size=8, patch_size=4, hidden_size=16, depth=1,
                                      num_heads=2, num_classes=None, frequency_size=16)))
    assert uncond.cond.label_emb is None and uncond.null_label is None
    assert uncond(torch.randn(2, 3, 8, 8), 0.3).shape == (2, 3, 8, 8)
    with pytest.raises(InputError, match="unconditional"):
        uncond(torch.randn(2, 3, 8, 8), 0.3, torch.tensor([0, 1]))
    with pytest.raises(InputError, match="class labels"):
        model(x, 0.5, torch.tensor([0, 11, 2]))
    with pytest.raises(InputError, match="t must lie"):
        model(x, 999.0)
    assert DiT(TINY).cond.label_emb.num_embeddings == 11


def test_unpatchify_inverts_the_patch_layout():
    model = DiT(TINY)
    x = torch.randn(2, 1, 8, 8)
    p, g = TINY.patch_size, TINY.grid_size
    # the [row, col, p, p, C] order that the conv's row-major tokens use
    tokens = x.reshape(2, 1, g, p, g, p).permute(0, 2, 4, 3, 5, 1).reshape(2, g * g, p * p)
    assert torch.equal(model.unpatchify(tokens), x)


def test_positions_are_fixed_and_distinct():
    pos = sincos_positions_2d(4, 16)
    assert pos.shape == (16, 16)
    assert torch.cdist(pos, pos).add(torch.eye(16)).min() > 0.1
    assert "pos" not in DiT(TINY).state_dict()


def test_every_block_is_the_identity_at_init_and_the_output_is_zero():
    torch.manual_seed(0)
    model = DiT(TINY)
    x = torch.randn(3, 16, 32)
    c = torch.randn(3, 32)
    for block in model.blocks:
        assert isinstance(block, DiTBlock)
        assert torch.equal(block(x, c), x)
    out = model(torch.randn(3, 1, 8, 8), torch.rand(3), torch.tensor([1, 2, 10]))
    assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("kwargs, match", [
    (dict(image_size=10, patch_size=4), "not divisible by patch_size"),
    (dict(hidden_size=30, num_heads=3), "divisible by 4"),
    (dict(hidden_size=32, num_heads=3), "not divisible by num_heads"),
    (dict(depth=0), "depth must be a positive int"),
    (dict(num_classes=0), "num_classes"),
    (dict(mlp_ratio=float("nan")), "mlp_ratio"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(InputError, match=match):
        DiTConfig(**kwargs)
    with pytest.raises(InputError, match="DiTConfig"):
        DiT({"image_size": 8})


def test_a_frozen_model_is_twice_differentiable_in_its_input_and_agrees_with_the_fused_kernel():
    # RDC's exact gradient differentiates likelihood maximisation's gradient steps: a double backward
    # through the attention, which torch's fused kernels do not have
    torch.manual_seed(0)
    model = perturbed(DiT(TINY)).double().requires_grad_(False)
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([3, 10])
    assert torch.autograd.gradgradcheck(lambda inp: model(inp, 0.3, y), (x,), eps=1e-6, atol=1e-6)
    with torch.no_grad():
        fused = model(x, 0.3, y)
    assert torch.allclose(model(x, 0.3, y), fused, rtol=0, atol=1e-12)
