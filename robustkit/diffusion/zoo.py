"""Registry of named diffusion score models, in the style of the classifier registry.

An entry is a *factory function* building the bare :class:`~robustkit.diffusion.ScoreModel` plus a
frozen :class:`ScoreModelConfig` saying everything else: the architecture, the VP SDE it was trained
under, where its weights come from (with their sha256), the training recipe and command that produce
them. ``create_score_model(name, pretrained=True)`` turns an entry into a ready model.

Entries:

* ``tiny_unet.digits`` — a class-conditional :class:`~robustkit.diffusion.UNet` for the 8×8 digits,
  weights bundled in the package (``scripts/train_tiny_unet_digits.py``, a few minutes on a CPU).
* ``unet.cifar10`` — a compact class-conditional U-Net for CIFAR-10 (2.8M parameters), trained on a
  CPU by ``scripts/train_unet_cifar10.py`` (resumable in chunks); weights bundled in the package.
* ``dit_tiny.digits``, ``dit_s2.cifar10`` (:class:`~robustkit.diffusion.DiT`) and ``diffussm_tiny.digits``,
  ``diffussm_s.cifar10`` (:class:`~robustkit.diffusion.DiffuSSM`) — recipes for the same trainer, no
  weights published: train them with ``robustkit train-diffusion NAME --out DIR`` and put
  ``DIR/ema.safetensors`` in ``$ROBUSTKIT_HOME/checkpoints/`` under the entry's file name.

Reference:
    Ho et al., "Denoising Diffusion Probabilistic Models", NeurIPS 2020 (architecture and recipe);
    Ho & Salimans, "Classifier-Free Diffusion Guidance", 2021 (the null label); timm's registry
    (name → factory + config), which robustkit's classifier registry follows.

Example::

    >>> import torch
    >>> from robustkit.diffusion import create_score_model, list_score_models
    >>> list_score_models("*unet*")
    ['tiny_unet.digits', 'unet.cifar10']
    >>> model = create_score_model("tiny_unet.digits", pretrained=True)
    >>> model(torch.zeros(2, 1, 8, 8), 0.5, torch.tensor([0, 9])).shape
    torch.Size([2, 1, 8, 8])
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Mapping

import torch

from .. import hub
from ..errors import CheckpointError, InputError, RegistryError
from ..registry import Registry, WeightSource, how_to_get_weights, mark_random_weights, resolve_source
from ..utils import check_bool, check_path
from .schedule import VPSDE
from .score_model import ScoreModel
from .train import BACKBONES, CHECKPOINT_FORMAT, DiffusionTrainConfig, backbone_tag
from .diffussm import DiffuSSMConfig
from .dit import DiTConfig
from .unet import UNet, UNetConfig


__all__ = ["ScoreModelConfig", "adapt_training_checkpoint", "create_score_model", "list_score_models",
           "register_score_model", "resolve_score_model_weights", "score_model_config"]

StateDictAdapter = Callable[[Mapping[str, object]], dict]

TINY_UNET_DIGITS_SHA256 = "9e385d689225eb8966e6f9af81ef1e5a8a784bb2dc127ccbc53eddcf0a3bad17"


def adapt_training_checkpoint(state: Mapping[str, object]) -> dict:
    """Take the EMA weights out of a :func:`~robustkit.diffusion.train` checkpoint; pass plain state dicts."""
    if state.get("format") == CHECKPOINT_FORMAT:
        ema = state.get("ema")
        if not isinstance(ema, Mapping):
            raise CheckpointError("training checkpoint without an 'ema' state dict")
        return dict(ema)
    return dict(state)


@dataclass(frozen=True)
class ScoreModelConfig:
    """Everything about a registered score model except how to build its network.

    Attributes:
        architecture: a one-line description.
        dataset: the data it models (a ``robustkit.load_dataset`` name).
        input_shape: ``(C, H, W)`` of ``x_t``.
        num_classes: number of classes of a conditional model (its null label is ``num_classes``),
            ``None`` for unconditional models.
        beta_min, beta_max: the :class:`~robustkit.diffusion.VPSDE` it was trained under.
        weights: where the weights come from (``None``: none published).
        adapt_state_dict: maps the weight file's keys onto the network's.
        recipe: the training config that produces the weights (``None`` for foreign checkpoints).
        train_command: the command that trains them.
        license, paper, source, notes: provenance.
    """

    architecture: str
    dataset: str
    input_shape: tuple[int, int, int]
    num_classes: int | None
    beta_min: float = 0.1
    beta_max: float = 20.0
    weights: WeightSource | None = None
    adapt_state_dict: StateDictAdapter | None = adapt_training_checkpoint
    recipe: DiffusionTrainConfig | None = None
    train_command: str = ""
    license: str = ""
    paper: str = ""
    source: str = ""
    notes: str = ""

    @property
    def sde(self) -> VPSDE:
        return VPSDE(self.beta_min, self.beta_max)


@dataclass(frozen=True)
class _ScoreModelEntry:
    name: str
    factory: Callable[[], ScoreModel]
    config: ScoreModelConfig


SCORE_MODELS: Registry[_ScoreModelEntry] = Registry("score model")


Factory = Callable[[], ScoreModel]


def register_score_model(name: str, config: ScoreModelConfig) -> Callable[[Factory], Factory]:
    """Decorator registering a factory (a named function returning the bare ScoreModel) under ``name``."""

    def deco(factory: Factory) -> Factory:
        if getattr(factory, "__name__", "<lambda>") == "<lambda>":
            raise RegistryError("registry factories must be named functions, not lambdas")
        SCORE_MODELS.add(name, _ScoreModelEntry(name, factory, config))
        return factory

    return deco


def list_score_models(pattern: str = "*") -> list[str]:
    """Registered score-model names matching a glob pattern, sorted."""
    return SCORE_MODELS.names(pattern)


def score_model_config(name: str) -> ScoreModelConfig:
    """The config of a registered score model."""
    return SCORE_MODELS.get(name).config


def resolve_score_model_weights(name: str, *, download: bool = True) -> Path:
    """Path of a registered score model's weights, verified; downloads into the cache when missing.

    Order: a file inside an installed package; ``$ROBUSTKIT_HOME/checkpoints/<filename>``; the URL.
    Raises :class:`~robustkit.CheckpointError` naming the file to put where (and how to train it).
    """
    cfg = SCORE_MODELS.get(name).config
    if cfg.weights is None:
        raise CheckpointError(f"{name} has no published weights; pass checkpoint=PATH")
    return resolve_source(name, cfg.weights, download=download, train_command=cfg.train_command)


def create_score_model(name: str, *, pretrained: bool = False,
                       checkpoint: str | os.PathLike | None = None) -> ScoreModel:
    """Build a registered score model; with weights, in eval mode with frozen parameters.

    Args:
        name: a name from :func:`list_score_models`, e.g. ``"tiny_unet.digits"``.
        pretrained: load the entry's weights (see :func:`resolve_score_model_weights`).
        checkpoint: load this file instead: safetensors, a state dict, or a training checkpoint of
            :func:`~robustkit.diffusion.train` (its EMA weights), strictly (missing or unexpected keys
            raise :class:`~robustkit.CheckpointError`).

    Loaded models get ``requires_grad_(False)``: attacks still differentiate with respect to the
    input, without accumulating parameter gradients. ``model.name``, ``model.registry_config`` and
    ``model.weights_path`` record the provenance.

    Shape:
        the model maps ``x_t [N, *config.input_shape]``, ``t [N]``, ``y [N]`` or None to ``x_t``'s shape.

    Example::

        >>> import torch
        >>> model = create_score_model("tiny_unet.digits", pretrained=True)
        >>> model.registry_config.sde, model.null_label
        (VPSDE(beta_min=0.1, beta_max=20.0), 10)
        >>> x = torch.zeros(1, 1, 8, 8, requires_grad=True)
        >>> model(x, 0.3).sum().backward(); x.grad.shape        # differentiable w.r.t. the input
        torch.Size([1, 1, 8, 8])
    """
    entry = SCORE_MODELS.get(name)
    cfg = entry.config
    check_bool("pretrained", pretrained)
    check_path("checkpoint", checkpoint)
    if pretrained and checkpoint is not None:
        raise InputError("pass either pretrained=True or checkpoint=PATH, not both")
    model = entry.factory()
    path: Path | None = None
    if checkpoint is not None:
        path = Path(checkpoint)
    elif pretrained:
        path = resolve_score_model_weights(name)
    if path is not None:
        state = hub.load_state_dict_file(path)
        state = hub.adapt_state_dict(cfg.adapt_state_dict, state, source=str(path))
        hub.load_strict(model, {k: v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                                for k, v in state.items()}, source=str(path))
        model.eval().requires_grad_(False)
    model.name = name
    model.registry_config = cfg
    model.weights_path = str(path) if path is not None else None
    if path is None:  # benchmark() refuses it as long as its weights stay random
        mark_random_weights(model, name, how_to_get_weights(name, cfg.weights, train_command=cfg.train_command))
    return model


# ----------------------------------------------------------------------------------------------- entries

#: 8×8 digits, 10 classes + null label.
TINY_UNET_DIGITS = UNetConfig(in_channels=1, image_size=8, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                              attention_resolutions=(4,), mid_attention=True, num_heads=1, num_classes=10,
                              dropout=0.0, num_groups=8, emb_channels=64)

TINY_UNET_DIGITS_RECIPE = DiffusionTrainConfig(
    model=TINY_UNET_DIGITS, dataset="digits", steps=4000, batch_size=128, lr=2e-3, warmup_steps=200,
    lr_schedule="cosine", grad_clip=1.0, ema_decay=0.999, p_uncond=0.1, hflip=False, seed=0)


@register_score_model("tiny_unet.digits", ScoreModelConfig(
    architecture="class-conditional U-Net (16/32 channels, attention at 4×4 and in the middle)", dataset="digits",
    input_shape=(1, 8, 8), num_classes=10,
    weights=WeightSource(filename="tiny_unet_digits.safetensors",
                         package_file=("robustkit", "diffusion/weights/tiny_unet_digits.safetensors"),
                         sha256=TINY_UNET_DIGITS_SHA256),
    recipe=TINY_UNET_DIGITS_RECIPE, train_command="python scripts/train_tiny_unet_digits.py",
    license="MIT (robustkit)", paper="Ho et al., NeurIPS 2020; Ho & Salimans 2021 (null label)",
    source="scripts/train_tiny_unet_digits.py (seed 0)",
    notes="the embedded default score model: trained on the digits train split in minutes on a CPU; "
          "191k parameters, EMA weights stored in float16 (loaded as float32)"))
def tiny_unet_digits() -> UNet:
    return UNet(TINY_UNET_DIGITS)


#: CIFAR-10: DDPM's layout at a quarter width (32 channels, 2.78M parameters), attention at 8×8 and in the
#: middle, class-conditional. Sized so that its recipe trains on a CPU (about 2 hours on one core).
UNET_CIFAR10 = UNetConfig(in_channels=3, image_size=32, base_channels=32, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
                          attention_resolutions=(8,), mid_attention=True, num_heads=1, num_classes=10, dropout=0.0,
                          num_groups=8, emb_channels=256)

#: 5,000 steps of 64 (6.4 epochs), cosine decay, EMA 0.999. A CPU budget, far below DDPM's 800k steps of
#: 128: the model denoises well at small t (what purification uses) and its samples are rough. It is
#: also the U-Net of ``bench/compare_backbones.py --dataset cifar10``, whose DiT and DiffuSSM get the
#: same recipe.
UNET_CIFAR10_RECIPE = DiffusionTrainConfig(
    model=UNET_CIFAR10, dataset="cifar10", steps=5000, batch_size=64, lr=2e-4, warmup_steps=500,
    lr_schedule="cosine", grad_clip=1.0, ema_decay=0.999, p_uncond=0.1, hflip=True, seed=0)

UNET_CIFAR10_SHA256 = "baba82107c1e07fea0b7e25f8a0b96425c209d6e13c28ea4abcfdc743f0a8b07"


@register_score_model("unet.cifar10", ScoreModelConfig(
    architecture="class-conditional U-Net (DDPM layout, 32 base channels, attention at 8×8)", dataset="cifar10",
    input_shape=(3, 32, 32), num_classes=10,
    weights=WeightSource(filename="unet_cifar10.safetensors",
                         package_file=("robustkit", "diffusion/weights/unet_cifar10.safetensors"),
                         sha256=UNET_CIFAR10_SHA256),
    recipe=UNET_CIFAR10_RECIPE,
    train_command="python scripts/train_unet_cifar10.py --out runs/unet_cifar10 (repeat to resume)",
    license="MIT (robustkit)", paper="Ho et al., NeurIPS 2020 (architecture); Ho & Salimans 2021 (null label)",
    source="scripts/train_unet_cifar10.py (seed 0)",
    notes="trained on a CPU for 5,000 steps of 64 (see docs/results/unet_cifar10.md for its loss and samples); "
          "EMA weights stored in float16 (loaded as float32)"))
def unet_cifar10() -> UNet:
    return UNet(UNET_CIFAR10)


#: DDPM's CIFAR-10 hyperparameters (batch 128, lr 2e-4 constant after a 5k warm-up, EMA 0.9999) for 400k
#: steps: the GPU-sized recipe of the paper-sized ``dit_s2.cifar10`` and ``diffussm_s.cifar10``.
DDPM_CIFAR10_RECIPE = replace(DiffusionTrainConfig(), dataset="cifar10", steps=400_000)


# ------------------------------------------------------------------ transformer and attention-free backbones
# Trained by the same loop as the U-Nets: the digits recipes are TINY_UNET_DIGITS_RECIPE's hyperparameters
# and the CIFAR-10 recipes DDPM_CIFAR10_RECIPE's, with the architecture swapped.


def _register_untrained(name: str, config: DiTConfig | DiffuSSMConfig, base_recipe: DiffusionTrainConfig, *,
                        architecture: str, paper: str, cuda: bool = False) -> None:
    """Register a backbone whose weights are not published. Everything else follows from ``name`` and
    ``config``: the dataset (the name's suffix), image shape and classes, the weights file
    ``<name with '_' for '.'>.safetensors``, the recipe (``base_recipe`` with ``config``) and the command
    that trains it and says where to put the weights."""
    filename = f"{name.replace('.', '_')}.safetensors"
    run = f"runs/{name.replace('.', '_')}"
    network_cls = BACKBONES[backbone_tag(config)][1]

    def factory() -> ScoreModel:
        return network_cls(config)

    factory.__name__ = name.replace(".", "_")
    register_score_model(name, ScoreModelConfig(
        architecture=architecture, dataset=name.rsplit(".", 1)[1], input_shape=config.input_shape,
        num_classes=config.num_classes, weights=WeightSource(filename=filename, url=None, sha256=None),
        recipe=replace(base_recipe, model=config),
        train_command=(f"robustkit train-diffusion {name} --out {run}{' --device cuda' if cuda else ''} (repeat to "
                       f"resume; then copy {run}/ema.safetensors to $ROBUSTKIT_HOME/checkpoints/{filename})"),
        license="MIT (robustkit)", paper=paper, source=f"{network_cls.__module__.replace('.', '/')}.py",
        notes="no weights are published: train them with the train command and put the file in "
              "$ROBUSTKIT_HOME/checkpoints/"))(factory)


_DIT_PAPER = "Peebles & Xie, ICCV 2023; Ho & Salimans 2021 (null label)"
_DIFFUSSM_PAPER = "Yan, Gu, Rush, CVPR 2024; Gu et al. 2022 (S4D); Wang et al. 2023 (BiGS)"

#: 8×8 digits: 16 tokens of 2×2 patches, width 64, 4 blocks.
DIT_TINY_DIGITS = DiTConfig(in_channels=1, image_size=8, patch_size=2, hidden_size=64, depth=4, num_heads=4,
                            num_classes=10, frequency_size=64)
_register_untrained("dit_tiny.digits", DIT_TINY_DIGITS, TINY_UNET_DIGITS_RECIPE, paper=_DIT_PAPER,
                    architecture="class-conditional DiT (patch 2, width 64, 4 adaLN-Zero blocks, 4 heads)")

#: CIFAR-10: DiT-S/2 (width 384, 12 blocks, 6 heads) on 16×16 tokens of 2×2 pixel patches.
DIT_S2_CIFAR10 = DiTConfig(in_channels=3, image_size=32, patch_size=2, hidden_size=384, depth=12, num_heads=6,
                           num_classes=10)
_register_untrained("dit_s2.cifar10", DIT_S2_CIFAR10, DDPM_CIFAR10_RECIPE, cuda=True,
                    paper="Peebles & Xie, ICCV 2023 (DiT-S/2, Table 1); Ho & Salimans 2021",
                    architecture="class-conditional DiT-S/2 (width 384, 12 adaLN-Zero blocks, 6 heads, patch 2)")

#: 8×8 digits: 64 pixel tokens, width 32, 2 blocks, hourglass 2 (SSM over 32 tokens).
DIFFUSSM_TINY_DIGITS = DiffuSSMConfig(in_channels=1, image_size=8, hidden_size=32, depth=2, downsample=2,
                                      state_size=16, num_classes=10, frequency_size=64)
_register_untrained("diffussm_tiny.digits", DIFFUSSM_TINY_DIGITS, TINY_UNET_DIGITS_RECIPE, paper=_DIFFUSSM_PAPER,
                    architecture="class-conditional DiffuSSM (width 32, 2 blocks, hourglass 2, S4D with 16 modes)")

#: CIFAR-10: 1024 pixel tokens, width 256, 12 blocks, hourglass 4 (SSM over 256 tokens).
DIFFUSSM_S_CIFAR10 = DiffuSSMConfig(in_channels=3, image_size=32, hidden_size=256, depth=12, downsample=4,
                                    state_size=32, num_classes=10)
_register_untrained("diffussm_s.cifar10", DIFFUSSM_S_CIFAR10, DDPM_CIFAR10_RECIPE, cuda=True, paper=_DIFFUSSM_PAPER,
                    architecture="class-conditional DiffuSSM (width 256, 12 blocks, hourglass 4, S4D with 32 modes)")
