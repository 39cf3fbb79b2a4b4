"""DiffuSSM: an attention-free diffusion backbone built from gated bidirectional state-space layers.

:class:`DiffuSSM` is a :class:`~robustkit.diffusion.ScoreModel`: ``eps = model(x_t, t, y=None)`` with
``x_t`` in the VP scaling (data in [-1, 1]) and continuous time ``t ∈ [0, 1]``. There is no patchify:
every pixel is a token, so the sequence has ``L = H·W`` tokens in row-major order, and the cost of a
layer is ``O(L log L)`` (FFT convolutions) instead of attention's ``O(L²)``.

Each :class:`DiffuSSMBlock` (Yan et al. §3, Fig. 2):

1. adaLN-Zero: ``h = LN(x)(1 + γ) + β`` with ``(β, γ, α)`` regressed from the time + class vector by
   a zero-initialised linear layer (as in DiT), so the block starts as the identity;
2. hourglass: groups of ``r`` consecutive tokens are concatenated and mapped by a linear layer to one
   token (length ``L / r``), a :class:`GatedBiSSM` mixes the shortened sequence, and a linear layer
   maps each token back to ``r`` tokens;
3. gated residual: ``x ← x + α · hourglass(h)``.

The SSM is S4D (Gu et al. 2022): a diagonal complex ``A`` with the S4D-Lin initialisation
``A_n = −1/2 + iπn``, input and output vectors ``B, C``, and a learned step ``Δ = exp(log Δ)``, discretised
with zero-order hold, ``Ā = exp(ΔA)``, ``B̄ = (exp(ΔA) − 1)/A · B``. Its length-``L`` kernel is in closed
form, ``K_l = Re(Σ_n C_n Ā_n^l B̄_n)``, and it is applied as a causal convolution by FFT, plus the skip
``D u``: the same output as the recurrence ``x_k = Ā x_{k−1} + B̄ u_k``, ``y_k = Re(C x_k) + D u_k``.
(S4D writes ``2·Re`` for conjugate pairs; the factor is absorbed in ``C``.) The ``[H, N, L]`` powers
``Ā^l`` are evaluated in real arithmetic (see :meth:`S4DLayer.kernel`).

The bidirectional layer follows BiGS (Wang et al. 2023, §3): ``U = GELU(W_u h)``, ``V = GELU(W_v h)``;
one SSM runs over ``GELU(W_f U)``, another over the reversal of ``GELU(W_b U)`` (its output reversed
back); the two are multiplied, projected, gated by ``V`` multiplicatively and projected out.

Conditioning matches :class:`~robustkit.diffusion.dit.DiT`: sinusoidal embedding of ``time_scale · t``
through an MLP, plus a label embedding of ``K + 1`` rows (null label ``K``; ``y=None`` means ∅).

Reference:
    Yan, Gu, Rush, "Diffusion Models Without Attention", CVPR 2024 (DiffuSSM, hourglass + gated
    bidirectional SSM). Gu, Gupta, Goel, Ré, "On the Parameterization and Initialization of Diagonal
    State Space Models", NeurIPS 2022 (S4D, S4D-Lin, Eq. for the Vandermonde kernel). Wang, Yan, Gu,
    Rush, "Pretraining Without Attention", Findings of EMNLP 2023 (BiGS gated bidirectional SSM).
    Peebles & Xie, ICCV 2023 (adaLN-Zero).

Example::

    >>> import torch
    >>> from robustkit.diffusion.diffussm import DiffuSSM, DiffuSSMConfig
    >>> cfg = DiffuSSMConfig(in_channels=1, image_size=8, hidden_size=16, depth=2, downsample=2,
    ...                      state_size=8, num_classes=10)
    >>> model = DiffuSSM(cfg)
    >>> model(torch.randn(2, 1, 8, 8), torch.tensor([0.1, 0.9]), torch.tensor([3, 7])).shape
    torch.Size([2, 1, 8, 8])
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import InputError
from ..utils import check_positive_int
from .dit import ConditionEmbedding, FinalLayer, _positive_real, check_time_and_labels, modulate
from .score_model import ScoreModel

__all__ = ["DiffuSSM", "DiffuSSMBlock", "DiffuSSMConfig", "GatedBiSSM", "S4DLayer"]


@dataclass(frozen=True)
class DiffuSSMConfig:
    """Architecture of a :class:`DiffuSSM`. Defaults: a small 32×32 RGB model (width 256, 12 blocks,
    hourglass factor 2, S4D's 64-dimensional real state as 32 complex modes), class-conditional.

    Attributes:
        in_channels: image channels (also the output's).
        image_size: side of the square input; ``image_size²`` divisible by ``downsample``.
        hidden_size: token width ``D``.
        depth: number of blocks.
        downsample: hourglass factor ``r`` (tokens merged per SSM step; Yan et al.'s ``M``).
        state_size: complex modes ``N`` of each S4D channel.
        expand: width of the SSM branch over ``hidden_size`` (BiGS's inner width).
        dt_min, dt_max: the range of the log-uniform initial step ``Δ`` (S4D: 0.001 and 0.1).
        num_classes: ``None`` (unconditional) or ``K`` (label table of ``K + 1`` rows).
        frequency_size: width of the sinusoidal time embedding.
        time_scale: ``t`` is embedded as ``time_scale · t``.
    """

    in_channels: int = 3
    image_size: int = 32
    hidden_size: int = 256
    depth: int = 12
    downsample: int = 2
    state_size: int = 32
    expand: float = 1.0
    dt_min: float = 0.001
    dt_max: float = 0.1
    num_classes: int | None = 10
    frequency_size: int = 256
    time_scale: float = 1000.0

    def __post_init__(self) -> None:
        for name in ("in_channels", "image_size", "hidden_size", "depth", "downsample", "state_size",
                     "frequency_size"):
            check_positive_int(name, getattr(self, name))
        for name in ("expand", "dt_min", "dt_max", "time_scale"):
            _positive_real(name, getattr(self, name))
        if self.dt_min > self.dt_max:
            raise InputError(f"dt_min {self.dt_min} exceeds dt_max {self.dt_max}")
        if self.num_classes is not None:
            check_positive_int("num_classes", self.num_classes)
        if self.sequence_length % self.downsample:
            raise InputError(f"the pixel sequence length {self.sequence_length} (image_size²) is not divisible by "
                             f"downsample {self.downsample}")

    @property
    def sequence_length(self) -> int:
        return self.image_size * self.image_size

    @property
    def inner_size(self) -> int:
        return max(1, int(round(self.hidden_size * self.expand)))

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.image_size, self.image_size)

    def to_dict(self) -> dict:
        """JSON-ready dict; ``DiffuSSMConfig(**d)`` rebuilds it."""
        return asdict(self)


class S4DLayer(nn.Module):
    """Diagonal state-space layer (S4D) over ``[N, H, L]``, one SSM per channel, by FFT convolution.

    Parameters per channel ``h`` and mode ``n``: ``log(−Re A)``, ``Im A`` (S4D-Lin init ``−1/2 + iπn``),
    complex ``B`` (init 1) and ``C`` (init normal, variance 1/2 per part), ``log Δ`` (log-uniform in
    ``[dt_min, dt_max]``) and the real skip ``D``. Real and imaginary parts are stored as real tensors
    (``[..., 2]``) so that the weights are plain float tensors (safetensors, ``.double()``).

    Shape:
        ``u [N, H, L]`` → ``[N, H, L]``.
    """

    def __init__(self, channels: int, state_size: int, dt_min: float = 0.001, dt_max: float = 0.1):
        super().__init__()
        h, n = channels, state_size
        self.log_dt = nn.Parameter(torch.rand(h) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.log_a_real = nn.Parameter(torch.full((h, n), math.log(0.5)))  # Re A = −exp(·) < 0: stable
        self.a_imag = nn.Parameter(math.pi * torch.arange(n, dtype=torch.float32).expand(h, n).clone())
        self.b = nn.Parameter(torch.stack([torch.ones(h, n), torch.zeros(h, n)], dim=-1))
        self.c = nn.Parameter(torch.randn(h, n, 2) * math.sqrt(0.5))
        self.d = nn.Parameter(torch.randn(h))

    def _dt_a(self) -> tuple[torch.Tensor, torch.Tensor]:
        a = torch.complex(-torch.exp(self.log_a_real), self.a_imag)
        return a, a * torch.exp(self.log_dt)[:, None]

    def discretize(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(Ā, B̄, C)``, complex ``[H, N]`` each: zero-order hold of ``ẋ = Ax + Bu`` with step ``Δ``."""
        a, dt_a = self._dt_a()
        a_bar = torch.exp(dt_a)
        b_bar = (a_bar - 1) / a * torch.view_as_complex(self.b)
        return a_bar, b_bar, torch.view_as_complex(self.c)

    def kernel(self, length: int) -> torch.Tensor:
        """Closed-form convolution kernel ``K_l = Re(Σ_n C_n Ā_n^l B̄_n)``, ``[H, length]`` (Vandermonde).

        With ``C'_n = C_n B̄_n`` and ``ΔA_n = α_n + iω_n`` (``α_n < 0``), ``Ā_n^l = exp(l ΔA_n)
        = e^{l α_n} (cos(l ω_n) + i sin(l ω_n))`` gives each power exactly (no sequential product), and

            ``K_l = Σ_n e^{l α_n} (Re C'_n · cos(l ω_n) − Im C'_n · sin(l ω_n))``.

        Only the ``[H, N]`` coefficients ``C'`` and ``ΔA`` are complex; the ``[H, N, L]`` terms are built from
        real ``exp``, ``cos`` and ``sin`` and contracted over ``n`` by real einsums (on CPU a complex ``exp``
        of the powers costs several times as much, and dominated the forward). The values equal
        ``Re(einsum(C', exp(ΔA ⊗ l)))`` to rounding. The kernel depends on the parameters only, not on the
        input: it is recomputed (differentiably) on every call, once per call for the whole batch.
        """
        _, dt_a = self._dt_a()
        _, b_bar, c = self.discretize()
        coef = c * b_bar
        steps = torch.arange(length, device=dt_a.device, dtype=self.log_dt.dtype)
        decay = torch.exp(dt_a.real[:, :, None] * steps)  # |Ā^l|, [H, N, L]
        phase = dt_a.imag[:, :, None] * steps              # arg(Ā^l)
        return (torch.einsum("hn,hnl->hl", coef.real, decay * torch.cos(phase))
                - torch.einsum("hn,hnl->hl", coef.imag, decay * torch.sin(phase)))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        length = u.shape[-1]
        k = self.kernel(length).to(u.dtype)
        # causal (non-circular) convolution: zero-pad to 2L before the FFT
        y = torch.fft.irfft(torch.fft.rfft(u, n=2 * length) * torch.fft.rfft(k, n=2 * length), n=2 * length)
        return y[..., :length] + self.d[:, None] * u

    def recurrent(self, u: torch.Tensor) -> torch.Tensor:
        """The same map by the recurrence ``x_k = Ā x_{k−1} + B̄ u_k``, ``y_k = Re(C x_k) + D u_k`` (O(L) steps;
        a reference for tests and streaming, not for training)."""
        a_bar, b_bar, c = self.discretize()
        x = torch.zeros(u.shape[0], *a_bar.shape, dtype=a_bar.dtype, device=u.device)
        out = []
        for k in range(u.shape[-1]):
            x = a_bar * x + b_bar * u[..., k, None]
            out.append((c * x).sum(-1).real + self.d * u[..., k])
        return torch.stack(out, dim=-1)


class GatedBiSSM(nn.Module):
    """BiGS's gated bidirectional SSM (Wang et al. 2023, §3) over tokens ``[N, L, D]``.

    ``U = GELU(W_u h)``, ``V = GELU(W_v h)``, ``F = S4D_f(GELU(W_f U))``,
    ``B = flip(S4D_b(flip(GELU(W_b U))))``, ``out = W_o(V ⊙ W_m(F ⊙ B))``.

    Shape:
        ``[N, L, D]`` → ``[N, L, D]``.
    """

    def __init__(self, dim: int, inner: int, state_size: int, dt_min: float, dt_max: float):
        super().__init__()
        self.w_u = nn.Linear(dim, inner)
        self.w_v = nn.Linear(dim, inner)
        self.w_f = nn.Linear(inner, inner)
        self.w_b = nn.Linear(inner, inner)
        self.ssm_f = S4DLayer(inner, state_size, dt_min, dt_max)
        self.ssm_b = S4DLayer(inner, state_size, dt_min, dt_max)
        self.w_m = nn.Linear(inner, inner)
        self.w_o = nn.Linear(inner, dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        u = F.gelu(self.w_u(h))
        v = F.gelu(self.w_v(h))
        fwd = self.ssm_f(F.gelu(self.w_f(u)).transpose(1, 2))
        bwd = self.ssm_b(F.gelu(self.w_b(u)).transpose(1, 2).flip(-1)).flip(-1)
        return self.w_o(v * self.w_m((fwd * bwd).transpose(1, 2)))


class DiffuSSMBlock(nn.Module):
    """adaLN-Zero norm → hourglass (merge ``r`` tokens → :class:`GatedBiSSM` → split) → gated residual.

    ``x ← x + α · Up(BiSSM(Down(LN(x)(1 + γ) + β)))`` with ``(β, γ, α) = Linear(SiLU(c))`` zero-initialised,
    so ``block(x, c) == x`` at initialisation.

    Shape:
        ``x [N, L, D]`` (``L`` divisible by ``r``), ``c [N, D]`` → ``[N, L, D]``.
    """

    def __init__(self, dim: int, downsample: int, inner: int, state_size: int, dt_min: float, dt_max: float):
        super().__init__()
        self.r = downsample
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.down = nn.Linear(downsample * dim, dim)
        self.ssm = GatedBiSSM(dim, inner, state_size, dt_min, dt_max)
        self.up = nn.Linear(dim, downsample * dim)
        self.ada = nn.Linear(dim, 3 * dim)
        nn.init.zeros_(self.ada.weight)  # adaLN-Zero: the gate starts at 0, the block at the identity
        nn.init.zeros_(self.ada.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        n, length, d = x.shape
        shift, scale, gate = self.ada(F.silu(c)).chunk(3, dim=1)
        h = modulate(self.norm(x), shift, scale)
        h = self.down(h.reshape(n, length // self.r, self.r * d))       # r consecutive tokens → one
        h = self.up(self.ssm(h)).reshape(n, length, d)                  # one token → r
        return x + gate[:, None, :] * h


class DiffuSSM(ScoreModel):
    """Attention-free diffusion noise predictor over the full pixel sequence (see the module docstring).

    Args:
        config: a :class:`DiffuSSMConfig`.

    Shape:
        ``x_t [N, C, H, W]``, ``t [N]`` (or scalar), ``y [N]`` int64 or None → ``[N, C, H, W]``.

    Reference:
        Yan, Gu, Rush, "Diffusion Models Without Attention", CVPR 2024.
    """

    def __init__(self, config: DiffuSSMConfig):
        if not isinstance(config, DiffuSSMConfig):
            raise InputError(f"config must be a DiffuSSMConfig, got {type(config).__name__}")
        super().__init__(config.input_shape, config.num_classes)
        self.config = config
        d = config.hidden_size
        self.embed_in = nn.Linear(config.in_channels, d)
        self.cond = ConditionEmbedding(d, config.num_classes, config.frequency_size, config.time_scale)
        self.blocks = nn.ModuleList(
            DiffuSSMBlock(d, config.downsample, config.inner_size, config.state_size, config.dt_min, config.dt_max)
            for _ in range(config.depth))
        self.final = FinalLayer(d, config.in_channels)
        for mlp in (self.cond.time_mlp[0], self.cond.time_mlp[2]):
            nn.init.normal_(mlp.weight, std=0.02)

    @property
    def null_label(self) -> int | None:
        """The label index meaning "no class" (``num_classes``), or ``None`` for unconditional models."""
        return self.num_classes

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        check_time_and_labels(t, y, self.num_classes)
        n, ch, hh, ww = x_t.shape
        c = self.cond(t, y)
        h = self.embed_in(x_t.to(self.embed_in.weight.dtype).flatten(2).transpose(1, 2))  # [N, H·W, D]
        for block in self.blocks:
            h = block(h, c)
        return self.final(h, c).transpose(1, 2).reshape(n, ch, hh, ww).to(x_t.dtype)
