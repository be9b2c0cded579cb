"""Mixed precision: autocast contexts and the fp16 gradient scaler."""
from __future__ import annotations

import contextlib
from typing import ContextManager, Optional

import torch

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device) -> None:
    """Raise ValueError for unknown precisions and for fp16 off the GPU."""
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision {precision!r} is not one of fp32, bf16, fp16")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision fp16 needs a CUDA device (it relies on a GradScaler); "
                         "use bf16 or fp32 on the CPU")


def autocast(precision: str, device: torch.device) -> ContextManager:
    """torch.autocast for bf16/fp16 on `device`, a no-op context for fp32."""
    check_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> Optional[torch.amp.GradScaler]:
    """A GradScaler for fp16 (dynamic loss scaling), None otherwise."""
    check_precision(precision, device)
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None
