"""Building blocks of the ADM UNet (guided-diffusion): time embedding, ResBlock, AttentionBlock.

Module and attribute names mirror the published state-dict layout (``in_layers.0``, ``emb_layers.1``,
``out_layers.3``, ``skip_connection``, ``norm``/``qkv``/``proj_out``, ``op``, ``conv``), so the
checkpoints of openai/guided-diffusion load key for key. The network itself is in
:mod:`robustkit.diffusion.adm`.

Precision: every block runs in the dtype of its convolution weights (fp16 after
:meth:`~robustkit.diffusion.adm.ADMUNet.convert_to_fp16`), while GroupNorm and the attention softmax
are computed in float32 and the time-embedding Linear layers stay float32, as in guided-diffusion.

Reference:
    Dhariwal & Nichol, "Diffusion Models Beat GANs on Image Synthesis", NeurIPS 2021; official code
    openai/guided-diffusion (``guided_diffusion/unet.py``, ``nn.py``).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["AttentionBlock", "Downsample", "GroupNorm32", "ResBlock", "TimestepSequential", "Upsample",
           "timestep_embedding"]

NUM_GROUPS = 32  # guided-diffusion's normalization(): always 32 groups ...
GROUP_NORM_EPS = 1e-5  # ... and torch's default eps


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (integer or fractional) diffusion steps, ``[cos | sin]`` order.

    ``freq_i = exp(-ln(max_period) · i / half)`` for ``i < half = dim // 2`` (note the denominator
    ``half``, not score_sde's ``half - 1``), ``emb = [cos(t·freq), sin(t·freq)]``, zero-padded when
    ``dim`` is odd. Computed in float32 whatever the input dtype.

    Shape:
        ``timesteps [N]`` → ``[N, dim]``.

    Example::

        >>> import torch
        >>> e = timestep_embedding(torch.tensor([0, 10]), 4)
        >>> e.shape, e[0].tolist()
        (torch.Size([2, 4]), [1.0, 1.0, 0.0, 0.0])
    """
    half = dim // 2
    # Same operation order as the reference (scalar · arange, then / half) so the float32
    # frequencies are bit-identical: at t = 999 one ulp of a frequency moves the argument by ~1e-4.
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    freqs = torch.exp(exponent)
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm (32 groups, eps 1e-5) that normalises in at least float32 and returns the input dtype.

    fp16 activations are upcast (guided-diffusion's ``GroupNorm32``); float64 stays float64 so that
    double-precision gradient checks remain meaningful.
    """

    def __init__(self, num_channels: int):
        super().__init__(NUM_GROUPS, num_channels, eps=GROUP_NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        compute = x if x.dtype in (torch.float32, torch.float64) else x.float()
        out = F.group_norm(compute, self.num_groups, self.weight.to(compute.dtype), self.bias.to(compute.dtype),
                           self.eps)
        return out.to(x.dtype)


def _zero(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters: residual branches start as the identity (ADM's ``zero_module``)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class Downsample(nn.Module):
    """Strided 3×3 convolution (used only when ``resblock_updown`` is False). Key: ``op``."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest ×2 then a 3×3 convolution (used only when ``resblock_updown`` is False). Key: ``conv``."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class ResBlock(nn.Module):
    """Residual block conditioned on the time embedding, optionally resampling (BigGAN-style).

    ``h = conv(SiLU(GN(x)))``; with scale-shift norm ``h = GN(h)·(1 + scale) + shift`` where
    ``[scale | shift] = Linear(SiLU(emb))`` (scale first), else ``h = GN(h + Linear(SiLU(emb)))``;
    then SiLU, dropout, a zero-initialised conv, and ``skip(x) + h`` with no rescaling. Up/down
    blocks normalise and activate first, then resample both ``h`` and ``x`` (nearest ×2 or 2×2
    average pooling), then convolve.

    Shape:
        ``x [N, channels, H, W]``, ``emb [N, emb_channels]`` → ``[N, out_channels, H', W']`` with
        ``H' = 2H`` (up), ``H/2`` (down) or ``H``.
    """

    def __init__(self, channels: int, emb_channels: int, out_channels: int | None = None, *,
                 dropout: float = 0.0, use_scale_shift_norm: bool = True, up: bool = False, down: bool = False):
        super().__init__()
        if up and down:
            raise ValueError("a ResBlock cannot both up- and down-sample")
        out_channels = out_channels or channels
        self.up, self.down = up, down
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels))
        self.out_layers = nn.Sequential(GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(p=dropout),
                                        _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1)))
        self.skip_connection = (nn.Identity() if out_channels == channels
                                else nn.Conv2d(channels, out_channels, 1))

    def _resample(self, t: torch.Tensor) -> torch.Tensor:
        if self.up:
            return F.interpolate(t, scale_factor=2, mode="nearest")
        if self.down:
            return F.avg_pool2d(t, kernel_size=2, stride=2)
        return t

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        norm, act, conv = self.in_layers
        h = conv(self._resample(act(norm(x))))
        x = self._resample(x)
        # The embedding MLP stays float32; its output joins the (possibly fp16) activations.
        e = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        out_norm, out_act, out_drop, out_conv = self.out_layers
        if self.use_scale_shift_norm:
            scale, shift = torch.chunk(e, 2, dim=1)
            h = out_norm(h) * (1 + scale) + shift
        else:
            h = out_norm(h + e)
        h = out_conv(out_drop(out_act(h)))
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all spatial positions, with a plain (unscaled) residual.

    One 1×1 ``qkv`` convolution produces ``3C`` channels. In the legacy order (the one the published
    checkpoints were trained with) they are grouped per head as ``[q | k | v]`` blocks of ``C/heads``
    channels; the new order (``legacy_order=False``) is ``[q of all heads | k | v]``. Both q and k are
    multiplied by ``ch^(-1/4)`` before the product (the split scaling is steadier in fp16) and the
    softmax is computed in float32.

    Shape:
        ``[N, C, H, W]`` → ``[N, C, H, W]``.
    """

    def __init__(self, channels: int, num_heads: int, *, legacy_order: bool = True):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"{channels} channels cannot be split into {num_heads} heads")
        self.num_heads = num_heads
        self.legacy_order = legacy_order
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = _zero(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        flat = x.reshape(b, c, -1)
        length = flat.shape[-1]
        qkv = self.qkv(self.norm(flat))
        heads = self.num_heads
        ch = c // heads
        if self.legacy_order:
            q, k, v = qkv.reshape(b * heads, 3 * ch, length).split(ch, dim=1)
        else:
            q, k, v = (part.reshape(b * heads, ch, length) for part in qkv.chunk(3, dim=1))
        scale = 1.0 / math.sqrt(math.sqrt(ch))
        logits = torch.einsum("bct,bcs->bts", q * scale, k * scale)
        # Softmax in at least float32 (fp16 logits are upcast; float64 stays float64 for gradchecks).
        wide = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
        weights = torch.softmax(wide, dim=-1).to(logits.dtype)
        attended = torch.einsum("bts,bcs->bct", weights, v).reshape(b, c, length)
        return (flat + self.proj_out(attended)).reshape(b, c, *spatial)


class TimestepSequential(nn.Sequential):
    """``nn.Sequential`` that hands the time embedding to the ResBlocks it holds (numeric keys ``0, 1, 2``)."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x
