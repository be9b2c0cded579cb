"""Mamba-2's state-space-dual (SSD) scan, chunked, in plain torch matrix multiplies.

Written as masked quadratic forms within chunks and one state hand-off between chunks, as in the
Mamba-2 paper, so it runs fast on the CPU and is differentiable any number of times.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F


def _decay(a_cum: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Causal decay matrix from running sums (..., T) in float64: (..., T, T) holding
    exp(a_cum[t] - a_cum[s]) = exp(a[s+1] + ... + a[t]) for s <= t and 0 above the diagonal.

    Differencing float64 running sums keeps each segment sum exact to `dtype` precision even when
    the running sum is large, at lower cost than a masked cumulative sum per segment.
    """
    T = a_cum.shape[-1]
    upper = torch.ones(T, T, dtype=torch.bool, device=a_cum.device).triu(1)
    segment_sums = (a_cum.unsqueeze(-1) - a_cum.unsqueeze(-2)).to(dtype)
    return torch.exp(segment_sums.masked_fill(upper, -math.inf))


def ssd_chunk_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    chunk_size: int = 256,
) -> torch.Tensor:
    """Mamba-2 SSD scan, chunked: returns y (batch, length, heads, headdim).

    Computes h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T and y_t = h_t C_t + D x_t per head, with
    x (batch, length, heads, headdim), dt (batch, length, heads) (already softplus'ed), A (heads)
    (negative), B and C (batch, length, groups, state) shared by heads//groups consecutive heads,
    and D (heads). Within each chunk the output is a masked quadratic form (like causal attention
    with decay weights); chunk states are passed on with one matrix multiply over chunks.
    Computes in float32 at least (float64 stays float64) and returns that dtype.
    """
    batch, length, nheads, headdim = x.shape
    ngroups, dstate = B.shape[2], B.shape[3]
    if dt.shape != (batch, length, nheads) or A.shape != (nheads,):
        raise ValueError(f"dt must be {(batch, length, nheads)} and A ({nheads},), "
                         f"got {tuple(dt.shape)} and {tuple(A.shape)}")
    if B.shape != (batch, length, ngroups, dstate) or C.shape != B.shape:
        raise ValueError(f"B and C must both be (batch, length, groups, state), got {tuple(B.shape)}, {tuple(C.shape)}")
    if nheads % ngroups:
        raise ValueError(f"heads ({nheads}) must be a multiple of groups ({ngroups})")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    dtype = torch.promote_types(x.dtype, torch.float32)
    x, dt, A, B, C = (t.to(dtype) for t in (x, dt, A, B, C))

    T = min(chunk_size, length)
    pad = -length % T
    nchunks = (length + pad) // T
    per_group = nheads // ngroups

    def chunked(t: torch.Tensor) -> torch.Tensor:  # (b, L, ...) -> (b, c, T, ...), zero padded
        t = F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad))
        return t.reshape(batch, nchunks, T, *t.shape[2:])

    # Heads are split as (groups, heads per group) so B and C are never repeated per head.
    xdt = chunked((x * dt.unsqueeze(-1)).reshape(batch, length, ngroups, per_group, headdim))  # b c t g r p
    a = chunked(dt * A).reshape(batch, nchunks, T, ngroups, per_group).permute(0, 1, 3, 4, 2)  # b c g r t
    Bc, Cc = chunked(B), chunked(C)  # b c t g n
    a_cum = a.double().cumsum(dim=-1)  # float64 so that differences of running sums stay exact

    # 1. within a chunk: y_t = sum_{s<=t} (C_t . B_s) exp(a_{s+1..t}) dt_s x_s
    scores = torch.einsum("bctgn,bcsgn->bcgts", Cc, Bc).unsqueeze(3) * _decay(a_cum, dtype)  # b c g r t s
    y = torch.einsum("bcgrts,bcsgrp->bctgrp", scores, xdt)

    if nchunks > 1:  # the state of the last chunk is not needed: no final state is returned
        # 2. state each chunk leaves behind when started from zero: sum_s exp(a_{s+1..T}) dt_s x_s B_s^T
        but_last = slice(None, -1)
        to_end = torch.exp((a_cum[:, but_last, ..., -1:] - a_cum[:, but_last]).to(dtype)).permute(0, 1, 4, 2, 3)
        chunk_states = torch.einsum("bcsgn,bcsgrp->bcgrpn", Bc[:, but_last], xdt[:, but_last] * to_end.unsqueeze(-1))

        # 3. state at the end of chunk i (start of chunk i + 1): decayed sum over chunks y <= i
        ends = a_cum[:, but_last, ..., -1].permute(0, 2, 3, 1).cumsum(dim=-1)  # b g r c-1
        start_states = torch.einsum("bgriy,bygrpn->bigrpn", _decay(ends, dtype), chunk_states)

        # 4. contribution of the start state to chunks 1..c-1: y_t += exp(a_{1..t}) C_t . h_start
        from_start = torch.exp(a_cum[:, 1:].to(dtype)).permute(0, 1, 4, 2, 3).unsqueeze(-1)  # b c t g r 1
        y_carried = torch.einsum("bctgn,bcgrpn->bctgrp", Cc[:, 1:], start_states) * from_start
        y = y + F.pad(y_carried, (0, 0) * 4 + (1, 0))  # chunk 0 starts from the zero state

    y = y.reshape(batch, nchunks * T, nheads, headdim)[:, :length]
    if D is not None:
        y = y + x * D.to(dtype)[:, None]
    return y
