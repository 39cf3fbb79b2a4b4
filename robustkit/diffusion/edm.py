"""EDM's DDPM++ backbone (``SongUNet`` + ``EDMPrecond``) with the published CIFAR-10 state-dict layout.

RDC (Chen et al.) classifies with the EDM CIFAR-10 networks of Karras et al.: the class-conditional
``edm-cifar10-32x32-cond-vp`` and the unconditional ``edm-cifar10-32x32-uncond-vp``, which RDC re-saves as
plain ``EDMPrecond`` state dicts (``edm_cifar_cond.pt``, ``edm_cifar_uncond_vp.pt``; every key carries the
``model.`` prefix of ``EDMPrecond.model``, and the 8 ``resample_filter`` buffers of the resampling convs
are stored too). This module rebuilds that network key for key and loads those files strictly.

Three layers of API:

* :class:`SongUNet`: the raw network ``F(c_in·x, c_noise, labels)``;
* :class:`EDMPrecond`: the preconditioned denoiser ``D(x; σ, y) = c_skip x + c_out F(c_in x, ln(σ)/4, y)``
  in σ-space (EDM paper, Table 1, "Ours");
* :class:`EDMScoreModel`: the robustkit :class:`~robustkit.diffusion.score_model.ScoreModel` adapter that
  takes VP time ``t`` and ``x_t = a(t) x0 + s(t) ε`` and returns ``ε``; :meth:`EDMScoreModel.denoise`
  exposes ``D`` in σ-space for RDC's EDM-weighted ELBO.

Numerics follow the published pipeline: everything in fp32 (fp64 if the input is fp64, for gradient
checks); with ``EDMConfig.use_fp16`` the U-Net runs in fp16 on CUDA only (RDC's copy of ``EDMPrecond``
defaults to that on CUDA; weights stay fp32 and are cast per layer, the attention softmax stays fp32).

Shape:
    images ``[N, C, H, W]`` with data in [-1, 1]; σ and t ``[N]`` (or a scalar); labels int ``[N]``.

Reference:
    Karras, Aittala, Aila, Laine. "Elucidating the Design Space of Diffusion-Based Generative Models",
    NeurIPS 2022, https://github.com/NVlabs/edm (``training/networks.py``). DDPM++ is the architecture of
    Song et al., "Score-Based Generative Modeling through Stochastic Differential Equations", ICLR 2021.
    RDC: Chen et al., "Robust Classification via a Single Diffusion Model", ICML 2024,
    https://github.com/huanranchen/DiffusionClassifier.

Example::

    >>> import torch
    >>> from robustkit.diffusion.edm import EDMConfig, EDMPrecond, EDMScoreModel
    >>> cfg = EDMConfig(img_resolution=8, model_channels=8, channel_mult=(1, 1), num_blocks=1,
    ...                 attn_resolutions=(4,))
    >>> model = EDMScoreModel(EDMPrecond(cfg)).eval()
    >>> x_t = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    >>> model(x_t, torch.tensor([0.3, 0.9]), torch.tensor([1, 7])).shape
    torch.Size([2, 3, 8, 8])
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import CheckpointError, InputError
from ..hub import load_state_dict_file, load_strict, verify_file
from .schedule import VPSDE
from .score_model import ScoreModel

__all__ = ["EDMConfig", "SongUNet", "UNetBlock", "EDMPrecond", "EDMScoreModel", "load_edm"]

# DDPM++ block settings fixed by SongUNet (not configurable there either): residual and attention
# outputs are scaled by sqrt(1/2) to keep unit variance, GroupNorm eps is 1e-6.
_SKIP_SCALE = math.sqrt(0.5)
_NORM_EPS = 1e-6


# ------------------------------------------------------------------------------------------ configuration

@dataclass(frozen=True)
class EDMConfig:
    """Architecture of ``EDMPrecond(SongUNet)`` as NVlabs' ``--arch=ddpmpp`` / RDC build it.

    The defaults are the published class-conditional CIFAR-10 network (55,735,299 parameters); see
    :meth:`ddpmpp_cifar10` and :meth:`ddpmpp_cifar10_small`. ``dropout`` only acts in training mode (it
    draws from the global RNG there, like any ``nn.Dropout``); evaluation runs in eval mode.

    Attributes:
        img_resolution: image height = width.
        in_channels: image channels (input and output of the network).
        label_dim: number of classes; 0 for the unconditional model (no ``map_label``).
        augment_dim: size of the augmentation-label vector (``map_augment``; loaded, unused by RDC).
        model_channels: base channel count (128 published).
        channel_mult: channel multiplier per resolution level.
        channel_mult_emb: embedding width = ``model_channels * channel_mult_emb``.
        channel_mult_noise: noise-embedding width = ``model_channels * channel_mult_noise``.
        num_blocks: residual blocks per level in the encoder (the decoder has one more).
        attn_resolutions: resolutions whose blocks have self-attention.
        dropout: dropout probability inside the residual blocks (training only).
        resample_filter: separable FIR filter of the up/down-sampling convs ([1, 1]: box filter).
        sigma_data: data standard deviation of EDM's preconditioning (0.5 for [-1, 1] images).
        use_fp16: run the U-Net in fp16 on CUDA (RDC's default); ignored on other devices.
    """

    img_resolution: int = 32
    in_channels: int = 3
    label_dim: int = 10
    augment_dim: int = 9
    model_channels: int = 128
    channel_mult: tuple[int, ...] = (2, 2, 2)
    channel_mult_emb: int = 4
    channel_mult_noise: int = 1
    num_blocks: int = 4
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    resample_filter: tuple[float, ...] = (1.0, 1.0)
    sigma_data: float = 0.5
    use_fp16: bool = False

    def __post_init__(self) -> None:
        for name in ("channel_mult", "attn_resolutions", "resample_filter"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        positive = ("img_resolution", "in_channels", "model_channels", "channel_mult_emb",
                    "channel_mult_noise", "num_blocks")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise InputError(f"EDMConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.label_dim < 0 or self.augment_dim < 0:
            raise InputError(f"EDMConfig label_dim and augment_dim must be >= 0, got {self.label_dim}, "
                             f"{self.augment_dim}")
        if not self.channel_mult or min(self.channel_mult) < 1:
            raise InputError(f"EDMConfig.channel_mult must be non-empty and positive, got {self.channel_mult}")
        if self.img_resolution % (1 << (len(self.channel_mult) - 1)):
            raise InputError(f"img_resolution {self.img_resolution} is not divisible by "
                             f"2^{len(self.channel_mult) - 1} (one halving per extra level)")
        if self.model_channels < 4:
            raise InputError("every feature map needs >= 4 channels (GroupNorm uses C // 4 groups); "
                             f"got model_channels={self.model_channels}, channel_mult={self.channel_mult}")
        if not self.resample_filter or sum(self.resample_filter) == 0:
            raise InputError(f"resample_filter must be non-empty with a non-zero sum, got {self.resample_filter}")
        if not 0.0 <= self.dropout < 1.0 or self.sigma_data <= 0:
            raise InputError(f"need 0 <= dropout < 1 and sigma_data > 0, got {self.dropout}, {self.sigma_data}")

    @property
    def conditional(self) -> bool:
        return self.label_dim > 0

    @classmethod
    def ddpmpp_cifar10(cls, conditional: bool = True) -> EDMConfig:
        """The published EDM DDPM++ CIFAR-10 network (``edm-cifar10-32x32-{cond,uncond}-vp``)."""
        return cls(label_dim=10 if conditional else 0)

    @classmethod
    def ddpmpp_cifar10_small(cls, conditional: bool = True) -> EDMConfig:
        """The same code path with 16 base channels and 2 blocks per level (the spec's test model)."""
        return cls(label_dim=10 if conditional else 0, model_channels=16, num_blocks=2)


# ------------------------------------------------------------------------------------------------ layers
# EDM's own Linear / Conv2d / GroupNorm: the parameters stay fp32 and are cast to the activation dtype at
# use, which is how the published fp16 mode works (and lets fp64 inputs run unchanged).

def _xavier_uniform_(w: torch.Tensor, fan_in: int, fan_out: int, gain: float,
                     generator: torch.Generator) -> None:
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    # Drawn on the generator's device and copied, so the numbers do not depend on the model's device.
    w.copy_(torch.empty(w.shape, device=generator.device).uniform_(-bound, bound, generator=generator))


class _Linear(nn.Module):
    """``y = x Wᵀ + b`` with W ``[out, in]``; ``init_gain`` scales the Xavier-uniform init."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True, init_gain: float = 1.0,
                 device: torch.device | str | None = None):
        super().__init__()
        self.in_features, self.out_features, self.init_gain = in_features, out_features, init_gain
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, device=device))
        else:
            self.register_parameter("bias", None)

    def reset_parameters(self, generator: torch.Generator) -> None:
        with torch.no_grad():  # initialisation only; never on a differentiable path
            _xavier_uniform_(self.weight, self.in_features, self.out_features, self.init_gain, generator)
            if self.bias is not None:
                self.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x @ self.weight.to(x.dtype).t()
        return out if self.bias is None else out + self.bias.to(x.dtype)


class _Conv2d(nn.Module):
    """Square conv (padding ``k // 2``), optionally after a 2× FIR up- or down-sampling.

    Up/down-sampling uses the buffer ``resample_filter`` = outer(f, f) / sum(f)², shape ``[1, 1, k, k]``
    (stored in the published checkpoints): down is a depthwise stride-2 conv with it (2×2 average pool
    for f = [1, 1]), up a depthwise stride-2 transposed conv with 4× it (nearest-neighbour for [1, 1]).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, *, up: bool = False,
                 down: bool = False, resample_filter: Sequence[float] = (1.0, 1.0), init_gain: float = 1.0,
                 device: torch.device | str | None = None):
        super().__init__()
        if up and down:
            raise InputError("a conv cannot both up- and down-sample")
        self.in_channels, self.out_channels, self.kernel = in_channels, out_channels, kernel
        self.up, self.down, self.init_gain = up, down, init_gain
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel, kernel, device=device))
        self.bias = nn.Parameter(torch.empty(out_channels, device=device))
        if up or down:
            f = torch.as_tensor(resample_filter, dtype=torch.float32)
            self.register_buffer("resample_filter", (torch.outer(f, f) / f.sum() ** 2)[None, None].to(device))
        else:
            self.resample_filter = None

    def reset_parameters(self, generator: torch.Generator) -> None:
        k2 = self.kernel * self.kernel
        with torch.no_grad():  # initialisation only
            _xavier_uniform_(self.weight, self.in_channels * k2, self.out_channels * k2, self.init_gain, generator)
            self.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample_filter is not None:
            f = self.resample_filter.to(x.dtype)
            pad = (f.shape[-1] - 1) // 2
            c = x.shape[1]
            if self.up:
                x = F.conv_transpose2d(x, (f * 4).tile(c, 1, 1, 1), groups=c, stride=2, padding=pad)
            else:
                x = F.conv2d(x, f.tile(c, 1, 1, 1), groups=c, stride=2, padding=pad)
        x = F.conv2d(x, self.weight.to(x.dtype), padding=self.kernel // 2)
        return x + self.bias.to(x.dtype).view(1, -1, 1, 1)


class _GroupNorm(nn.Module):
    """GroupNorm with ``min(32, C // 4)`` groups (so narrow test models get fewer groups), eps 1e-6."""

    def __init__(self, num_channels: int, *, device: torch.device | str | None = None):
        super().__init__()
        self.num_groups = min(32, num_channels // 4)
        if self.num_groups < 1 or num_channels % self.num_groups:
            raise InputError(f"GroupNorm over {num_channels} channels: {self.num_groups} groups do not divide it")
        self.weight = nn.Parameter(torch.empty(num_channels, device=device))
        self.bias = nn.Parameter(torch.empty(num_channels, device=device))

    def reset_parameters(self, generator: torch.Generator) -> None:
        with torch.no_grad():  # initialisation only
            self.weight.fill_(1.0)
            self.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), _NORM_EPS)


class UNetBlock(nn.Module):
    """DDPM++ residual block with optional 2× resampling and single-head self-attention.

    ``h = conv0(silu(norm0(x)))``; ``h = silu(norm1(h + affine(emb)))``; ``h = conv1(dropout(h))``;
    ``x = (h + skip(x)) · sqrt(1/2)`` (``skip``: 1×1 conv, after resampling, when the channel count
    changes or the block resamples; identity otherwise). With attention, ``qkv`` is a 1×1 conv to 3C
    channels laid out **per channel interleaved** (channel ``3c + j``: j = 0 q, 1 k, 2 v) and
    ``x = (proj(v softmax(qᵀk / sqrt(C))ᵀ) + x) · sqrt(1/2)``, softmax over keys in fp32.

    Shape:
        ``x [N, in_channels, H, W]``, ``emb [N, emb_channels]`` → ``[N, out_channels, H', W']`` with
        H' = 2H (up), H/2 (down) or H.
    """

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, *, up: bool = False,
                 down: bool = False, attention: bool = False, dropout: float = 0.0,
                 resample_filter: Sequence[float] = (1.0, 1.0), device: torch.device | str | None = None):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.up, self.down, self.dropout = up, down, dropout
        self.num_heads = 1 if attention else 0  # DDPM++ uses one head wherever attention is on
        # Registration order fixes the state-dict order: norm0, conv0, affine, norm1, conv1, skip,
        # norm2, qkv, proj. conv1 / proj start near zero (gain 1e-5) and qkv at gain sqrt(0.2), as in EDM.
        self.norm0 = _GroupNorm(in_channels, device=device)
        self.conv0 = _Conv2d(in_channels, out_channels, 3, up=up, down=down, resample_filter=resample_filter,
                             device=device)
        self.affine = _Linear(emb_channels, out_channels, device=device)
        self.norm1 = _GroupNorm(out_channels, device=device)
        self.conv1 = _Conv2d(out_channels, out_channels, 3, init_gain=1e-5, device=device)
        self.skip = None
        if in_channels != out_channels or up or down:
            self.skip = _Conv2d(in_channels, out_channels, 1, up=up, down=down, resample_filter=resample_filter,
                                device=device)
        if self.num_heads:
            self.norm2 = _GroupNorm(out_channels, device=device)
            self.qkv = _Conv2d(out_channels, 3 * out_channels, 1, init_gain=math.sqrt(0.2), device=device)
            self.proj = _Conv2d(out_channels, out_channels, 1, init_gain=1e-5, device=device)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv0(F.silu(self.norm0(x)))
        # The embedding path stays in the working precision; cast at the addition (fp16 mode).
        h = h + self.affine(emb).to(h.dtype)[:, :, None, None]
        h = F.silu(self.norm1(h))
        h = self.conv1(F.dropout(h, p=self.dropout, training=self.training))
        h = (h + (self.skip(x) if self.skip is not None else x)) * _SKIP_SCALE
        if self.num_heads:
            h = (self.proj(self._attention(self.norm2(h))) + h) * _SKIP_SCALE
        return h

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        n, c, hh, ww = x.shape
        heads = self.num_heads
        # [N·heads, C/heads, 3, HW]: q, k, v interleaved per channel (see the class docstring).
        q, k, v = self.qkv(x).reshape(n * heads, c // heads, 3, hh * ww).unbind(2)
        acc = torch.promote_types(q.dtype, torch.float32)  # fp32 softmax even when the block runs fp16
        logits = torch.einsum("ncq,nck->nqk", q.to(acc), (k / math.sqrt(c // heads)).to(acc))
        w = logits.softmax(dim=2).to(q.dtype)
        return torch.einsum("nqk,nck->ncq", w, v).reshape(n, c, hh, ww)


# ------------------------------------------------------------------------------------------------ network

class SongUNet(nn.Module):
    """The DDPM++ U-Net of EDM (positional noise embedding, standard encoder and decoder).

    ``F(x, c_noise, class_labels)``: the noise embedding is ``[sin(c f), cos(c f)]`` with
    ``f_i = (1e-4)^(i / (half - 1))`` (EDM's PositionalEmbedding with endpoint, halves swapped);
    ``emb += map_label(onehot · sqrt(label_dim))`` for the conditional model; then two Linear+SiLU
    layers. Every encoder output is kept as a skip; decoder ``block*`` entries concatenate
    ``[x, skip]`` on channels. The output is ``aux_conv(silu(aux_norm(x)))``.

    Shape:
        ``x [N, C, R, R]``, ``noise_labels [N]``, ``class_labels [N, label_dim]`` (float, usually one-hot)
        → ``[N, C, R, R]``.
    """

    def __init__(self, config: EDMConfig, *, device: torch.device | str | None = None):
        super().__init__()
        cfg = config
        self.label_dim = cfg.label_dim
        self.noise_channels = cfg.model_channels * cfg.channel_mult_noise
        emb_channels = cfg.model_channels * cfg.channel_mult_emb

        def block(cin: int, cout: int, **kw) -> UNetBlock:
            return UNetBlock(cin, cout, emb_channels, dropout=cfg.dropout, resample_filter=cfg.resample_filter,
                             device=device, **kw)

        # Mapping network; registration order = state-dict order (map_label, map_augment, map_layer0/1).
        self.map_label = _Linear(cfg.label_dim, self.noise_channels, device=device) if cfg.label_dim else None
        self.map_augment = (_Linear(cfg.augment_dim, self.noise_channels, bias=False, device=device)
                            if cfg.augment_dim else None)
        self.map_layer0 = _Linear(self.noise_channels, emb_channels, device=device)
        self.map_layer1 = _Linear(emb_channels, emb_channels, device=device)

        self.enc = nn.ModuleDict()
        skip_channels: list[int] = []
        ch = cfg.in_channels
        for level, mult in enumerate(cfg.channel_mult):
            res = cfg.img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = _Conv2d(ch, cfg.model_channels, 3, device=device)
                ch = cfg.model_channels
            else:
                self.enc[f"{res}x{res}_down"] = block(ch, ch, down=True)
            skip_channels.append(ch)
            for i in range(cfg.num_blocks):
                self.enc[f"{res}x{res}_block{i}"] = block(ch, cfg.model_channels * mult,
                                                          attention=res in cfg.attn_resolutions)
                ch = cfg.model_channels * mult
                skip_channels.append(ch)

        self.dec = nn.ModuleDict()
        skip_blocks: set[str] = set()
        last = len(cfg.channel_mult) - 1
        for level in reversed(range(len(cfg.channel_mult))):
            res = cfg.img_resolution >> level
            if level == last:
                # The bottleneck's first block always has attention, whatever attn_resolutions says.
                self.dec[f"{res}x{res}_in0"] = block(ch, ch, attention=True)
                self.dec[f"{res}x{res}_in1"] = block(ch, ch)
            else:
                self.dec[f"{res}x{res}_up"] = block(ch, ch, up=True)
            for i in range(cfg.num_blocks + 1):
                name = f"{res}x{res}_block{i}"
                cout = cfg.model_channels * cfg.channel_mult[level]
                self.dec[name] = block(ch + skip_channels.pop(), cout,
                                       attention=i == cfg.num_blocks and res in cfg.attn_resolutions)
                skip_blocks.add(name)
                ch = cout
        res = cfg.img_resolution
        self.dec[f"{res}x{res}_aux_norm"] = _GroupNorm(ch, device=device)
        self.dec[f"{res}x{res}_aux_conv"] = _Conv2d(ch, cfg.in_channels, 3, init_gain=1e-5, device=device)
        self._skip_blocks = frozenset(skip_blocks)  # decoder blocks that concatenate an encoder output

    def noise_embedding(self, noise_labels: torch.Tensor) -> torch.Tensor:
        """``[sin(c f_i), cos(c f_i)]``, f_i = (1e-4)^(i/(half-1)), i < half = noise_channels / 2.

        Shape: ``[N]`` → ``[N, noise_channels]``.
        """
        half = self.noise_channels // 2
        exponents = torch.arange(half, dtype=torch.float32, device=noise_labels.device) / max(half - 1, 1)
        freqs = (1.0 / 10000) ** exponents
        arg = noise_labels[:, None] * freqs.to(noise_labels.dtype)[None, :]
        return torch.cat([arg.sin(), arg.cos()], dim=1)

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None = None,
                augment_labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.noise_embedding(noise_labels)
        if self.map_label is not None:
            if class_labels is None:
                raise InputError("this SongUNet is class-conditional: pass class_labels [N, label_dim]")
            # One-hot labels are scaled by sqrt(label_dim) before map_label (EDM's SongUNet).
            emb = emb + self.map_label(class_labels.to(emb.dtype) * math.sqrt(self.label_dim))
        elif class_labels is not None:
            raise InputError("this SongUNet is unconditional (label_dim 0): pass class_labels=None")
        if augment_labels is not None:
            if self.map_augment is None:
                raise InputError("this SongUNet has no augmentation labels (augment_dim 0)")
            emb = emb + self.map_augment(augment_labels.to(emb.dtype))
        emb = F.silu(self.map_layer0(emb))
        emb = F.silu(self.map_layer1(emb))

        skips = []
        h = x
        for block in self.enc.values():
            h = block(h, emb) if isinstance(block, UNetBlock) else block(h)
            skips.append(h)
        for name, block in self.dec.items():
            if isinstance(block, UNetBlock):
                if name in self._skip_blocks:
                    h = torch.cat([h, skips.pop()], dim=1)
                h = block(h, emb)
            elif isinstance(block, _GroupNorm):  # aux_norm, then SiLU, then aux_conv (the output)
                h = F.silu(block(h))
            else:
                h = block(h)
        return h


class EDMPrecond(nn.Module):
    """EDM's preconditioned denoiser ``D(x; σ, y)`` around a :class:`SongUNet` (held as ``self.model``).

    ``c_skip = σ_d²/(σ²+σ_d²)``, ``c_out = σ σ_d / sqrt(σ²+σ_d²)``, ``c_in = 1/sqrt(σ_d²+σ²)``,
    ``c_noise = ln(σ)/4`` and ``D = c_skip x + c_out F(c_in x, c_noise, y)`` (EDM, Table 1 and Eq. 7).
    ``x`` is the noisy image ``x0 + σ n`` in the [-1, 1] data scale. Labels may be integer ``[N]``
    (one-hot encoded here, RDC's signature) or float ``[N, label_dim]`` (NVlabs' signature); ``None`` on a
    conditional model feeds an all-zero label vector as NVlabs does, which is *not* a trained null
    label. Parameters: none of its own; the state dict is the U-Net's under ``model.``.

    Shape:
        ``x [N, C, R, R]``, ``sigma [N]`` or scalar → ``D [N, C, R, R]`` (fp32, or fp64 for fp64 input).

    Example::

        >>> import torch
        >>> from robustkit.diffusion.edm import EDMConfig, EDMPrecond
        >>> cfg = EDMConfig(img_resolution=8, model_channels=8, channel_mult=(1, 1), num_blocks=1,
        ...                 attn_resolutions=(4,))
        >>> net = EDMPrecond(cfg, generator=torch.Generator().manual_seed(0)).eval()
        >>> net(torch.zeros(2, 3, 8, 8), torch.tensor([0.5, 2.0]), torch.tensor([1, 7])).shape
        torch.Size([2, 3, 8, 8])
    """

    def __init__(self, config: EDMConfig | None = None, *, device: torch.device | str | None = None,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.config = config if config is not None else EDMConfig()
        self.label_dim = self.config.label_dim
        self.sigma_data = float(self.config.sigma_data)
        self.use_fp16 = bool(self.config.use_fp16)
        self.model = SongUNet(self.config, device=device)
        if torch.device(device if device is not None else "cpu").type != "meta":
            self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """EDM's initialisation (Xavier-uniform; conv1/proj/aux_conv at gain 1e-5; zero biases).

        Draws only from ``generator`` (default: a CPU generator seeded 0, so a fresh model is reproducible).
        """
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        for module in self.modules():
            if isinstance(module, (_Linear, _Conv2d, _GroupNorm)):
                module.reset_parameters(gen)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, class_labels: torch.Tensor | None = None,
                augment_labels: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 4:
            raise InputError(f"x must be [N, C, H, W], got {list(x.shape)}")
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        x = x.to(dtype)
        n = x.shape[0]
        sigma = torch.as_tensor(sigma, dtype=dtype, device=x.device).reshape(-1)
        if sigma.numel() == 1:
            sigma = sigma.expand(n)
        if sigma.shape != (n,):
            raise InputError(f"sigma must be a scalar or have {n} entries, got shape {list(sigma.shape)}")
        sigma = sigma.reshape(n, 1, 1, 1)
        class_labels = self._labels(class_labels, n, x.device, dtype)

        sd = self.sigma_data
        c_skip = sd ** 2 / (sigma ** 2 + sd ** 2)
        c_out = sigma * sd / (sigma ** 2 + sd ** 2).sqrt()
        c_in = 1 / (sd ** 2 + sigma ** 2).sqrt()
        c_noise = sigma.log() / 4
        net_dtype = torch.float16 if (self.use_fp16 and x.device.type == "cuda") else dtype
        f_x = self.model((c_in * x).to(net_dtype), c_noise.flatten(), class_labels, augment_labels)
        return c_skip * x + c_out * f_x.to(dtype)

    def _labels(self, labels: torch.Tensor | None, n: int, device: torch.device,
                dtype: torch.dtype) -> torch.Tensor | None:
        if self.label_dim == 0:
            if labels is not None:
                raise InputError("this EDMPrecond is unconditional (label_dim 0): pass class_labels=None")
            return None
        if labels is None:
            return torch.zeros(1, self.label_dim, device=device, dtype=dtype)  # NVlabs' behaviour (see above)
        if not labels.is_floating_point():
            if labels.shape != (n,):
                raise InputError(f"integer class labels must have shape [{n}], got {list(labels.shape)}")
            if bool(((labels < 0) | (labels >= self.label_dim)).any()):
                raise InputError(f"class labels must lie in [0, {self.label_dim}), got {labels.tolist()}")
            return F.one_hot(labels.to(device), self.label_dim).to(dtype)
        if labels.shape != (n, self.label_dim):
            raise InputError(f"float class labels must have shape [{n}, {self.label_dim}] (one-hot), "
                             f"got {list(labels.shape)}")
        return labels.to(device=device, dtype=dtype)


# ------------------------------------------------------------------------------------------------ adapter

class EDMScoreModel(ScoreModel):
    """:class:`ScoreModel` adapter of an :class:`EDMPrecond`: VP time in, noise prediction out.

    With the continuous VP schedule (:class:`~robustkit.diffusion.schedule.VPSDE`, β_min 0.1, β_max 20)
    ``x_t = a x0 + s ε`` is ``a (x0 + σ ε)`` with ``σ(t) = s/a`` (EDM, Table 1), so ``x_edm = x_t / a``,
    ``D = EDMPrecond(x_edm, σ, onehot(y))`` and ``ε = (x_edm − D)/σ``. The EDM networks were trained on σ
    directly (EDM preconditioning; "vp" in the checkpoint names is the DDPM++ architecture), so the VP
    time is only the ScoreModel contract's parametrisation of σ.

    The EDM conditional model has no null label, so ``y=None`` on it raises :class:`InputError`; use the
    separate unconditional checkpoint for p(x). :meth:`denoise` gives ``D`` in σ-space (RDC's ELBO).

    Shape:
        ``x_t [N, C, R, R]``, ``t [N]`` or scalar in (0, 1], ``y`` int ``[N]`` → ``ε [N, C, R, R]``.

    Example::

        >>> import torch
        >>> from robustkit.diffusion.edm import EDMConfig, EDMPrecond, EDMScoreModel
        >>> cfg = EDMConfig(img_resolution=8, model_channels=8, channel_mult=(1, 1), num_blocks=1,
        ...                 attn_resolutions=(4,), label_dim=0)
        >>> model = EDMScoreModel(EDMPrecond(cfg)).eval()
        >>> model.conditional, round(float(model.sigma(torch.tensor(0.5))), 4)
        (False, 3.4129)
        >>> model.denoise(torch.zeros(1, 3, 8, 8), 3.4129).shape
        torch.Size([1, 3, 8, 8])
    """

    def __init__(self, precond: EDMPrecond, sde: VPSDE | None = None):
        cfg = precond.config
        super().__init__((cfg.in_channels, cfg.img_resolution, cfg.img_resolution),
                         cfg.label_dim if cfg.label_dim else None)
        self.precond = precond
        self.sde = sde if sde is not None else VPSDE()

    def mean_coef(self, t: torch.Tensor) -> torch.Tensor:
        """a(t) = exp(−t²(β_max−β_min)/4 − t β_min/2). Shape: any → same."""
        return self.sde.marginal(t).mean

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """σ(t) = s(t)/a(t) = sqrt(expm1(−2 ln a)), accurate at small t. Shape: any → same."""
        return self.sde.sigma(t)

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        self._check_labels(y, x_t.shape[0])
        if bool((t <= 0).any()):
            raise InputError("t must lie in (0, 1]: EDM's c_noise = ln(σ(t))/4 is undefined at σ = 0")
        a = self.mean_coef(t).view(-1, 1, 1, 1)
        sigma = self.sigma(t)
        x_edm = x_t / a
        d = self.precond(x_edm, sigma, y)
        return (x_edm - d) / sigma.view(-1, 1, 1, 1)

    def denoise(self, x_noisy: torch.Tensor, sigma: torch.Tensor | float,
                y: torch.Tensor | None = None) -> torch.Tensor:
        """EDM's denoiser ``D(x_noisy; σ, y)`` with ``x_noisy = x0 + σ n`` (no VP scaling).

        Shape: ``x_noisy [N, C, R, R]``, ``sigma [N]`` or scalar (> 0), ``y`` int ``[N]`` → ``[N, C, R, R]``.
        """
        if x_noisy.dim() != 4 or tuple(x_noisy.shape[1:]) != self.input_shape:
            raise InputError(f"x_noisy must have shape [N, {', '.join(map(str, self.input_shape))}], got "
                             f"{list(x_noisy.shape)}")
        n = x_noisy.shape[0]
        self._check_labels(y, n)
        sigma = torch.as_tensor(sigma, dtype=x_noisy.dtype, device=x_noisy.device)
        if sigma.dim() == 0:
            sigma = sigma.expand(n)
        if sigma.shape != (n,):
            raise InputError(f"sigma must be a scalar or have shape [{n}], got {list(sigma.shape)}")
        if bool((sigma <= 0).any()):
            raise InputError("sigma must be > 0 (c_noise = ln(σ)/4)")
        return self.precond(x_noisy, sigma, y)

    def _check_labels(self, y: torch.Tensor | None, n: int) -> None:
        if self.conditional:
            if y is None:
                raise InputError("the EDM conditional model has no null label, so y=None is not defined; "
                                 "pass integer labels [N], or load the unconditional checkpoint "
                                 "(load_edm(..., conditional=False)) for p(x)")
            if y.shape != (n,) or y.is_floating_point():
                raise InputError(f"y must be an integer tensor of shape [{n}], got {y.dtype} {list(y.shape)}")
        elif y is not None:
            raise InputError("this EDM model is unconditional; pass y=None")


# ------------------------------------------------------------------------------------------------- loader

def load_edm(path: str | os.PathLike, conditional: bool = True, *, config: EDMConfig | None = None,
             sha256: str | None = None) -> EDMScoreModel:
    """Load RDC's EDM CIFAR-10 state dict (``edm_cifar_cond.pt`` / ``edm_cifar_uncond_vp.pt``) strictly.

    The file must be a plain ``EDMPrecond`` state dict (keys ``model.*``, including the 8
    ``resample_filter`` buffers), read with ``torch.load(weights_only=True)`` or safetensors. NVlabs'
    ``.pkl`` network pickles are refused: unpickling them runs code.

    Args:
        path: the checkpoint file.
        conditional: the class-conditional (label_dim 10) or the unconditional network.
        config: architecture; default :meth:`EDMConfig.ddpmpp_cifar10` for ``conditional``. Its
            ``label_dim`` must agree with ``conditional``.
        sha256: expected digest of the file, checked before reading.

    Returns:
        an :class:`EDMScoreModel` in eval mode, on CPU.

    Raises:
        CheckpointError: missing/unreadable/corrupt file, or keys/shapes that differ (all listed).
        InputError: ``config`` contradicts ``conditional``.
    """
    if config is None:
        config = EDMConfig.ddpmpp_cifar10(conditional)
    elif config.conditional != bool(conditional):
        raise InputError(f"config.label_dim={config.label_dim} contradicts conditional={conditional}")
    path = Path(path)
    if path.suffix == ".pkl":
        raise CheckpointError(f"{path}: NVlabs' .pkl files are code pickles and are not loaded; use the "
                              "plain state dict RDC ships (edm_cifar_cond.pt / edm_cifar_uncond_vp.pt)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    verify_file(path, sha256)
    state = load_state_dict_file(path)
    precond = EDMPrecond(config)
    load_strict(precond, state, source=str(path))
    return EDMScoreModel(precond).eval()

