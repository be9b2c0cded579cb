"""The `chunked` backend: a device-agnostic selective scan in plain PyTorch ops.

The sequence is cut into chunks. Inside a chunk every step's state is found at once with a
doubling (Hillis-Steele) scan over the pairs (decay, input): log2(chunk) rounds of
elementwise products on (batch, dim, chunk, state) tensors; the state at the end of each
chunk is carried into the next. Products of decays never overflow, unlike the closed form
exp(cumsum(dt A)) * cumsum(exp(-cumsum(dt A)) x), which overflows float32 inside a chunk
when decays are strong. Every op is differentiable by autograd any number of times, which
makes this the twice-differentiable fast path (Hessian code) and the fallback on devices or
machines without the compiled kernels.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .reference import prepare_delta

DEFAULT_CHUNK = 32


def _scan_chunk(decay: torch.Tensor, x: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """States h_t = decay_t h_{t-1} + x_t for one chunk (time on dim -2), starting from h0."""
    length = decay.shape[-2]
    shift = 1
    while shift < length:
        x = x + decay * F.pad(x[..., :-shift, :], (0, 0, shift, 0))
        decay = decay * F.pad(decay[..., :-shift, :], (0, 0, shift, 0), value=1.0)
        shift *= 2
    return decay * h0.unsqueeze(-2) + x


def selective_scan_chunked(
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
    chunk_size: int = DEFAULT_CHUNK,
):
    """Selective scan by chunked parallel scans (same contract as selective_scan_reference)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
    batch, dim, length = u.shape
    state = A.shape[1]
    Bg = B.unsqueeze(1) if B.dim() == 3 else B
    Cg = C.unsqueeze(1) if C.dim() == 3 else C
    groups = Bg.shape[1]
    per_group = dim // groups
    # Channels split as (groups, per_group) so B and C broadcast over a group without copies.
    u_c = u.to(dtype).reshape(batch, groups, per_group, length)
    dt = prepare_delta(delta, delta_bias, delta_softplus).reshape(batch, groups, per_group, length)
    A_c = A.to(dtype).reshape(groups, per_group, 1, state)
    Bt = Bg.to(dtype).transpose(-1, -2).unsqueeze(2)  # (batch, groups, 1, length, state)
    Ct = Cg.to(dtype).transpose(-1, -2).unsqueeze(2)
    dtu = dt * u_c
    h = u_c.new_zeros(batch, groups, per_group, state)
    outputs = []
    for start in range(0, length, chunk_size):
        stop = min(start + chunk_size, length)
        decay = torch.exp(dt[..., start:stop, None] * A_c)
        x = dtu[..., start:stop, None] * Bt[..., start:stop, :]
        states = _scan_chunk(decay, x, h)
        outputs.append((states * Ct[..., start:stop, :]).sum(-1))
        h = states[..., -1, :]
    y = torch.cat(outputs, dim=-1).reshape(batch, dim, length)
    if D is not None:
        y = y + u_c.reshape(batch, dim, length) * D.to(dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(dtype))
    if return_last_state:
        return y.to(u.dtype), h.reshape(batch, dim, state)
    return y.to(u.dtype)
