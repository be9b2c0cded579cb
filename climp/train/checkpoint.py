"""Crash-safe, resumable checkpoints.

A checkpoint is a directory `<root>/step_<N>/` holding
  model.safetensors      the model weights (metadata: a hash binding config.json to them)
  ema.safetensors        the EMA weights (when EMA is on)
  config.json            model name and config, training arguments, step
  training_state.pt      optimizer, scheduler, grad scaler, EMA counter, RNG states of every
                         rank (python, numpy, torch CPU, CUDA), data position, samples seen
The files are written and synced under a hidden staging name, then renamed into place, and the
`<root>/latest` pointer is replaced atomically. Re-saving an existing step swaps the two
directories so that `latest` names a complete checkpoint at every instant (see `_install`).
`recover` finishes a swap a crash interrupted and deletes the leftovers of interrupted writes.
Directories and files are created with the user's umask.
"""
from __future__ import annotations

import io
import os
import random
import secrets
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from climp.models.checkpoint_files import (EMA_FILE, LATEST_FILE, MODEL_FILE, STATE_FILE, CheckpointWarning,
                                           checkpoint_root_of, is_complete, latest_checkpoint,
                                           pointer_target, read_sidecar, resolve_checkpoint_path,
                                           step_directories, step_of, write_model_files)

STAGING_PREFIX = ".staging-"
RETIRED_PREFIX = ".retired-"
# Hidden names that only interrupted writes leave behind (the last two from older versions).
LEFTOVER_PREFIXES = (STAGING_PREFIX, RETIRED_PREFIX, f".{LATEST_FILE}.", ".step_")


@dataclass
class LoadedCheckpoint:
    """What `read_checkpoint` returns: weights, optional EMA weights and the JSON sidecar."""

    directory: Path
    weights: Dict[str, torch.Tensor]
    ema_weights: Optional[Dict[str, torch.Tensor]]
    config: Dict[str, Any]


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    """Flush a file or directory to disk (directories: where the OS allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _point_latest(root: Path, name: str) -> None:
    """Atomically make `root/latest` name `name` (a new file replaces the old one)."""
    tmp = root / f".{LATEST_FILE}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(name + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, root / LATEST_FILE)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(root)


def _write_contents(directory: Path, step: int, model_state: Mapping[str, torch.Tensor],
                    sidecar: Mapping[str, Any], training_state: Mapping[str, Any],
                    ema_state: Optional[Mapping[str, torch.Tensor]]) -> None:
    write_model_files(directory, model_state, {"step": step, **sidecar}, ema_state)
    torch.save(dict(training_state), directory / STATE_FILE)
    mode = 0o666 & ~_umask()  # safetensors writes 0600 whatever the umask
    for file in directory.iterdir():
        os.chmod(file, mode)
        _fsync(file)
    _fsync(directory)


def _install(root: Path, staging: Path, final: Path) -> None:
    """Rename the complete checkpoint `staging` to `final`, replacing an existing `final`.

    When `final` exists, `latest` first names the new checkpoint under its staging name, then
    the old one under its retired name while `final` is briefly absent, then `final`: it names a
    complete checkpoint at every instant, and `recover` can finish the swap from any point.
    """
    if not final.exists():
        os.replace(staging, final)
        _fsync(root)
        _point_latest(root, final.name)
        return
    retired = root / (RETIRED_PREFIX + staging.name[len(STAGING_PREFIX):])
    _point_latest(root, staging.name)
    os.replace(final, retired)
    _point_latest(root, retired.name)
    os.replace(staging, final)
    _point_latest(root, final.name)
    shutil.rmtree(retired, ignore_errors=True)


def save_checkpoint(
    root: Union[str, Path],
    step: int,
    model_state: Mapping[str, torch.Tensor],
    sidecar: Mapping[str, Any],
    training_state: Mapping[str, Any],
    ema_state: Optional[Mapping[str, torch.Tensor]] = None,
) -> Path:
    """Write checkpoint `step` under `root` crash-safely and point `root/latest` at it."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    staging = root / f"{STAGING_PREFIX}{final.name}-{secrets.token_hex(4)}"
    staging.mkdir()  # not tempfile.mkdtemp: that makes it 0700 whatever the umask
    try:
        _write_contents(staging, step, model_state, sidecar, training_state, ema_state)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _install(root, staging, final)
    return final


def _swap_parts(name: str) -> Optional[tuple]:
    """(final name, token) of a staging or retired directory name, else None."""
    for prefix in (STAGING_PREFIX, RETIRED_PREFIX):
        if name.startswith(prefix):
            final, _, token = name[len(prefix):].rpartition("-")
            if step_of(final) is not None and token:
                return final, token
    return None


def recover(root: Union[str, Path]) -> List[str]:
    """Finish a re-save that a crash interrupted, then delete what interrupted writes left
    behind (staging directories, retired copies, pointer temp files). Returns what it did."""
    root = Path(root)
    if not root.is_dir():
        return []
    notes: List[str] = []
    target = pointer_target(root)
    parts = _swap_parts(target.name) if target is not None else None
    if parts is not None:
        final, token = root / parts[0], parts[1]
        staging = root / f"{STAGING_PREFIX}{final.name}-{token}"
        if staging.is_dir():  # the new copy was complete once `latest` named it
            _install(root, staging, final)
        elif not (final.is_dir() and is_complete(final)) and target.is_dir():
            os.replace(target, final)
        _point_latest(root, final.name)
        notes.append(f"finished the interrupted save of {final}")
    leftovers = [p for p in root.iterdir() if p.name.startswith(LEFTOVER_PREFIXES)]
    for path in leftovers:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    if leftovers:
        notes.append(f"removed {len(leftovers)} leftover(s) of interrupted checkpoint writes in {root}")
    return notes


def resume_candidates(spec: Union[str, Path], root: Union[str, Path, None] = None) -> List[Path]:
    """Checkpoints to try, in order, for `--resume spec`. 'latest' (of `root`), a run directory,
    its `checkpoints/` directory or pointer give the newest checkpoint, then every older one as
    fallbacks; a step directory (or a file in one) gives only itself."""
    if str(spec) == "latest" and root is None:
        raise ValueError("'latest' needs a checkpoint root directory")
    directory_root = Path(root) if str(spec) == "latest" else checkpoint_root_of(spec)
    if directory_root is None:
        directory = resolve_checkpoint_path(spec)
        if directory.is_file():
            directory = directory.parent
        if not (directory / MODEL_FILE).is_file():
            raise FileNotFoundError(f"{directory} is not a CLIMP checkpoint (no {MODEL_FILE})")
        return [directory]
    if not directory_root.is_dir():
        raise FileNotFoundError(f"no checkpoint to resume: {directory_root} does not exist")
    first = latest_checkpoint(directory_root)
    newest = step_of(first)
    older = [d for d in step_directories(directory_root)
             if d != first and (newest is None or step_of(d) < newest)]
    return [first] + older


def resolve_checkpoint(spec: Union[str, Path], root: Union[str, Path, None] = None) -> Path:
    """The checkpoint directory for `spec`: 'latest' (of `root`), a run, `checkpoints/` or step
    directory, the `latest` pointer, or a file in a step directory."""
    return resume_candidates(spec, root)[0]


def _read_weights(path: Path) -> Dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"corrupt checkpoint weights {path}: {err}") from err


def read_checkpoint(path: Union[str, Path]) -> LoadedCheckpoint:
    """Read weights, EMA weights and sidecar of a checkpoint (any form `resolve_checkpoint` takes)."""
    directory = resolve_checkpoint(path)
    ema_path = directory / EMA_FILE
    return LoadedCheckpoint(
        directory=directory,
        weights=_read_weights(directory / MODEL_FILE),
        ema_weights=_read_weights(ema_path) if ema_path.is_file() else None,
        config=read_sidecar(directory),
    )


@dataclass
class ResumePoint:
    """A checkpoint read for resuming: where it is, its weights and sidecar, its training state."""

    directory: Path
    loaded: LoadedCheckpoint
    state: Dict[str, Any]


def load_for_resume(spec: Union[str, Path], root: Union[str, Path]) -> ResumePoint:
    """The newest readable checkpoint among `resume_candidates(spec, root)`; an unreadable one
    is skipped with a CheckpointWarning naming it and the checkpoint used instead."""
    candidates = resume_candidates(spec, root)
    for directory, fallback in zip(candidates, candidates[1:]):
        try:
            return ResumePoint(directory, read_checkpoint(directory), read_training_state(directory))
        except (ValueError, OSError) as err:
            warnings.warn(f"cannot resume from {directory}: {err}; falling back to the previous "
                          f"checkpoint {fallback}", CheckpointWarning)
    last = candidates[-1]
    return ResumePoint(last, read_checkpoint(last), read_training_state(last))


def read_training_state(directory: Union[str, Path]) -> Dict[str, Any]:
    """The optimizer/scheduler/RNG/data-position dict saved next to the weights."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {directory} has no {STATE_FILE}; cannot resume from it")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch's message advises unsafe loading, which never applies here
        raise ValueError(f"corrupt training state {path}: not a readable training-state file "
                         f"(damaged, or holding objects beyond tensors and plain data; "
                         f"{type(err).__name__})") from err


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


def rng_state_bytes() -> bytes:
    """`capture_rng_state()` serialised, for gathering across ranks (all_gather_object cannot
    carry the tensors themselves: unpickling their storages fails)."""
    buffer = io.BytesIO()
    torch.save(capture_rng_state(), buffer)
    return buffer.getvalue()


def rng_state_from_bytes(data: bytes) -> Dict[str, Any]:
    return torch.load(io.BytesIO(data), weights_only=True)


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of `capture_rng_state`."""
    python_state = state["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
