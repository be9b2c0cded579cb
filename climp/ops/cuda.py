"""The `cuda` backend: mamba_ssm's fused CUDA kernel, used when mamba_ssm is installed.

mamba_ssm takes grouped B/C as (batch, groups, state, length) natively ("variable B/C"), so
inputs pass through unchanged. Nothing here is needed to install or test climp.
"""
from __future__ import annotations

import importlib
import importlib.util
from functools import lru_cache
from typing import Callable, Optional

import torch


@lru_cache(maxsize=1)
def mamba_ssm_available() -> bool:
    """Whether mamba_ssm (and so its CUDA selective-scan kernel) can be imported."""
    return importlib.util.find_spec("mamba_ssm") is not None


def _mamba_selective_scan_fn() -> Callable[..., torch.Tensor]:
    if not mamba_ssm_available():
        raise ValueError("the 'cuda' selective-scan backend needs mamba_ssm (pip install mamba-ssm)")
    module = importlib.import_module("mamba_ssm.ops.selective_scan_interface")
    return module.selective_scan_fn


def selective_scan_cuda(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
):
    """Selective scan with mamba_ssm's CUDA kernel (same contract as selective_scan_reference)."""
    if not u.is_cuda:
        raise ValueError(f"the 'cuda' selective-scan backend needs CUDA tensors, got u on {u.device}")
    scan = _mamba_selective_scan_fn()
    # mamba_ssm's kernel requires float32 D and delta_bias.
    D = None if D is None else D.float()
    delta_bias = None if delta_bias is None else delta_bias.float()
    return scan(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
                return_last_state=return_last_state)
