"""Reading weight files and loading them strictly, with errors that say what does not match."""
from __future__ import annotations

import argparse
import pickle
import re
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Union

import torch
from torch import nn

from .checkpoint_files import resolve_checkpoint_path

PathLike = Union[str, Path]
WEIGHT_FILES = ("model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin",
                "checkpoint_best.pt", "checkpoint.pt")


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


# Classes a torch checkpoint may hold besides tensors and plain containers: training scripts
# (CLIP-Mamba's among them) save their argparse arguments next to the weights.
SAFE_PICKLE_GLOBALS = (argparse.Namespace,)


def load_torch_file(file: PathLike) -> Any:
    """A torch.save'd object read with weights_only=True: tensors, containers, numbers, strings
    and argparse.Namespace only. Any other pickled class or function is refused before it runs."""
    try:
        with torch.serialization.safe_globals(list(SAFE_PICKLE_GLOBALS)):
            return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)", str(err))
        named = f"it references {found.group(1)}" if found else str(err).splitlines()[0]
        raise ValueError(f"refusing to load {file}: it pickles something other than tensors, containers "
                         f"and argparse.Namespace, which could run code on loading ({named})") from err
    except Exception as err:  # pickle and zip readers raise many types for damaged files
        raise ValueError(f"could not read checkpoint {file}: it is corrupt or not a weights file ({err})") from err


def read_raw_checkpoint(path: PathLike) -> Any:
    """The object stored in a weights file: a .safetensors file's tensors, or a torch file's
    object (see load_torch_file), on the CPU."""
    file = resolve_weight_file(path)
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(file), device="cpu")
        except Exception as err:
            raise ValueError(f"could not read checkpoint {file}: it is corrupt or not a weights file ({err})") from err
    return load_torch_file(file)


def read_state_dict(path: PathLike) -> Dict[str, torch.Tensor]:
    """Tensors from a .safetensors file or a torch file (a bare state dict or one under
    "state_dict"/"model"), on the CPU, `module.` prefixes removed. Corrupt files raise ValueError
    naming the file."""
    file = resolve_weight_file(path)
    return state_dict_from_object(read_raw_checkpoint(file), file)


def state_dict_from_object(obj: Any, source: PathLike) -> Dict[str, torch.Tensor]:
    """The tensors of a loaded checkpoint object (a bare state dict or one under "state_dict" /
    "model"), with DDP's `module.` prefixes removed."""
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"checkpoint {source} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


class StateDictMismatchError(ValueError):
    """Weights do not fit the model: lists missing, unexpected and mis-shaped keys."""


def _listing(keys: Iterable[str], limit: int = 20) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_state_dict_strict(model: nn.Module, state_dict: Dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load every tensor or fail with the missing, unexpected and mis-shaped keys listed."""
    check_state_dict(model.state_dict(), state_dict, source)
    model.load_state_dict(state_dict, strict=True)


def check_state_dict(own: Mapping[str, torch.Tensor], state_dict: Mapping[str, torch.Tensor],
                     source: str = "checkpoint") -> None:
    """Raise StateDictMismatchError listing the missing, unexpected and mis-shaped keys of state_dict against
    a model's own state dict (which may live on the meta device: only names and shapes count)."""
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
        raise StateDictMismatchError("\n  ".join(parts))
