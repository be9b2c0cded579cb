"""Atomic, resumable checkpoints.

A checkpoint is a directory `<root>/step_<N>/` holding
  model.safetensors      the model weights
  ema.safetensors        the EMA weights (when EMA is on)
  config.json            model name and config, training arguments, step
  training_state.pt      optimizer, scheduler, grad scaler, EMA counter, RNG states of every
                         rank (python, numpy, torch CPU, CUDA) and the data position
The directory is written under a temporary name in `<root>` and renamed when complete; only
then is the `<root>/latest` pointer file replaced (temp file + os.replace), so a crash at any
moment leaves either the previous or the new checkpoint, never a half-written one.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "training_state.pt"
LATEST_FILE = "latest"
FORMAT = "climp-checkpoint-v1"


class CheckpointMismatchError(ValueError):
    """Weights do not fit the model: lists missing, unexpected and mis-shaped keys."""


@dataclass
class LoadedCheckpoint:
    """What `read_checkpoint` returns: weights, optional EMA weights and the JSON sidecar."""

    directory: Path
    weights: Dict[str, torch.Tensor]
    ema_weights: Optional[Dict[str, torch.Tensor]]
    config: Dict[str, Any]


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}"


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _detached_copy(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    # safetensors refuses shared or non-contiguous storage; a CPU clone has neither.
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def write_model_files(directory: Union[str, Path], model_state: Mapping[str, torch.Tensor], sidecar: Mapping[str, Any],
                      ema_state: Optional[Mapping[str, torch.Tensor]] = None) -> None:
    """Write the weights (safetensors) and the JSON sidecar of a model into `directory`: the
    layout `create_model(name, pretrained=directory)` and `load_checkpoint` read."""
    directory = Path(directory)
    save_file(_detached_copy(model_state), str(directory / MODEL_FILE), metadata={"format": FORMAT})
    if ema_state is not None:
        save_file(_detached_copy(ema_state), str(directory / EMA_FILE), metadata={"format": FORMAT})
    config = {"format": FORMAT, **sidecar}
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True, default=str))


def save_checkpoint(
    root: Union[str, Path],
    step: int,
    model_state: Mapping[str, torch.Tensor],
    sidecar: Mapping[str, Any],
    training_state: Mapping[str, Any],
    ema_state: Optional[Mapping[str, torch.Tensor]] = None,
) -> Path:
    """Write checkpoint `step` under `root` atomically and point `root/latest` at it."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{final.name}."))
    try:
        write_model_files(staging, model_state, {"step": step, **sidecar}, ema_state)
        torch.save(dict(training_state), staging / STATE_FILE)
        if final.exists():
            retired = Path(tempfile.mkdtemp(dir=root, prefix=f".{final.name}.old."))
            os.replace(final, retired / final.name)
            os.replace(staging, final)
            shutil.rmtree(retired)
        else:
            os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _atomic_write_text(root / LATEST_FILE, final.name + "\n")
    return final


def resolve_checkpoint(spec: Union[str, Path], root: Union[str, Path, None] = None) -> Path:
    """The checkpoint directory for `spec`: 'latest' (via `root/latest`), a directory or a file in one."""
    if str(spec) == "latest":
        if root is None:
            raise ValueError("'latest' needs a checkpoint root directory")
        pointer = Path(root) / LATEST_FILE
        if not pointer.is_file():
            raise FileNotFoundError(f"no checkpoint to resume: {pointer} does not exist")
        directory = Path(root) / pointer.read_text().strip()
    else:
        directory = Path(spec)
        if directory.is_file():
            directory = directory.parent
    if not (directory / MODEL_FILE).is_file():
        raise FileNotFoundError(f"{directory} is not a CLIMP checkpoint (no {MODEL_FILE})")
    return directory


def _read_weights(path: Path) -> Dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"corrupt checkpoint weights {path}: {err}") from err


def read_checkpoint(path: Union[str, Path]) -> LoadedCheckpoint:
    """Read weights, EMA weights and sidecar of a checkpoint directory (or a file in it)."""
    directory = resolve_checkpoint(path)
    config_path = directory / CONFIG_FILE
    try:
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    except json.JSONDecodeError as err:
        raise ValueError(f"corrupt checkpoint config {config_path}: {err}") from err
    ema_path = directory / EMA_FILE
    return LoadedCheckpoint(
        directory=directory,
        weights=_read_weights(directory / MODEL_FILE),
        ema_weights=_read_weights(ema_path) if ema_path.is_file() else None,
        config=config,
    )


def load_weights_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load `state` into `module`; on any key or shape mismatch raise listing all of them."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mis_shaped = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state) if state[k].shape != expected[k].shape
    )
    if missing or unexpected or mis_shaped:
        raise CheckpointMismatchError(
            f"{source} does not match the model: missing keys {missing}; "
            f"unexpected keys {unexpected}; shape mismatches {mis_shaped}"
        )
    module.load_state_dict(state, strict=True)


def read_training_state(directory: Union[str, Path]) -> Dict[str, Any]:
    """The optimizer/scheduler/RNG/data-position dict saved next to the weights."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {directory} has no {STATE_FILE}; cannot resume from it")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"corrupt training state {path}: {err}") from err


def capture_rng_state() -> Dict[str, Any]:
    """This process's python, numpy, torch CPU and CUDA RNG states (torch.load-safe types)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of `capture_rng_state`."""
    python_state = state["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
