"""Training of noise predictors (:class:`~robustkit.diffusion.UNet`, :class:`~robustkit.diffusion.DiT`,
:class:`~robustkit.diffusion.DiffuSSM`): ε-prediction under the VP SDE.

``train(config, out_dir)`` minimises the denoising score-matching loss in ε form,

    L = E_{x0, y, t ~ U[t_eps, 1], ε ~ N(0, I)} ‖ε̂(a(t) x0 + s(t) ε, t, ỹ) − ε‖²,

with ``a, s`` the marginal of :class:`~robustkit.diffusion.VPSDE` (Song et al. 2021, Eq. 7 with the
ε-parametrisation of Ho et al. 2020, Eq. 14), and ``ỹ`` the label replaced by the null label with
probability ``p_uncond`` (classifier-free guidance training, Ho & Salimans 2021, Algorithm 1), so one
network learns ``ε(x, t, y)`` and ``ε(x, t, ∅)``. It keeps an exponential moving average (EMA) of the
weights, the model that is sampled and saved. The backbone is chosen by the type of
``DiffusionTrainConfig.model`` (:class:`~robustkit.diffusion.UNetConfig`, :class:`~robustkit.diffusion.DiTConfig`
or :class:`~robustkit.diffusion.DiffuSSMConfig`); everything else (loop, EMA, checkpoints, seeding) is shared.

Reproducibility and resumption. Every random draw of step ``k`` (batch order, t, ε, label dropout,
flips, dropout masks) comes from generators seeded with a hash of ``(seed, k)`` (batch order: of
``(seed, epoch)``), never from running RNG state, and the learning rate is a pure function of ``k``.
A checkpoint therefore needs only the weights, the EMA, the optimiser state and ``k``: resuming from
it replays exactly the steps an uninterrupted run would have taken (bit for bit on the same machine,
device and thread count). Checkpoints are written atomically (temporary file in the same folder,
flush + fsync, ``os.replace``, fsync of the folder), so a run killed at any instant leaves either the
previous or the new checkpoint, never a partial one, and loses at most the steps since the last one.

Files in ``out_dir``: ``checkpoint.pt`` (resumable state, read with ``torch.load(weights_only=True)``),
``train_config.json``, and at the end ``ema.safetensors`` (the EMA weights, loadable with
:func:`~robustkit.diffusion.create_score_model` ``(name, checkpoint=...)``) and ``samples.png`` (a grid
of DDIM samples, one row per class for conditional models).

Reference:
    Ho, Jain, Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020 (Algorithm 1, Eq. 14;
    Appendix B: Adam, lr 2e-4, warm-up 5000, batch 128, gradient clipping 1, EMA 0.9999, 800k steps).
    Song et al., "Score-Based Generative Modeling through Stochastic Differential Equations", ICLR 2021
    (continuous-time VP training with t ~ U[t_eps, 1], t_eps = 1e-5), github.com/yang-song/score_sde_pytorch.
    Ho & Salimans, "Classifier-Free Diffusion Guidance", NeurIPS 2021 workshop (p_uncond = 0.1).
    Song, Meng, Ermon, "Denoising Diffusion Implicit Models", ICLR 2021 (the sampler of the grid).

Example::

    >>> import tempfile
    >>> from robustkit.diffusion import UNetConfig, DiffusionTrainConfig, train
    >>> unet = UNetConfig(in_channels=1, image_size=8, base_channels=8, channel_mult=(1, 2),
    ...                   num_res_blocks=1, attention_resolutions=(), num_groups=4, num_classes=10, dropout=0.0)
    >>> cfg = DiffusionTrainConfig(model=unet, dataset="digits", n_examples=64, steps=4, batch_size=16,
    ...                            lr=1e-3, warmup_steps=0, ema_decay=0.9, hflip=False)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     result = train(cfg, d, samples_per_class=1, sample_steps=2)
    ...     sorted(p.name for p in result.out_dir.iterdir())
    ['checkpoint.pt', 'ema.safetensors', 'samples.png', 'train_config.json']
    >>> result.finished, result.step, len(result.losses)
    (True, 4, 4)
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import torch

from ..errors import CheckpointError, InputError
from ..utils import check_positive_int
from .diffussm import DiffuSSM, DiffuSSMConfig
from .dit import DiT, DiTConfig
from .schedule import DiscreteVPSchedule, VPSDE
from .score_model import ScoreModel
from .solvers import ddim
from .unet import ClassifierFreeGuidance, UNet, UNetConfig

log = logging.getLogger(__name__)

__all__ = ["BACKBONES", "DiffusionTrainConfig", "TrainResult", "backbone_tag", "denoising_loss", "sample_images",
           "save_image_grid", "train"]

CHECKPOINT_NAME = "checkpoint.pt"
WEIGHTS_NAME = "ema.safetensors"
SAMPLES_NAME = "samples.png"
CONFIG_NAME = "train_config.json"
CHECKPOINT_FORMAT = "robustkit.diffusion.train/1"

ModelConfig = UNetConfig | DiTConfig | DiffuSSMConfig

#: backbone tag (the ``"backbone"`` key of a serialised model config) → (config class, network class).
BACKBONES: dict[str, tuple[type, type[ScoreModel]]] = {
    "unet": (UNetConfig, UNet),
    "dit": (DiTConfig, DiT),
    "diffussm": (DiffuSSMConfig, DiffuSSM),
}
_ACCEPTED = ", ".join(config_cls.__name__ for config_cls, _ in BACKBONES.values())


def backbone_tag(model_config: object) -> str:
    """The tag of a model config (``"unet"``, ``"dit"`` or ``"diffussm"``); InputError for other types."""
    for tag, (config_cls, _) in BACKBONES.items():
        if isinstance(model_config, config_cls):
            return tag
    raise InputError(f"model must be one of {_ACCEPTED}, got {type(model_config).__name__}")


def _model_config_from_dict(d: dict) -> ModelConfig:
    """Rebuild a model config from its JSON form ``{"backbone": tag, **fields}``."""
    fields = dict(d)
    tag = fields.pop("backbone", None)
    if tag not in BACKBONES:
        raise InputError(f"a model config given as a dict needs a 'backbone' key, one of "
                         f"{', '.join(map(repr, BACKBONES))} (for {_ACCEPTED}); got {tag!r}")
    config_cls = BACKBONES[tag][0]
    try:
        return config_cls(**fields)
    except TypeError as e:  # unknown or missing field names
        raise InputError(f"bad {config_cls.__name__} fields for backbone {tag!r}: {e}") from e


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class DiffusionTrainConfig:
    """Everything that determines the trained weights. Defaults: DDPM's CIFAR-10 recipe (Ho et al.
    2020, Appendix B) with the classifier-free-guidance label dropout of Ho & Salimans (2021).

    Attributes:
        model: the architecture, a :class:`~robustkit.diffusion.UNetConfig`,
            :class:`~robustkit.diffusion.DiTConfig` or :class:`~robustkit.diffusion.DiffuSSMConfig` (or its
            JSON form, a dict with a ``"backbone"`` tag: ``"unet"``, ``"dit"``, ``"diffussm"``); default:
            DDPM's CIFAR-10 U-Net, class-conditional.
        dataset: a name of ``robustkit.data.DATASETS`` (``"cifar10"``, ``"digits"``); its train split.
        n_examples: train on the first n examples only (``None``: all).
        steps: optimiser steps in all (also the length of the learning-rate schedule).
        batch_size: examples per step (batches are drawn without replacement within an epoch).
        lr: peak learning rate of Adam(W).
        warmup_steps: linear warm-up from 0 to ``lr``.
        lr_schedule: ``"constant"`` after warm-up (DDPM) or ``"cosine"`` decay to 0 at ``steps``.
        weight_decay: AdamW's decoupled weight decay (0: Adam).
        grad_clip: clip the global gradient norm to this value (``None``: no clipping).
        ema_decay: EMA decay; the effective decay at update n is ``min(ema_decay, (1 + n)/(10 + n))``.
        p_uncond: probability of replacing the label by the null label (ignored by unconditional
            models).
        t_eps: times are drawn uniformly from ``[t_eps, 1]`` (score_sde's 1e-5).
        beta_min, beta_max: the :class:`~robustkit.diffusion.VPSDE` (0.1 and 20).
        hflip: random horizontal flips (DDPM on CIFAR-10; never for digits).
        seed: seeds the initialisation and every random draw.
    """

    model: ModelConfig = field(default_factory=UNetConfig)
    dataset: str = "cifar10"
    n_examples: int | None = None
    steps: int = 800_000
    batch_size: int = 128
    lr: float = 2e-4
    warmup_steps: int = 5000
    lr_schedule: Literal["constant", "cosine"] = "constant"
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    ema_decay: float = 0.9999
    p_uncond: float = 0.1
    t_eps: float = 1e-5
    beta_min: float = 0.1
    beta_max: float = 20.0
    hflip: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        from ..data import DATASETS

        if isinstance(self.model, dict):  # e.g. read back from JSON
            object.__setattr__(self, "model", _model_config_from_dict(self.model))
        backbone_tag(self.model)  # validates the type
        if self.dataset not in DATASETS:
            raise InputError(f"unknown dataset {self.dataset!r}; available: {', '.join(sorted(DATASETS))}")
        check_positive_int("n_examples", self.n_examples, none_ok=True)
        for name in ("steps", "batch_size"):
            check_positive_int(name, getattr(self, name))
        if not (_is_int(self.warmup_steps) and self.warmup_steps >= 0):
            raise InputError(f"warmup_steps must be an int >= 0, got {self.warmup_steps!r}")
        if not (_is_real(self.lr) and self.lr > 0):
            raise InputError(f"lr must be a positive finite number, got {self.lr!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise InputError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if not (_is_real(self.weight_decay) and self.weight_decay >= 0):
            raise InputError(f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        if self.grad_clip is not None and not (_is_real(self.grad_clip) and self.grad_clip > 0):
            raise InputError(f"grad_clip must be a positive finite number or None, got {self.grad_clip!r}")
        if not (_is_real(self.ema_decay) and 0 <= self.ema_decay < 1):
            raise InputError(f"ema_decay must be in [0, 1), got {self.ema_decay!r}")
        if not (_is_real(self.p_uncond) and 0 <= self.p_uncond < 1):
            raise InputError(f"p_uncond must be in [0, 1), got {self.p_uncond!r}")
        if not (_is_real(self.t_eps) and 0 < self.t_eps < 1):
            raise InputError(f"t_eps must be in (0, 1), got {self.t_eps!r}")
        if not (_is_real(self.beta_min) and _is_real(self.beta_max)):
            raise InputError(f"beta_min and beta_max must be finite numbers, got {self.beta_min!r}, {self.beta_max!r}")
        VPSDE(self.beta_min, self.beta_max)  # validates the range
        if not isinstance(self.hflip, bool):
            raise InputError(f"hflip must be a bool, got {self.hflip!r}")
        if not (_is_int(self.seed) and self.seed >= 0):
            raise InputError(f"seed must be an int >= 0, got {self.seed!r}")

    @property
    def sde(self) -> VPSDE:
        return VPSDE(self.beta_min, self.beta_max)

    @property
    def backbone(self) -> str:
        """The tag of :attr:`model`: ``"unet"``, ``"dit"`` or ``"diffussm"``."""
        return backbone_tag(self.model)

    def to_dict(self) -> dict:
        """JSON-ready dict; :meth:`from_dict` rebuilds the config. ``model`` is tagged with its backbone."""
        d = dataclasses.asdict(self)
        d["model"] = {"backbone": self.backbone, **d["model"]}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DiffusionTrainConfig":
        """Rebuild a config from :meth:`to_dict`'s form, or from the U-Net-only form of older versions
        (``"unet": {...}`` in place of ``"model"``), so their run folders still resume.

        Example::

            >>> old = {"unet": {"in_channels": 1, "image_size": 8, "channel_mult": [1, 2],
            ...                 "attention_resolutions": [4], "num_groups": 8}, "dataset": "digits"}
            >>> cfg = DiffusionTrainConfig.from_dict(old)
            >>> cfg.backbone, cfg.model.channel_mult, cfg.to_dict()["model"]["backbone"]
            ('unet', (1, 2), 'unet')
        """
        d = dict(d)
        if "unet" in d:
            if "model" in d:
                raise InputError("a DiffusionTrainConfig dict has either 'model' or the older 'unet', not both")
            unet = d.pop("unet")
            if not isinstance(unet, dict):
                raise InputError(f"'unet' must be a dict of UNetConfig fields, got {type(unet).__name__}")
            d["model"] = {"backbone": "unet", **unet}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise InputError(f"unknown DiffusionTrainConfig fields: {', '.join(unknown)}")
        return cls(**d)

    def lr_at(self, step: int) -> float:
        """Learning rate of step ``step`` (0-based): linear warm-up, then constant or cosine to 0."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.lr_schedule == "constant":
            return self.lr
        span = max(self.steps - self.warmup_steps, 1)
        return 0.5 * self.lr * (1 + math.cos(math.pi * min(step - self.warmup_steps, span) / span))


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        model: the EMA network (eval mode, frozen parameters), on the training device; its class
            follows ``config.model`` (UNet, DiT or DiffuSSM).
        step: optimiser steps done so far (== ``config.steps`` when finished).
        finished: whether all steps are done (False when stopped by ``stop_after``/``max_time_s``).
        losses: the training loss of every step so far (from the start of the run, resumed or not).
        out_dir: the run folder; ``checkpoint_path``, ``weights_path``, ``samples_path`` lie in it
            (the last two are ``None`` until finished).
        elapsed_s: wall time of this call.
    """

    model: ScoreModel
    config: DiffusionTrainConfig
    step: int
    finished: bool
    losses: list[float]
    out_dir: Path
    checkpoint_path: Path
    weights_path: Path | None
    samples_path: Path | None
    elapsed_s: float


# ------------------------------------------------------------------------------------------ atomic files

def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable; not possible on every platform (Windows), where it is skipped.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Write a file so that ``path`` holds either its old content or the complete new one, never a part.

    ``write(f)`` fills a temporary file in the same folder; it is flushed, fsync'ed and renamed over
    ``path`` with ``os.replace`` (atomic on POSIX and Windows), then the folder is fsync'ed. On any
    error (or interrupt) the temporary file is removed and the error re-raised.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):  # mkstemp makes the file private (0600); give it the usual mode
                umask = os.umask(0)
                os.umask(umask)
                os.fchmod(f.fileno(), 0o666 & ~umask)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def write_float16_weights(src: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Copy the safetensors weights ``src`` to ``dest`` (atomically) with every floating tensor in float16.

    How the bundled weights are stored: half the bytes, and the score-model registry loads them back as
    float32. Returns ``dest``.
    """
    from safetensors.torch import load_file, save as st_save

    weights = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in load_file(str(src)).items()}
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(dest, lambda f: f.write(st_save(weights)))


def _save_checkpoint(path: Path, state: dict) -> None:
    atomic_write(path, lambda f: torch.save(state, f))


def _load_checkpoint(path: Path) -> dict:
    from .. import hub

    state = hub.load_state_dict_file(path)  # one CheckpointError line for a truncated or unreadable file
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a robustkit diffusion training checkpoint "
                              f"(expected format {CHECKPOINT_FORMAT!r})")
    return state


def _saved_config_dict(state: dict, path: Path) -> dict:
    """The config a checkpoint was made with, in the current JSON form (also for checkpoints of older,
    U-Net-only versions, whose config has ``"unet"`` in place of the tagged ``"model"``)."""
    try:
        saved = DiffusionTrainConfig.from_dict(json.loads(state["config"]))
    except (KeyError, TypeError, ValueError, InputError) as e:  # ValueError includes JSONDecodeError
        raise CheckpointError(f"the config stored in {path} cannot be read: {type(e).__name__}: {e}") from e
    return json.loads(json.dumps(saved.to_dict()))


def load_trained(run_dir: str | os.PathLike) -> ScoreModel:
    """The EMA model of a finished :func:`train` run (``robustkit train-diffusion``), from its folder alone.

    The architecture comes from the run's ``train_config.json``, the weights from its ``ema.safetensors``
    (loaded strictly). The model is returned in eval mode with frozen parameters, like
    :func:`~robustkit.diffusion.create_score_model`'s; ``model.name`` is ``"<backbone> (run <folder
    name>)"`` and ``model.weights_path`` the weights file. Any diffusion defense takes it
    (``robustkit.create_defense(..., score_model=model)``, or ``--score-model DIR`` on the command line).

    Raises :class:`~robustkit.CheckpointError` when the folder is not a run, or its run has not finished.

    Example::

        >>> import tempfile
        >>> from robustkit.diffusion import DiTConfig, DiffusionTrainConfig, load_trained, train
        >>> dit = DiTConfig(in_channels=1, image_size=8, patch_size=2, hidden_size=16, depth=1, num_heads=2,
        ...                 num_classes=10, frequency_size=16)
        >>> cfg = DiffusionTrainConfig(model=dit, dataset="digits", n_examples=32, steps=2, batch_size=8,
        ...                            warmup_steps=0, hflip=False)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = train(cfg, d, samples_per_class=0)
        ...     model = load_trained(d)
        >>> type(model).__name__, model.input_shape, model.num_classes
        ('DiT', (1, 8, 8), 10)
    """
    from .. import hub

    run = Path(run_dir)
    config_path, weights_path = run / CONFIG_NAME, run / WEIGHTS_NAME
    if not config_path.is_file():
        raise CheckpointError(f"{run} is not a diffusion training run: no {CONFIG_NAME} (robustkit train-diffusion "
                              "writes one)")
    try:
        cfg = DiffusionTrainConfig.from_dict(json.loads(config_path.read_text()))
    except (TypeError, ValueError, InputError) as e:  # ValueError includes JSONDecodeError
        raise CheckpointError(f"{config_path} cannot be read: {type(e).__name__}: {e}") from e
    if not weights_path.is_file():
        raise CheckpointError(f"{run}: no {WEIGHTS_NAME}, so its training has not finished (step files only): "
                              "rerun the same training command to resume it")
    model = _build_model(cfg)  # its initial weights are overwritten; built without touching the global RNG
    hub.load_strict(model, hub.load_state_dict_file(weights_path), source=str(weights_path))
    model.eval().requires_grad_(False)
    model.name = f"{cfg.backbone} (run {run.resolve().name})"
    model.weights_path = str(weights_path)
    return model


# ---------------------------------------------------------------------------------------------- randomness

def _derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from ``(seed, *parts)`` (sha256: independent streams, stable across runs/platforms)."""
    digest = hashlib.sha256(":".join(map(str, (seed, *parts))).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2 ** 63 - 1)


def _generator(seed: int, *parts: object) -> torch.Generator:
    return torch.Generator().manual_seed(_derive_seed(seed, *parts))


def _batch_indices(cfg: DiffusionTrainConfig, step: int, n: int) -> torch.Tensor:
    """Indices of step ``step``: epochs are seeded permutations, cut into full batches (the rest dropped)."""
    bs = min(cfg.batch_size, n)
    per_epoch = n // bs
    epoch, pos = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=_generator(cfg.seed, "epoch", epoch))
    return perm[pos * bs:(pos + 1) * bs]


def _build_model(cfg: DiffusionTrainConfig) -> ScoreModel:
    """The network of ``cfg.model`` (its class from :data:`BACKBONES`), seeded by ``cfg.seed``."""
    network_cls = BACKBONES[cfg.backbone][1]
    # nn.Module initialisers draw from the global RNG: seed it privately and restore it afterwards.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_derive_seed(cfg.seed, "init"))
        return network_cls(cfg.model)


# ------------------------------------------------------------------------------------------------ helpers

def denoising_loss(model: ScoreModel, x0: torch.Tensor, t: float | torch.Tensor, *, y: torch.Tensor | None = None,
                   sde: VPSDE | None = None, generator: torch.Generator | None = None,
                   batch_size: int = 512) -> torch.Tensor:
    """Per-example ε-prediction error ``mean_pixels (ε̂(x_t, t, y) − ε)²`` at time ``t``.

    ``x0`` is in the model's scaling ([-1, 1]); ``ε`` is drawn on the CPU from ``generator`` (seeded
    for reproducible measurements). A predictor of ``ε̂ = 0`` scores ``mean(ε²) ≈ 1``. Runs under the
    caller's grad mode.

    Shape:
        ``x0 [N, C, H, W]``, ``t`` scalar or ``[N]``, ``y [N]`` or None → ``[N]``.

    Example::

        >>> import torch
        >>> zero = lambda x, t, y: torch.zeros_like(x)
        >>> loss = denoising_loss(zero, torch.zeros(256, 1, 8, 8), 0.5, generator=torch.Generator().manual_seed(0))
        >>> loss.shape, abs(float(loss.mean()) - 1) < 0.02
        (torch.Size([256]), True)
    """
    sde = sde or VPSDE()
    n = x0.shape[0]
    t = torch.as_tensor(t, dtype=x0.dtype)
    t = t.expand(n) if t.dim() == 0 else t
    if t.shape != (n,):
        raise InputError(f"t must be a scalar or have shape [{n}], got {list(t.shape)}")
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    t = t.to(x0.device)
    out = []
    for i in range(0, n, batch_size):
        sl = slice(i, i + batch_size)
        x_t = sde.add_noise(x0[sl], noise[sl], t[sl])
        eps = model(x_t, t[sl], None if y is None else y[sl])
        out.append((eps - noise[sl]).pow(2).flatten(1).mean(1))
    return torch.cat(out)


def sample_images(model: ScoreModel, n_or_labels: int | torch.Tensor, *, steps: int = 50,
                  guidance_scale: float = 0.0, beta_min: float = 0.1, beta_max: float = 20.0,
                  generator: torch.Generator | None = None, batch_size: int = 500) -> torch.Tensor:
    """Draw images with deterministic DDIM from pure noise (step 999 of a 1000-step VP schedule).

    Args:
        model: a ScoreModel trained under ``VPSDE(beta_min, beta_max)``.
        n_or_labels: a number of unconditional samples, or labels ``[N]`` (class-conditional).
        steps: DDIM steps (model evaluations).
        guidance_scale: classifier-free guidance weight ``w`` (0: plain conditional model).
        generator: draws the starting noise (on the CPU; seeded for reproducibility).

    Returns:
        images ``[N, C, H, W]`` in [0, 1] (clamped), on the model's device. Runs under the caller's
        grad mode (wrap in ``torch.no_grad()`` unless you differentiate through it).

    Shape:
        labels ``[N]`` → ``[N, *model.input_shape]``.

    Example::

        >>> import torch
        >>> zero = lambda x, t, y: torch.zeros_like(x)
        >>> zero.input_shape = (1, 4, 4)
        >>> imgs = sample_images(zero, 3, steps=2, generator=torch.Generator().manual_seed(0))
        >>> imgs.shape, bool((imgs >= 0).all() and (imgs <= 1).all())
        (torch.Size([3, 1, 4, 4]), True)
    """
    labels = None if isinstance(n_or_labels, int) else n_or_labels
    n = n_or_labels if labels is None else len(labels)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"need a positive number of samples, got {n_or_labels!r}")
    if guidance_scale:
        model = ClassifierFreeGuidance(model, guidance_scale)
    try:
        device = next(model.parameters()).device
    except (AttributeError, StopIteration):
        device = torch.device("cpu")
    schedule = DiscreteVPSchedule(beta_min, beta_max, 1000)
    x = torch.randn((n, *model.input_shape), generator=generator)
    out = []
    for i in range(0, n, batch_size):
        xb = x[i:i + batch_size].to(device)
        yb = None if labels is None else labels[i:i + batch_size].to(device)
        out.append(ddim(model, schedule, xb, schedule.num_steps - 1, steps=steps, y=yb))
    return ((torch.cat(out) + 1) / 2).clamp(0, 1)


def save_image_grid(images: torch.Tensor, path: str | os.PathLike, *, nrow: int, scale: int = 1,
                    padding: int = 1) -> Path:
    """Save images ``[N, C, H, W]`` in [0, 1] (C = 1 or 3) as a PNG grid of ``nrow`` images per row.

    Each image is enlarged ``scale`` times (nearest neighbour) and framed by ``padding`` white pixels.
    Written atomically.

    Shape:
        ``images [N, C, H, W]`` → a ``ceil(N / nrow)`` × ``nrow`` grid, 8-bit grey (C = 1) or RGB.

    Example::

        >>> import os, tempfile, torch
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = save_image_grid(torch.rand(6, 1, 8, 8), os.path.join(d, "g.png"), nrow=3, scale=2)
        ...     from PIL import Image; Image.open(p).size
        (52, 35)
    """
    from PIL import Image

    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise InputError(f"images must have shape [N, 1 or 3, H, W], got {list(images.shape)}")
    imgs = images.detach().float().cpu().clamp(0, 1)
    if scale > 1:
        imgs = imgs.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    n, c, h, w = imgs.shape
    rows = math.ceil(n / nrow)
    grid = torch.ones(c, rows * (h + padding) + padding, nrow * (w + padding) + padding)
    for k in range(n):
        r, q = divmod(k, nrow)
        top, left = padding + r * (h + padding), padding + q * (w + padding)
        grid[:, top:top + h, left:left + w] = imgs[k]
    arr = (grid * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    img = Image.fromarray(arr[:, :, 0] if c == 1 else arr, mode="L" if c == 1 else "RGB")
    return atomic_write(path, lambda f: img.save(f, format="PNG"))


# --------------------------------------------------------------------------------------------------- train

def _config_mismatch(saved: dict, current: dict) -> list[str]:
    return [f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}"
            for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]


def _load_data(cfg: DiffusionTrainConfig, data_dir: str | os.PathLike | None) -> tuple[torch.Tensor, torch.Tensor]:
    from ..data import load_dataset

    x, y = load_dataset(cfg.dataset, split="train", n_examples=cfg.n_examples, data_dir=data_dir)
    name = type(cfg.model).__name__
    if tuple(x.shape[1:]) != cfg.model.input_shape:
        raise InputError(f"dataset {cfg.dataset} has images of shape {list(x.shape[1:])} but the {name} expects "
                         f"{list(cfg.model.input_shape)}")
    if cfg.model.num_classes is not None and int(y.max()) >= cfg.model.num_classes:
        raise InputError(f"dataset {cfg.dataset} has labels up to {int(y.max())} but the {name} has "
                         f"num_classes={cfg.model.num_classes}")
    return x * 2 - 1, y  # the VP scaling: data in [-1, 1]


def _ema_update(ema: ScoreModel, model: ScoreModel, decay: float) -> None:
    # ema ← decay·ema + (1 − decay)·θ; the EMA's parameters do not require grad and θ is detached,
    # so no graph is recorded (no grad-mode switch needed).
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1.0 - decay)


def train(config: DiffusionTrainConfig, out_dir: str | os.PathLike, *, device: str | torch.device = "cpu",
          resume: bool = True, stop_after: int | None = None, max_time_s: float | None = None,
          checkpoint_every: int = 1000, amp: bool = True, data_dir: str | os.PathLike | None = None,
          samples_per_class: int = 10, sample_steps: int = 50, progress: bool | None = None) -> TrainResult:
    """Train a noise predictor (U-Net, DiT or DiffuSSM; see the module docstring), resumably, into ``out_dir``.

    Args:
        config: the :class:`DiffusionTrainConfig` (everything that determines the weights).
        out_dir: run folder (created). If it holds a checkpoint, training resumes from it when
            ``resume`` (the saved config must equal ``config``; checkpoints of older, U-Net-only versions
            are read too), else :class:`InputError` is raised. A call on a finished run neither loads
            the data nor samples again: it returns the run's files (re-exporting a deleted weights file).
        device: where to train. On CUDA with ``amp``, the forward pass runs under bfloat16 autocast.
        stop_after: run at most this many steps in this call, then checkpoint and return (training in
            chunks); ``max_time_s``: likewise after this much wall time.
        checkpoint_every: write ``checkpoint.pt`` every this many steps (and always when stopping).
        data_dir: dataset folder (see :func:`robustkit.load_dataset`).
        samples_per_class, sample_steps: size and DDIM steps of the final ``samples.png`` (conditional:
            one row per class; unconditional: ``10 · samples_per_class`` images); 0 samples: no grid.
        progress: tqdm bar with the running loss (default: only when stderr is a terminal).

    Returns:
        a :class:`TrainResult`.

    Shape:
        the dataset's images ``[N, C, H, W]`` must have ``config.model.input_shape``; each step trains on
        ``[batch_size, C, H, W]`` (``x0`` scaled to [-1, 1]) with ``t``, labels ``[batch_size]``.

    Reference:
        Ho et al. 2020, Algorithm 1; Song et al. 2021; Ho & Salimans 2021, Algorithm 1 (module docstring).

    Raises:
        InputError: bad arguments, a dataset that does not fit the network, or a checkpoint in
            ``out_dir`` made with another config; CheckpointError: an unreadable checkpoint.
    """
    from ..utils import progress_bar, stage

    t_start = time.perf_counter()
    if not isinstance(config, DiffusionTrainConfig):
        raise InputError(f"config must be a DiffusionTrainConfig, got {type(config).__name__}")
    check_positive_int("stop_after", stop_after, none_ok=True)
    if max_time_s is not None and not (_is_real(max_time_s) and max_time_s > 0):
        raise InputError(f"max_time_s must be a positive number or None, got {max_time_s!r}")
    check_positive_int("checkpoint_every", checkpoint_every)
    if not (_is_int(samples_per_class) and samples_per_class >= 0):
        raise InputError(f"samples_per_class must be an int >= 0, got {samples_per_class!r}")
    check_positive_int("sample_steps", sample_steps)
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InputError(f"device must be a torch device such as 'cpu' or 'cuda', got {device!r}") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was asked for, but torch sees no CUDA device")
    cfg = config
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT_NAME
    for stale in out.glob(f".{CHECKPOINT_NAME}.*.tmp"):  # left by a run killed mid-write
        log.info("removing %s, a partial checkpoint of an interrupted run", stale)
        stale.unlink()

    # (AdamW imports torch._dynamo on first use: seconds, silent without this)
    with stage("train-diffusion: building the model", logger=log, enabled=progress):
        model = _build_model(cfg).to(device).train()
        ema = copy.deepcopy(model).requires_grad_(False).eval()
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, losses = 0, []
    config_dict = cfg.to_dict()
    if ckpt_path.exists():
        if not resume:
            raise InputError(f"{out} already holds a checkpoint; pass resume=True to continue it, or choose "
                             "another folder")
        state = _load_checkpoint(ckpt_path)
        diff = _config_mismatch(_saved_config_dict(state, ckpt_path), json.loads(json.dumps(config_dict)))
        if diff:
            raise InputError(f"the checkpoint in {out} was made with another config ({'; '.join(diff)}); "
                             "use the same config to resume, or another folder")
        from .. import hub

        for key, module in (("model", model), ("ema", ema)):  # strict: keys, shapes, dtypes, no NaN/Inf
            if not isinstance(state.get(key), dict):
                raise CheckpointError(f"{ckpt_path} has no {key!r} state dict")
            hub.load_strict(module, state[key], source=f"{ckpt_path} [{key!r}]")
        try:
            opt.load_state_dict(state["optimizer"])  # moves the moments to the parameters' device
            step = int(state["step"])
            losses = state["losses"].tolist()
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
            raise CheckpointError(f"{ckpt_path}: its optimizer state, step or losses cannot be restored "
                                  f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from e
        log.info("resuming %s from step %d", out, step)
    start_step = step
    if step < cfg.steps:  # a finished run needs no data: it only (re)exports its weights
        with stage(f"train-diffusion: loading {cfg.dataset}", logger=log, enabled=progress):
            x_all, y_all = _load_data(cfg, data_dir)
        x_all, y_all = x_all.to(device), y_all.to(device)
    if not ckpt_path.exists():  # written once the data fit the network
        atomic_write(out / CONFIG_NAME, lambda f: f.write(json.dumps(config_dict, indent=2).encode()))

    def checkpoint() -> None:
        _save_checkpoint(ckpt_path, {
            "format": CHECKPOINT_FORMAT, "config": json.dumps(config_dict), "step": step,
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "ema": {k: v.detach().cpu() for k, v in ema.state_dict().items()},
            "optimizer": opt.state_dict(), "losses": torch.tensor(losses, dtype=torch.float64)})

    sde = cfg.sde
    conditional = cfg.model.num_classes is not None
    use_amp = amp and device.type == "cuda"
    end = cfg.steps if stop_after is None else min(cfg.steps, step + stop_after)
    pending: list[torch.Tensor] = []  # per-step losses still on the device (one sync per flush)

    def flush() -> None:
        # Checked here rather than every step (a host sync per step would stall a GPU); a checkpoint is
        # written only after a flush, so a diverged state is never saved.
        if pending:
            values = torch.stack(pending).double().cpu()
            pending.clear()
            if not bool(torch.isfinite(values).all()):
                bad = step - len(values) + int((~torch.isfinite(values)).nonzero()[0])
                raise InputError(f"the training loss became non-finite at step {bad}; lower lr "
                                 f"(now {cfg.lr_at(bad):g}) or set grad_clip")
            losses.extend(values.tolist())

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
            progress_bar(total=cfg.steps, initial=step, enabled=progress, desc="train-diffusion", logger=log) as bar:
        while step < end:
            # All randomness of this step from (seed, step): resuming replays it exactly.
            g = _generator(cfg.seed, "step", step)
            torch.manual_seed(_derive_seed(cfg.seed, "dropout", step))  # dropout masks (global RNG)
            idx = _batch_indices(cfg, step, x_all.shape[0]).to(device)
            bs = idx.shape[0]
            t = (cfg.t_eps + (1 - cfg.t_eps) * torch.rand(bs, generator=g, dtype=torch.float64)).float()
            noise = torch.randn((bs, *cfg.model.input_shape), generator=g)
            drop = torch.rand(bs, generator=g) < cfg.p_uncond
            flip = torch.rand(bs, generator=g) < 0.5
            x0 = x_all[idx]
            if cfg.hflip:
                x0 = torch.where(flip.to(device)[:, None, None, None], x0.flip(3), x0)
            t, noise = t.to(device), noise.to(device)
            y = None
            if conditional:
                y = torch.where(drop.to(device), torch.full_like(y_all[idx], cfg.model.num_classes), y_all[idx])
            x_t = sde.add_noise(x0, noise, t)
            for group in opt.param_groups:
                group["lr"] = cfg.lr_at(step)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                eps = model(x_t, t, y)
            loss = (eps.float() - noise).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            _ema_update(ema, model, min(cfg.ema_decay, (1 + step) / (10 + step)))
            pending.append(loss.detach())
            step += 1
            bar.update(1)
            timed_out = max_time_s is not None and time.perf_counter() - t_start >= max_time_s
            if step % checkpoint_every == 0 or step == end or timed_out:
                flush()
                checkpoint()
                bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
            elif len(pending) >= 50:
                flush()
                bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
            if timed_out:
                break
    flush()

    finished = step >= cfg.steps
    weights_path = samples_path = None
    # A call on a run that was already finished keeps the files that run wrote (they are the same).
    keep = finished and step == start_step
    if keep and (out / WEIGHTS_NAME).is_file():
        weights_path = out / WEIGHTS_NAME
    elif finished:
        from safetensors.torch import save as st_save

        weights = {k: v.detach().cpu().contiguous() for k, v in ema.state_dict().items()}
        weights_path = atomic_write(out / WEIGHTS_NAME, lambda f: f.write(st_save(weights)))
    if keep and (out / SAMPLES_NAME).is_file():
        samples_path = out / SAMPLES_NAME
    elif finished and samples_per_class:
        gen = _generator(cfg.seed, "samples")
        with stage(f"train-diffusion: sample grid ({sample_steps} DDIM steps)", logger=log, enabled=progress):
            if conditional:
                labels = torch.arange(cfg.model.num_classes).repeat_interleave(samples_per_class)
                imgs = sample_images(ema, labels, steps=sample_steps, beta_min=cfg.beta_min,
                                     beta_max=cfg.beta_max, generator=gen)
                nrow = samples_per_class
            else:
                imgs = sample_images(ema, 10 * samples_per_class, steps=sample_steps, beta_min=cfg.beta_min,
                                     beta_max=cfg.beta_max, generator=gen)
                nrow = 10
        scale = max(1, 32 // cfg.model.image_size)
        samples_path = save_image_grid(imgs, out / SAMPLES_NAME, nrow=nrow, scale=scale)
    elapsed = time.perf_counter() - t_start
    log.info("%s: step %d/%d, last loss %.4f, %.1fs", out, step, cfg.steps, losses[-1] if losses else float("nan"),
             elapsed)
    return TrainResult(model=ema, config=cfg, step=step, finished=finished, losses=losses, out_dir=out,
                       checkpoint_path=ckpt_path, weights_path=weights_path, samples_path=samples_path,
                       elapsed_s=elapsed)
