"""DiT: shapes, adaLN-Zero identity at init, zero output at init, gradients, training, save/load, config errors."""

from __future__ import annotations

import pytest
import torch

from robustkit.diffusion import DiT, DiTConfig, ScoreModel, create_score_model, denoising_loss, score_model_config
from robustkit.diffusion.dit import DiTBlock, sincos_positions_2d
from robustkit.errors import CheckpointError, InputError

TINY = DiTConfig(in_channels=1, image_size=8, patch_size=2, hidden_size=32, depth=2, num_heads=2, num_classes=10,
                 frequency_size=32)


@pytest.fixture(autouse=True)
def _single_thread():
    """Tiny models: one thread is fastest and does not oversubscribe a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _perturbed(model: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> torch.nn.Module:
    """Noise on every parameter: the zero-initialised layers would otherwise hide wrong wiring."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.data.add_(scale * torch.randn(p.shape, generator=g))
    return model.eval()


def test_shapes_conditional_and_unconditional():
    torch.manual_seed(0)
    model = _perturbed(DiT(TINY))
    assert isinstance(model, ScoreModel) and model.null_label == 10 and model.image_shape == (1, 8, 8)
    x = torch.randn(3, 1, 8, 8)
    out = model(x, torch.tensor([0.0, 0.5, 1.0]), torch.tensor([0, 4, 9]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    # y=None is the null label
    assert torch.allclose(model(x, 0.5), model(x, 0.5, torch.full((3,), 10)))
    assert not torch.allclose(model(x, 0.5), model(x, 0.5, torch.tensor([0, 4, 9])))
    uncond = _perturbed(DiT(DiTConfig(in_channels=3, image_size=8, patch_size=4, hidden_size=16, depth=1,
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


def test_gradients_reach_the_input_and_every_parameter_after_training_leaves_zero_init():
    torch.manual_seed(0)
    model = DiT(TINY)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x0, y = torch.rand(4, 1, 8, 8) * 2 - 1, torch.tensor([0, 1, 2, 10])
    # two zero-initialised layers in series: step 1 moves only the decoder (every other gradient passes
    # through its zero weight), step 2 the adaLN layers; after that every parameter gets a gradient
    for step in range(2):
        opt.zero_grad()
        denoising_loss(model, x0, 0.5, y=y, generator=torch.Generator().manual_seed(step)).mean().backward()
        opt.step()
    opt.zero_grad()
    x = torch.randn(4, 1, 8, 8, requires_grad=True)
    model(x, 0.5, y).pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    dead = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert dead == []


def test_trains_a_few_steps_with_decreasing_loss():
    torch.manual_seed(0)
    model = DiT(TINY)
    x0, y = torch.rand(8, 1, 8, 8) * 2 - 1, torch.arange(8)
    t = torch.linspace(0.2, 0.8, 8)

    def loss() -> float:
        with torch.no_grad():
            return float(denoising_loss(model, x0, t, y=y, generator=torch.Generator().manual_seed(1)).mean())

    before = loss()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(30):
        opt.zero_grad()
        denoising_loss(model, x0, t, y=y, generator=torch.Generator().manual_seed(1)).mean().backward()
        opt.step()
    after = loss()
    assert after < 0.8 * before, (before, after)


def test_safetensors_round_trip_through_the_registry(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = _perturbed(create_score_model("dit_tiny.digits"))
    path = tmp_path / "dit.safetensors"
    save_file(model.state_dict(), str(path))
    loaded = create_score_model("dit_tiny.digits", checkpoint=path)
    x, y = torch.randn(2, 1, 8, 8), torch.tensor([3, 10])
    assert torch.equal(loaded(x, 0.4, y), model(x, 0.4, y))
    assert not any(p.requires_grad for p in loaded.parameters())


@pytest.mark.parametrize("name", ["dit_tiny.digits", "dit_s2.cifar10"])
def test_registry_entries_without_weights(name, tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTKIT_HOME", str(tmp_path))
    cfg = score_model_config(name)
    model = create_score_model(name)
    assert isinstance(model, DiT) and model.image_shape == cfg.image_shape and model.num_classes == cfg.num_classes
    with pytest.raises(CheckpointError) as e:
        create_score_model(name, pretrained=True)
    msg = str(e.value)
    assert cfg.weights.filename in msg and str(tmp_path / "checkpoints") in msg
    assert f"robustkit train-diffusion {name} " in msg  # the recipe's command, which trains it


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
