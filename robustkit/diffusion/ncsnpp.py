"""NCSN++ network of score_sde, DDPM++ code path (BigGAN resblocks, DDPM attention), written for robustkit.

This is the backbone of score_sde's ``vp/cifar10_ddpmpp_deep_continuous`` checkpoint, the CIFAR-10 score
model that DiffPure purifies with. The module reproduces the published state-dict layout key for key and
in order (``sigmas``, then one flat ``all_modules`` list), so the published weights load strictly once
the ``module.`` prefix of ``nn.DataParallel`` is stripped; see :func:`robustkit.diffusion.score_sde.load_score_sde`.

Layout of ``all_modules`` (walked in this order by :meth:`NCSNpp.forward`):

* ``Linear(nf, 4nf)``, ``Linear(4nf, 4nf)``: time-embedding MLP (only when ``model.conditional``);
* ``Conv2d(C, nf, 3)``: input convolution;
* down path: per level ``num_res_blocks`` BigGAN resblocks (each followed by an attention block at the
  attention resolutions), then one down-sampling resblock except at the last level;
* middle: resblock, attention, resblock;
* up path: per level (coarsest first) ``num_res_blocks + 1`` resblocks on ``cat([h, skip])``, one attention
  block at the attention resolutions, then one up-sampling resblock except at the finest level;
* ``GroupNorm``, ``Conv2d(nf, C, 3)``: output head.

Numerical conventions that are easy to get wrong (all checked against the reference vectors):

* time input is the float label ``999 t`` for continuous VP models (the adapter multiplies);
* sinusoidal embedding with frequencies ``exp(-ln(1e4) i / (half - 1))``, **sin first, then cos**;
* GroupNorm with ``min(C // 4, 32)`` groups and eps ``1e-6``;
* attention 1×1 projections ("NIN") store ``W`` as ``[in, out]`` (the transpose of ``nn.Linear``);
* residual outputs are divided by ``sqrt(2)`` (``skip_rescale``);
* with ``fir=False`` resblock down-sampling is 2×2 average pooling and up-sampling is nearest ×2, applied to
  both the residual and the skip path after the first GroupNorm + activation.

Only the options of the published DDPM++ configs are implemented (``resblock_type="biggan"``,
``progressive="none"``, ``progressive_input="none"``, ``embedding_type="positional"``, ``fir=False``,
``attention_type="ddpm"``); other values raise :class:`~robustkit.errors.InputError` at construction
rather than silently building a different network. As upstream, ``model.normalization`` and
``model.conv_size`` are not read (NCSN++ always uses GroupNorm and 3×3 convolutions).

Shape:
    ``x``: ``[N, C, H, W]`` with ``H = W = data.image_size`` and ``C = data.num_channels``;
    ``time_cond``: ``[N]`` float labels; output: ``[N, C, H, W]`` (for continuous VP models this is the noise
    prediction ε; the score is ``-output / std(t)``).

Reference:
    Song, Sohl-Dickstein, Kingma, Kumar, Ermon, Poole. "Score-Based Generative Modeling through Stochastic
    Differential Equations", ICLR 2021; official code github.com/yang-song/score_sde_pytorch
    (``models/ncsnpp.py``, ``models/layerspp.py``). Used by Nie et al., "Diffusion Models for Adversarial
    Purification" (DiffPure), ICML 2022.

Example::

    >>> import torch
    >>> from robustkit.diffusion.ncsnpp import NCSNpp
    >>> from robustkit.diffusion.score_sde import get_score_sde_config
    >>> net = NCSNpp(get_score_sde_config("cifar10_ddpmpp_deep_continuous"), device="meta")
    >>> len(net.state_dict()), sum(p.numel() for p in net.parameters())
    (957, 106632579)
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import InputError

if TYPE_CHECKING:  # pragma: no cover - import only for annotations (score_sde imports this module)
    from .score_sde import ScoreSDEConfig

__all__ = ["NCSNpp", "BigGANResBlock", "AttentionBlock", "NIN", "timestep_embedding", "ddpm_init_", "geometric_sigmas"]

_SQRT2 = math.sqrt(2.0)


# --------------------------------------------------------------------------------------------------------
# Initialisation (only for freshly built networks; loaded checkpoints overwrite it)
# --------------------------------------------------------------------------------------------------------

def ddpm_init_(tensor: torch.Tensor, scale: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """In-place DDPM initialisation: variance scaling, ``fan_avg``, uniform (Ho et al. 2020's TF code).

    Fans are taken with axis 1 as "in" and axis 0 as "out" for every tensor (as score_sde does, also for
    NIN's ``[in, out]`` matrices; with ``fan_avg`` the two are symmetric). ``scale == 0`` means ``1e-10``
    (near-zero output layers). The bound is ``sqrt(3 scale / ((fan_in + fan_out) / 2))``.
    """
    scale = 1e-10 if scale == 0 else scale
    receptive = math.prod(tensor.shape[2:]) if tensor.dim() > 2 else 1
    fan_in = tensor.shape[1] * receptive
    fan_out = tensor.shape[0] * receptive
    bound = math.sqrt(3.0 * scale / ((fan_in + fan_out) / 2.0))
    return nn.init.uniform_(tensor, -bound, bound, generator=generator)


def _init_conv_or_linear(layer: nn.Conv2d | nn.Linear, scale: float, generator: torch.Generator | None) -> None:
    ddpm_init_(layer.weight, scale, generator)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


# --------------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------------

def timestep_embedding(timesteps: torch.Tensor, dim: int, max_positions: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding of float time labels, ``[sin(t w_i), cos(t w_i)]`` with ``w_i = 1e4^(-i/(half-1))``.

    Computed in at least float32 (upstream always uses float32; a float64 input keeps float64). Odd ``dim``
    is zero-padded by one column.

    Shape:
        ``timesteps``: ``[N]``; output ``[N, dim]``.

    Reference:
        Vaswani et al., NeurIPS 2017 (positional encoding); score_sde ``layers.get_timestep_embedding``.
    """
    if timesteps.dim() != 1:
        raise InputError(f"time labels must have shape [N], got {list(timesteps.shape)}")
    dtype = torch.promote_types(timesteps.dtype, torch.float32)
    half = dim // 2
    # The divisor is half - 1 (not half, as in guided-diffusion): the last frequency is exactly 1/max_positions.
    coef = math.log(max_positions) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=dtype, device=timesteps.device) * -coef)
    args = timesteps.to(dtype)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb


def _group_norm(channels: int, device: torch.device | str | None) -> nn.GroupNorm:
    # min(C // 4, 32) groups: 32 for the full model, fewer for narrow ones (16 channels -> 4 groups).
    return nn.GroupNorm(num_groups=min(channels // 4, 32), num_channels=channels, eps=1e-6, device=device)


def _activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    name = name.lower()
    if name == "swish":
        return F.silu
    if name == "relu":
        return F.relu
    if name == "elu":
        return F.elu
    if name == "lrelu":
        return functools.partial(F.leaky_relu, negative_slope=0.2)
    raise InputError(f"model.nonlinearity must be one of 'swish', 'relu', 'elu', 'lrelu', got {name!r}")


class NIN(nn.Module):
    """1×1 projection over channels with score_sde's parameter layout: ``W`` is ``[in, out]``, ``b`` is ``[out]``.

    Shape:
        ``[N, in, H, W] -> [N, out, H, W]``; ``y[n, o] = sum_c x[n, c] W[c, o] + b[o]``.
    """

    def __init__(self, in_dim: int, out_dim: int, init_scale: float = 0.1,
                 device: torch.device | str | None = None):
        super().__init__()
        self.W = nn.Parameter(torch.empty(in_dim, out_dim, device=device))
        self.b = nn.Parameter(torch.empty(out_dim, device=device))
        self.init_scale = init_scale

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        ddpm_init_(self.W, self.init_scale, generator)
        nn.init.zeros_(self.b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nchw,co->nohw", x, self.W) + self.b[None, :, None, None]


class AttentionBlock(nn.Module):
    """Single-head spatial self-attention of DDPM++ (score_sde ``AttnBlockpp``).

    ``h = GroupNorm(x)``; ``q, k, v = NIN_0(h), NIN_1(h), NIN_2(h)``;
    ``a = softmax_j(q_i · k_j / sqrt(C))`` over all ``H W`` positions; output ``(x + NIN_3(a v)) / sqrt(2)``
    with ``skip_rescale`` (else ``x + NIN_3(a v)``).

    Shape:
        ``[N, C, H, W] -> [N, C, H, W]``.
    """

    def __init__(self, channels: int, *, skip_rescale: bool = True, init_scale: float = 0.0,
                 device: torch.device | str | None = None):
        super().__init__()
        self.GroupNorm_0 = _group_norm(channels, device)
        self.NIN_0 = NIN(channels, channels, device=device)
        self.NIN_1 = NIN(channels, channels, device=device)
        self.NIN_2 = NIN(channels, channels, device=device)
        self.NIN_3 = NIN(channels, channels, init_scale=init_scale, device=device)
        self.skip_rescale = skip_rescale

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        self.GroupNorm_0.reset_parameters()
        for nin in (self.NIN_0, self.NIN_1, self.NIN_2, self.NIN_3):
            nin.reset_parameters(generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, height, width = x.shape
        h = self.GroupNorm_0(x)
        q = self.NIN_0(h).reshape(n, c, height * width)
        k = self.NIN_1(h).reshape(n, c, height * width)
        v = self.NIN_2(h).reshape(n, c, height * width)
        # Attention logits w[n, i, j] = <q_i, k_j> / sqrt(C), softmax over the key positions j.
        w = torch.bmm(q.transpose(1, 2), k) * (int(c) ** -0.5)
        w = torch.softmax(w, dim=-1)
        h = torch.bmm(v, w.transpose(1, 2)).reshape(n, c, height, width)
        h = self.NIN_3(h)
        return (x + h) / _SQRT2 if self.skip_rescale else x + h


class BigGANResBlock(nn.Module):
    """BigGAN-style residual block of NCSN++ (score_sde ``ResnetBlockBigGANpp``) with ``fir=False``.

    ``h = act(GN_0(x))``, optionally resampled (nearest ×2 up / 2×2 mean down, the skip ``x`` too);
    ``h = Conv_0(h) + Dense_0(act(temb))``; ``h = Conv_1(dropout(act(GN_1(h))))``; the skip goes through the
    1×1 ``Conv_2`` when the channel count changes or the block resamples; output ``(skip + h) / sqrt(2)``
    with ``skip_rescale``.

    Shape:
        ``x``: ``[N, in_ch, H, W]``, ``temb``: ``[N, temb_dim]`` or None; output ``[N, out_ch, H', W']`` with
        ``H' = 2H`` (up), ``H/2`` (down) or ``H``.
    """

    def __init__(self, act: Callable[[torch.Tensor], torch.Tensor], in_ch: int, out_ch: int | None = None,
                 temb_dim: int | None = None, *, up: bool = False, down: bool = False, dropout: float = 0.1,
                 skip_rescale: bool = True, init_scale: float = 0.0, device: torch.device | str | None = None):
        super().__init__()
        out_ch = out_ch or in_ch
        if up and down:
            raise InputError("a resblock cannot both up- and down-sample")
        self.GroupNorm_0 = _group_norm(in_ch, device)
        self.Conv_0 = nn.Conv2d(in_ch, out_ch, 3, padding=1, device=device)
        if temb_dim is not None:
            self.Dense_0 = nn.Linear(temb_dim, out_ch, device=device)
        self.GroupNorm_1 = _group_norm(out_ch, device)
        self.Conv_1 = nn.Conv2d(out_ch, out_ch, 3, padding=1, device=device)
        self.has_skip_conv = in_ch != out_ch or up or down
        if self.has_skip_conv:
            self.Conv_2 = nn.Conv2d(in_ch, out_ch, 1, device=device)
        self.act = act
        self.up, self.down = up, down
        self.dropout = dropout
        self.skip_rescale = skip_rescale
        self.init_scale = init_scale
        self.in_ch, self.out_ch = in_ch, out_ch

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        self.GroupNorm_0.reset_parameters()
        self.GroupNorm_1.reset_parameters()
        _init_conv_or_linear(self.Conv_0, 1.0, generator)
        if hasattr(self, "Dense_0"):
            _init_conv_or_linear(self.Dense_0, 1.0, generator)
        _init_conv_or_linear(self.Conv_1, self.init_scale, generator)
        if self.has_skip_conv:
            _init_conv_or_linear(self.Conv_2, 1.0, generator)

    @staticmethod
    def _resample(x: torch.Tensor, up: bool, down: bool) -> torch.Tensor:
        if up:
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if down:
            return F.avg_pool2d(x, 2, stride=2)
        return x

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.act(self.GroupNorm_0(x))
        h = self._resample(h, self.up, self.down)
        x = self._resample(x, self.up, self.down)
        h = self.Conv_0(h)
        if temb is not None:
            # Per-channel bias from the time embedding (the MLP output is activated once more here).
            h = h + self.Dense_0(self.act(temb))[:, :, None, None]
        h = self.act(self.GroupNorm_1(h))
        h = F.dropout(h, p=self.dropout, training=self.training)
        h = self.Conv_1(h)
        if self.has_skip_conv:
            x = self.Conv_2(x)
        return (x + h) / _SQRT2 if self.skip_rescale else x + h


# --------------------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------------------

_SUPPORTED = {
    "name": ("ncsnpp",),
    "resblock_type": ("biggan",),
    "progressive": ("none",),
    "progressive_input": ("none",),
    "embedding_type": ("positional",),
    "attention_type": ("ddpm",),
}


def geometric_sigmas(sigma_max: float, sigma_min: float, num_scales: int,
                     device: torch.device | str | None = None) -> torch.Tensor:
    """score_sde's ``sigmas`` buffer: ``num_scales`` float64 values, geometric from ``sigma_max`` to ``sigma_min``.

    Computed with numpy, ``exp(linspace(log σ_max, log σ_min, n))``, as upstream does, so a freshly built
    buffer equals the published one (torch's float64 ``exp`` differs from numpy's in the last bit for some
    entries). A constant, never on a differentiable path.
    """
    logs = np.linspace(np.log(sigma_max), np.log(sigma_min), num_scales)
    return torch.from_numpy(np.exp(logs)).to(device=device, dtype=torch.float64)


class NCSNpp(nn.Module):
    """score_sde NCSN++ network (DDPM++ code path) with the published state-dict layout.

    Args:
        config: a :class:`~robustkit.diffusion.score_sde.ScoreSDEConfig` (``model`` and ``data`` sections
            are read).
        device: where to allocate. ``"meta"`` builds shapes only (no memory, no initialisation): the cheap
            way to check keys and shapes of the 106M-parameter published model.
        generator: randomness for the DDPM initialisation (the global RNG is never touched).

    Shape:
        ``forward(x, time_cond)``: ``x`` ``[N, C, H, W]`` (``H = W = data.image_size``), ``time_cond`` ``[N]``
        float labels (``999 t`` for continuous VP); output ``[N, C, H, W]``.

    With ``data.centered=True`` (the published CIFAR-10 config) ``x`` is taken as is, i.e. data in [-1, 1];
    with ``centered=False`` the network maps ``x -> 2x - 1`` first, exactly as upstream (the model was then
    trained on data in [0, 1]).

    Reference:
        Song et al., "Score-Based Generative Modeling through Stochastic Differential Equations", ICLR 2021;
        github.com/yang-song/score_sde_pytorch ``models/ncsnpp.py``.

    Example::

        >>> import dataclasses, torch
        >>> from robustkit.diffusion.score_sde import ScoreSDEConfig, ScoreSDEModelConfig, ScoreSDEDataConfig
        >>> cfg = ScoreSDEConfig(model=ScoreSDEModelConfig(nf=8, ch_mult=(1, 2), num_res_blocks=1,
        ...                                                attn_resolutions=(4,)),
        ...                      data=ScoreSDEDataConfig(image_size=8))
        >>> net = NCSNpp(cfg, generator=torch.Generator().manual_seed(0)).eval()
        >>> net(torch.zeros(2, 3, 8, 8), torch.tensor([0.5, 999.0])).shape
        torch.Size([2, 3, 8, 8])
    """

    def __init__(self, config: "ScoreSDEConfig", *, device: torch.device | str | None = None,
                 generator: torch.Generator | None = None):
        super().__init__()
        m, d = config.model, config.data
        for field, allowed in _SUPPORTED.items():
            value = getattr(m, field)
            if str(value).lower() not in allowed:
                raise InputError(f"model.{field}={value!r} is not implemented by robustkit's NCSN++ "
                                 f"(supported: {', '.join(allowed)}); it covers the DDPM++ configs of score_sde")
        if m.fir:
            raise InputError("model.fir=True (FIR up/down-sampling) is not implemented by robustkit's NCSN++; "
                             "the DDPM++ configs use fir=False")
        if d.image_size % (2 ** (len(m.ch_mult) - 1)) != 0:
            raise InputError(f"data.image_size={d.image_size} must be divisible by 2^(len(ch_mult)-1)")
        self.config = config
        self.act = _activation(m.nonlinearity)
        self.nf = nf = m.nf
        self.num_res_blocks = m.num_res_blocks
        self.num_resolutions = len(m.ch_mult)
        self.image_size = d.image_size
        self.num_channels = d.num_channels
        self.centered = bool(d.centered)
        self.conditional = bool(m.conditional)
        self.scale_by_sigma = bool(m.scale_by_sigma)
        self.init_scale = float(m.init_scale)
        resolutions = [d.image_size // 2 ** i for i in range(self.num_resolutions)]
        # Attention placement is fixed at construction from the level's resolution (upstream tests the
        # runtime width, identical because forward checks that H = W = image_size).
        self.attn_at_level = [r in tuple(m.attn_resolutions) for r in resolutions]

        # Built on the meta device first, then materialised and initialised with `generator`, so
        # nn.Module's own initialisers (which draw from the global RNG) never run.
        build = torch.device("meta")
        self.register_buffer("sigmas", torch.empty(m.num_scales, dtype=torch.float64, device=build))
        temb_dim = 4 * nf if self.conditional else None

        def block(in_ch: int, out_ch: int | None = None, *, up: bool = False, down: bool = False) -> BigGANResBlock:
            return BigGANResBlock(self.act, in_ch, out_ch, temb_dim, up=up, down=down, dropout=m.dropout,
                                  skip_rescale=m.skip_rescale, init_scale=m.init_scale, device=build)

        def attn(ch: int) -> AttentionBlock:
            return AttentionBlock(ch, skip_rescale=m.skip_rescale, init_scale=m.init_scale, device=build)

        modules: list[nn.Module] = []
        if self.conditional:
            modules.append(nn.Linear(nf, 4 * nf, device=build))
            modules.append(nn.Linear(4 * nf, 4 * nf, device=build))
        modules.append(nn.Conv2d(d.num_channels, nf, 3, padding=1, device=build))
        skip_channels = [nf]
        in_ch = nf
        for level, mult in enumerate(m.ch_mult):
            for _ in range(m.num_res_blocks):
                modules.append(block(in_ch, nf * mult))
                in_ch = nf * mult
                if self.attn_at_level[level]:
                    modules.append(attn(in_ch))
                skip_channels.append(in_ch)
            if level != self.num_resolutions - 1:
                modules.append(block(in_ch, down=True))
                skip_channels.append(in_ch)
        modules += [block(in_ch), attn(in_ch), block(in_ch)]
        for level in reversed(range(self.num_resolutions)):
            for _ in range(m.num_res_blocks + 1):
                out_ch = nf * m.ch_mult[level]
                modules.append(block(in_ch + skip_channels.pop(), out_ch))
                in_ch = out_ch
            if self.attn_at_level[level]:
                modules.append(attn(in_ch))
            if level != 0:
                modules.append(block(in_ch, up=True))
        if skip_channels:  # construction bug guard, cannot happen for valid configs
            raise RuntimeError(f"NCSN++ construction left {len(skip_channels)} unused skip connections")
        modules.append(_group_norm(in_ch, build))
        modules.append(nn.Conv2d(in_ch, d.num_channels, 3, padding=1, device=build))
        self.all_modules = nn.ModuleList(modules)

        target = torch.device(device) if device is not None else torch.device("cpu")
        if target.type != "meta":
            self.to_empty(device=target)
            self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """DDPM initialisation of every weight (see :func:`ddpm_init_`) and the exact ``sigmas`` buffer.

        Output layers (``Conv_1`` of each resblock, ``NIN_3`` of attention, the final conv) use
        ``model.init_scale`` (0 in the published configs, i.e. 1e-10); NIN q/k/v use 0.1; the rest 1.
        """
        m = self.config.model
        self.sigmas.copy_(geometric_sigmas(m.sigma_max, m.sigma_min, m.num_scales, device=self.sigmas.device))
        mods = list(self.all_modules)
        last = len(mods) - 1
        for i, mod in enumerate(mods):
            if isinstance(mod, (BigGANResBlock, AttentionBlock)):
                mod.reset_parameters(generator)
            elif isinstance(mod, nn.GroupNorm):
                mod.reset_parameters()
            elif isinstance(mod, (nn.Linear, nn.Conv2d)):
                _init_conv_or_linear(mod, self.init_scale if i == last else 1.0, generator)

    def _check_input(self, x: torch.Tensor, time_cond: torch.Tensor) -> None:
        expected = (self.num_channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise InputError(f"NCSN++ expects x of shape [N, {', '.join(map(str, expected))}], got {list(x.shape)}")
        if time_cond.shape != (x.shape[0],):
            raise InputError(f"time_cond must have shape [{x.shape[0]}], got {list(time_cond.shape)}")

    def forward(self, x: torch.Tensor, time_cond: torch.Tensor) -> torch.Tensor:
        self._check_input(x, time_cond)
        mods: Iterator[nn.Module] = iter(self.all_modules)
        if self.conditional:
            temb = timestep_embedding(time_cond, self.nf).to(self.all_modules[0].weight.dtype)
            temb = next(mods)(temb)
            temb = next(mods)(self.act(temb))
        else:
            temb = None
        if not self.centered:
            # Model trained on data in [0, 1]: map to [-1, 1] inside, as score_sde does.
            x = 2 * x - 1.0

        hs = [next(mods)(x)]
        for level in range(self.num_resolutions):
            for _ in range(self.num_res_blocks):
                h = next(mods)(hs[-1], temb)
                if self.attn_at_level[level]:
                    h = next(mods)(h)
                hs.append(h)
            if level != self.num_resolutions - 1:
                hs.append(next(mods)(hs[-1], temb))

        h = next(mods)(hs[-1], temb)
        h = next(mods)(h)
        h = next(mods)(h, temb)

        for level in reversed(range(self.num_resolutions)):
            for _ in range(self.num_res_blocks + 1):
                h = next(mods)(torch.cat([h, hs.pop()], dim=1), temb)
            if self.attn_at_level[level]:
                h = next(mods)(h)
            if level != 0:
                h = next(mods)(h, temb)

        h = self.act(next(mods)(h))
        h = next(mods)(h)
        if next(mods, None) is not None or hs:  # walk/construction mismatch guard
            raise RuntimeError("NCSN++ forward did not consume every module exactly once")
        if self.scale_by_sigma:
            # VE models only: divide by the noise level of the (integer) label; not used by VP configs.
            used = self.sigmas[time_cond.long()].to(h.dtype)
            h = h / used[:, None, None, None]
        return h
