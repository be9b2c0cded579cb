"""Loss-landscape slices: the loss at theta + a d1 (+ b d2) on a grid of a (and b).

Directions are either top Hessian eigenvectors (unit norm over the selected parameters, so the
1D slice curves like theta^T H theta / 2 = lambda a^2 / 2 near 0) or filter-normalised random
directions (Li et al. 2018): a Gaussian direction whose every filter (row along the first axis
of a weight) is rescaled to the norm of the matching weight filter, so that a = 1 moves each
filter by its own size and slices of differently scaled networks are comparable.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch
from tqdm.auto import tqdm

from .params import restored, unflatten


def filter_normalized_direction(
    params: Sequence[torch.Tensor],
    generator: Optional[torch.Generator] = None,
    ignore_1d: bool = False,
) -> List[torch.Tensor]:
    """A random Gaussian direction, one tensor per parameter, filter-normalised.

    Parameters with >= 2 dims: each slice along dim 0 gets the norm of the same slice of the
    weight. Vectors and scalars (biases, norm gains, logit scale) count as one filter each, or
    get a zero direction with ignore_1d=True (Li et al.'s "ignore biasbn").
    """
    directions = []
    for p in params:
        d = torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p.device)
        w = p.detach().double()
        if p.dim() <= 1:
            if ignore_1d:
                d.zero_()
            else:
                d *= w.norm() / d.norm().clamp_min(1e-12)
        else:
            d_rows, w_rows = d.reshape(d.shape[0], -1), w.reshape(w.shape[0], -1)
            d = (d_rows * (w_rows.norm(dim=1, keepdim=True) / d_rows.norm(dim=1, keepdim=True).clamp_min(1e-12))).view_as(d)
        directions.append(d)
    return directions


def set_offset(params: Sequence[torch.Tensor], origin: Sequence[torch.Tensor],
               directions: Sequence[Sequence[torch.Tensor]], coefficients: Sequence[float]) -> None:
    """params <- origin + sum_i coefficients[i] * directions[i] (in place, no graph)."""
    with torch.no_grad():
        for j, (p, o) in enumerate(zip(params, origin)):
            value = o.double().clone()
            for direction, c in zip(directions, coefficients):
                value += c * direction[j]
            p.copy_(value.to(p.dtype))


def as_tensors(direction: torch.Tensor | Sequence[torch.Tensor], params: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """Accept a direction as a flat vector or as one tensor per parameter."""
    if isinstance(direction, torch.Tensor):
        return [d.double() for d in unflatten(direction.double(), [p.double() for p in params])]
    return [d.double() for d in direction]


def loss_slice(
    loss_at: Callable[[], float],
    params: Sequence[torch.Tensor],
    directions: Sequence[torch.Tensor | Sequence[torch.Tensor]],
    coordinates: Sequence[torch.Tensor],
    progress: Optional[str] = "loss landscape",
) -> torch.Tensor:
    """Loss on the grid spanned by 1 or 2 directions: returns shape (len(a),) or (len(a), len(b)).

    loss_at() evaluates the loss at the parameters' current values; the parameters are restored
    exactly afterwards.
    """
    if len(directions) != len(coordinates) or len(directions) not in (1, 2):
        raise ValueError("loss_slice takes one or two directions with as many coordinate vectors")
    dirs = [as_tensors(d, params) for d in directions]
    grids = torch.meshgrid(*[torch.as_tensor(c, dtype=torch.float64) for c in coordinates], indexing="ij")
    points = torch.stack([g.reshape(-1) for g in grids], dim=1)
    losses = torch.empty(points.shape[0], dtype=torch.float64)
    with restored(params):
        origin = [p.detach().clone() for p in params]
        for i in tqdm(range(points.shape[0]), desc=progress, leave=False, disable=progress is None):
            set_offset(params, origin, dirs, points[i].tolist())
            losses[i] = loss_at()
    return losses.view(grids[0].shape)
