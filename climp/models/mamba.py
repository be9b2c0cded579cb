"""Mamba-1: RMSNorm, the selective-SSM mixer, the pre-norm residual block and a token backbone.

Parameter names and initialisation follow mamba_ssm (and transformers' MambaModel, which uses the
same names), so their checkpoints load with a key rename only (models/pretrained.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath
from torch.utils.checkpoint import checkpoint

from climp.ops import (causal_conv1d_silu, fused_mamba1d_available, linear_halves, mamba1d_scan, rms_norm,
                       selective_scan)

from ..config_mixin import FromDict


def at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """t in float32 if it is a narrower float (bf16, fp16), else unchanged: float64 models
    compute in float64 end to end."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


class RMSNorm(nn.Module):
    """Root-mean-square layer norm with a learned scale, computed in float32 at least: the fused
    op `climp.ops.rms_norm` on the CPU, its reference formula elsewhere (and for bf16/fp16)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def at_positions(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x (B, L, ...) at one step per row: x[b, positions[b]], (B, ...)."""
    return x[torch.arange(x.shape[0], device=x.device), positions]


def linear_rows(linear: nn.Linear, x: torch.Tensor, rows: slice) -> torch.Tensor:
    """linear(x)'s output channels `rows` alone: one product with that block of the weight."""
    bias = None if linear.bias is None else linear.bias[rows]
    return F.linear(x, linear.weight[rows], bias)


def check_positions(positions: torch.Tensor, batch: int) -> None:
    """Raise a ValueError unless positions is one integer step per row, (batch,)."""
    if positions.shape != (batch,) or positions.dtype.is_floating_point or positions.dtype == torch.bool:
        raise ValueError(f"positions must be one integer step per row, shape ({batch},), got "
                         f"{positions.dtype} of shape {tuple(positions.shape)}")


def resolve_dt_rank(dt_rank: Union[int, str], d_model: int) -> int:
    """mamba_ssm's "auto" rank of the time-step projection: ceil(d_model / 16)."""
    if dt_rank == "auto":
        return math.ceil(d_model / 16)
    if isinstance(dt_rank, bool) or not isinstance(dt_rank, int) or dt_rank < 1:
        raise ValueError(f"dt_rank must be 'auto' or a positive int, got {dt_rank!r}")
    return dt_rank


@torch.no_grad()
def mamba_init_(
    A_log: torch.Tensor,
    D: torch.Tensor,
    dt_bias: torch.Tensor,
    dt_weight: Optional[torch.Tensor] = None,
    dt_min: float = 0.001,
    dt_max: float = 0.1,
    dt_init_floor: float = 1e-4,
    dt_scale: float = 1.0,
    dt_init: str = "random",
    A_init_range: Optional[Tuple[float, float]] = None,
) -> None:
    """Mamba's SSM initialisation, in place, for every Mamba variant here; marks A_log, D and the
    dt bias as free of weight decay (and the bias as kept by later bias-zeroing inits).

    dt_weight (the low-rank time-step projection, rank = its last dim) is uniform in
    +-dt_scale / sqrt(rank) ("random") or constant at that bound; softplus(dt_bias) is log-uniform
    in [dt_min, dt_max], floored at dt_init_floor; A_log is log(1..d_state) along its last dim
    (S4D-real) or, given A_init_range, log of a uniform draw from it (Mamba-2's per-head A);
    D is 1. Random draws happen in that order.
    """
    if dt_init not in ("random", "constant"):
        raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
    if dt_weight is not None:
        std = dt_weight.shape[-1] ** -0.5 * dt_scale
        if dt_init == "constant":
            dt_weight.fill_(std)
        else:
            dt_weight.uniform_(-std, std)
    u = torch.rand(dt_bias.shape, device=dt_bias.device)
    dt = torch.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=dt_init_floor)
    dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus
    if A_init_range is None:
        states = torch.arange(1, A_log.shape[-1] + 1, dtype=torch.float32, device=A_log.device)
        A_log.copy_(torch.log(states).expand_as(A_log))
    else:
        A_log.copy_(torch.empty(A_log.shape, device=A_log.device).uniform_(*A_init_range).log())
    D.fill_(1.0)
    for p in (A_log, D, dt_bias):
        p._no_weight_decay = True
    dt_bias._no_reinit = True


class MambaMixer(nn.Module):
    """Mamba-1 selective state-space mixer (mamba_ssm's `Mamba`), (B, L, d_model) -> same shape.

    in_proj splits into the SSM branch x and the gate z; x goes through a causal depthwise conv
    and SiLU, then x_proj gives the input-dependent time step (low rank, expanded by dt_proj),
    B and C; the selective scan runs with A = -exp(A_log), skip D and gate silu(z).

    With scan_backend "auto" on the CPU (or meta) it keeps every activation channel-last
    (batch, L, channels), as the projections make them, and runs `mamba1d_scan` (the fused op,
    which also applies dt_proj, D and the gate). A named selective-scan backend, or another
    device, runs the unfused channel-first path (transposes, dt_proj as a matmul,
    `selective_scan(backend=...)`), the reference the fused one is tested against.

    Given positions (B,), the output is wanted at one step per row only (a last layer whose
    output is pooled there): the scan still runs over every step (its state carries the sequence)
    but without the gate, and in_proj's gate half, the gate and out_proj run on the B pooled rows
    only, instead of on all B * L.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: Union[int, str] = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        scan_backend: str = "auto",
    ):
        super().__init__()
        if dt_init not in ("random", "constant"):
            raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.d_inner = int(expand * d_model)
        self.dt_rank = resolve_dt_rank(dt_rank, d_model)
        self.scan_backend = scan_backend

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.conv1d = nn.Conv1d(
            self.d_inner, self.d_inner, kernel_size=d_conv, groups=self.d_inner,
            padding=d_conv - 1, bias=conv_bias,
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(self.d_inner, d_state))
        self.D = nn.Parameter(torch.empty(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)
        mamba_init_(self.A_log, self.D, self.dt_proj.bias, self.dt_proj.weight, dt_min=dt_min, dt_max=dt_max,
                    dt_init_floor=dt_init_floor, dt_scale=dt_scale, dt_init=dt_init)

    def forward(self, hidden: torch.Tensor, positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, L, d_model) -> (B, L, d_model); with positions (B,): (B, d_model), the output at
        hidden[b, positions[b]] only."""
        if not fused_mamba1d_available(hidden, self.scan_backend):
            return self.forward_unfused(hidden, positions)
        if positions is None:
            x, z = self.in_proj_halves(hidden)
        else:
            x, z = self.in_proj_half(hidden, 0), None
        x = causal_conv1d_silu(x.transpose(1, 2), self.conv1d.weight, self.conv1d.bias, channel_last=True)
        x = x.transpose(1, 2)  # (B, L, d_inner), contiguous
        y = mamba1d_scan(
            x,
            z,
            self.x_proj(x),
            self.dt_proj.weight,
            at_least_float32(self.dt_proj.bias),
            -torch.exp(at_least_float32(self.A_log)),
            at_least_float32(self.D),
            delta_softplus=True,
        )
        if positions is not None:
            y = self.gate_at(y, hidden, positions)
        return self.out_proj(y)

    def in_proj_halves(self, hidden: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """in_proj's x and z halves (B, L, d_inner) each: one product, whose backward takes the
        halves' gradients separately (`linear_halves`) instead of concatenating them first."""
        return linear_halves(hidden, self.in_proj.weight, self.in_proj.bias)

    def in_proj_half(self, hidden: torch.Tensor, half: int) -> torch.Tensor:
        """in_proj's x (half 0) or z (half 1) output alone, (..., d_inner)."""
        return linear_rows(self.in_proj, hidden, slice(half * self.d_inner, (half + 1) * self.d_inner))

    def gate_at(self, y: torch.Tensor, hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The ungated scan output y (B, L, d_inner) at positions, times silu(z) with z from
        in_proj's gate half of the same rows of hidden: (B, d_inner), in y's dtype."""
        y = at_positions(y, positions)
        z = self.in_proj_half(at_positions(hidden, positions), 1)
        return (at_least_float32(y) * F.silu(at_least_float32(z))).to(y.dtype)

    def forward_unfused(self, hidden: torch.Tensor, positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The channel-first path with the `scan_backend` selective scan (the reference)."""
        if positions is None:
            x, z = self.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)  # (B, d_inner, L) each
            z = z.contiguous()
        else:
            x, z = self.in_proj_half(hidden, 0).transpose(1, 2), None
        x = causal_conv1d_silu(x, self.conv1d.weight, self.conv1d.bias)
        x_dbl = self.x_proj(x.transpose(1, 2))  # (B, L, dt_rank + 2 * d_state)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = torch.matmul(self.dt_proj.weight, dt.transpose(1, 2))  # (B, d_inner, L)
        y = selective_scan(
            x,
            delta,
            -torch.exp(at_least_float32(self.A_log)),
            B.transpose(1, 2).contiguous(),
            C.transpose(1, 2).contiguous(),
            D=at_least_float32(self.D),
            z=z,
            delta_bias=at_least_float32(self.dt_proj.bias),
            delta_softplus=True,
            backend=self.scan_backend,
        ).transpose(1, 2)
        if positions is not None:
            y = self.gate_at(y, hidden, positions)
        return self.out_proj(y)


class MambaBlock(nn.Module):
    """Pre-norm residual block: x + drop_path(mixer(norm(x))).

    Given positions (B,), it returns (B, d_model), the block's output at x[b, positions[b]]
    only: the residual and drop path (one draw per row either way) at those rows, the mixer
    asked for those steps alone (`MambaMixer.forward`'s positions)."""

    def __init__(self, d_model: int, mixer: nn.Module, norm_eps: float = 1e-5, drop_path: float = 0.0):
        super().__init__()
        self.norm = RMSNorm(d_model, eps=norm_eps)
        self.mixer = mixer
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        if positions is None:
            return x + self.drop_path(self.mixer(self.norm(x)))
        return at_positions(x, positions) + self.drop_path(self.mixer(self.norm(x), positions))


@dataclass
class MambaConfig(FromDict):
    """Size and SSM hyper-parameters of a Mamba-1 token backbone (mamba_ssm defaults)."""

    d_model: int
    n_layer: int
    vocab_size: int
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: Union[int, str] = "auto"
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init: str = "random"
    dt_scale: float = 1.0
    dt_init_floor: float = 1e-4
    conv_bias: bool = True
    bias: bool = False
    norm_eps: float = 1e-5
    pad_vocab_size_multiple: int = 8
    drop_path_rate: float = 0.0
    scan_backend: str = "auto"

    def __post_init__(self) -> None:
        self.require_positive_ints("d_model", "n_layer", "vocab_size", "d_state", "d_conv", "expand",
                                   "pad_vocab_size_multiple")
        resolve_dt_rank(self.dt_rank, self.d_model)
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"MambaConfig.drop_path_rate must be in [0, 1), got {self.drop_path_rate}")

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_size_multiple
        return -(-self.vocab_size // m) * m


class MambaBackbone(nn.Module):
    """Token embedding, a stack of Mamba blocks and a final RMSNorm: ids (B, L) -> (B, L, d_model).

    `forward(ids, positions)` returns (B, d_model), the same hidden states at one token per row
    (the pooled one), computing only what they depend on: every layer but the last runs on all
    tokens, the last one's per-token work after its scan (gate, out_proj, residual, drop path)
    and the final norm run on the B pooled rows (`MambaBlock`)."""

    model_type = "mamba"  # transformers' name for the checkpoints this backbone loads

    def __init__(self, cfg: MambaConfig):
        super().__init__()
        self.cfg = cfg
        self.grad_checkpointing = False
        self.embedding = nn.Embedding(cfg.padded_vocab_size, cfg.d_model)
        drop_rates = [cfg.drop_path_rate * i / max(cfg.n_layer - 1, 1) for i in range(cfg.n_layer)]
        self.layers = nn.ModuleList(
            MambaBlock(cfg.d_model, self._make_mixer(cfg), norm_eps=cfg.norm_eps, drop_path=rate)
            for rate in drop_rates
        )
        self.norm_f = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.init_weights()

    @staticmethod
    def _make_mixer(cfg: MambaConfig) -> MambaMixer:
        return MambaMixer(
            cfg.d_model, d_state=cfg.d_state, d_conv=cfg.d_conv, expand=cfg.expand, dt_rank=cfg.dt_rank,
            dt_min=cfg.dt_min, dt_max=cfg.dt_max, dt_init=cfg.dt_init, dt_scale=cfg.dt_scale,
            dt_init_floor=cfg.dt_init_floor, conv_bias=cfg.conv_bias, bias=cfg.bias,
            scan_backend=cfg.scan_backend,
        )

    @torch.no_grad()
    def init_weights(self) -> None:
        """mamba_ssm's MixerModel init: embedding N(0, 0.02), zero linear biases (dt_proj's kept),
        out_proj kaiming-uniform scaled by 1/sqrt(n_layer) (GPT-2 style prenorm-residual rescale)."""
        nn.init.normal_(self.embedding.weight, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear) and module.bias is not None:
                if not getattr(module.bias, "_no_reinit", False):
                    nn.init.zeros_(module.bias)
        for layer in self.layers:
            weight = layer.mixer.out_proj.weight
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
            weight /= math.sqrt(self.cfg.n_layer)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass instead of storing its activations."""
        self.grad_checkpointing = enable

    def forward(self, input_ids: torch.Tensor, positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        """ids (B, L) -> (B, L, d_model); with positions (B,): (B, d_model), row b's hidden state
        at step positions[b]."""
        if positions is not None:
            check_positions(positions, input_ids.shape[0])
        x = self.embedding(input_ids)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            at = positions if i == last else None
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(layer, x, at, use_reentrant=False)
            else:
                x = layer(x, at)
        return self.norm_f(x)

    @classmethod
    def from_pretrained(cls, path: Union[str, Path], **overrides: Any) -> "MambaBackbone":
        """Load a transformers (MambaModel / MambaForCausalLM, or their Mamba-2 twins for
        Mamba2Backbone) or mamba_ssm checkpoint directory. `overrides` replace config fields."""
        from .pretrained import load_mamba_state_dict, read_language_model_checkpoint

        cfg, state_dict = read_language_model_checkpoint(path, cls.model_type)
        if overrides:
            cfg = type(cfg).from_dict({**cfg.to_dict(), **overrides})
        model = cls(cfg)
        load_mamba_state_dict(model, state_dict)
        return model
