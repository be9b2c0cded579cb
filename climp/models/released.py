"""The seed systems' published checkpoints, recognised by their keys and renamed onto CLIMP models.

* CLIMP (NimrodShabtay/CLIMP, `model.safetensors`): a flat state dict with `vision_encoder.*`
  (VMamba, its classifier head removed), `vision_projection.{weight,bias}`, `text_encoder.*`
  (a transformers Mamba / Mamba-2 backbone: embeddings, layers.N, norm_f),
  `text_projection.{weight,bias}` and `logit_scale`.
* CLIP-Mamba (raytrun/mamba-clip, `checkpoint.pt` / `checkpoint_best.pt`): a torch.save'd dict
  with epoch, state_dict (DDP `module.` prefix), optimizer, scaler, best_acc and args (an
  argparse.Namespace). The state dict holds OpenAI-CLIP style names, each module twice: online
  (`visual`, `transformer`, `token_embedding`, `positional_embedding`, `ln_final`,
  `image_projection`, `text_projection`) and EMA (the same names with an `_e` suffix);
  `logit_scale` has no twin. The image projection is a (width, embed) matrix applied as x @ P.

The image tower's keys after the `visual.` prefix keep their names (VMamba's final norm moves
from `classifier.norm` to `norm`); the projection becomes the tower's `head` Linear.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch

from .mamba import rename_mamba_key
from .weights import read_raw_checkpoint, resolve_weight_file, state_dict_from_object

PathLike = Union[str, Path]
CLIMP_RELEASE = "climp-release"
CLIP_MAMBA = "clip-mamba"
WEIGHT_CHOICES = ("ema", "online")

# Renames of image-tower keys (after the `visual.` prefix) by tower type; other towers' keys
# are taken as they are.
VISION_KEY_RENAMES: Dict[str, Tuple[Tuple[str, str], ...]] = {"vmamba": (("classifier.norm.", "norm."),)}

# CLIP-Mamba's `args.model` -> our named model.
CLIP_MAMBA_MODELS = {
    "CLIP_VMamba_B": "clip-mamba-vmamba-b",
    "CLIP_VMamba_S": "clip-mamba-vmamba-s",
    "CLIP_VMamba_T220": "clip-mamba-vmamba-t220",
    "CLIP_Simba_S": "clip-mamba-simba-s",
    "CLIP_Simba_B": "clip-mamba-simba-b",
    "CLIP_Simba_L": "clip-mamba-simba-l",
}
# CLIP-Mamba's text modules -> our text tower's (open_clip TextTransformer) names.
_CLIP_MAMBA_TEXT = {"transformer": "transformer", "token_embedding": "token_embedding",
                    "positional_embedding": "positional_embedding", "ln_final": "ln_final",
                    "text_projection": "text_projection"}
_CLIP_MAMBA_MODULES = ("visual", "image_projection", *_CLIP_MAMBA_TEXT)


def detect_format(state: Mapping[str, torch.Tensor]) -> Optional[str]:
    """CLIMP_RELEASE, CLIP_MAMBA, or None for any other state dict (ours, open_clip, ...)."""
    if any(k.startswith("vision_encoder.") for k in state) and any(k.startswith("text_encoder.") for k in state):
        return CLIMP_RELEASE
    if "image_projection" in state and "token_embedding.weight" in state:
        return CLIP_MAMBA
    return None


def _rename_vision(key: str, vision_type: str) -> str:
    for old, new in VISION_KEY_RENAMES.get(vision_type, ()):
        if key.startswith(old):
            return new + key[len(old):]
    return key


def climp_release_to_climp(state: Mapping[str, torch.Tensor], vision_type: str = "vmamba") -> Dict[str, torch.Tensor]:
    """A CLIMP release's state dict in our names. Keys of no known part keep their name, so a
    strict load lists them as unexpected."""
    out: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("vision_encoder."):
            out["visual." + _rename_vision(key[len("vision_encoder."):], vision_type)] = value
        elif key.startswith("vision_projection."):
            out["visual.head." + key[len("vision_projection."):]] = value
        elif key.startswith("text_encoder."):
            renamed = rename_mamba_key(key[len("text_encoder."):])
            if renamed is not None:
                out["text.backbone." + renamed] = value
        elif key.startswith("text_projection."):
            out["text.proj." + key[len("text_projection."):]] = value
        else:
            out[key] = value
    return out


def _split_module(key: str) -> Tuple[str, str]:
    """("visual_e", "layers.0...") for "visual_e.layers.0..."; ("logit_scale", "") for a parameter."""
    head, _, rest = key.partition(".")
    return head, rest


def clip_mamba_to_climp(state: Mapping[str, torch.Tensor], weights: str = "ema",
                        vision_type: str = "vmamba") -> Dict[str, torch.Tensor]:
    """The EMA (default) or online weights of a CLIP-Mamba state dict (no `module.`) in our names.

    The image projection P (width, embed) becomes `visual.head.weight` = P^T, so the tower's
    Linear computes x @ P. The other twin's modules are dropped; anything else keeps its name.
    """
    if weights not in WEIGHT_CHOICES:
        raise ValueError(f"pretrained_weights must be one of {WEIGHT_CHOICES}, got {weights!r}")
    chosen, other = ("_e", "") if weights == "ema" else ("", "_e")
    if weights == "ema" and "image_projection_e" not in state:
        raise ValueError("this CLIP-Mamba checkpoint has no EMA weights (no `_e` keys such as "
                         "image_projection_e); load it with pretrained_weights='online'")
    picked = {m + chosen: m for m in _CLIP_MAMBA_MODULES}
    dropped = {m + other for m in _CLIP_MAMBA_MODULES}
    out: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        module, rest = _split_module(key)
        if module in dropped:
            continue
        base = picked.get(module)
        if base is None:  # logit_scale, and anything unknown (a strict load names it)
            out[key] = value
        elif base == "visual":
            out["visual." + _rename_vision(rest, vision_type)] = value
        elif base == "image_projection":
            out["visual.head.weight"] = value.t().contiguous()
        else:
            out["text." + ".".join(filter(None, [_CLIP_MAMBA_TEXT[base], rest]))] = value
    return out


def read_released(path: PathLike) -> Tuple[Dict[str, torch.Tensor], Optional[str], Dict[str, Any]]:
    """(state dict without `module.`, detected format, metadata) of a weights file or directory.
    Metadata holds CLIP-Mamba's `args` as a dict and `epoch`, when the file has them."""
    file = resolve_weight_file(path)
    raw = read_raw_checkpoint(file)
    state = state_dict_from_object(raw, file)
    meta: Dict[str, Any] = {}
    if isinstance(raw, dict):
        if raw.get("args") is not None:
            meta["args"] = dict(vars(raw["args"])) if hasattr(raw["args"], "__dict__") else raw["args"]
        if "epoch" in raw:
            meta["epoch"] = raw["epoch"]
    return state, detect_format(state), meta


def to_climp_state_dict(state: Mapping[str, torch.Tensor], fmt: Optional[str], vision_type: str,
                        weights: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """Rename a released state dict of format `fmt` onto our names (other formats unchanged).
    weights: "ema" (the default for CLIP-Mamba) or "online"; only CLIP-Mamba files have both."""
    if fmt == CLIP_MAMBA:
        return clip_mamba_to_climp(state, weights or "ema", vision_type)
    if weights is not None:
        raise ValueError(f"pretrained_weights={weights!r} applies to CLIP-Mamba checkpoints (online and EMA "
                         "weights); this file has one set of weights")
    if fmt == CLIMP_RELEASE:
        return climp_release_to_climp(state, vision_type)
    return dict(state)


def infer_model_name(state: Mapping[str, torch.Tensor], fmt: Optional[str], meta: Mapping[str, Any]) -> Optional[str]:
    """Our named model for a released file: CLIP-Mamba's args.model, or for CLIMP the text
    backbone kind (Mamba-2 layers have `dt_bias`); None when the file does not say."""
    if fmt == CLIP_MAMBA:
        return CLIP_MAMBA_MODELS.get(str(meta.get("args", {}).get("model")))
    if fmt == CLIMP_RELEASE:
        mamba2 = any(k.startswith("text_encoder.layers.") and k.endswith(".mixer.dt_bias") for k in state)
        return "climp-mamba2" if mamba2 else "climp-mamba1"
    return None
