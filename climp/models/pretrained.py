"""Starting towers from released weights on disk: Mamba / Mamba-2 language models
(transformers or mamba_ssm layout), VMamba ImageNet checkpoints, and open_clip CLIP models.

Each importer maps the source's names onto ours and loads strictly, so a wrong file fails with
the list of missing and unexpected keys instead of silently leaving weights at their init.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from .mamba import MambaConfig
from .mamba2 import Mamba2Config
from .weights import load_state_dict_strict, read_state_dict

PathLike = Union[str, Path]

# Keys of the text tower config that describe the backbone's shape; a pretrained checkpoint's
# values replace the named config's so the tower is built to fit the weights.
_TOWER_ONLY_KEYS = {"type", "pad_id", "pooling", "scan_backend", "drop_path_rate", "proj_bias"}

# ----------------------------------------------------------------------------- Mamba language models

# Top-level keys of mamba_ssm's MambaConfig JSON (both layer kinds).
_MAMBA_SSM_TOP_KEYS = {"d_model", "n_layer", "vocab_size", "ssm_cfg", "pad_vocab_size_multiple",
                       "d_intermediate", "attn_layer_idx", "attn_cfg", "rms_norm", "residual_in_fp32",
                       "fused_add_norm", "tie_embeddings"}
# transformers' config keys shared by MambaConfig and Mamba2Config -> our field names.
_HF_COMMON_KEYS = {
    "hidden_size": "d_model",
    "num_hidden_layers": "n_layer",
    "vocab_size": "vocab_size",
    "state_size": "d_state",
    "conv_kernel": "d_conv",
    "expand": "expand",
    "time_step_min": "dt_min",
    "time_step_max": "dt_max",
    "time_step_floor": "dt_init_floor",
    "use_bias": "bias",
    "use_conv_bias": "conv_bias",
    "layer_norm_epsilon": "norm_eps",
}


@dataclass(frozen=True)
class _LanguageModelFormat:
    """How one backbone kind's checkpoints spell their config, in transformers and mamba_ssm."""

    model_type: str  # transformers' model_type
    layer: str  # mamba_ssm's ssm_cfg.layer
    default_layer: Optional[str]  # ssm_cfg.layer when a mamba_ssm config omits it
    config_class: type
    hf_keys: Mapping[str, str]  # transformers key -> our field, beyond _HF_COMMON_KEYS
    ssm_keys: FrozenSet[str]  # ssm_cfg entries that map onto our fields as they are
    ssm_ignored: FrozenSet[str]  # ssm_cfg entries that choose kernels or init only
    check_hf: Callable[[Mapping[str, Any], Any], None]  # extra consistency checks on the parsed config
    check_ssm_cfg: Callable[[Mapping[str, Any]], None]  # rejects unsupported mamba_ssm features


def _check_hf_mamba(raw: Mapping[str, Any], cfg: MambaConfig) -> None:
    inner = raw.get("intermediate_size")
    if inner is not None and inner != cfg.expand * cfg.d_model:
        raise ValueError(f"intermediate_size {inner} != expand * hidden_size = {cfg.expand * cfg.d_model}")


def _check_hf_mamba2(raw: Mapping[str, Any], cfg: Mamba2Config) -> None:
    if "num_heads" in raw and raw["num_heads"] != cfg.nheads:
        raise ValueError(f"num_heads {raw['num_heads']} != expand * hidden_size / head_dim = {cfg.nheads}")


def _check_ssm_cfg_mamba2(ssm_cfg: Mapping[str, Any]) -> None:
    if ssm_cfg.get("d_ssm") is not None:
        raise ValueError("mamba_ssm Mamba2 with d_ssm (a gated-MLP part beside the SSM) is not supported")
    if ssm_cfg.get("D_has_hdim", False):
        raise ValueError("mamba_ssm Mamba2 with D_has_hdim=True (D per channel) is not supported")
    if ssm_cfg.get("norm_before_gate", False):
        raise ValueError("mamba_ssm Mamba2 with norm_before_gate=True is not supported")


_FORMATS: Dict[str, _LanguageModelFormat] = {
    "mamba": _LanguageModelFormat(
        model_type="mamba", layer="Mamba1", default_layer="Mamba1", config_class=MambaConfig,
        hf_keys={"time_step_rank": "dt_rank", "time_step_init_scheme": "dt_init", "time_step_scale": "dt_scale"},
        ssm_keys=frozenset({"d_state", "d_conv", "expand", "dt_rank", "dt_min", "dt_max", "dt_init", "dt_scale",
                            "dt_init_floor", "conv_bias", "bias"}),
        ssm_ignored=frozenset({"layer", "use_fast_path"}),
        check_hf=_check_hf_mamba, check_ssm_cfg=lambda ssm_cfg: None,
    ),
    "mamba2": _LanguageModelFormat(
        model_type="mamba2", layer="Mamba2", default_layer=None, config_class=Mamba2Config,
        hf_keys={"head_dim": "headdim", "n_groups": "ngroups", "chunk_size": "chunk_size",
                 "time_step_limit": "dt_limit"},
        ssm_keys=frozenset({"d_state", "d_conv", "expand", "headdim", "ngroups", "chunk_size", "A_init_range",
                            "dt_min", "dt_max", "dt_init_floor", "dt_limit", "bias", "conv_bias", "rmsnorm"}),
        ssm_ignored=frozenset({"layer", "use_mem_eff_path", "conv_init", "d_ssm", "D_has_hdim", "norm_before_gate"}),
        check_hf=_check_hf_mamba2, check_ssm_cfg=_check_ssm_cfg_mamba2,
    ),
}


def _format(model_type: str) -> _LanguageModelFormat:
    if model_type not in _FORMATS:
        raise ValueError(f"no language-model importer for {model_type!r}; known: {sorted(_FORMATS)}")
    return _FORMATS[model_type]


def _json_float(value: Any) -> Any:
    """A float that transformers wrote to JSON: a number, or {"__float__": "Infinity"} (how
    transformers >= 5 encodes non-finite floats); anything else is returned for validation."""
    if isinstance(value, Mapping) and set(value) == {"__float__"}:
        try:
            return float(value["__float__"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"bad encoded float {value!r} in config.json") from e
    return value


def _config_from_hf(raw: Mapping[str, Any], fmt: _LanguageModelFormat) -> Any:
    """transformers' config JSON -> our config. Generic PreTrainedConfig fields are ignored."""
    if raw.get("hidden_act", "silu") != "silu":
        raise ValueError(f"only hidden_act='silu' is supported, got {raw['hidden_act']!r}")
    missing = [k for k in ("hidden_size", "num_hidden_layers", "vocab_size") if k not in raw]
    if missing:
        raise ValueError(f"transformers {fmt.model_type} config.json lacks {missing}")
    keys = {**_HF_COMMON_KEYS, **fmt.hf_keys}
    fields = {ours: raw[theirs] for theirs, ours in keys.items() if theirs in raw}
    if isinstance(fields.get("dt_limit"), (list, tuple)):
        fields["dt_limit"] = [_json_float(v) for v in fields["dt_limit"]]
    cfg = fmt.config_class.from_dict(fields)
    fmt.check_hf(raw, cfg)
    return cfg


def _config_from_mamba_ssm(raw: Mapping[str, Any], fmt: _LanguageModelFormat) -> Any:
    """mamba_ssm's MambaConfig JSON -> our config; rejects what a pure-SSM backbone of this kind
    lacks (MLP blocks, attention layers, LayerNorm, the other layer kind's options)."""
    unknown = sorted(set(raw) - _MAMBA_SSM_TOP_KEYS)
    if unknown:
        raise ValueError(f"unknown mamba_ssm config keys {unknown}")
    ssm_cfg = dict(raw.get("ssm_cfg") or {})
    layer = ssm_cfg.get("layer", fmt.default_layer)
    if layer != fmt.layer:
        raise ValueError(f"expected a {fmt.layer} checkpoint (ssm_cfg.layer {fmt.layer!r}), got {layer!r}")
    fmt.check_ssm_cfg(ssm_cfg)
    unknown = sorted(set(ssm_cfg) - fmt.ssm_keys - fmt.ssm_ignored)
    if unknown:
        raise ValueError(f"unknown mamba_ssm ssm_cfg keys {unknown}")
    if raw.get("d_intermediate", 0):
        raise ValueError("mamba_ssm checkpoints with MLP blocks (d_intermediate > 0) are not supported")
    if raw.get("attn_layer_idx"):
        raise ValueError("mamba_ssm checkpoints with attention layers (attn_layer_idx) are not supported")
    if not raw.get("rms_norm", True):
        raise ValueError("mamba_ssm checkpoints with LayerNorm (rms_norm=false) are not supported")
    fields = {k: raw[k] for k in ("d_model", "n_layer", "vocab_size", "pad_vocab_size_multiple") if k in raw}
    fields.update({k: v for k, v in ssm_cfg.items() if k in fmt.ssm_keys})
    return fmt.config_class.from_dict(fields)


def language_model_config_from_json(raw: Mapping[str, Any], model_type: str) -> Any:
    """Parse a transformers (`hidden_size`, ...) or mamba_ssm (`d_model`, `ssm_cfg`) config dict
    of a "mamba" (MambaConfig) or "mamba2" (Mamba2Config) language model."""
    fmt = _format(model_type)
    found = raw.get("model_type")
    if found is not None and found != fmt.model_type:
        raise ValueError(f"expected a {fmt.model_type} checkpoint (model_type {fmt.model_type!r}), "
                         f"got model_type={found!r}")
    if "hidden_size" in raw:
        return _config_from_hf(raw, fmt)
    if "d_model" in raw:
        return _config_from_mamba_ssm(raw, fmt)
    raise ValueError(f"config.json is neither a transformers {fmt.model_type} config (hidden_size, ...) "
                     "nor a mamba_ssm config (d_model, ssm_cfg, ...)")


def read_json(file: Path) -> Dict[str, Any]:
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{file} is not valid JSON: {e}") from e


def read_checkpoint_weights(directory: PathLike) -> Dict[str, torch.Tensor]:
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


def _read_config(path: PathLike) -> Dict[str, Any]:
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"language-model checkpoint directory not found: {directory}")
    file = directory / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"no config.json in language-model checkpoint directory {directory}")
    return read_json(file)


def read_language_model_checkpoint(path: PathLike, model_type: str) -> Tuple[Any, Dict[str, torch.Tensor]]:
    """(config, raw state dict) of a transformers or mamba_ssm checkpoint directory of a "mamba"
    or "mamba2" language model."""
    return language_model_config_from_json(_read_config(path), model_type), read_checkpoint_weights(path)


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
    """Load a mamba_ssm / transformers Mamba-1 or Mamba-2 state dict into a backbone (strict).

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


def language_model_text_cfg(path: PathLike, text_cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """The text tower config that fits a Mamba / Mamba-2 language-model checkpoint directory:
    the checkpoint's shapes plus the tower's own settings (pooling, pad id, backend)."""
    tower_type = text_cfg.get("type")
    if tower_type not in _FORMATS:
        raise ValueError(f"text_pretrained expects a Mamba or Mamba-2 text tower, the model has {tower_type!r}")
    backbone_cfg = language_model_config_from_json(_read_config(path), tower_type).to_dict()
    keep = {k: v for k, v in text_cfg.items() if k in _TOWER_ONLY_KEYS}
    return {**backbone_cfg, **keep}


# ----------------------------------------------------------------------------- towers


def load_text_tower_pretrained(tower: nn.Module, path: PathLike) -> None:
    """Load a language model into a Mamba / Mamba-2 text tower's backbone, or an open_clip
    checkpoint into a Transformer text tower. The projection to the joint space stays at init."""
    from .text import MambaTextTower, TransformerTextTower, load_open_clip_text_state_dict

    if isinstance(tower, MambaTextTower):  # Mamba-1 and Mamba-2 share the checkpoint layout
        load_mamba_state_dict(tower.backbone, read_checkpoint_weights(path))
    elif isinstance(tower, TransformerTextTower):
        load_open_clip_text_state_dict(tower, read_state_dict(path))
    else:
        raise ValueError(f"no text importer for {type(tower).__name__}")


def load_image_tower_pretrained(tower: nn.Module, path: PathLike) -> None:
    """Load a VMamba ImageNet checkpoint (its classifier head dropped; our projection stays at
    init) or an open_clip checkpoint's `visual.*` into a ViT tower."""
    from .vit import ViTVisionTower
    from .vmamba import HEAD_PREFIXES, VMambaVisionTower, vmamba_checkpoint_to_tower

    state = read_state_dict(path)
    if isinstance(tower, VMambaVisionTower):
        backbone = vmamba_checkpoint_to_tower(state)
        # The pooling and projection are CLIP's own (no ImageNet counterpart): they stay at init;
        # the final norm comes from the checkpoint.
        own = tuple(p for p in HEAD_PREFIXES if p != "norm.")
        head = {k: v for k, v in tower.state_dict().items() if k.startswith(own)}
        load_state_dict_strict(tower, {**backbone, **head}, source=f"VMamba checkpoint {path}")
    elif isinstance(tower, ViTVisionTower):
        visual = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
        load_state_dict_strict(tower, visual or state, source=f"open_clip checkpoint {path}")
    else:
        raise ValueError(f"no image importer for {type(tower).__name__}")


def open_clip_to_climp_state_dict(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """An open_clip CLIP / CustomTextCLIP state dict renamed for a CLIMP model whose towers are
    open_clip's ViT and Transformer (`visual.*` stays, text weights move under `text.`)."""
    from .text import open_clip_text_state_dict

    out = {k: v for k, v in state_dict.items() if k.startswith("visual.")}
    out.update({"text." + k: v for k, v in open_clip_text_state_dict(state_dict).items()})
    for key in ("logit_scale", "logit_bias"):
        if key in state_dict:
            out[key] = state_dict[key].reshape(())
    return out


def looks_like_open_clip(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """open_clip's CLIP keeps text weights at the top level (token_embedding, transformer.*)."""
    return "token_embedding.weight" in state_dict and "text.token_embedding.weight" not in state_dict
