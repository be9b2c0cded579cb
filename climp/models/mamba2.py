"""Mamba-2: the chunked SSD scan, the Mamba-2 mixer and a token backbone.

The scan is the state-space-dual (SSD) form of the Mamba-2 paper written with plain torch matrix
multiplies, so it runs fast on the CPU and is differentiable any number of times. Parameter names
follow mamba_ssm's `Mamba2` and transformers' `Mamba2Mixer`, so both projects' checkpoints load
(`Mamba2Backbone.from_pretrained`). The block, RMSNorm and weight reading come from `mamba.py`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .mamba import MambaBackbone, mamba_ssm_backbone_fields, read_json, read_mamba_weights
from ..dataconfig import FromDict

# ----------------------------------------------------------------------------- SSD scan


def _decay(a_cum: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Causal decay matrix from running sums (..., T) in float64: (..., T, T) holding
    exp(a_cum[t] - a_cum[s]) = exp(a[s+1] + ... + a[t]) for s <= t and 0 above the diagonal.

    Differencing float64 running sums keeps each segment sum exact to `dtype` precision even when
    the running sum is large, at lower cost than a masked cumulative sum per segment.
    """
    T = a_cum.shape[-1]
    upper = torch.ones(T, T, dtype=torch.bool, device=a_cum.device).triu(1)
    segment_sums = (a_cum.unsqueeze(-1) - a_cum.unsqueeze(-2)).to(dtype)
    return torch.exp(segment_sums.masked_fill(upper, -math.inf))


def ssd_chunk_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    chunk_size: int = 256,
) -> torch.Tensor:
    """Mamba-2 SSD scan, chunked: returns y (batch, length, heads, headdim).

    Computes h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T and y_t = h_t C_t + D x_t per head, with
    x (batch, length, heads, headdim), dt (batch, length, heads) (already softplus'ed), A (heads)
    (negative), B and C (batch, length, groups, state) shared by heads//groups consecutive heads,
    and D (heads). Within each chunk the output is a masked quadratic form (like causal attention
    with decay weights); chunk states are passed on with one matrix multiply over chunks.
    Computes in float32 at least (float64 stays float64) and returns that dtype.
    """
    batch, length, nheads, headdim = x.shape
    ngroups, dstate = B.shape[2], B.shape[3]
    if dt.shape != (batch, length, nheads) or A.shape != (nheads,):
        raise ValueError(f"dt must be {(batch, length, nheads)} and A ({nheads},), "
                         f"got {tuple(dt.shape)} and {tuple(A.shape)}")
    if B.shape != (batch, length, ngroups, dstate) or C.shape != B.shape:
        raise ValueError(f"B and C must both be (batch, length, groups, state), got {tuple(B.shape)}, {tuple(C.shape)}")
    if nheads % ngroups:
        raise ValueError(f"heads ({nheads}) must be a multiple of groups ({ngroups})")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    dtype = torch.promote_types(x.dtype, torch.float32)
    x, dt, A, B, C = (t.to(dtype) for t in (x, dt, A, B, C))

    T = min(chunk_size, length)
    pad = -length % T
    nchunks = (length + pad) // T
    per_group = nheads // ngroups

    def chunked(t: torch.Tensor) -> torch.Tensor:  # (b, L, ...) -> (b, c, T, ...), zero padded
        t = F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad))
        return t.reshape(batch, nchunks, T, *t.shape[2:])

    # Heads are split as (groups, heads per group) so B and C are never repeated per head.
    xdt = chunked((x * dt.unsqueeze(-1)).reshape(batch, length, ngroups, per_group, headdim))  # b c t g r p
    a = chunked(dt * A).reshape(batch, nchunks, T, ngroups, per_group).permute(0, 1, 3, 4, 2)  # b c g r t
    Bc, Cc = chunked(B), chunked(C)  # b c t g n
    a_cum = a.double().cumsum(dim=-1)  # float64 so that differences of running sums stay exact

    # 1. within a chunk: y_t = sum_{s<=t} (C_t . B_s) exp(a_{s+1..t}) dt_s x_s
    scores = torch.einsum("bctgn,bcsgn->bcgts", Cc, Bc).unsqueeze(3) * _decay(a_cum, dtype)  # b c g r t s
    y = torch.einsum("bcgrts,bcsgrp->bctgrp", scores, xdt)

    if nchunks > 1:  # the state of the last chunk is not needed: no final state is returned
        # 2. state each chunk leaves behind when started from zero: sum_s exp(a_{s+1..T}) dt_s x_s B_s^T
        but_last = slice(None, -1)
        to_end = torch.exp((a_cum[:, but_last, ..., -1:] - a_cum[:, but_last]).to(dtype)).permute(0, 1, 4, 2, 3)
        chunk_states = torch.einsum("bcsgn,bcsgrp->bcgrpn", Bc[:, but_last], xdt[:, but_last] * to_end.unsqueeze(-1))

        # 3. state at the end of chunk i (start of chunk i + 1): decayed sum over chunks y <= i
        ends = a_cum[:, but_last, ..., -1].permute(0, 2, 3, 1).cumsum(dim=-1)  # b g r c-1
        start_states = torch.einsum("bgriy,bygrpn->bigrpn", _decay(ends, dtype), chunk_states)

        # 4. contribution of the start state to chunks 1..c-1: y_t += exp(a_{1..t}) C_t . h_start
        from_start = torch.exp(a_cum[:, 1:].to(dtype)).permute(0, 1, 4, 2, 3).unsqueeze(-1)  # b c t g r 1
        y_carried = torch.einsum("bctgn,bcgrpn->bctgrp", Cc[:, 1:], start_states) * from_start
        y = y + F.pad(y_carried, (0, 0) * 4 + (1, 0))  # chunk 0 starts from the zero state

    y = y.reshape(batch, nchunks * T, nheads, headdim)[:, :length]
    if D is not None:
        y = y + x * D.to(dtype)[:, None]
    return y


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
        for p in (self.A_log, self.D, self.dt_bias):
            p._no_weight_decay = True
        self.norm = GatedRMSNorm(self.d_inner, self.d_inner // ngroups, eps=norm_eps) if rmsnorm else None
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)
        self.reset_ssm_parameters(A_init_range, dt_min, dt_max, dt_init_floor)

    @torch.no_grad()
    def reset_ssm_parameters(
        self, A_init_range: Tuple[float, float], dt_min: float, dt_max: float, dt_init_floor: float
    ) -> None:
        """A uniform in A_init_range, unit D, softplus(dt_bias) log-uniform in [dt_min, dt_max]."""
        dt = torch.exp(torch.rand(self.nheads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus
        self.A_log.copy_(torch.empty(self.nheads).uniform_(*A_init_range).log())
        self.D.fill_(1.0)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        batch, length, _ = hidden.shape
        z, xBC, dt = torch.split(
            self.in_proj(hidden), [self.d_inner, self.conv1d.in_channels, self.nheads], dim=-1
        )
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
        for name in ("d_model", "n_layer", "vocab_size", "d_state", "d_conv", "expand", "headdim", "ngroups",
                     "chunk_size", "pad_vocab_size_multiple"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{type(self).__name__}.{name} must be a positive int, got {value!r}")
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

    @staticmethod
    def _make_mixer(cfg: Mamba2Config) -> Mamba2Mixer:
        return Mamba2Mixer(
            cfg.d_model, d_state=cfg.d_state, d_conv=cfg.d_conv, expand=cfg.expand, headdim=cfg.headdim,
            ngroups=cfg.ngroups, chunk_size=cfg.chunk_size, A_init_range=cfg.A_init_range, dt_min=cfg.dt_min,
            dt_max=cfg.dt_max, dt_init_floor=cfg.dt_init_floor, dt_limit=cfg.dt_limit, bias=cfg.bias,
            conv_bias=cfg.conv_bias, rmsnorm=cfg.rmsnorm, norm_eps=cfg.norm_eps,
        )

    @staticmethod
    def read_checkpoint(path: Union[str, Path]) -> Tuple[Mamba2Config, Dict[str, torch.Tensor]]:
        return read_mamba2_checkpoint(path)


# ----------------------------------------------------------------------------- checkpoint import

_HF_CONFIG_KEYS = {
    "hidden_size": "d_model",
    "num_hidden_layers": "n_layer",
    "vocab_size": "vocab_size",
    "state_size": "d_state",
    "conv_kernel": "d_conv",
    "expand": "expand",
    "head_dim": "headdim",
    "n_groups": "ngroups",
    "chunk_size": "chunk_size",
    "time_step_min": "dt_min",
    "time_step_max": "dt_max",
    "time_step_floor": "dt_init_floor",
    "time_step_limit": "dt_limit",
    "use_bias": "bias",
    "use_conv_bias": "conv_bias",
    "layer_norm_epsilon": "norm_eps",
}
_SSM_CFG_KEYS = {"d_state", "d_conv", "expand", "headdim", "ngroups", "chunk_size", "A_init_range", "dt_min",
                 "dt_max", "dt_init_floor", "dt_limit", "bias", "conv_bias", "rmsnorm"}
_SSM_CFG_IGNORED = {"layer", "use_mem_eff_path", "conv_init"}  # kernel choice / init only
_MAMBA_SSM_TOP_KEYS = {"d_model", "n_layer", "vocab_size", "ssm_cfg", "pad_vocab_size_multiple",
                       "d_intermediate", "attn_layer_idx", "attn_cfg", "rms_norm", "residual_in_fp32",
                       "fused_add_norm", "tie_embeddings"}


def _json_float(value: Any) -> Any:
    """A float that transformers wrote to JSON: a number, or {"__float__": "Infinity"} (how
    transformers >= 5 encodes non-finite floats); anything else is returned for validation."""
    if isinstance(value, Mapping) and set(value) == {"__float__"}:
        try:
            return float(value["__float__"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"bad encoded float {value!r} in config.json") from e
    return value


def _hf_config_to_mamba2(raw: Mapping[str, Any]) -> Mamba2Config:
    """transformers' Mamba2Config JSON -> Mamba2Config. Generic PreTrainedConfig fields are ignored."""
    if raw.get("hidden_act", "silu") != "silu":
        raise ValueError(f"only hidden_act='silu' is supported, got {raw['hidden_act']!r}")
    missing = [k for k in ("hidden_size", "num_hidden_layers", "vocab_size") if k not in raw]
    if missing:
        raise ValueError(f"transformers Mamba2 config.json lacks {missing}")
    d = {ours: raw[theirs] for theirs, ours in _HF_CONFIG_KEYS.items() if theirs in raw}
    if isinstance(d.get("dt_limit"), (list, tuple)):
        d["dt_limit"] = [_json_float(v) for v in d["dt_limit"]]
    cfg = Mamba2Config.from_dict(d)
    if "num_heads" in raw and raw["num_heads"] != cfg.nheads:
        raise ValueError(f"num_heads {raw['num_heads']} != expand * hidden_size / head_dim = {cfg.nheads}")
    return cfg


def _mamba_ssm_config_to_mamba2(raw: Mapping[str, Any]) -> Mamba2Config:
    """mamba_ssm's MambaConfig JSON with ssm_cfg.layer == "Mamba2" -> Mamba2Config; rejects
    features this backbone does not have (MLP or attention layers, LayerNorm, partial SSM)."""
    unknown = sorted(set(raw) - _MAMBA_SSM_TOP_KEYS)
    if unknown:
        raise ValueError(f"unknown mamba_ssm config keys {unknown}")
    ssm_cfg = dict(raw.get("ssm_cfg") or {})
    if ssm_cfg.get("layer") != "Mamba2":
        raise ValueError(f"expected a Mamba-2 checkpoint (ssm_cfg.layer 'Mamba2'), got {ssm_cfg.get('layer')!r}")
    if ssm_cfg.get("d_ssm") is not None:
        raise ValueError("mamba_ssm Mamba2 with d_ssm (a gated-MLP part beside the SSM) is not supported")
    if ssm_cfg.get("D_has_hdim", False):
        raise ValueError("mamba_ssm Mamba2 with D_has_hdim=True (D per channel) is not supported")
    if ssm_cfg.get("norm_before_gate", False):
        raise ValueError("mamba_ssm Mamba2 with norm_before_gate=True is not supported")
    unknown = sorted(set(ssm_cfg) - _SSM_CFG_KEYS - _SSM_CFG_IGNORED - {"d_ssm", "D_has_hdim", "norm_before_gate"})
    if unknown:
        raise ValueError(f"unknown mamba_ssm ssm_cfg keys {unknown}")
    d = mamba_ssm_backbone_fields(raw, ssm_cfg, _SSM_CFG_KEYS)
    return Mamba2Config.from_dict(d)


def mamba2_config_from_json(raw: Mapping[str, Any]) -> Mamba2Config:
    """Parse a transformers (`hidden_size`, ...) or mamba_ssm (`d_model`, `ssm_cfg`) config dict."""
    model_type = raw.get("model_type")
    if model_type is not None and model_type != "mamba2":
        raise ValueError(f"expected a Mamba-2 checkpoint (model_type 'mamba2'), got model_type={model_type!r}")
    if "hidden_size" in raw:
        return _hf_config_to_mamba2(raw)
    if "d_model" in raw:
        return _mamba_ssm_config_to_mamba2(raw)
    raise ValueError("config.json is neither a transformers Mamba2 config (hidden_size, ...) "
                     "nor a mamba_ssm config (d_model, ssm_cfg, ...)")


def read_mamba2_checkpoint(path: Union[str, Path]) -> Tuple[Mamba2Config, Dict[str, torch.Tensor]]:
    """(config, raw state dict) of a transformers or mamba_ssm Mamba-2 checkpoint directory."""
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"Mamba-2 checkpoint directory not found: {directory}")
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"no config.json in Mamba-2 checkpoint directory {directory}")
    return mamba2_config_from_json(read_json(config_file)), read_mamba_weights(directory)
