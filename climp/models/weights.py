"""Reading weight files and loading them strictly, with errors that say what does not match."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable, Union

import torch
from torch import nn

from .checkpoint_files import resolve_checkpoint_path

PathLike = Union[str, Path]
WEIGHT_FILES = ("model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def resolve_weight_file(path: PathLike) -> Path:
    """A weights file, or the first known weights file inside a checkpoint directory (a run
    directory, `checkpoints/` or its `latest` pointer stand for the run's latest checkpoint)."""
    path = resolve_checkpoint_path(path)
    if path.is_dir():
        for name in WEIGHT_FILES:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"no weights file ({', '.join(WEIGHT_FILES)}) in checkpoint directory {path}")
    return path


def read_state_dict(path: PathLike) -> Dict[str, torch.Tensor]:
    """Tensors from a .safetensors file or a torch file (a bare state dict or one under
    "state_dict"/"model"), on the CPU. Corrupt files raise ValueError naming the file."""
    file = resolve_weight_file(path)
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(file), device="cpu")
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # safetensors and pickle raise many types for damaged files
        raise ValueError(f"could not read checkpoint {file}: it is corrupt or not a weights file ({err})") from err
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"checkpoint {file} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _listing(keys: Iterable[str], limit: int = 20) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_state_dict_strict(model: nn.Module, state_dict: Dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load every tensor or fail with the missing, unexpected and mis-shaped keys listed."""
    own = model.state_dict()
    missing = set(own) - set(state_dict)
    unexpected = set(state_dict) - set(own)
    mis_shaped = [
        f"{k}: {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state_dict)
        if own[k].shape != state_dict[k].shape
    ]
    if missing or unexpected or mis_shaped:
        parts = [f"state dict from {source} does not match the model:"]
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
        if mis_shaped:
            parts.append(f"shape mismatches ({len(mis_shaped)}): {_listing(mis_shaped)}")
        raise ValueError("\n  ".join(parts))
    model.load_state_dict(state_dict, strict=True)
