"""The one entry point for the selective scan; picks a backend and checks shapes."""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch

from .reference import selective_scan_reference

ScanFn = Callable[..., torch.Tensor]

BACKENDS: Dict[str, ScanFn] = {"reference": selective_scan_reference}


def check_scan_inputs(u, delta, A, B, C, D, z, delta_bias) -> None:
    """Raise a ValueError that names the offending argument when shapes disagree."""
    if u.dim() != 3:
        raise ValueError(f"u must be (batch, dim, length), got shape {tuple(u.shape)}")
    batch, dim, length = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must be (dim={dim}, state), got {tuple(A.shape)}")
    state = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.dim() == 3:
            ok = t.shape == (batch, state, length)
        elif t.dim() == 4:
            ok = t.shape[0] == batch and t.shape[2:] == (state, length) and dim % t.shape[1] == 0
        else:
            ok = False
        if not ok:
            raise ValueError(
                f"{name} must be (batch={batch}, state={state}, length={length}) or "
                f"(batch, groups dividing {dim}, state, length), got {tuple(t.shape)}"
            )
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.shape != (dim,):
            raise ValueError(f"{name} must be (dim={dim},), got {tuple(t.shape)}")


def resolve_backend(backend: str, u: torch.Tensor) -> str:
    """Map "auto" to the fastest backend registered for u's device."""
    if backend != "auto":
        if backend not in BACKENDS:
            raise ValueError(f"unknown selective-scan backend {backend!r}; available: {sorted(BACKENDS)}")
        return backend
    return "reference"


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """Selective scan with mamba_ssm's semantics and shapes.

    u, delta, z: (batch, dim, length); A: (dim, state); B, C: (batch, state, length) or grouped
    (batch, groups, state, length); D, delta_bias: (dim,). Returns (batch, dim, length) in u's dtype.
    """
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    fn = BACKENDS[resolve_backend(backend, u)]
    return fn(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus)
