"""Starting towers from released weights on disk: Mamba / Mamba-2 language models
(transformers or mamba_ssm layout), VMamba ImageNet checkpoints, and open_clip CLIP models.

Each importer maps the source's names onto ours and loads strictly, so a wrong file fails with
the list of missing and unexpected keys instead of silently leaving weights at their init.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Mapping, Union

import torch
from torch import nn

from .weights import load_state_dict_strict, read_state_dict

PathLike = Union[str, Path]

# Keys of the text tower config that describe the backbone's shape; a pretrained checkpoint's
# values replace the named config's so the tower is built to fit the weights.
_TOWER_ONLY_KEYS = {"type", "pad_id", "pooling", "scan_backend", "drop_path_rate", "proj_bias"}


def language_model_text_cfg(path: PathLike, text_cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """The text tower config that fits a Mamba / Mamba-2 language-model checkpoint directory:
    the checkpoint's shapes plus the tower's own settings (pooling, pad id, backend)."""
    tower_type = text_cfg.get("type")
    if tower_type == "mamba":
        from .mamba import mamba_config_from_json

        backbone_cfg = mamba_config_from_json(_read_config(path)).to_dict()
    elif tower_type == "mamba2":
        from .mamba2 import mamba2_config_from_json

        backbone_cfg = mamba2_config_from_json(_read_config(path)).to_dict()
    else:
        raise ValueError(f"text_pretrained expects a Mamba or Mamba-2 text tower, the model has {tower_type!r}")
    keep = {k: v for k, v in text_cfg.items() if k in _TOWER_ONLY_KEYS}
    return {**backbone_cfg, **keep}


def _read_config(path: PathLike) -> Dict[str, Any]:
    file = Path(path) / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"no config.json in language-model checkpoint directory {path}")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{file} is not valid JSON: {err}") from err


def load_text_tower_pretrained(tower: nn.Module, path: PathLike) -> None:
    """Load a language model into a Mamba / Mamba-2 text tower's backbone, or an open_clip
    checkpoint into a Transformer text tower. The projection to the joint space stays at init."""
    from .mamba import load_mamba_state_dict, read_mamba_weights
    from .text import MambaTextTower, TransformerTextTower, load_open_clip_text_state_dict

    if isinstance(tower, MambaTextTower):  # Mamba-1 and Mamba-2 share the checkpoint layout
        load_mamba_state_dict(tower.backbone, read_mamba_weights(path))
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
