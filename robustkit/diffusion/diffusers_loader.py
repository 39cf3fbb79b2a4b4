"""Hugging Face diffusers ``UNet2DModel`` checkpoints as robustkit ScoreModels.

A diffusers DDPM-style checkpoint is a directory: the network as ``config.json`` plus
``diffusion_pytorch_model.safetensors`` (or ``.bin``, or sharded with an ``.index.json``), usually inside a
pipeline directory that also holds ``scheduler/scheduler_config.json`` (e.g. ``google/ddpm-cifar10-32``:
``unet/`` and ``scheduler/``). :func:`from_diffusers` builds the ``UNet2DModel`` from its config, loads the
weights itself (safetensors, or ``torch.load(weights_only=True)``: no pickled code runs) strictly, and wraps
it in :class:`DiffusersScoreModel`, which speaks robustkit's continuous VP time.

Time convention. A diffusers DDPM model is trained on integer steps ``i = 0..N-1`` with
``x_i = sqrt(ᾱ_i) x_0 + sqrt(1 − ᾱ_i) ε``, ``ᾱ_i = Π_{j≤i}(1 − β_j)``; the scheduler config defines the β_j.
For ``beta_schedule="linear"`` (``β = linspace(beta_start, beta_end, N)``) this is exactly robustkit's
:class:`~robustkit.diffusion.schedule.DiscreteVPSchedule` with ``β_min = N·beta_start``,
``β_max = N·beta_end`` (DDPM's 1e-4..0.02 over 1000 steps is VPSDE(0.1, 20), DiffPure's schedule), whose
N → ∞ limit is :class:`~robustkit.diffusion.schedule.VPSDE` with the same β range. A continuous time ``t`` has
the noise level ``σ(t) = s(t)/a(t)`` of that VPSDE; the adapter gives the network the step whose noise
level ``σ_i = sqrt((1 − ᾱ_i)/ᾱ_i)`` is nearest to ``σ(t)`` in log σ. So the continuous time of step ``i``
(``DiscreteVPSchedule.time_of(i)``, what robustkit's DDPM and DDIM solvers pass) maps back to exactly ``i``,
and the continuous-time solvers (DiffPure's reverse SDE) get the trained step of matching noise level.
For DDPM's 1000 steps, t = 0.1 is step 99 and t = 1 is step 996: the discrete chain ends slightly noisier
than the continuous SDE (``time_of(999) ≈ 1.0034``), so times up to the last step's are accepted.

Prediction types (``scheduler_config["prediction_type"]``): ``"epsilon"`` is returned as is;
``"v_prediction"`` (``v = sqrt(ᾱ) ε − sqrt(1 − ᾱ) x_0``) becomes ``ε = sqrt(1 − ᾱ) x_t + sqrt(ᾱ) v`` and
``"sample"`` (x_0) becomes ``ε = (x_t − sqrt(ᾱ) x̂_0)/sqrt(1 − ᾱ)``, with ``ᾱ`` of the step the network was
given (the conversions diffusers' own schedulers apply). Learned-variance networks (``2C`` output channels)
return their first ``C`` channels.

``diffusers`` is an optional dependency (``pip install robustkit[diffusers]``), imported only when loading.

Reference:
    von Platen et al., "Diffusers: State-of-the-art diffusion models", github.com/huggingface/diffusers
    (``UNet2DModel``, ``DDPMScheduler``); Ho, Jain, Abbeel, "Denoising Diffusion Probabilistic Models",
    NeurIPS 2020; Salimans & Ho, "Progressive Distillation for Fast Sampling of Diffusion Models", ICLR 2022
    (v-prediction).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from ..errors import CheckpointError, InputError
from ..hub import load_state_dict_file, load_strict
from .schedule import DiscreteVPSchedule, VPSDE
from .score_model import ScoreModel

log = logging.getLogger(__name__)

__all__ = ["DiffusersScoreModel", "from_diffusers", "PREDICTION_TYPES"]

#: Prediction types the adapter converts to ε.
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")

_WEIGHT_NAME = "diffusion_pytorch_model"
_CONFIG_NAME = "config.json"
_SCHEDULER_CONFIG_NAME = "scheduler_config.json"
_INSTALL_HINT = "pip install robustkit[diffusers]"

# DDPMScheduler's defaults: what a UNet without a scheduler config is assumed to have been trained with
# when the caller passes schedule_check=False.
_DDPM_DEFAULTS: dict[str, Any] = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02,
                                  "beta_schedule": "linear", "prediction_type": "epsilon"}

# Old diffusers checkpoints name the attention projections of the (then) AttentionBlock differently; the
# modules diffusers marks with ``_from_deprecated_attn_block`` accept both layouts.
_DEPRECATED_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _import_diffusers():
    try:
        import diffusers  # noqa: F401  (heavy optional dependency: imported only here)
        from diffusers import UNet2DModel
    except ImportError as e:
        raise ImportError(f"loading diffusers checkpoints needs the 'diffusers' package: {_INSTALL_HINT} "
                          f"(import failed: {e})") from e
    return diffusers, UNet2DModel


# --------------------------------------------------------------------------------------------------------
# The schedule of a scheduler config
# --------------------------------------------------------------------------------------------------------

def _scheduler_setting(cfg: Mapping[str, Any], key: str) -> Any:
    return cfg[key] if key in cfg else _DDPM_DEFAULTS.get(key)


def _prediction_type(cfg: Mapping[str, Any]) -> str:
    if "prediction_type" in cfg:
        pred = cfg["prediction_type"]
    elif "predict_epsilon" in cfg:  # diffusers < 0.10 spelled it as a boolean
        pred = "epsilon" if cfg["predict_epsilon"] else "sample"
    else:
        pred = "epsilon"
    if pred not in PREDICTION_TYPES:
        raise InputError(f"scheduler prediction_type={pred!r} is not supported; the adapter converts "
                         f"{', '.join(PREDICTION_TYPES)} to the noise prediction ε")
    return pred


def _schedule_problems(cfg: Mapping[str, Any]) -> list[str]:
    """Why a scheduler config is not the linear VP schedule (empty when it is)."""
    problems = []
    if cfg.get("trained_betas") is not None:
        problems.append("trained_betas is set (a custom β table)")
    schedule = _scheduler_setting(cfg, "beta_schedule")
    if schedule != "linear":
        problems.append(f"beta_schedule={schedule!r} (robustkit's VPSDE is the 'linear' one)")
    if cfg.get("rescale_betas_zero_snr"):
        problems.append("rescale_betas_zero_snr=True (rescaled β, zero terminal SNR)")
    for key in ("beta_start", "beta_end", "num_train_timesteps"):
        if key not in cfg:
            problems.append(f"{key} is missing")
    return problems


def _alphas_cumprod_from_diffusers(diffusers, cfg: Mapping[str, Any], source: str) -> torch.Tensor:
    """ᾱ of a non-linear schedule, computed by the diffusers scheduler class the config names."""
    name = cfg.get("_class_name") or "DDPMScheduler"
    cls = getattr(diffusers, str(name), None)
    if cls is None or not hasattr(cls, "from_config"):
        raise InputError(f"{source}: scheduler class {name!r} is not in diffusers {diffusers.__version__}")
    scheduler = cls.from_config(dict(cfg))
    acp = getattr(scheduler, "alphas_cumprod", None)
    if not isinstance(acp, torch.Tensor) or acp.dim() != 1:
        raise InputError(f"{source}: scheduler {name} has no alphas_cumprod table, so it is not a discrete VP "
                         "schedule the adapter can map continuous VP time to")
    return acp.detach().to("cpu", torch.float64)


# --------------------------------------------------------------------------------------------------------
# The ScoreModel adapter
# --------------------------------------------------------------------------------------------------------

class DiffusersScoreModel(ScoreModel):
    """ε-prediction adapter of a diffusers ``UNet2DModel``: ``eps = model(x_t, t, y=None)`` in VP time.

    The network receives the integer step :meth:`timestep_labels` ``(t)`` (the trained step whose noise
    level is nearest to that of ``t``, see the module docstring) and its output is converted to ε according
    to ``prediction_type``. ``x_t`` is cast to the network's dtype and ε back to ``x_t``'s. Class-conditional
    networks (``num_class_embeds``) have no null class here: they need ``y``. No ``torch.no_grad()``:
    gradients flow to ``x_t``.

    Args:
        unet: a diffusers ``UNet2DModel`` (positional or learned time embedding).
        alphas_cumprod: ``ᾱ_i`` of the training schedule, ``[N]`` (float64 preferred).
        sde: the continuous VP SDE whose time ``t`` is; its ``σ(t)`` is matched to the steps' ``σ_i``.
        prediction_type: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``.
        scheduler_config: the scheduler config the schedule came from (kept for records), or ``None``.

    Attributes:
        beta_min, beta_max: the VP schedule of ``sde`` (what a purifier's schedule must agree with).
        num_train_timesteps: ``N``.
        t_max: the largest accepted ``t``: ``max(1, time of the last step's noise level)``.

    Shape:
        ``x_t [N, C, H, W]`` (data in [-1, 1]), ``t [N]`` or scalar in ``[0, t_max]`` (``t_max`` ≥ 1: the time of
        the last step's noise level), ``y`` int ``[N]`` →
        ``ε [N, C, H, W]``.

    Example (diffusers installed)::

        >>> import torch
        >>> from diffusers import UNet2DModel
        >>> unet = UNet2DModel(sample_size=8, block_out_channels=(8, 16), norm_num_groups=4, layers_per_block=1,
        ...                    down_block_types=("DownBlock2D", "DownBlock2D"),
        ...                    up_block_types=("UpBlock2D", "UpBlock2D")).eval()
        >>> sched = DiscreteVPSchedule()  # DDPM's linear schedule: VPSDE(0.1, 20) over 1000 steps
        >>> model = DiffusersScoreModel(unet, sched.alphas_cumprod64, sched.sde)
        >>> model.timestep_labels(torch.tensor([sched.time_of(0), sched.time_of(99), 0.1, 1.0])).tolist()
        [0, 99, 99, 996]
        >>> model(torch.zeros(2, 3, 8, 8), 0.1).shape
        torch.Size([2, 3, 8, 8])
    """

    def __init__(self, unet: nn.Module, alphas_cumprod: torch.Tensor, sde: VPSDE | None = None, *,
                 prediction_type: str = "epsilon", scheduler_config: Mapping[str, Any] | None = None):
        cfg = unet.config
        size = cfg.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        in_channels, out_channels = int(cfg.in_channels), int(cfg.out_channels)
        if out_channels not in (in_channels, 2 * in_channels):
            raise InputError(f"UNet2DModel has {out_channels} output channels for {in_channels} input channels; "
                             f"expected {in_channels} (a prediction) or {2 * in_channels} (plus a learned variance)")
        if cfg.time_embedding_type not in ("positional", "learned"):
            raise InputError(f"UNet2DModel time_embedding_type={cfg.time_embedding_type!r} conditions on a VE noise "
                             "level (score_sde's NCSN++ port), not on discrete VP steps; it has no ε reading "
                             "in robustkit's VP time")
        num_classes = None
        if cfg.num_class_embeds is not None:
            if cfg.class_embed_type is not None:
                raise InputError(f"UNet2DModel class_embed_type={cfg.class_embed_type!r} does not take integer "
                                 "class labels; only num_class_embeds with class_embed_type=None is supported")
            num_classes = int(cfg.num_class_embeds)
        elif cfg.class_embed_type is not None:
            raise InputError(f"UNet2DModel class_embed_type={cfg.class_embed_type!r} (conditioning on a vector, "
                             "not a class label) is not supported")
        if prediction_type not in PREDICTION_TYPES:
            raise InputError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        acp = torch.as_tensor(alphas_cumprod, dtype=torch.float64).detach().cpu()
        if acp.dim() != 1 or acp.numel() < 2 or not bool(((acp > 0) & (acp < 1)).all()) \
                or not bool((acp[1:] < acp[:-1]).all()):
            raise InputError("alphas_cumprod must be a strictly decreasing table in (0, 1) with >= 2 steps (a "
                             "zero-terminal-SNR schedule, ᾱ = 0 at its last step, has no finite VP time there)")
        if cfg.time_embedding_type == "learned" and cfg.num_train_timesteps != acp.numel():
            raise InputError(f"UNet2DModel learns {cfg.num_train_timesteps} time embeddings but the schedule has "
                             f"{acp.numel()} steps")
        super().__init__((in_channels, height, width), num_classes)
        self.unet = unet
        self.sde = sde if sde is not None else VPSDE()
        self.beta_min, self.beta_max = float(self.sde.beta_min), float(self.sde.beta_max)
        self.num_train_timesteps = int(acp.numel())
        self.prediction_type = prediction_type
        self.scheduler_config = dict(scheduler_config) if scheduler_config is not None else None
        self.alphas_cumprod = acp
        log_sigma = 0.5 * (torch.log1p(-acp) - torch.log(acp))  # log σ_i, increasing in i
        # Step i owns the log σ values between the midpoints to its neighbours (nearest noise level).
        self._log_sigma_bounds = 0.5 * (log_sigma[1:] + log_sigma[:-1])
        # Latest accepted time: 1, or the (slightly later) continuous time of the last step's noise level.
        self.t_max = max(1.0, float(self.sde.t_from_sigma(torch.exp(log_sigma[-1]))))
        self._tables: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _tables_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._tables:  # moved once per device, not per call
            self._tables[device] = (self._log_sigma_bounds.to(device), self.alphas_cumprod.to(device))
        return self._tables[device]

    def timestep_labels(self, t: torch.Tensor) -> torch.Tensor:
        """Integer steps ``[N]`` for continuous times ``t``: the nearest trained noise level, in log σ.

        ``t = 0`` (σ = 0) gives step 0; times past the last step's noise level give ``N − 1``. No range check
        here (:meth:`forward` checks ``0 <= t <= t_max``).
        """
        t = torch.as_tensor(t)
        bounds, _ = self._tables_on(t.device)
        log_sigma = torch.log(self.sde.sigma(t.detach().to(torch.float64)))
        return torch.searchsorted(bounds, log_sigma.contiguous()).long()

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        # A host sync, but an out-of-range t would silently be clamped to the first or last step.
        if not bool(((t >= 0) & (t <= self.t_max + 1e-6)).all()):
            raise InputError(f"t must lie in [0, 1] (up to {self.t_max:.6f}, the time of the last trained step), "
                             f"got values in [{t.min().tolist()}, {t.max().tolist()}]")
        if self.conditional:
            if y is None:
                raise InputError("this diffusers UNet is class-conditional (num_class_embeds) and has no null "
                                 "class; pass integer labels y")
            if bool(((y < 0) | (y >= self.num_classes)).any()):
                raise InputError(f"class labels must lie in [0, {self.num_classes}), got {y.tolist()}")
        steps = self.timestep_labels(t)
        dtype = self.unet.conv_out.weight.dtype
        out = self.unet(x_t.to(dtype), steps, class_labels=y, return_dict=False)[0]
        out = out[:, : self.input_shape[0]].to(x_t.dtype)
        if self.prediction_type == "epsilon":
            return out
        _, acp = self._tables_on(x_t.device)
        acp = acp[steps].to(x_t.dtype).view(-1, 1, 1, 1)
        a, s = acp.sqrt(), (1.0 - acp).sqrt()
        if self.prediction_type == "v_prediction":  # v = a ε − s x0 and x_t = a x0 + s ε ⇒ ε = s x_t + a v
            return s * x_t + a * out
        return (x_t - a * out) / s  # "sample": the network predicts x0


# --------------------------------------------------------------------------------------------------------
# Loading a checkpoint directory
# --------------------------------------------------------------------------------------------------------

def _read_json(path: Path) -> dict[str, Any]:
    from ..eval.schema import read_json_file

    obj = read_json_file(path, CheckpointError)  # names the file; says "truncated" for a cut-off one
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a JSON {type(obj).__name__}, expected an object")
    return obj


def _locate(path: Path) -> tuple[Path, Path | None]:
    """``(unet_dir, scheduler_config_file or None)`` of a UNet directory or a pipeline directory."""
    if not path.exists():
        raise CheckpointError(f"diffusers checkpoint directory not found: {path}")
    if not path.is_dir():
        raise CheckpointError(f"{path} is a file; pass the diffusers model directory (with config.json and "
                              f"{_WEIGHT_NAME}.safetensors) or the pipeline directory holding unet/")
    if (path / _CONFIG_NAME).is_file() and not (path / "unet" / _CONFIG_NAME).is_file():
        unet_dir = path
        candidates = [path / _SCHEDULER_CONFIG_NAME, path.parent / "scheduler" / _SCHEDULER_CONFIG_NAME]
    elif (path / "unet" / _CONFIG_NAME).is_file():
        unet_dir = path / "unet"
        candidates = [path / "scheduler" / _SCHEDULER_CONFIG_NAME]
    else:
        raise CheckpointError(f"{path} is not a diffusers model directory: expected {_CONFIG_NAME} there or in "
                              f"unet/ (found: {sorted(p.name for p in path.iterdir())[:20]})")
    return unet_dir, next((c for c in candidates if c.is_file()), None)


def _weight_files(unet_dir: Path, variant: str | None) -> list[Path]:
    stem = _WEIGHT_NAME if variant is None else f"{_WEIGHT_NAME}.{variant}"
    for ext in ("safetensors", "bin"):
        single = unet_dir / f"{stem}.{ext}"
        if single.is_file():
            return [single]
        index = unet_dir / f"{stem}.{ext}.index.json"
        if index.is_file():
            weight_map = _read_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(f"{index} has no 'weight_map'")
            shards = []
            for name in sorted(set(map(str, weight_map.values()))):
                # A shard name is a file name in this directory, never a path elsewhere.
                if Path(name).name != name or name in (".", ".."):
                    raise CheckpointError(f"{index} names the shard {name!r}, which is not a file name")
                if not (unet_dir / name).is_file():
                    raise CheckpointError(f"{index} names the shard {name}, which is missing from {unet_dir}")
                shards.append(unet_dir / name)
            return shards
    raise CheckpointError(f"no weights in {unet_dir}: expected {stem}.safetensors or {stem}.bin (or a sharded "
                          f"{stem}.safetensors.index.json)")


def _load_weights(files: list[Path]) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for f in files:
        # safetensors, or torch.load(weights_only=True): a pickle that would run code is refused.
        part = load_state_dict_file(f)
        overlap = state.keys() & part.keys()
        if overlap:
            raise CheckpointError(f"{f} repeats keys of another shard: {sorted(overlap)[:5]}")
        state.update(part)
    return state


def _rename_deprecated_attention(unet: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map old AttentionBlock names (``query``, ``proj_attn``, ...) to the current ones where present."""
    for name, module in unet.named_modules():
        if not getattr(module, "_from_deprecated_attn_block", False):
            continue
        for old, new in _DEPRECATED_ATTENTION_NAMES.items():
            for kind in ("weight", "bias"):
                old_key, new_key = f"{name}.{old}.{kind}", f"{name}.{new}.{kind}"
                if old_key in state and new_key not in state:
                    state[new_key] = state.pop(old_key)
    return state


def _build_unet(UNet2DModel, config: dict[str, Any], source: str) -> nn.Module:
    try:
        with torch.device("meta"):  # shapes only: no time spent initialising weights that are overwritten
            unet = UNet2DModel.from_config(config)
    except Exception as e:  # noqa: BLE001 (diffusers raises several types for a bad config)
        raise CheckpointError(f"{source}: diffusers cannot build UNet2DModel from this config: "
                              f"{type(e).__name__}: {e}") from e
    persistent = set(unet.state_dict())
    if any(name not in persistent for name, _ in unet.named_buffers()):
        # Non-persistent buffers would stay uninitialised after to_empty: build on the CPU instead.
        return UNet2DModel.from_config(config)
    return unet.to_empty(device="cpu")


def from_diffusers(path: str | os.PathLike, *, schedule_check: bool = True,
                   variant: str | None = None) -> DiffusersScoreModel:
    """Load a diffusers ``UNet2DModel`` checkpoint directory as a :class:`DiffusersScoreModel`.

    ``path`` is either the model directory (``config.json`` + ``diffusion_pytorch_model.safetensors`` /
    ``.bin`` / sharded) or a pipeline directory holding ``unet/`` (and ``scheduler/``). The scheduler config is
    read from ``scheduler/scheduler_config.json`` of the pipeline (for a model directory: its own
    ``scheduler_config.json`` or the sibling ``../scheduler/``). Nothing is downloaded.

    With ``schedule_check`` (default) the scheduler config must describe robustkit's VP schedule:
    ``beta_schedule="linear"``, no ``trained_betas``, no ``rescale_betas_zero_snr``, and explicit
    ``beta_start``, ``beta_end``, ``num_train_timesteps``; the adapter then works in
    ``VPSDE(N·beta_start, N·beta_end)`` time (DDPM's defaults give ``VPSDE(0.1, 20)``). With
    ``schedule_check=False`` a missing scheduler config is taken as ``DDPMScheduler``'s defaults, and a
    non-linear schedule's steps are matched by noise level to ``VPSDE(0.1, 20)`` time (the ᾱ table then
    comes from the diffusers scheduler class); both warn.

    Args:
        path: the model or pipeline directory.
        schedule_check: refuse schedules that are not the linear VP one (see above).
        variant: weight-file variant, e.g. ``"fp16"`` for ``diffusion_pytorch_model.fp16.safetensors``
            (the weights are loaded into the float32 network).

    Returns:
        a :class:`DiffusersScoreModel` on the CPU, in eval mode, with frozen parameters (input gradients
        still flow).

    Raises:
        ImportError: diffusers is not installed (``pip install robustkit[diffusers]``).
        CheckpointError: missing directory, config or weights; unreadable or pickled-code files; keys or
            shapes that do not match the config (all listed).
        InputError: the schedule is not the linear VP one (with ``schedule_check``), an unsupported
            ``prediction_type``, or a network that is not a discrete-time VP ``UNet2DModel``.

    Example (a local copy of the google/ddpm-cifar10-32 pipeline; nothing is downloaded; the tests run the
    same on a tiny saved UNet)::

        model = from_diffusers("ddpm-cifar10-32")       # the folder holding unet/ and scheduler/
        model.beta_min, model.beta_max, model.prediction_type   # (0.1, 20.0, 'epsilon')
        eps = model(x_t, torch.full((n,), 0.1))           # the network at step 99
    """
    diffusers, UNet2DModel = _import_diffusers()
    unet_dir, scheduler_file = _locate(Path(path))
    config = _read_json(unet_dir / _CONFIG_NAME)
    class_name = config.get("_class_name", "UNet2DModel")
    if class_name != "UNet2DModel":
        raise CheckpointError(f"{unet_dir / _CONFIG_NAME} describes a {class_name}; from_diffusers loads "
                              "UNet2DModel (unconditional or class-conditional pixel-space DDPM networks)")

    if scheduler_file is not None:
        sched_cfg = _read_json(scheduler_file)
        source = str(scheduler_file)
    elif schedule_check:
        raise InputError(f"no {_SCHEDULER_CONFIG_NAME} found for {unet_dir} (looked in it and in "
                         f"{unet_dir.parent / 'scheduler'}), so the training schedule is unknown; pass the "
                         "pipeline directory, or schedule_check=False to assume DDPMScheduler's defaults "
                         "(linear β 1e-4..0.02, 1000 steps, epsilon prediction)")
    else:
        warnings.warn(f"no {_SCHEDULER_CONFIG_NAME} found for {unet_dir}: assuming DDPMScheduler's defaults "
                      "(linear β 1e-4..0.02 over 1000 steps, epsilon prediction), i.e. VPSDE(0.1, 20); if the "
                      "network was trained otherwise its ε is wrong", stacklevel=2)
        sched_cfg, source = dict(_DDPM_DEFAULTS), "DDPMScheduler defaults"

    prediction_type = _prediction_type(sched_cfg)
    problems = _schedule_problems(sched_cfg)
    if problems and "beta_start" not in sched_cfg and "sigma_max" in sched_cfg:
        raise InputError(f"{source}: a VE schedule ({sched_cfg.get('_class_name')}, sigma_min/sigma_max) has no "
                         "VP time; robustkit's ScoreModels are VP")
    if problems and schedule_check:
        raise InputError(f"{source}: the training schedule is not the linear VP schedule that robustkit's VPSDE "
                         f"matches: {'; '.join(problems)}. Pass schedule_check=False to map its steps to "
                         "VPSDE(0.1, 20) time by noise level instead")

    n = int(_scheduler_setting(sched_cfg, "num_train_timesteps"))
    linear = not [p for p in problems if "missing" not in p]
    if linear:
        beta_min = float(_scheduler_setting(sched_cfg, "beta_start")) * n
        beta_max = float(_scheduler_setting(sched_cfg, "beta_end")) * n
        schedule = DiscreteVPSchedule(beta_min, beta_max, n)
        sde, acp = schedule.sde, schedule.alphas_cumprod64
        if problems:  # only defaults filled in (schedule_check=False)
            warnings.warn(f"{source}: {'; '.join(problems)}; used DDPMScheduler's defaults for them", stacklevel=2)
    else:
        acp = _alphas_cumprod_from_diffusers(diffusers, sched_cfg, source)
        sde = VPSDE()
        warnings.warn(f"{source}: {'; '.join(problems)}; schedule_check=False, so its {acp.numel()} steps are "
                      "matched by noise level to VPSDE(0.1, 20) time. A solver or purifier must not assume that "
                      "the network was trained on that SDE", stacklevel=2)

    unet = _build_unet(UNet2DModel, config, str(unet_dir))
    files = _weight_files(unet_dir, variant)
    state = _rename_deprecated_attention(unet, _load_weights(files))
    load_strict(unet, state, source=", ".join(str(f) for f in files))
    del state
    unet.requires_grad_(False).eval()
    model = DiffusersScoreModel(unet, acp, sde, prediction_type=prediction_type, scheduler_config=sched_cfg)
    log.info("loaded diffusers UNet2DModel %s (%d steps, β %g..%g, %s prediction)", unet_dir, n,
             model.beta_min, model.beta_max, prediction_type)
    return model.eval()
