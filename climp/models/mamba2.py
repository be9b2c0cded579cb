"""Mamba-2: the Mamba-2 (SSD) mixer and a token backbone.

The scan is climp.ops.ssd_chunk_scan. Parameter names follow mamba_ssm's `Mamba2` and
transformers' `Mamba2Mixer`, so both projects' checkpoints load (`Mamba2Backbone.from_pretrained`,
models/pretrained.py). The block, RMSNorm and backbone come from `mamba.py`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from climp.ops import ssd_chunk_scan

from .mamba import MambaBackbone, at_positions, linear_rows, mamba_init_
from ..config_mixin import FromDict

# ----------------------------------------------------------------------------- mixer


class GatedRMSNorm(nn.Module):
    """RMSNorm of x * silu(z), normalised per group of `group_size` channels (mamba_ssm's
    `RMSNormGated` with norm_before_gate=False), computed in float32 at least."""

    def __init__(self, dim: int, group_size: int, eps: float = 1e-5):
        super().__init__()
        if dim % group_size:
            raise ValueError(f"dim {dim} is not a multiple of group_size {group_size}")
        self.eps = eps
        self.group_size = group_size
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(x.dtype, torch.float32)
        h = x.to(dtype) * F.silu(z.to(dtype))
        h = h.unflatten(-1, (-1, self.group_size))
        h = (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)).flatten(-2)
        return (h * self.weight.to(dtype)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, group_size={self.group_size}, eps={self.eps}"


class Mamba2Mixer(nn.Module):
    """Mamba-2 (SSD) mixer, (B, L, d_model) -> same shape, as mamba_ssm's `Mamba2`.

    in_proj gives [z, x, B, C, dt]; x, B, C go through one causal depthwise conv and SiLU; the
    scan runs per head with a scalar decay A = -exp(A_log) and time step softplus(dt + dt_bias);
    the output is gated by z (through a gated RMSNorm, or silu(z) when rmsnorm=False).

    Given positions (B,), the output is wanted at one step per row only (see `MambaMixer`): the
    scan runs over every step, in_proj's z part, the gate and out_proj on the B pooled rows only.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 128,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        ngroups: int = 1,
        chunk_size: int = 256,
        A_init_range: Tuple[float, float] = (1.0, 16.0),
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        dt_limit: Tuple[float, float] = (0.0, float("inf")),
        bias: bool = False,
        conv_bias: bool = True,
        rmsnorm: bool = True,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_inner = int(expand * d_model)
        if self.d_inner % headdim:
            raise ValueError(f"expand * d_model = {self.d_inner} is not a multiple of headdim {headdim}")
        self.headdim = headdim
        self.nheads = self.d_inner // headdim
        if self.nheads % ngroups:
            raise ValueError(f"number of heads {self.nheads} is not a multiple of ngroups {ngroups}")
        if not 0 < A_init_range[0] <= A_init_range[1]:
            raise ValueError(f"need 0 < A_init_range[0] <= A_init_range[1], got {tuple(A_init_range)}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        if not 0.0 <= dt_limit[0] < dt_limit[1]:
            raise ValueError(f"need 0 <= dt_limit[0] < dt_limit[1], got {tuple(dt_limit)}")
        self.ngroups = ngroups
        self.chunk_size = chunk_size
        self.dt_limit = (float(dt_limit[0]), float(dt_limit[1]))
        self.rmsnorm = rmsnorm

        conv_dim = self.d_inner + 2 * ngroups * d_state
        self.in_proj = nn.Linear(d_model, self.d_inner + conv_dim + self.nheads, bias=bias)
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, kernel_size=d_conv, groups=conv_dim,
                                padding=d_conv - 1, bias=conv_bias)
        self.dt_bias = nn.Parameter(torch.empty(self.nheads))
        self.A_log = nn.Parameter(torch.empty(self.nheads))
        self.D = nn.Parameter(torch.empty(self.nheads))
        self.norm = GatedRMSNorm(self.d_inner, self.d_inner // ngroups, eps=norm_eps) if rmsnorm else None
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)
        mamba_init_(self.A_log, self.D, self.dt_bias, dt_min=dt_min, dt_max=dt_max, dt_init_floor=dt_init_floor,
                    A_init_range=A_init_range)

    def forward(self, hidden: torch.Tensor, positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, L, d_model) -> (B, L, d_model); with positions (B,): (B, d_model), the output at
        hidden[b, positions[b]] only."""
        batch, length, _ = hidden.shape
        if positions is None:
            z, xBC, dt = torch.split(
                self.in_proj(hidden), [self.d_inner, self.conv1d.in_channels, self.nheads], dim=-1
            )
        else:
            xBC, dt = torch.split(linear_rows(self.in_proj, hidden, slice(self.d_inner, None)),
                                  [self.conv1d.in_channels, self.nheads], dim=-1)
        xBC = F.silu(self.conv1d(xBC.transpose(1, 2))[..., :length]).transpose(1, 2)
        x, B, C = torch.split(xBC, [self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        dtype = torch.promote_types(hidden.dtype, torch.float32)  # the scan runs in float32 at least
        dt = F.softplus(dt.to(dtype) + self.dt_bias.to(dtype))
        if self.dt_limit != (0.0, float("inf")):
            dt = dt.clamp(*self.dt_limit)
        y = ssd_chunk_scan(
            x.unflatten(-1, (self.nheads, self.headdim)),
            dt,
            -torch.exp(self.A_log.to(dtype)),
            B.unflatten(-1, (self.ngroups, self.d_state)),
            C.unflatten(-1, (self.ngroups, self.d_state)),
            D=self.D,
            chunk_size=self.chunk_size,
        ).flatten(-2)
        if positions is not None:
            z = linear_rows(self.in_proj, at_positions(hidden, positions), slice(0, self.d_inner))
            y = at_positions(y, positions)
        y = self.norm(y, z) if self.norm is not None else y * F.silu(z.to(y.dtype))
        return self.out_proj(y.to(hidden.dtype))


# ----------------------------------------------------------------------------- backbone


@dataclass
class Mamba2Config(FromDict):
    """Size and SSD hyper-parameters of a Mamba-2 token backbone (mamba_ssm defaults)."""

    d_model: int
    n_layer: int
    vocab_size: int
    d_state: int = 128
    d_conv: int = 4
    expand: int = 2
    headdim: int = 64
    ngroups: int = 1
    chunk_size: int = 256
    A_init_range: Tuple[float, float] = (1.0, 16.0)
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    dt_limit: Tuple[float, float] = (0.0, float("inf"))
    bias: bool = False
    conv_bias: bool = True
    rmsnorm: bool = True
    norm_eps: float = 1e-5
    pad_vocab_size_multiple: int = 8
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        self.require_positive_ints("d_model", "n_layer", "vocab_size", "d_state", "d_conv", "expand", "headdim",
                                   "ngroups", "chunk_size", "pad_vocab_size_multiple")
        for name in ("A_init_range", "dt_limit"):
            value = getattr(self, name)
            if not isinstance(value, (tuple, list)) or len(value) != 2:
                raise ValueError(f"{type(self).__name__}.{name} must be a pair of numbers, got {value!r}")
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                raise ValueError(f"{type(self).__name__}.{name} must be a pair of numbers, got {value!r}")
            setattr(self, name, (float(value[0]), float(value[1])))
        d_inner = self.expand * self.d_model
        if d_inner % self.headdim or (d_inner // self.headdim) % self.ngroups:
            raise ValueError(f"expand * d_model = {d_inner} must split into heads of headdim = {self.headdim} "
                             f"channels, as many as a multiple of ngroups = {self.ngroups}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"{type(self).__name__}.drop_path_rate must be in [0, 1), got {self.drop_path_rate}")

    @property
    def nheads(self) -> int:
        return self.expand * self.d_model // self.headdim

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_size_multiple
        return -(-self.vocab_size // m) * m


class Mamba2Backbone(MambaBackbone):
    """Token embedding, a stack of Mamba-2 blocks and a final RMSNorm: ids (B, L) -> (B, L, d_model).

    Everything but the mixer (embedding, blocks, init, checkpointing, key mapping on load) is
    Mamba-1's backbone."""

    model_type = "mamba2"

    @staticmethod
    def _make_mixer(cfg: Mamba2Config) -> Mamba2Mixer:
        return Mamba2Mixer(
            cfg.d_model, d_state=cfg.d_state, d_conv=cfg.d_conv, expand=cfg.expand, headdim=cfg.headdim,
            ngroups=cfg.ngroups, chunk_size=cfg.chunk_size, A_init_range=cfg.A_init_range, dt_min=cfg.dt_min,
            dt_max=cfg.dt_max, dt_init_floor=cfg.dt_init_floor, dt_limit=cfg.dt_limit, bias=cfg.bias,
            conv_bias=cfg.conv_bias, rmsnorm=cfg.rmsnorm, norm_eps=cfg.norm_eps,
        )

