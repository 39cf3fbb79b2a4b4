"""guided-diffusion's ADM UNet, its ScoreModel adapter, and a loader for the published checkpoints.

DiffPure's ImageNet score model is OpenAI's ``256x256_diffusion_uncond.pt``: an ADM UNet (566
tensors, 552,814,086 parameters, plain state dict without prefix) predicting 6 channels, the noise
ε̂ (first 3) and the learned-variance interpolation ``v`` (last 3). :class:`ADMUNet` reproduces the
network key for key; :class:`ADMScoreModel` puts it behind the :class:`ScoreModel` contract
(continuous VP time, ε only); :func:`load_guided_diffusion` builds, strictly loads and optionally
converts it to fp16 the way DiffPure runs it.

Time convention (the one DiffPure feeds this network): the continuous VP time ``t ∈ [0, 1]``
becomes the integer step ``(t.float() * 1000).long()``, i.e. ``floor(1000·t)`` evaluated in float32
(NVlabs/DiffPure @ 985703f, ``runners/diffpure_sde.py``, ``RevVPSDE._scale_timesteps``, applied to
the VP time of the reversed SDE and passed straight to the raw UNet, with no ``_WrappedModel``
rescaling). ``t = 1`` therefore maps to 1000, one past the last trained step 999; the sinusoidal
embedding extrapolates there exactly as in DiffPure.

Reference:
    Dhariwal & Nichol, "Diffusion Models Beat GANs on Image Synthesis", NeurIPS 2021, official code
    openai/guided-diffusion @ 22e0df8 (``unet.py``, ``script_util.py``, ``fp16_util.py``);
    Nie et al., "Diffusion Models for Adversarial Purification", ICML 2022, official code NVlabs/DiffPure.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import CheckpointError, InputError
from ..hub import load_state_dict_file, load_strict, verify_file
from ..utils import did_you_mean
from .adm_layers import (NUM_GROUPS, AttentionBlock, Downsample, GroupNorm32, ResBlock, TimestepSequential,
                         Upsample, timestep_embedding)
from .schedule import DiscreteVPSchedule
from .score_model import ScoreModel

__all__ = ["ADMConfig", "ADMScoreModel", "ADMUNet", "ADM_CONFIGS", "adm_config", "continuous_time_to_step",
           "load_guided_diffusion"]

# guided-diffusion's script_util: class_cond=True means the 1000 ImageNet classes.
IMAGENET_NUM_CLASSES = 1000

# script_util.create_model: channel_mult="" picks the multipliers by image size.
_DEFAULT_CHANNEL_MULT = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4),
                         64: (1, 2, 3, 4)}


@dataclass(frozen=True)
class ADMConfig:
    """Architecture of an ADM UNet; the defaults are ``256x256_diffusion_uncond.pt``'s.

    Attributes:
        image_size: side of the square input.
        model_channels: base width (guided-diffusion flag ``num_channels``); the time embedding has
            ``4 * model_channels`` features.
        num_res_blocks: ResBlocks per resolution level on the way down (one more on the way up).
        attention_resolutions: feature-map sides that get self-attention (the published flag
            ``"32,16,8"``; the network uses the downsampling factors ``image_size // r``).
        channel_mult: width multiplier per level; ``len(channel_mult) - 1`` downsamplings.
        in_channels: image channels.
        learn_sigma: 2·in_channels outputs (ε̂ and the variance interpolation) instead of in_channels.
        num_classes: ``None`` for unconditional models, else the size of the ``label_emb`` table.
        num_heads: attention heads when ``num_head_channels == -1``.
        num_head_channels: channels per head (overrides ``num_heads``), or -1.
        num_heads_upsample: heads in the decoder when ``num_head_channels == -1`` (-1: ``num_heads``).
        use_scale_shift_norm: FiLM-style ``GN(h)·(1+scale)+shift`` conditioning in ResBlocks.
        resblock_updown: resample with ResBlocks (True) or with strided / nearest convolutions.
        use_new_attention_order: split q/k/v before heads (False: the legacy per-head ``[q|k|v]``).
        dropout: dropout inside ResBlocks (training only).
        num_timesteps: discrete diffusion steps the network was trained on (``diffusion_steps``);
            :class:`ADMScoreModel` maps continuous time to ``floor(num_timesteps · t)``.

    Example::

        >>> cfg = ADMConfig(image_size=8, model_channels=32, num_res_blocks=1, channel_mult=(1, 2),
        ...                 attention_resolutions=(4,), num_head_channels=16)
        >>> cfg.out_channels, cfg.attention_ds
        (6, (2,))
    """

    image_size: int = 256
    model_channels: int = 256
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (32, 16, 8)
    channel_mult: tuple[float, ...] = (1, 1, 2, 2, 4, 4)
    in_channels: int = 3
    learn_sigma: bool = True
    num_classes: int | None = None
    num_heads: int = 4
    num_head_channels: int = 64
    num_heads_upsample: int = -1
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    use_new_attention_order: bool = False
    dropout: float = 0.0
    num_timesteps: int = 1000

    def __post_init__(self) -> None:
        object.__setattr__(self, "attention_resolutions", tuple(int(r) for r in self.attention_resolutions))
        object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
        if not self.channel_mult:
            raise InputError("channel_mult must name at least one level")
        if self.image_size < 1 or self.image_size % 2 ** (len(self.channel_mult) - 1):
            raise InputError(f"image_size {self.image_size} is not divisible by 2^{len(self.channel_mult) - 1} "
                             f"(one halving per level of channel_mult={self.channel_mult})")
        for r in self.attention_resolutions:
            if r < 1 or self.image_size % r:
                raise InputError(f"attention resolution {r} does not divide image_size {self.image_size}")
        for ch in self.level_channels:
            if ch < NUM_GROUPS or ch % NUM_GROUPS:
                raise InputError(f"level width {ch} is not a positive multiple of {NUM_GROUPS} "
                                 "(GroupNorm uses 32 groups everywhere)")
        for ds, ch in zip(self.level_ds, self.level_channels):
            if ds in self.attention_ds:
                for up in (False, True):
                    heads = self.heads(ch, upsample=up)
                    split = self.num_head_channels if self.num_head_channels != -1 else heads
                    if heads < 1 or split < 1 or ch % split:
                        raise InputError(f"attention at {ch} channels cannot use {heads} heads "
                                         f"(num_head_channels={self.num_head_channels}, num_heads={self.num_heads})")
        if self.num_classes is not None and self.num_classes < 1:
            raise InputError(f"num_classes must be None or positive, got {self.num_classes}")
        if self.num_timesteps < 1 or self.num_res_blocks < 1 or self.in_channels < 1:
            raise InputError("num_timesteps, num_res_blocks and in_channels must be positive")

    @property
    def out_channels(self) -> int:
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    @property
    def level_channels(self) -> tuple[int, ...]:
        return tuple(int(m * self.model_channels) for m in self.channel_mult)

    @property
    def level_ds(self) -> tuple[int, ...]:
        return tuple(2 ** i for i in range(len(self.channel_mult)))

    @property
    def attention_ds(self) -> tuple[int, ...]:
        """Downsampling factors with attention, ``image_size // r`` (script_util's conversion)."""
        return tuple(self.image_size // r for r in self.attention_resolutions)

    def heads(self, channels: int, *, upsample: bool = False) -> int:
        """Attention heads at a given width (``num_head_channels`` wins over ``num_heads``)."""
        if self.num_head_channels != -1:
            return channels // self.num_head_channels
        if upsample and self.num_heads_upsample != -1:
            return self.num_heads_upsample
        return self.num_heads

    @classmethod
    def from_flags(cls, **flags: Any) -> "ADMConfig":
        """Build from guided-diffusion's command-line flags (``model_and_diffusion_defaults`` names).

        Architecture flags map to fields (``num_channels`` → ``model_channels``, ``class_cond`` →
        ``num_classes=1000``, ``diffusion_steps`` → ``num_timesteps``, comma strings → tuples,
        ``channel_mult=""`` → the per-size default). ``use_fp16`` and ``use_checkpoint`` only concern
        precision and memory and are ignored (pass ``fp16`` to :func:`load_guided_diffusion`).
        Models that do not predict ε on the linear schedule (``predict_xstart``, a non-linear
        ``noise_schedule``) are rejected, because :class:`ADMScoreModel` assumes ε on DiffPure's VP
        schedule. Unknown names raise :class:`InputError`.

        Example::

            >>> ADMConfig.from_flags(image_size=256, num_channels=256, attention_resolutions="32,16,8",
            ...                      num_head_channels=64, resblock_updown=True) == ADMConfig()
            True
        """
        flags = dict(flags)
        if flags.get("predict_xstart", False):
            raise InputError("predict_xstart=True models predict x0, not ε; ADMScoreModel needs an ε model")
        if flags.get("noise_schedule", "linear") != "linear":
            raise InputError(f"noise_schedule={flags['noise_schedule']!r}: only the linear schedule matches "
                             "the VP SDE (β 0.1→20) that ADMScoreModel's time mapping assumes")
        ignored = {"use_fp16", "use_checkpoint", "predict_xstart", "noise_schedule", "timestep_respacing",
                   "use_kl", "rescale_timesteps", "rescale_learned_sigmas"}
        renamed = {"num_channels": "model_channels", "diffusion_steps": "num_timesteps"}
        known = {f.name for f in fields(cls)} - {"model_channels", "num_timesteps", "num_classes"}
        kwargs: dict[str, Any] = {}
        for name, value in flags.items():
            if name in ignored:
                continue
            if name == "class_cond":
                kwargs["num_classes"] = IMAGENET_NUM_CLASSES if value else None
            elif name == "attention_resolutions":
                kwargs[name] = _parse_ints(value)
            elif name == "channel_mult":
                kwargs[name] = _parse_ints(value) if value not in ("", None) else None
            elif name in renamed:
                kwargs[renamed[name]] = value
            elif name in known:
                kwargs[name] = value
            else:
                raise InputError(f"unknown guided-diffusion flag {name!r}")
        if kwargs.get("channel_mult", None) is None:
            size = int(kwargs.get("image_size", cls.image_size))
            if size not in _DEFAULT_CHANNEL_MULT:
                raise InputError(f"no default channel_mult for image_size {size}; pass channel_mult")
            kwargs["channel_mult"] = _DEFAULT_CHANNEL_MULT[size]
        return cls(**kwargs)


def _parse_ints(value: Any) -> tuple[int, ...]:
    if isinstance(value, str):
        return tuple(int(v) for v in value.split(",") if v.strip())
    return tuple(int(v) for v in value)


ADM_CONFIGS: dict[str, ADMConfig] = {
    # 256x256_diffusion_uncond.pt (DiffPure ImageNet; guided-diffusion README flags == DiffPure
    # configs/imagenet.yml).
    "imagenet256_uncond": ADMConfig(),
    # 256x256_diffusion.pt: the same flags with --class_cond True (guided-diffusion README).
    "imagenet256_cond": ADMConfig(num_classes=IMAGENET_NUM_CLASSES),
    # The reduced configuration of the shared test vectors (specs/guided_diffusion_256x256_uncond/
    # small_model.pt): same code path, 32×32, 1,397,190 parameters.
    "spec_small": ADMConfig(image_size=32, model_channels=32, channel_mult=(1, 1, 2), attention_resolutions=(16, 8),
                            num_head_channels=16),
}


def adm_config(config: str | ADMConfig) -> ADMConfig:
    """Resolve a config name of :data:`ADM_CONFIGS` (or pass an :class:`ADMConfig` through)."""
    if isinstance(config, ADMConfig):
        return config
    if isinstance(config, str) and config in ADM_CONFIGS:
        return ADM_CONFIGS[config]
    raise InputError(f"unknown ADM config {config!r}{did_you_mean(config, ADM_CONFIGS)}; known: {', '.join(sorted(ADM_CONFIGS))} "
                     "(or pass an ADMConfig)")


class ADMUNet(nn.Module):
    """The ADM UNet of guided-diffusion, with the published state-dict layout.

    ``input_blocks[0]`` is the stem conv; each level adds ``num_res_blocks`` entries
    ``[ResBlock(, AttentionBlock)]`` and, except the last, one downsampling entry. ``middle_block``
    is ResBlock–Attention–ResBlock. ``output_blocks`` take ``num_res_blocks + 1`` entries per level,
    each consuming one skip connection by concatenation, the last of each level (but the top one)
    ending with an upsampler. The head is GroupNorm, SiLU, a zero-initialised conv.

    ``forward(x, timesteps, y=None)`` takes the raw discrete steps (``0..num_timesteps-1``, integer or
    float) and returns all ``out_channels`` outputs; use :class:`ADMScoreModel` for continuous time.

    Shape:
        ``x [N, in_channels, S, S]``, ``timesteps [N]``, ``y [N]`` (conditional only) →
        ``[N, out_channels, S, S]``.

    Reference:
        Dhariwal & Nichol, NeurIPS 2021; openai/guided-diffusion ``unet.py`` (``UNetModel``).

    Example::

        >>> import torch
        >>> cfg = ADMConfig(image_size=8, model_channels=32, num_res_blocks=1, channel_mult=(1, 2),
        ...                 attention_resolutions=(4,), num_head_channels=16)
        >>> net = ADMUNet(cfg)
        >>> net(torch.zeros(2, 3, 8, 8), torch.tensor([0, 999])).shape
        torch.Size([2, 6, 8, 8])
    """

    def __init__(self, config: ADMConfig | None = None):
        super().__init__()
        cfg = config if config is not None else ADMConfig()
        self.config = cfg
        base = cfg.model_channels
        emb_dim = 4 * base
        self.time_embed = nn.Sequential(nn.Linear(base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if cfg.num_classes is not None:
            self.label_emb = nn.Embedding(cfg.num_classes, emb_dim)

        def res(cin: int, cout: int, **kw: bool) -> ResBlock:
            return ResBlock(cin, emb_dim, cout, dropout=cfg.dropout, use_scale_shift_norm=cfg.use_scale_shift_norm,
                            **kw)

        def attn(ch: int, upsample: bool) -> AttentionBlock:
            return AttentionBlock(ch, cfg.heads(ch, upsample=upsample), legacy_order=not cfg.use_new_attention_order)

        ch = cfg.level_channels[0]
        self.input_blocks = nn.ModuleList([TimestepSequential(nn.Conv2d(cfg.in_channels, ch, 3, padding=1))])
        skip_channels = [ch]
        last = len(cfg.channel_mult) - 1
        for level, (ds, width) in enumerate(zip(cfg.level_ds, cfg.level_channels)):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [res(ch, width)]
                ch = width
                if ds in cfg.attention_ds:
                    layers.append(attn(ch, upsample=False))
                self.input_blocks.append(TimestepSequential(*layers))
                skip_channels.append(ch)
            if level != last:
                down = res(ch, ch, down=True) if cfg.resblock_updown else Downsample(ch)
                self.input_blocks.append(TimestepSequential(down))
                skip_channels.append(ch)

        self.middle_block = TimestepSequential(res(ch, ch), attn(ch, upsample=False), res(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level in reversed(range(len(cfg.channel_mult))):
            ds, width = cfg.level_ds[level], cfg.level_channels[level]
            for i in range(cfg.num_res_blocks + 1):
                layers = [res(ch + skip_channels.pop(), width)]
                ch = width
                if ds in cfg.attention_ds:
                    layers.append(attn(ch, upsample=True))
                if level and i == cfg.num_res_blocks:
                    layers.append(res(ch, ch, up=True) if cfg.resblock_updown else Upsample(ch))
                self.output_blocks.append(TimestepSequential(*layers))

        conv_out = nn.Conv2d(ch, cfg.out_channels, 3, padding=1)
        for p in conv_out.parameters():
            nn.init.zeros_(p)
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), conv_out)

    @property
    def torso_dtype(self) -> torch.dtype:
        """dtype the input/middle/output blocks run in (float16 after :meth:`convert_to_fp16`)."""
        return self.input_blocks[0][0].weight.dtype

    def _torso_convs(self):
        for part in (self.input_blocks, self.middle_block, self.output_blocks):
            for m in part.modules():
                if isinstance(m, (nn.Conv1d, nn.Conv2d)):
                    yield m

    def convert_to_fp16(self) -> "ADMUNet":
        """Cast the convolutions of the input/middle/output blocks to float16, as DiffPure runs the model.

        Mirrors guided-diffusion's ``convert_to_fp16`` (``fp16_util.convert_module_to_f16`` touches
        only Conv1d/2d/3d): GroupNorm, the time-embedding and ``emb_layers`` Linear layers, the label
        embedding and the ``out`` head stay float32; activations are cast to float16 on entry to the
        torso and back to the input dtype before ``out``. Returns ``self``.
        """
        for m in self._torso_convs():
            m.to(torch.float16)
        return self

    def convert_to_fp32(self) -> "ADMUNet":
        """Undo :meth:`convert_to_fp16`. Returns ``self``."""
        for m in self._torso_convs():
            m.to(torch.float32)
        return self

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.config
        if x.dim() != 4 or x.shape[1] != cfg.in_channels:
            raise InputError(f"x must have shape [N, {cfg.in_channels}, H, W], got {list(x.shape)}")
        if timesteps.shape != (x.shape[0],):
            raise InputError(f"timesteps must have shape [{x.shape[0]}], got {list(timesteps.shape)}")
        if (y is None) != (cfg.num_classes is None):
            raise InputError("pass y if and only if the model is class-conditional "
                             f"(num_classes={cfg.num_classes})")
        emb_in = timestep_embedding(timesteps, cfg.model_channels).to(self.time_embed[0].weight.dtype)
        emb = self.time_embed(emb_in)
        if y is not None:
            emb = emb + self.label_emb(y)
        h = x.to(self.torso_dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h.to(x.dtype))


def continuous_time_to_step(t: torch.Tensor, num_timesteps: int = 1000) -> torch.Tensor:
    """DiffPure's time label for guided-diffusion: ``(t.float() * num_timesteps).long()``.

    Truncation toward zero in float32, i.e. ``floor(1000·t)`` for ``t ≥ 0`` with float32 rounding of
    the product (``t = 0.15`` → 150; ``t = 1`` → 1000, one past the last trained step, as in DiffPure).

    Reference:
        NVlabs/DiffPure @ 985703f, ``runners/diffpure_sde.py``, ``RevVPSDE._scale_timesteps``.

    Example::

        >>> import torch
        >>> continuous_time_to_step(torch.tensor([1e-5, 0.15, 0.9995, 1.0])).tolist()
        [0, 150, 999, 1000]
    """
    return (t.float() * num_timesteps).long()


class ADMScoreModel(ScoreModel):
    """:class:`ScoreModel` adapter of an ADM UNet: continuous VP time in, ε̂ (first C channels) out.

    ``eps = model(x_t, t, y=None)`` calls the UNet with the integer step
    :func:`continuous_time_to_step` ``(t)`` (DiffPure's mapping) and drops the learned-variance
    channels ``[C:2C]`` when ``learn_sigma``. ``x_t`` is cast to the dtype of the network's ``out``
    head (float32) and ε̂ back to ``x_t``'s dtype. ``t`` must lie in ``[0, max_time]`` (1, or the last
    discrete step's VP time if larger); steps past the last trained one are capped at it. Note for
    :func:`ddpm_ancestral`/:func:`ddim` on this model: their times are the discrete steps' VP times, which
    the floor mapping labels up to 4 steps late at high noise (exact for steps ≤ 313, i.e. t ≲ 0.31,
    which covers DiffPure's t* ≤ 0.15). Conditional ADM models have no null class: they need ``y``.

    Shape:
        ``x_t [N, C, S, S]``, ``t [N]`` or scalar, ``y [N]`` → ``[N, C, S, S]``.

    Reference:
        Nie et al., ICML 2022 (DiffPure), NVlabs/DiffPure ``runners/diffpure_sde.py`` (``RevVPSDE``,
        ``score_type='guided_diffusion'``); Dhariwal & Nichol, NeurIPS 2021.

    Example::

        >>> import torch
        >>> cfg = ADMConfig(image_size=8, model_channels=32, num_res_blocks=1, channel_mult=(1, 2),
        ...                 attention_resolutions=(4,), num_head_channels=16)
        >>> model = ADMScoreModel(ADMUNet(cfg))
        >>> model(torch.zeros(2, 3, 8, 8), 0.5).shape
        torch.Size([2, 3, 8, 8])
    """

    def __init__(self, unet: ADMUNet):
        cfg = unet.config
        super().__init__((cfg.in_channels, cfg.image_size, cfg.image_size), cfg.num_classes)
        self.unet = unet
        self.num_timesteps = cfg.num_timesteps
        #: the largest accepted t: the VP time of the discrete schedule's last step (≈ 1.0034 for 1000
        #: steps, just above 1 because the discrete ᾱ ends below the continuous one), which DDPM/DDIM
        #: sampling from pure noise passes
        self.max_time = max(1.0, DiscreteVPSchedule(num_steps=cfg.num_timesteps).time_of(cfg.num_timesteps - 1))

    def timestep_labels(self, t: torch.Tensor) -> torch.Tensor:
        """The integer steps the UNet receives for continuous times ``t``: :func:`continuous_time_to_step`
        (DiffPure's mapping), capped at the last trained step ``num_timesteps − 1``."""
        return continuous_time_to_step(t, self.num_timesteps).clamp_max(self.num_timesteps - 1)

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        # A host sync, but out-of-range t would silently give steps outside the trained range.
        if bool(((t < 0) | (t > self.max_time)).any()):
            raise InputError(f"t must lie in [0, {self.max_time:.6g}], got values in "
                             f"[{t.min().tolist()}, {t.max().tolist()}]")
        if self.conditional and y is None:
            raise InputError("this ADM model is class-conditional and has no null class; pass y")
        if y is not None and bool(((y < 0) | (y >= self.num_classes)).any()):
            raise InputError(f"class labels must lie in [0, {self.num_classes}), got {y.tolist()}")
        io_dtype = self.unet.out[2].weight.dtype
        out = self.unet(x_t.to(io_dtype), self.timestep_labels(t), y)
        return out[:, : self.input_shape[0]].to(x_t.dtype)


def load_guided_diffusion(path: str | os.PathLike, config: str | ADMConfig = "imagenet256_uncond", *,
                          sha256: str | None = None, fp16: bool = False) -> ADMScoreModel:
    """Load a guided-diffusion checkpoint (e.g. ``256x256_diffusion_uncond.pt``) as an :class:`ADMScoreModel`.

    The file is verified against ``sha256`` when given, read without executing pickled code, and
    loaded strictly (a :class:`CheckpointError` lists missing, unexpected and mis-shaped keys). The
    network is built on the ``meta`` device and materialised uninitialised, so the 552M-parameter
    model is not randomly initialised only to be overwritten. The result is in eval mode with frozen
    parameters (DiffPure calls ``requires_grad_(False)``); gradients with respect to the input still
    flow. ``fp16=True`` applies :meth:`ADMUNet.convert_to_fp16`, as DiffPure does (its ImageNet
    config sets ``use_fp16: True``); float16 convolutions are meant for GPUs.

    Args:
        path: checkpoint file (plain state dict, no prefix).
        config: a name of :data:`ADM_CONFIGS` or an :class:`ADMConfig`.
        sha256: expected hex digest of the file, or ``None`` to skip the check.
        fp16: convert the UNet torso to float16.

    Reference:
        openai/guided-diffusion (checkpoints and ``script_util.py`` flags); NVlabs/DiffPure
        ``runners/diffpure_sde.py`` (loading, ``convert_to_fp16``).

    Example::

        >>> import os, tempfile, torch
        >>> cfg = ADMConfig(image_size=8, model_channels=32, num_res_blocks=1, channel_mult=(1, 2),
        ...                 attention_resolutions=(4,), num_head_channels=16)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = os.path.join(d, "tiny.pt")
        ...     torch.save(ADMUNet(cfg).state_dict(), path)
        ...     model = load_guided_diffusion(path, cfg)
        >>> model(torch.zeros(1, 3, 8, 8), 0.15).shape
        torch.Size([1, 3, 8, 8])
    """
    cfg = adm_config(config)
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    verify_file(path, sha256)
    state_dict = load_state_dict_file(path)
    with torch.device("meta"):
        unet = ADMUNet(cfg)
    unet = unet.to_empty(device="cpu")
    load_strict(unet, state_dict, source=str(path))
    del state_dict
    unet.requires_grad_(False).eval()
    if fp16:
        unet.convert_to_fp16()
    return ADMScoreModel(unet).eval()

