"""Named model configs (JSON files in configs/), the model factory and checkpoint loading."""
from __future__ import annotations

import copy
import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch

from ..tokenizer import ClipBpeTokenizer, HFTokenizer, check_tokenizer_cfg, tokenizer_from_config
from ..transforms import check_preprocess_cfg, transform_from_config
from .checkpoint_files import CONFIG_FILE, read_sidecar, resolve_checkpoint_path
from .clip import CLIP
from .pretrained import (
    language_model_text_cfg,
    load_image_tower_pretrained,
    load_text_tower_pretrained,
    looks_like_open_clip,
    open_clip_to_climp_state_dict,
)
from .released import read_released, to_climp_state_dict
from .weights import load_state_dict_strict, read_state_dict

CONFIG_DIR = Path(__file__).parent / "configs"


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
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"model config {path} is not valid JSON: {err}") from err
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


def with_local_tokenizer(cfg: Dict[str, Any], directory: Union[str, Path]) -> Dict[str, Any]:
    """cfg with `tokenizer` set to `directory` when the model reads a language model's ids
    (tokenizer_cfg names `hf_name`), cfg names no tokenizer and the directory holds tokenizer.json."""
    needs_one = bool(cfg.get("tokenizer_cfg", {}).get("hf_name"))
    if needs_one and "tokenizer" not in cfg and (Path(directory) / "tokenizer.json").is_file():
        cfg = {**cfg, "tokenizer": str(Path(directory).resolve())}
    return cfg


def model_from_config(cfg: Dict[str, Any]) -> CLIP:
    """Build a CLIP from a config dict (embed_dim, vision_cfg, text_cfg, optional logit inits,
    optional `tokenizer`: a directory or file holding a language model's tokenizer.json,
    optional `tokenizer_cfg`: how captions become ids (see climp.tokenizer.tokenizer_from_config),
    optional `preprocess_cfg`: mean, std, resize_mode, interpolation of the image transform)."""
    data_keys = {"tokenizer", "tokenizer_cfg", "preprocess_cfg"}
    known = {"embed_dim", "vision_cfg", "text_cfg", "init_logit_scale", "init_logit_bias"} | data_keys
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"unknown model config keys {unknown}; known: {sorted(known)}")
    check_preprocess_cfg(cfg.get("preprocess_cfg", {}))
    check_tokenizer_cfg(cfg.get("tokenizer_cfg", {}))
    model = CLIP(**{k: v for k, v in cfg.items() if k not in data_keys})
    model.config = copy.deepcopy(cfg)
    return model


def create_model(
    name: Union[str, Path],
    pretrained: Optional[Union[str, Path]] = None,
    device: Optional[Union[str, torch.device]] = None,
    image_pretrained: Optional[Union[str, Path]] = None,
    text_pretrained: Optional[Union[str, Path]] = None,
    pretrained_weights: Optional[str] = None,
    **overrides: Any,
) -> CLIP:
    """Build a named model and optionally load weights.

    pretrained: a whole model: a checkpoint of `climp train` (a step directory, the run directory,
        its `checkpoints/` directory or `checkpoints/latest`; its config.json wins over the named
        config, so a model trained with overrides comes back as trained), a weights file, an
        open_clip checkpoint for the ViT/Transformer baselines, or a released CLIMP
        (model.safetensors) or CLIP-Mamba (checkpoint.pt) file as published, recognised by its keys.
        For models that read a language model's ids, a tokenizer.json beside it is their tokenizer.
    pretrained_weights: for CLIP-Mamba files, "ema" (default: the weights the paper evaluates) or
        "online".
    image_pretrained: a VMamba ImageNet checkpoint or an open_clip checkpoint for the image tower.
    text_pretrained: a Mamba / Mamba-2 language model directory (transformers or mamba_ssm layout);
        the text tower takes the checkpoint's shapes, and a tokenizer.json beside the weights
        becomes the model's tokenizer (its pad token is the tower's pad id).
    """
    cfg = get_model_config(name)
    if pretrained is not None:
        pretrained = resolve_checkpoint_path(pretrained)
        if pretrained.is_dir() and (pretrained / CONFIG_FILE).is_file():
            cfg = read_sidecar(pretrained).get("model_cfg", cfg)
    cfg = merge_overrides(cfg, overrides)
    if pretrained is not None:
        cfg = with_local_tokenizer(cfg, pretrained)
    if text_pretrained is not None and cfg["text_cfg"].get("type") in ("mamba", "mamba2"):
        cfg["text_cfg"] = language_model_text_cfg(text_pretrained, cfg["text_cfg"])
        if (Path(text_pretrained) / "tokenizer.json").is_file():
            cfg["tokenizer"] = str(Path(text_pretrained).resolve())
            cfg["text_cfg"]["pad_id"] = HFTokenizer(cfg["tokenizer"]).pad_id
    model = model_from_config(cfg)
    model.model_name = str(name)
    if pretrained is not None:
        state, fmt, _ = read_released(pretrained)
        if fmt is None and looks_like_open_clip(state):
            state = open_clip_to_climp_state_dict(state)
        state = to_climp_state_dict(state, fmt, cfg["vision_cfg"].get("type"), pretrained_weights)
        load_state_dict_strict(model, state, source=f"{pretrained} ({fmt or 'climp/open_clip'} layout)")
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
    """(model, preprocess_train, preprocess_val) with the model's preprocess_cfg; image_size
    overrides the nominal resolution."""
    model = create_model(name, pretrained=pretrained, **kwargs)
    size = image_size or image_size_of(model)
    preprocess_cfg = model.config.get("preprocess_cfg")
    return (model, transform_from_config(size, True, preprocess_cfg),
            transform_from_config(size, False, preprocess_cfg))


def get_tokenizer(name: Union[str, Path, CLIP]) -> Union[ClipBpeTokenizer, HFTokenizer]:
    """The tokenizer of a named model, a checkpoint directory or a built model.

    open_clip's BPE padded to the longest caption, truncated at the context length only for
    Transformer text towers (Mamba towers read any length); a model started from a language
    model's weights uses that model's tokenizer.json. The config's tokenizer_cfg sets whether an
    end token is appended and how captions are truncated.
    """
    if isinstance(name, CLIP):
        cfg = name.config
    elif str(name) not in _registry() and (directory := _checkpoint_directory(name)) is not None:
        cfg = with_local_tokenizer(_sidecar_model_cfg(read_sidecar(directory), directory), directory)
    else:
        cfg = get_model_config(name)
    text_cfg = cfg["text_cfg"]
    max_length = text_cfg.get("context_length", 77) if text_cfg.get("type") == "transformer" else None
    return tokenizer_from_config(cfg.get("tokenizer_cfg", {}), cfg.get("tokenizer") or None, max_length)


def _checkpoint_directory(path: Union[str, Path]) -> Optional[Path]:
    """The `climp train` checkpoint directory `path` stands for, or None if it names none."""
    if not Path(path).exists() and Path(path).name != "latest":
        return None
    directory = resolve_checkpoint_path(path)
    return directory if directory.is_dir() and (directory / CONFIG_FILE).is_file() else None


def _sidecar_model_cfg(sidecar: Dict[str, Any], directory: Path) -> Dict[str, Any]:
    if "model_cfg" not in sidecar:
        raise ValueError(f"{directory / CONFIG_FILE} has no 'model_cfg' entry")
    return sidecar["model_cfg"]


def load_checkpoint(path: Union[str, Path], device: Optional[Union[str, torch.device]] = None) -> CLIP:
    """A model from a checkpoint of `climp train`: a step directory (config.json + weights), the
    run directory, its `checkpoints/` directory or `checkpoints/latest`."""
    directory = _checkpoint_directory(path)
    if directory is None:
        raise FileNotFoundError(f"{path} is not a CLIMP checkpoint (no {CONFIG_FILE} next to the weights)")
    sidecar = read_sidecar(directory)
    model = model_from_config(with_local_tokenizer(_sidecar_model_cfg(sidecar, directory), directory))
    model.model_name = sidecar.get("model_name", str(directory))
    load_state_dict_strict(model, read_state_dict(directory), source=str(directory))
    if device is not None:
        model.to(device)
    return model
