"""What DiT and DiffuSSM must both do as trainable ScoreModels: gradients reach everything once training
leaves the zero init, a few steps lower the loss, weights round-trip through the registry, registry
entries without weights say how to train them, and every diffusion defense (DiffPure, contrastive-guided
purification, RDC) takes them in place of its U-Net, with exact gradients and a record that names them."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import save_file

import robustkit
from helpers import perturbed
from robustkit.diffusion import (DiffusionTrainConfig, DiffuSSM, DiT, create_score_model, denoising_loss,
                                 score_model_config, train)
from robustkit.errors import CheckpointError, InputError, RegistryError
from robustkit.eval.benchmark import describe_defense
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
    assert isinstance(model, network_cls) and model.input_shape == cfg.input_shape
    assert model.num_classes == cfg.num_classes
    with pytest.raises(CheckpointError) as e:
        create_score_model(name, pretrained=True)
    msg = str(e.value)
    assert cfg.weights.filename in msg and str(tmp_path / "checkpoints") in msg
    assert f"robustkit train-diffusion {name} " in msg  # the recipe's command, which trains it


# -- every diffusion defense takes them ------------------------------------------------------------------------

PURIFICATION_ENTRIES = ["tiny_diffpure.digits", "tiny_contrastive_purification.digits"]


def _tiny_model(backbone: str, seed: int = 0) -> torch.nn.Module:
    network_cls, tiny, _ = BACKBONES[backbone]
    torch.manual_seed(seed)
    return perturbed(network_cls(tiny), seed=seed).double()


def _images(n: int) -> torch.Tensor:
    x, _ = robustkit.load_dataset("digits", n_examples=n)
    return x.double().clamp(0.05, 0.95)  # interior points: finite differences stay inside [0, 1]


def _check_against_finite_differences(f, x0: torch.Tensor, coords) -> None:
    x = x0.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(x), x)
    assert torch.isfinite(grad).all() and float(grad.abs().sum()) > 0
    h = 1e-6
    for idx in coords:
        e = torch.zeros_like(x0)
        e[idx] = h
        with torch.no_grad():
            fd = (f(x0 + e) - f(x0 - e)) / (2 * h)
        assert abs(float(fd) - float(grad[idx])) < 1e-5 * max(1.0, abs(float(fd))), (idx, float(fd), float(grad[idx]))


@pytest.mark.parametrize("entry", PURIFICATION_ENTRIES)
@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_purification_defenses_take_the_backbone_with_exact_gradients(backbone, entry):
    model = _tiny_model(backbone)
    options = {}
    if entry.startswith("tiny_contrastive"):
        # The guidance is λ·∇ of a loss on the classifier's logits: with tiny_cnn's ReLUs that gradient is
        # piecewise constant, so the guided purification jumps wherever a ReLU flips in a guided step
        # (measured with this random DiT: a 1e-6 change of one pixel moved the summed logits by 0.19).
        # Finite differences would then test the classifier, not the backbone: use a smooth one here.
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.Tanh(), torch.nn.Linear(16, 10))
        options["classifier"] = robustkit.wrap_classifier(net, num_classes=10, input_shape=(1, 8, 8))
    defense = robustkit.create_defense(entry, pretrained=True, score_model=model, dt=0.02, **options).double()
    assert defense.purifier.score_model is model
    assert defense.config.score_model == type(model).__name__  # an unregistered module: its class name
    x0 = _images(3)
    assert defense(x0).shape == (3, 10)
    # one fixed draw of the purification noise: the defended logits are a function of x alone, whose
    # autograd gradient (the one PGD-EOT and APGD-EOT follow) must be the derivative
    noise = defense.purifier.draw_noise(x0, torch.Generator().manual_seed(1))
    w = torch.randn(3, 10, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def f(x):
        return (defense.classifier.logits(defense.purifier.purify_with_noise(x, noise)) * w).sum()

    _check_against_finite_differences(f, x0, [(0, 0, 0, 0), (1, 0, 3, 4), (2, 0, 7, 2)])


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_rdc_takes_the_backbone_to_classify_and_to_purify(backbone):
    model = _tiny_model(backbone)
    model.name = f"my_{backbone}"
    rdc = robustkit.create_defense("tiny_rdc.digits", pretrained=True, score_model=model, gradient="exact", seed=0,
                                   fixed_noise=True, stride=200).double()
    assert rdc.classifier.score_model is model and rdc.purifier.score_model is model
    assert rdc.config.score_model == f"my_{backbone}"
    assert rdc.config.classifier == f"diffusion_classifier(my_{backbone})"
    x0 = _images(2)
    w = torch.randn(2, 10, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    # the diffusion classifier with fixed noise is deterministic: its exact gradient against differences
    _check_against_finite_differences(lambda x: (rdc.classifier(x) * w).sum(), x0, [(0, 0, 0, 0), (1, 0, 5, 6)])
    x = x0.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((rdc(x) * w).sum(), x)  # through likelihood maximisation too
    assert torch.isfinite(grad).all() and float(grad.abs().sum()) > 0


def test_a_registered_backbone_replaces_each_entry_s_score_model_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTKIT_HOME", str(tmp_path))
    for backbone, (network_cls, _, (name, _)) in BACKBONES.items():
        torch.manual_seed(0)
        trained = perturbed(create_score_model(name), seed=3)
        path = tmp_path / f"{backbone}.safetensors"
        save_file(trained.state_dict(), str(path))
        for entry in PURIFICATION_ENTRIES + ["tiny_rdc.digits"]:
            defense = robustkit.create_defense(entry, pretrained=True, score_model=name, score_checkpoint=path)
            model = defense.purifier.score_model
            assert isinstance(model, network_cls) and model.weights_path == str(path)
            assert all(torch.equal(v, trained.state_dict()[k]) for k, v in model.state_dict().items())
            assert describe_defense(defense)["config"]["score_model"] == name  # what the record says
            with pytest.raises(CheckpointError, match=f"robustkit train-diffusion {name} "):
                robustkit.create_defense(entry, pretrained=True, score_model=name)  # no published weights
    unet = robustkit.create_defense("tiny_diffpure.digits", pretrained=True)
    assert describe_defense(unet)["config"]["score_model"] == "tiny_unet.digits"


def test_a_training_run_folder_replaces_the_score_model(tmp_path):
    cfg = DiffusionTrainConfig(model=DIFFUSSM_TINY, dataset="digits", n_examples=32, steps=2, batch_size=8,
                               warmup_steps=0, hflip=False)
    result = train(cfg, tmp_path / "ssm", samples_per_class=0, progress=False)
    for entry in PURIFICATION_ENTRIES + ["tiny_rdc.digits"]:
        for given in (tmp_path / "ssm", str(tmp_path / "ssm")):
            defense = robustkit.create_defense(entry, pretrained=True, score_model=given)
            model = defense.purifier.score_model
            assert isinstance(model, DiffuSSM) and model.weights_path == str(result.weights_path)
            assert describe_defense(defense)["config"]["score_model"] == "diffussm (run ssm)"
        with pytest.raises(InputError, match="drop score_checkpoint"):
            robustkit.create_defense(entry, score_model=tmp_path / "ssm", score_checkpoint=result.weights_path)
        with pytest.raises(InputError, match="is a file"):
            robustkit.create_defense(entry, score_model=result.weights_path)


@pytest.mark.parametrize("entry", PURIFICATION_ENTRIES + ["tiny_rdc.digits"])
def test_score_model_arguments_are_checked_before_anything_loads(entry, tmp_path):
    with pytest.raises(InputError, match="pass score_model=NAME"):
        robustkit.create_defense(entry, score_checkpoint=tmp_path / "x.safetensors")
    with pytest.raises(InputError, match="not a file"):
        robustkit.create_defense(entry, score_model="dit_tiny.digits", score_checkpoint=tmp_path / "missing.pt")
    with pytest.raises(InputError, match="score_model must be"):
        robustkit.create_defense(entry, score_model=3)
    with pytest.raises(RegistryError, match="dit_tiny.digits"):
        robustkit.create_defense(entry, score_model="dit_tiny.digit")  # a typo: the nearest names
    small = DiT(dataclasses.replace(DIT_TINY, image_size=4))
    with pytest.raises(InputError, match=r"\[N, 1, 4, 4\]"):
        robustkit.create_defense(entry, score_model=small)


def test_rdc_refuses_a_score_model_that_cannot_classify_or_purify():
    unconditional = DiT(dataclasses.replace(DIT_TINY, num_classes=None))
    with pytest.raises(InputError, match="class-conditional"):
        robustkit.create_defense("tiny_rdc.digits", score_model=unconditional)
    with pytest.raises(InputError, match="score_model"):
        robustkit.create_defense("tent.tiny_cnn.digits", score_model=unconditional)  # no diffusion model there


def test_score_models_and_classifiers_name_their_input_shape_alike():
    """One name for one idea: ScoreModel.input_shape, as Classifier.input_shape; the old name still reads it."""
    from robustkit.defenses.diffpure import GaussianScoreModel

    m = GaussianScoreModel((1, 4, 4))
    assert m.input_shape == (1, 4, 4)
    with pytest.warns(DeprecationWarning, match="input_shape"):
        assert m.image_shape == (1, 4, 4)
