"""Where a `climp train` checkpoint lives on disk, writing its model files, and reading its
config sidecar safely.

A run writes `<run>/checkpoints/step_<N>/` directories (weights, `config.json` sidecar, training
state) and a `<run>/checkpoints/latest` pointer file naming the newest one. Every place that
takes a checkpoint (`pretrained=`, `--checkpoint`, `--resume`) resolves it with
`resolve_checkpoint_path`, so a run directory, its `checkpoints/` directory, the `latest`
pointer and a step directory all work alike.

The sidecar is bound to its weights: the weights file's safetensors metadata holds a SHA-256 of
the sidecar's JSON content, so a hand-edited sidecar (which would silently change the model that
is rebuilt from it) is reported instead of used.
"""
from __future__ import annotations

import hashlib
import json
import re
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import torch
from safetensors.torch import save_file

PathLike = Union[str, Path]

MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "training_state.pt"
LATEST_FILE = "latest"
CHECKPOINTS_DIR = "checkpoints"
SIDECAR_HASH_KEY = "config_sha256"
FORMAT = "climp-checkpoint-v1"
STEP_DIR = re.compile(r"step_(\d+)")


class CheckpointWarning(UserWarning):
    """A checkpoint was not where its pointer said, or was unreadable, and another one is used."""


def step_of(directory: PathLike) -> Optional[int]:
    """The step number of a `step_<N>` directory name, else None."""
    match = STEP_DIR.fullmatch(Path(directory).name)
    return int(match.group(1)) if match else None


def is_complete(directory: PathLike) -> bool:
    """True for a directory holding weights and sidecar (what a finished save leaves)."""
    directory = Path(directory)
    return (directory / MODEL_FILE).is_file() and (directory / CONFIG_FILE).is_file()


def step_directories(root: PathLike) -> List[Path]:
    """The complete `step_<N>` directories under `root`, newest step first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if step_of(p) is not None and p.is_dir() and is_complete(p)]
    return sorted(found, key=lambda p: step_of(p), reverse=True)


def pointer_target(root: PathLike) -> Optional[Path]:
    """The directory `root/latest` names (it may not exist), or None without a pointer file."""
    pointer = Path(root) / LATEST_FILE
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    return Path(root) / name if name else None


def latest_checkpoint(root: PathLike) -> Path:
    """The checkpoint `root/latest` names; if it is missing or incomplete, the newest complete
    `step_<N>` directory, with a CheckpointWarning saying so."""
    root = Path(root)
    target = pointer_target(root)
    if target is not None and target.is_dir() and is_complete(target):
        return target
    candidates = step_directories(root)
    if not candidates:
        if target is None:
            raise FileNotFoundError(f"no checkpoint found: {root} holds no {LATEST_FILE} pointer "
                                    "and no complete checkpoint")
        raise FileNotFoundError(f"no checkpoint found: {root / LATEST_FILE} names {target.name}, "
                                f"which is missing or incomplete, and {root} holds no other checkpoint")
    problem = (f"{root / LATEST_FILE} names {target.name}, which is missing or incomplete"
               if target is not None else f"{root} has no {LATEST_FILE} pointer")
    warnings.warn(f"{problem}; using the newest complete checkpoint {candidates[0]}", CheckpointWarning)
    return candidates[0]


def checkpoint_root_of(path: PathLike) -> Optional[Path]:
    """The directory of step checkpoints that `path` stands for: a run directory (its
    `checkpoints/`), a `checkpoints/` directory, or its `latest` pointer; None otherwise."""
    path = Path(path)
    if path.name == LATEST_FILE and not path.is_dir():
        return path.parent if path.parent.is_dir() else None
    if not path.is_dir() or (path / MODEL_FILE).is_file():
        return None
    if (path / LATEST_FILE).is_file() or step_directories(path):
        return path
    if (path / CHECKPOINTS_DIR).is_dir():
        return path / CHECKPOINTS_DIR
    return None


def resolve_checkpoint_path(path: PathLike) -> Path:
    """The checkpoint a user means by `path`: a run directory, its `checkpoints/` directory or
    `checkpoints/latest` give the run's latest checkpoint; a step directory is itself. Any other
    existing file or directory (a weights file, a language-model directory) is returned as is."""
    root = checkpoint_root_of(path)
    if root is not None:
        return latest_checkpoint(root)
    if not Path(path).exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return Path(path)


def sidecar_digest(sidecar: Mapping[str, Any]) -> str:
    """SHA-256 of a sidecar's JSON content (key order and whitespace do not matter)."""
    canonical = json.dumps(sidecar, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def weights_metadata(file: PathLike) -> Dict[str, str]:
    """The string metadata of a safetensors file (its header only; tensors are not read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception as err:  # safetensors raises several types for damaged headers
        raise ValueError(f"corrupt checkpoint weights {file}: {err}") from err


def read_sidecar(directory: PathLike) -> Dict[str, Any]:
    """The `config.json` of checkpoint `directory`, checked against the hash stored with its
    weights; errors name the file (invalid JSON, edited after saving, missing tokenizer)."""
    directory = Path(directory)
    file = directory / CONFIG_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{directory} is not a CLIMP checkpoint directory (no {CONFIG_FILE})")
    try:
        sidecar = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"checkpoint config {file} is not valid JSON: {err}") from err
    if not isinstance(sidecar, dict):
        raise ValueError(f"checkpoint config {file} must hold a JSON object")
    weights = directory / MODEL_FILE
    if weights.is_file():
        expected = weights_metadata(weights).get(SIDECAR_HASH_KEY)
        if expected is not None and expected != sidecar_digest(sidecar):
            raise ValueError(
                f"checkpoint config {file} was changed after the checkpoint was written (it no longer "
                f"matches the hash stored in {weights.name}); the model rebuilt from it would differ "
                "from the one trained. Restore the original config.json.")
    tokenizer = (sidecar.get("model_cfg") or {}).get("tokenizer")
    if tokenizer and not Path(tokenizer).exists():
        raise FileNotFoundError(f"tokenizer path {tokenizer} named in checkpoint config {file} does not exist")
    return sidecar


def _detached_copy(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    # safetensors refuses shared or non-contiguous storage; a CPU clone has neither.
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def write_model_files(directory: Union[str, Path], model_state: Mapping[str, torch.Tensor], sidecar: Mapping[str, Any],
                      ema_state: Optional[Mapping[str, torch.Tensor]] = None) -> None:
    """Write the weights (safetensors, bound to the sidecar by its hash) and the JSON sidecar of a
    model into `directory`: the layout `create_model(name, pretrained=directory)` and
    `load_checkpoint` read."""
    directory = Path(directory)
    text = json.dumps({"format": FORMAT, **sidecar}, indent=2, sort_keys=True, default=str)
    metadata = {"format": FORMAT, SIDECAR_HASH_KEY: sidecar_digest(json.loads(text))}
    save_file(_detached_copy(model_state), str(directory / MODEL_FILE), metadata=metadata)
    if ema_state is not None:
        save_file(_detached_copy(ema_state), str(directory / EMA_FILE), metadata=metadata)
    (directory / CONFIG_FILE).write_text(text)
