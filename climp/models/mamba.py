"""Mamba-1: RMSNorm, the selective-SSM mixer, the pre-norm residual block and a token backbone.

Parameter names and initialisation follow mamba_ssm (and transformers' MambaModel, which uses the
same names), so their checkpoints load with a key rename only (`load_mamba_state_dict`).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath
from torch.utils.checkpoint import checkpoint

from climp.ops import selective_scan

from .weights import load_state_dict_strict, read_state_dict
from ..dataconfig import FromDict


def at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """t in float32 if it is a narrower float (bf16, fp16), else unchanged: float64 models
    compute in float64 end to end."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


class RMSNorm(nn.Module):
    """Root-mean-square layer norm with a learned scale, computed in float32 at least."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = at_least_float32(x)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (h * at_least_float32(self.weight)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def resolve_dt_rank(dt_rank: Union[int, str], d_model: int) -> int:
    """mamba_ssm's "auto" rank of the time-step projection: ceil(d_model / 16)."""
    if dt_rank == "auto":
        return math.ceil(d_model / 16)
    if isinstance(dt_rank, bool) or not isinstance(dt_rank, int) or dt_rank < 1:
        raise ValueError(f"dt_rank must be 'auto' or a positive int, got {dt_rank!r}")
    return dt_rank


class MambaMixer(nn.Module):
    """Mamba-1 selective state-space mixer (mamba_ssm's `Mamba`), (B, L, d_model) -> same shape.

    in_proj splits into the SSM branch x and the gate z; x goes through a causal depthwise conv
    and SiLU, then x_proj gives the input-dependent time step (low rank, expanded by dt_proj),
    B and C; the selective scan runs with A = -exp(A_log), skip D and gate silu(z).
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
        for p in (self.A_log, self.D, self.dt_proj.bias):
            p._no_weight_decay = True
        self.dt_proj.bias._no_reinit = True  # MambaBackbone.init_weights keeps its dt init
        self.reset_ssm_parameters(dt_min, dt_max, dt_init, dt_scale, dt_init_floor)

    @torch.no_grad()
    def reset_ssm_parameters(
        self, dt_min: float, dt_max: float, dt_init: str, dt_scale: float, dt_init_floor: float
    ) -> None:
        """S4D-real A, unit D, and a dt_proj whose softplus(bias) is log-uniform in [dt_min, dt_max]."""
        std = self.dt_rank ** -0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, std)
        else:
            nn.init.uniform_(self.dt_proj.weight, -std, std)
        log_dt = torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        dt = log_dt.exp().clamp(min=dt_init_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus
        A = torch.arange(1, self.d_state + 1, dtype=torch.float32).expand(self.d_inner, -1)
        self.A_log.copy_(torch.log(A))
        self.D.fill_(1.0)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        length = hidden.shape[1]
        x, z = self.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)  # (B, d_inner, L) each
        x = F.silu(self.conv1d(x)[..., :length])
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
            z=z.contiguous(),
            delta_bias=at_least_float32(self.dt_proj.bias),
            delta_softplus=True,
            backend=self.scan_backend,
        )
        return self.out_proj(y.transpose(1, 2))


class MambaBlock(nn.Module):
    """Pre-norm residual block: x + drop_path(mixer(norm(x)))."""

    def __init__(self, d_model: int, mixer: nn.Module, norm_eps: float = 1e-5, drop_path: float = 0.0):
        super().__init__()
        self.norm = RMSNorm(d_model, eps=norm_eps)
        self.mixer = mixer
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.mixer(self.norm(x)))


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
        for name in ("d_model", "n_layer", "vocab_size", "d_state", "d_conv", "expand", "pad_vocab_size_multiple"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"MambaConfig.{name} must be a positive int, got {value!r}")
        resolve_dt_rank(self.dt_rank, self.d_model)
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"MambaConfig.drop_path_rate must be in [0, 1), got {self.drop_path_rate}")

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_size_multiple
        return -(-self.vocab_size // m) * m


class MambaBackbone(nn.Module):
    """Token embedding, a stack of Mamba blocks and a final RMSNorm: ids (B, L) -> (B, L, d_model)."""

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

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embedding(input_ids)
        for layer in self.layers:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(layer, x, use_reentrant=False)
            else:
                x = layer(x)
        return self.norm_f(x)

    @staticmethod
    def read_checkpoint(path: Union[str, Path]) -> Tuple[MambaConfig, Dict[str, torch.Tensor]]:
        """(config, raw state dict) of a checkpoint directory of this backbone's kind."""
        return read_mamba_checkpoint(path)

    @classmethod
    def from_pretrained(cls, path: Union[str, Path], **overrides: Any) -> "MambaBackbone":
        """Load a transformers (MambaModel / MambaForCausalLM, or their Mamba-2 twins for
        Mamba2Backbone) or mamba_ssm checkpoint directory. `overrides` replace config fields."""
        cfg, state_dict = cls.read_checkpoint(path)
        if overrides:
            cfg = type(cfg).from_dict({**cfg.to_dict(), **overrides})
        model = cls(cfg)
        load_mamba_state_dict(model, state_dict)
        return model


# ----------------------------------------------------------------------------- checkpoint import

_HF_CONFIG_KEYS = {
    "hidden_size": "d_model",
    "num_hidden_layers": "n_layer",
    "vocab_size": "vocab_size",
    "state_size": "d_state",
    "conv_kernel": "d_conv",
    "expand": "expand",
    "time_step_rank": "dt_rank",
    "time_step_min": "dt_min",
    "time_step_max": "dt_max",
    "time_step_init_scheme": "dt_init",
    "time_step_scale": "dt_scale",
    "time_step_floor": "dt_init_floor",
    "use_conv_bias": "conv_bias",
    "use_bias": "bias",
    "layer_norm_epsilon": "norm_eps",
}
_SSM_CFG_KEYS = {"d_state", "d_conv", "expand", "dt_rank", "dt_min", "dt_max", "dt_init", "dt_scale",
                 "dt_init_floor", "conv_bias", "bias"}
_SSM_CFG_IGNORED = {"layer", "use_fast_path"}
_MAMBA_SSM_TOP_KEYS = {"d_model", "n_layer", "vocab_size", "ssm_cfg", "pad_vocab_size_multiple",
                       "d_intermediate", "attn_layer_idx", "attn_cfg", "rms_norm", "residual_in_fp32",
                       "fused_add_norm", "tie_embeddings"}


def _hf_config_to_mamba(raw: Mapping[str, Any]) -> MambaConfig:
    """transformers' MambaConfig JSON -> MambaConfig. Generic PreTrainedConfig fields are ignored."""
    if raw.get("hidden_act", "silu") != "silu":
        raise ValueError(f"only hidden_act='silu' is supported, got {raw['hidden_act']!r}")
    missing = [k for k in ("hidden_size", "num_hidden_layers", "vocab_size") if k not in raw]
    if missing:
        raise ValueError(f"transformers Mamba config.json lacks {missing}")
    cfg = MambaConfig.from_dict({ours: raw[theirs] for theirs, ours in _HF_CONFIG_KEYS.items() if theirs in raw})
    inner = raw.get("intermediate_size")
    if inner is not None and inner != cfg.expand * cfg.d_model:
        raise ValueError(f"intermediate_size {inner} != expand * hidden_size = {cfg.expand * cfg.d_model}")
    return cfg


def mamba_ssm_backbone_fields(raw: Mapping[str, Any], ssm_cfg: Mapping[str, Any], ssm_keys: Iterable[str]) -> Dict[str, Any]:
    """The backbone fields of a mamba_ssm MixerModel config plus its known ssm_cfg entries, after
    rejecting what a pure-SSM backbone lacks (MLP blocks, attention layers, LayerNorm); shared by
    the Mamba-1 and Mamba-2 importers."""
    if raw.get("d_intermediate", 0):
        raise ValueError("mamba_ssm checkpoints with MLP blocks (d_intermediate > 0) are not supported")
    if raw.get("attn_layer_idx"):
        raise ValueError("mamba_ssm checkpoints with attention layers (attn_layer_idx) are not supported")
    if not raw.get("rms_norm", True):
        raise ValueError("mamba_ssm checkpoints with LayerNorm (rms_norm=false) are not supported")
    fields = {k: raw[k] for k in ("d_model", "n_layer", "vocab_size", "pad_vocab_size_multiple") if k in raw}
    fields.update({k: v for k, v in ssm_cfg.items() if k in set(ssm_keys)})
    return fields


def _mamba_ssm_config_to_mamba(raw: Mapping[str, Any]) -> MambaConfig:
    """mamba_ssm's MambaConfig JSON -> MambaConfig; rejects features this backbone does not have."""
    unknown = sorted(set(raw) - _MAMBA_SSM_TOP_KEYS)
    if unknown:
        raise ValueError(f"unknown mamba_ssm config keys {unknown}")
    ssm_cfg = dict(raw.get("ssm_cfg") or {})
    if ssm_cfg.get("layer", "Mamba1") != "Mamba1":
        raise ValueError(f"only Mamba1 layers are supported here, got ssm_cfg.layer={ssm_cfg['layer']!r}")
    unknown = sorted(set(ssm_cfg) - _SSM_CFG_KEYS - _SSM_CFG_IGNORED)
    if unknown:
        raise ValueError(f"unknown mamba_ssm ssm_cfg keys {unknown}")
    d = mamba_ssm_backbone_fields(raw, ssm_cfg, _SSM_CFG_KEYS)
    return MambaConfig.from_dict(d)


def mamba_config_from_json(raw: Mapping[str, Any]) -> MambaConfig:
    """Parse a transformers (`hidden_size`, ...) or mamba_ssm (`d_model`, ...) config dict."""
    model_type = raw.get("model_type")
    if model_type is not None and model_type != "mamba":
        raise ValueError(f"expected a Mamba-1 checkpoint (model_type 'mamba'), got model_type={model_type!r}")
    if "hidden_size" in raw:
        return _hf_config_to_mamba(raw)
    if "d_model" in raw:
        return _mamba_ssm_config_to_mamba(raw)
    raise ValueError("config.json is neither a transformers Mamba config (hidden_size, ...) "
                     "nor a mamba_ssm config (d_model, ...)")


def read_mamba_weights(directory: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """The raw state dict of a checkpoint directory: model.safetensors, pytorch_model.bin, or a
    sharded set described by model.safetensors.index.json / pytorch_model.bin.index.json."""
    directory = Path(directory)
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).is_file():
            return read_state_dict(directory / name)
    for name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index_file = directory / name
        if index_file.is_file():
            shards = sorted(set(read_json(index_file).get("weight_map", {}).values()))
            if not shards:
                raise ValueError(f"{index_file} has no weight_map")
            state_dict: Dict[str, torch.Tensor] = {}
            for shard in shards:
                if not (directory / shard).is_file():
                    raise FileNotFoundError(f"shard {shard} listed in {index_file} is missing")
                state_dict.update(read_state_dict(directory / shard))
            return state_dict
    raise FileNotFoundError(
        f"no weights in {directory}: expected model.safetensors, pytorch_model.bin or a sharded index"
    )


def read_json(file: Path) -> Dict[str, Any]:
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{file} is not valid JSON: {e}") from e


def read_mamba_checkpoint(path: Union[str, Path]) -> Tuple[MambaConfig, Dict[str, torch.Tensor]]:
    """(config, raw state dict) of a transformers or mamba_ssm Mamba-1 checkpoint directory."""
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"Mamba checkpoint directory not found: {directory}")
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"no config.json in Mamba checkpoint directory {directory}")
    return mamba_config_from_json(read_json(config_file)), read_mamba_weights(directory)


def rename_mamba_key(key: str) -> Optional[str]:
    """Map a transformers/mamba_ssm key onto MambaBackbone's names; None for keys to drop (lm_head)."""
    if key.startswith("lm_head."):
        return None
    if key.startswith("backbone."):
        key = key[len("backbone."):]
    if key.startswith("embeddings."):
        key = "embedding." + key[len("embeddings."):]
    return key


def load_mamba_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load a mamba_ssm / transformers Mamba-1 state dict into `model` (strict).

    Renames keys (`backbone.` prefix, `embeddings` -> `embedding`, drops `lm_head`), pads the
    embedding with zero rows up to the model's padded vocabulary, and raises ValueError listing
    missing, unexpected or wrongly shaped entries.
    """
    renamed: Dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new_key = rename_mamba_key(key)
        if new_key is not None:
            renamed[new_key] = value
    own_emb = model.embedding.weight
    emb = renamed.get("embedding.weight")
    if emb is not None and emb.dim() == 2 and emb.shape[1] == own_emb.shape[1]:
        rows = own_emb.shape[0]
        if emb.shape[0] > rows:
            raise ValueError(f"checkpoint embedding has {emb.shape[0]} rows but the model's padded "
                             f"vocabulary has only {rows}; raise vocab_size")
        if emb.shape[0] < rows:
            renamed["embedding.weight"] = torch.cat([emb, emb.new_zeros(rows - emb.shape[0], emb.shape[1])])
    load_state_dict_strict(model, renamed, source="Mamba checkpoint")
