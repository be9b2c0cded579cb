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
  Its ViT-B/16 baseline comes from A-CLIP's code, whose checkpoints have the same container and
  names except: the image tower's twin is `visual_ema` (a timm VisionTransformer), the token and
  position embeddings and the final norm have no twin, and self-supervised training heads
  (image_mlp, im_proj_byol, im_pred_byol, im_proj_byol_e) are dropped.

The image tower's keys after the `visual.` prefix keep their names, but for VMamba's final norm
(`classifier.norm` -> `norm`) and timm's ViT names (-> open_clip's); the projection becomes the
tower's `head` Linear (ViT: open_clip's `proj`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Set, Tuple, Union

import torch

from .pretrained import rename_mamba_key
from .weights import read_raw_checkpoint, resolve_weight_file, state_dict_from_object

PathLike = Union[str, Path]
CLIMP_RELEASE = "climp-release"
CLIP_MAMBA = "clip-mamba"
WEIGHT_CHOICES = ("ema", "online")

# Renames of image-tower keys (after the `visual.` prefix) by tower type; other towers' keys
# are taken as they are.
VISION_KEY_RENAMES: Dict[str, Tuple[Tuple[str, str], ...]] = {
    "vmamba": (("classifier.norm.", "norm."),),
    # timm's VisionTransformer (A-CLIP's image tower) -> open_clip's
    "vit": (("patch_embed.proj.", "conv1."), ("blocks.", "transformer.resblocks."), ("norm.", "ln_post."),
            (".norm1.", ".ln_1."), (".norm2.", ".ln_2."), (".attn.qkv.weight", ".attn.in_proj_weight"),
            (".attn.qkv.bias", ".attn.in_proj_bias"), (".attn.proj.", ".attn.out_proj."),
            (".mlp.fc1.", ".mlp.c_fc."), (".mlp.fc2.", ".mlp.c_proj.")),
}
# The tower parameter a (width, embed) image projection P becomes, and whether it is stored
# transposed (a Linear's weight, computing x @ P) or as it is (open_clip ViT's `proj`).
VISION_PROJECTION: Dict[str, Tuple[str, bool]] = {"vit": ("proj", False)}
DEFAULT_PROJECTION = ("head.weight", True)
# A-CLIP's training-only heads (self-supervised branches), not part of the CLIP model.
TRAINING_HEADS = ("image_mlp", "im_proj_byol", "im_pred_byol", "im_proj_byol_e")

# CLIP-Mamba's `args.model` -> our named model.
CLIP_MAMBA_MODELS = {
    "CLIP_VMamba_B": "clip-mamba-vmamba-b",
    "CLIP_VMamba_S": "clip-mamba-vmamba-s",
    "CLIP_VMamba_T220": "clip-mamba-vmamba-t220",
    "CLIP_Simba_S": "clip-mamba-simba-s",
    "CLIP_Simba_B": "clip-mamba-simba-b",
    "CLIP_Simba_L": "clip-mamba-simba-l",
    "ACLIP_VITB16": "clip-mamba-vit-b-16",
}
# CLIP-Mamba's text modules: our text tower (open_clip's TextTransformer) has the same names.
_CLIP_MAMBA_TEXT = ("transformer", "token_embedding", "positional_embedding", "ln_final", "text_projection")
_CLIP_MAMBA_MODULES = ("visual", "image_projection", *_CLIP_MAMBA_TEXT)


def detect_format(state: Mapping[str, torch.Tensor]) -> Optional[str]:
    """CLIMP_RELEASE, CLIP_MAMBA, or None for any other state dict (ours, open_clip, ...)."""
    if any(k.startswith("vision_encoder.") for k in state) and any(k.startswith("text_encoder.") for k in state):
        return CLIMP_RELEASE
    if "image_projection" in state and "token_embedding.weight" in state:
        return CLIP_MAMBA
    return None


def _rename_vision(key: str, vision_type: str) -> str:
    """A tower key of the published layout in our tower's names: the first matching prefix rule
    (a rule starting with a dot renames a part anywhere in the key), then every part rule."""
    renamed = False
    for old, new in VISION_KEY_RENAMES.get(vision_type, ()):
        if old.startswith("."):
            key = key.replace(old, new)
        elif not renamed and key.startswith(old):
            key, renamed = new + key[len(old):], True
    return key


def _vision_tensor(key: str, value: torch.Tensor, vision_type: str) -> Tuple[str, torch.Tensor]:
    """(our name, tensor) of a published image-tower tensor; timm's ViT keeps its class token and
    position embedding with a leading batch axis that open_clip's do not have."""
    if vision_type == "vit" and key in ("cls_token", "pos_embed"):
        name = "class_embedding" if key == "cls_token" else "positional_embedding"
        return name, value.reshape(-1, value.shape[-1]).squeeze(0)
    return _rename_vision(key, vision_type), value


def climp_release_to_climp(state: Mapping[str, torch.Tensor], vision_type: str = "vmamba") -> Dict[str, torch.Tensor]:
    """A CLIMP release's state dict in our names. Keys of no known part keep their name, so a
    strict load lists them as unexpected."""
    out: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("vision_encoder."):
            name, value = _vision_tensor(key[len("vision_encoder."):], value, vision_type)
            out["visual." + name] = value
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


def _ema_twin(module: str, present: Set[str]) -> Optional[str]:
    """The EMA twin of a CLIP-Mamba / A-CLIP module present in a state dict: `<module>_e`
    (A-CLIP names its image tower's twin `visual_ema`); None for a module without one."""
    candidates = (module + "_e", "visual_ema") if module == "visual" else (module + "_e",)
    return next((c for c in candidates if c in present), None)


def clip_mamba_to_climp(state: Mapping[str, torch.Tensor], weights: str = "ema",
                        vision_type: str = "vmamba") -> Dict[str, torch.Tensor]:
    """The EMA (default) or online weights of a CLIP-Mamba (or A-CLIP) state dict, without
    `module.`, in our names.

    Modules without an EMA twin (A-CLIP's token embedding, position embedding and final norm) are
    shared by both. The image projection P (width, embed) becomes the tower's projection (see
    VISION_PROJECTION). The unchosen twins and A-CLIP's training heads are dropped; anything
    else keeps its name, so a strict load names it.
    """
    if weights not in WEIGHT_CHOICES:
        raise ValueError(f"pretrained_weights must be one of {WEIGHT_CHOICES}, got {weights!r}")
    present = {key.partition(".")[0] for key in state}
    if weights == "ema" and _ema_twin("image_projection", present) is None:
        raise ValueError("this CLIP-Mamba checkpoint has no EMA weights (no `_e` keys such as "
                         "image_projection_e); load it with pretrained_weights='online'")
    chosen: Dict[str, str] = {}
    dropped = set(TRAINING_HEADS)
    for module in _CLIP_MAMBA_MODULES:
        twin = _ema_twin(module, present)
        if twin is None:
            chosen[module] = module
        elif weights == "ema":
            chosen[twin] = module
            dropped.add(module)
        else:
            chosen[module] = module
            dropped.add(twin)
    projection, transposed = VISION_PROJECTION.get(vision_type, DEFAULT_PROJECTION)
    out: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        module, _, rest = key.partition(".")
        if module in dropped:
            continue
        base = chosen.get(module)
        if base is None:  # logit_scale, and anything unknown (a strict load names it)
            out[key] = value
        elif base == "visual":
            name, value = _vision_tensor(rest, value, vision_type)
            out["visual." + name] = value
        elif base == "image_projection":
            out["visual." + projection] = value.t().contiguous() if transposed else value
        else:
            out["text." + ".".join(filter(None, [base, rest]))] = value
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
