"""Named model configs (JSON files in configs/), the model factory and checkpoint loading."""
from __future__ import annotations

import copy
import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch

from ..tokenizer import ClipBpeTokenizer, HFTokenizer
from ..transforms import image_transform
from .clip import CLIP
from .pretrained import (
    language_model_text_cfg,
    load_image_tower_pretrained,
    load_text_tower_pretrained,
    looks_like_open_clip,
    open_clip_to_climp_state_dict,
)
from .weights import load_state_dict_strict, read_state_dict

CONFIG_DIR = Path(__file__).parent / "configs"
CONFIG_SIDECAR = "config.json"


@lru_cache(maxsize=None)
def _registry() -> Dict[str, Dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(CONFIG_DIR.glob("*.json"))}


def list_models() -> List[str]:
    """Names accepted by create_model (the JSON files in climp/models/configs)."""
    return sorted(_registry())


def get_model_config(name: Union[str, Path]) -> Dict[str, Any]:
    """A copy of a named config, or of a JSON config file given by path."""
    if str(name) in _registry():
        return copy.deepcopy(_registry()[str(name)])
    path = Path(name)
    if path.suffix == ".json" and path.is_file():
        return json.loads(path.read_text())
    raise ValueError(f"unknown model {str(name)!r}; choose one of {list_models()} or pass a JSON config path")


def merge_overrides(cfg: Dict[str, Any], overrides: Dict[str, Any]) -> Dict[str, Any]:
    """Apply overrides: top-level keys replace, `vision_cfg`/`text_cfg` dicts update key by key."""
    cfg = copy.deepcopy(cfg)
    for key, value in overrides.items():
        if key in ("vision_cfg", "text_cfg") and isinstance(value, dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def model_from_config(cfg: Dict[str, Any]) -> CLIP:
    """Build a CLIP from a config dict (embed_dim, vision_cfg, text_cfg, optional logit inits,
    optional `tokenizer`: a directory or file holding a language model's tokenizer.json, optional
    `normalize_captions`: the tokenizer applies `climp.tokenizer.normalize_caption` first)."""
    known = {"embed_dim", "vision_cfg", "text_cfg", "init_logit_scale", "init_logit_bias", "tokenizer",
             "normalize_captions"}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"unknown model config keys {unknown}; known: {sorted(known)}")
    model = CLIP(**{k: v for k, v in cfg.items() if k not in ("tokenizer", "normalize_captions")})
    model.config = copy.deepcopy(cfg)
    return model


def create_model(
    name: Union[str, Path],
    pretrained: Optional[Union[str, Path]] = None,
    device: Optional[Union[str, torch.device]] = None,
    image_pretrained: Optional[Union[str, Path]] = None,
    text_pretrained: Optional[Union[str, Path]] = None,
    **overrides: Any,
) -> CLIP:
    """Build a named model and optionally load weights.

    pretrained: a whole model: a checkpoint directory of `climp train` (its config.json wins over
        the named config, so a model trained with overrides comes back as trained), a weights file,
        or an open_clip checkpoint for the ViT/Transformer baselines.
    image_pretrained: a VMamba ImageNet checkpoint or an open_clip checkpoint for the image tower.
    text_pretrained: a Mamba / Mamba-2 language model directory (transformers or mamba_ssm layout);
        the text tower takes the checkpoint's shapes, and a tokenizer.json beside the weights
        becomes the model's tokenizer (its pad token is the tower's pad id).
    """
    cfg = get_model_config(name)
    if pretrained is not None:
        sidecar = Path(pretrained) / CONFIG_SIDECAR
        if Path(pretrained).is_dir() and sidecar.is_file():
            cfg = json.loads(sidecar.read_text()).get("model_cfg", cfg)
    cfg = merge_overrides(cfg, overrides)
    if text_pretrained is not None and cfg["text_cfg"].get("type") in ("mamba", "mamba2"):
        cfg["text_cfg"] = language_model_text_cfg(text_pretrained, cfg["text_cfg"])
        if (Path(text_pretrained) / "tokenizer.json").is_file():
            cfg["tokenizer"] = str(Path(text_pretrained).resolve())
            cfg["text_cfg"]["pad_id"] = HFTokenizer(cfg["tokenizer"]).pad_id
    model = model_from_config(cfg)
    model.model_name = str(name)
    if pretrained is not None:
        state = read_state_dict(pretrained)
        if looks_like_open_clip(state):
            state = open_clip_to_climp_state_dict(state)
        load_state_dict_strict(model, state, source=str(pretrained))
    if image_pretrained is not None:
        load_image_tower_pretrained(model.visual, image_pretrained)
    if text_pretrained is not None:
        load_text_tower_pretrained(model.text, text_pretrained)
    if device is not None:
        model.to(device)
    return model


def image_size_of(model: CLIP) -> Tuple[int, int]:
    """The nominal training resolution of a model's image tower."""
    size = model.config["vision_cfg"].get("image_size", 224)
    return (size, size) if isinstance(size, int) else tuple(size)


def create_model_and_transforms(
    name: Union[str, Path],
    pretrained: Optional[Union[str, Path]] = None,
    image_size: Optional[Union[int, Tuple[int, int]]] = None,
    **kwargs: Any,
):
    """(model, preprocess_train, preprocess_val); image_size overrides the nominal resolution."""
    model = create_model(name, pretrained=pretrained, **kwargs)
    size = image_size or image_size_of(model)
    return model, image_transform(size, is_train=True), image_transform(size, is_train=False)


def get_tokenizer(name: Union[str, Path, CLIP]) -> Union[ClipBpeTokenizer, HFTokenizer]:
    """The tokenizer of a named model, a checkpoint directory or a built model.

    open_clip's BPE padded to the longest caption, truncated at the context length only for
    Transformer text towers (Mamba towers read any length); a model started from a language
    model's weights uses that model's tokenizer.json.
    """
    if isinstance(name, CLIP):
        cfg = name.config
    elif Path(name, CONFIG_SIDECAR).is_file():
        cfg = json.loads(Path(name, CONFIG_SIDECAR).read_text())["model_cfg"]
    else:
        cfg = get_model_config(name)
    text_cfg = cfg["text_cfg"]
    max_length = text_cfg.get("context_length", 77) if text_cfg.get("type") == "transformer" else None
    normalize = bool(cfg.get("normalize_captions", False))
    if cfg.get("tokenizer"):
        return HFTokenizer(cfg["tokenizer"], max_length=max_length, normalize=normalize)
    return ClipBpeTokenizer(max_length=max_length, normalize=normalize)


def load_checkpoint(path: Union[str, Path], device: Optional[Union[str, torch.device]] = None) -> CLIP:
    """A model from a checkpoint directory written by `climp train` (config.json + weights)."""
    sidecar = Path(path) / CONFIG_SIDECAR
    if not sidecar.is_file():
        raise FileNotFoundError(f"{path} is not a CLIMP checkpoint directory (no {CONFIG_SIDECAR})")
    meta = json.loads(sidecar.read_text())
    if "model_cfg" not in meta:
        raise ValueError(f"{sidecar} has no 'model_cfg' entry")
    model = model_from_config(meta["model_cfg"])
    model.model_name = meta.get("model_name", str(path))
    load_state_dict_strict(model, read_state_dict(path), source=str(path))
    if device is not None:
        model.to(device)
    return model
