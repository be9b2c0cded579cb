"""Sequential selective scan: the ground truth every other backend is tested against.

Plain PyTorch ops in a loop over the sequence, so autograd can differentiate it any number of
times (the Hessian analysis relies on that). It is slow by design; speed lives in other backends.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def expand_groups(BC: torch.Tensor, dim: int) -> torch.Tensor:
    """Return B or C as (batch, dim, state, length): grouped (batch, groups, state, length)
    inputs give each block of dim // groups consecutive channels its group's values."""
    if BC.dim() == 3:
        return BC.unsqueeze(1).expand(-1, dim, -1, -1)
    groups = BC.shape[1]
    return BC.repeat_interleave(dim // groups, dim=1)


def prepare_delta(delta: torch.Tensor, delta_bias: Optional[torch.Tensor], delta_softplus: bool) -> torch.Tensor:
    """Add the per-channel bias and apply softplus, as mamba_ssm does before the recurrence."""
    compute = torch.float64 if delta.dtype == torch.float64 else torch.float32
    delta = delta.to(compute)
    if delta_bias is not None:
        delta = delta + delta_bias.to(compute)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    return delta


def selective_scan_reference(
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
    """h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t;  y_t = C_t . h_t + D u_t, gated by silu(z).

    Computes in float32 (float64 stays float64) and returns u's dtype, as mamba_ssm does; with
    return_last_state also h after the last step, (batch, dim, state) in the compute dtype.
    """
    dtype_in = u.dtype
    compute = torch.float64 if dtype_in == torch.float64 else torch.float32
    u_c = u.to(compute)
    delta_c = prepare_delta(delta, delta_bias, delta_softplus).to(compute)
    A_c = A.to(compute)
    dim, length = u.shape[1], u.shape[2]
    B_full = expand_groups(B.to(compute), dim)  # (batch, dim, state, length)
    C_full = expand_groups(C.to(compute), dim)
    h = u_c.new_zeros(u.shape[0], dim, A.shape[1])
    ys = []
    for t in range(length):
        decay = torch.exp(delta_c[:, :, t, None] * A_c)
        h = decay * h + (delta_c[:, :, t] * u_c[:, :, t])[:, :, None] * B_full[:, :, :, t]
        ys.append((h * C_full[:, :, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + u_c * D.to(compute)[:, None]
    if z is not None:
        y = y * F.silu(z.to(compute))
    return (y.to(dtype_in), h) if return_last_state else y.to(dtype_in)
