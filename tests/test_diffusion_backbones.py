"""What DiT and DiffuSSM must both do as trainable ScoreModels: gradients reach everything once training
leaves the zero init, a few steps lower the loss, weights round-trip through the registry, and registry
entries without weights say how to train them."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from helpers import perturbed
from robustkit.diffusion import DiffuSSM, DiT, create_score_model, denoising_loss, score_model_config
from robustkit.errors import CheckpointError
from test_diffusion_diffussm import TINY as DIFFUSSM_TINY
from test_diffusion_dit import TINY as DIT_TINY

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add contention

#: backbone -> (network class, tiny 8×8 digits config, registry entries)
BACKBONES = {
    "dit": (DiT, DIT_TINY, ("dit_tiny.digits", "dit_s2.cifar10")),
    "diffussm": (DiffuSSM, DIFFUSSM_TINY, ("diffussm_tiny.digits", "diffussm_s.cifar10")),
}
ENTRIES = [(network_cls, name) for network_cls, _, names in BACKBONES.values() for name in names]


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_gradients_reach_the_input_and_every_parameter_after_training_leaves_zero_init(backbone):
    network_cls, tiny, _ = BACKBONES[backbone]
    torch.manual_seed(0)
    model = network_cls(tiny)
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


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_trains_a_few_steps_with_decreasing_loss(backbone):
    network_cls, tiny, _ = BACKBONES[backbone]
    torch.manual_seed(0)
    model = network_cls(tiny)
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


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_safetensors_round_trip_through_the_registry(backbone, tmp_path):
    entry = BACKBONES[backbone][2][0]
    torch.manual_seed(0)
    model = perturbed(create_score_model(entry))
    path = tmp_path / f"{backbone}.safetensors"
    save_file(model.state_dict(), str(path))
    loaded = create_score_model(entry, checkpoint=path)
    x, y = torch.randn(2, 1, 8, 8), torch.tensor([3, 10])
    assert torch.equal(loaded(x, 0.4, y), model(x, 0.4, y))
    assert not any(p.requires_grad for p in loaded.parameters())


@pytest.mark.parametrize("network_cls, name", ENTRIES)
def test_registry_entries_without_weights(network_cls, name, tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTKIT_HOME", str(tmp_path))
    cfg = score_model_config(name)
    model = create_score_model(name)
    assert isinstance(model, network_cls) and model.image_shape == cfg.image_shape
    assert model.num_classes == cfg.num_classes
    with pytest.raises(CheckpointError) as e:
        create_score_model(name, pretrained=True)
    msg = str(e.value)
    assert cfg.weights.filename in msg and str(tmp_path / "checkpoints") in msg
    assert f"robustkit train-diffusion {name} " in msg  # the recipe's command, which trains it
