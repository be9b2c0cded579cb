"""Hessian-vector products of a loss averaged over a fixed list of batches.

The objective is L(theta) = mean_b loss_fn(model, batch_b), each batch weighted equally. Hv is
computed by double backward (Pearlmutter's trick): differentiate <grad L, v> once more. Vectors
are flat float64 tensors over the selected parameters, so the Krylov methods built on top
(Lanczos, Hutchinson) keep their orthogonality in double precision whatever the model's dtype.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .params import flatten, unflatten

LossFn = Callable[[nn.Module, Any], torch.Tensor]


def double_backward_context() -> contextlib.AbstractContextManager:
    """climp.ops.double_backward_mode() when the ops package provides it: it makes the
    selective scan's "auto" backend pick one that supports double backward."""
    import climp.ops

    return getattr(climp.ops, "double_backward_mode", contextlib.nullcontext)()


@contextlib.contextmanager
def analysis_mode(model: nn.Module, params: Sequence[nn.Parameter]) -> Iterator[None]:
    """Make the model deterministic and twice differentiable for the duration.

    - eval mode on every module (dropout and drop-path off, norms use running statistics);
    - only the selected parameters require grad, so no graph is built for the rest;
    - the twice-differentiable selective-scan backend (double_backward_context);
    - the math backend of scaled_dot_product_attention: the fused CPU/flash kernels have no
      double backward.
    Every flag is restored on exit.
    """
    training = {m: m.training for m in model.modules()}
    requires = {p: p.requires_grad for p in model.parameters()}
    selected = {id(p) for p in params}
    try:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(id(p) in selected)
        with double_backward_context(), sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        for m, flag in training.items():
            m.training = flag
        for p, flag in requires.items():
            p.requires_grad_(flag)


def scalar_loss(loss_fn: LossFn, model: nn.Module, batch: Any) -> torch.Tensor:
    """Call loss_fn and check that it returned a scalar tensor."""
    loss = loss_fn(model, batch)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ValueError(f"loss_fn must return a scalar tensor, got {type(loss).__name__} "
                         f"{tuple(loss.shape) if isinstance(loss, torch.Tensor) else ''}")
    return loss.reshape(())


def grad_or_zeros(grads: Sequence[Optional[torch.Tensor]], like: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """Replace the None that autograd returns for unused parameters by zeros."""
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, like)]


class HessianOperator:
    """The Hessian of the batch-averaged loss as a linear operator on flat float64 vectors.

    cache_graph=True keeps each batch's gradient graph between products (one forward and one
    backward saved per product, at the cost of holding every batch's graph in memory).
    `num_products` counts Hessian-vector products, for cost reports.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        batches: Sequence[Any],
        params: Mapping[str, nn.Parameter] | Sequence[nn.Parameter],
        cache_graph: bool = False,
    ) -> None:
        if len(batches) == 0:
            raise ValueError("HessianOperator needs at least one batch")
        self.names = list(params.keys()) if isinstance(params, Mapping) else [str(i) for i in range(len(params))]
        self.params = list(params.values()) if isinstance(params, Mapping) else list(params)
        if not self.params:
            raise ValueError("HessianOperator needs at least one parameter")
        self.model, self.loss_fn, self.batches = model, loss_fn, list(batches)
        self.cache_graph = cache_graph
        self.cached_grads: Dict[int, List[torch.Tensor]] = {}
        self.num_products = 0

    @property
    def dim(self) -> int:
        """Number of scalar parameters the Hessian is taken over."""
        return sum(p.numel() for p in self.params)

    @property
    def device(self) -> torch.device:
        return self.params[0].device

    def mode(self) -> contextlib.AbstractContextManager:
        """analysis_mode for this operator's model and parameters."""
        return analysis_mode(self.model, self.params)

    def loss(self) -> float:
        """Mean loss over the batches at the current parameters (no graph)."""
        with self.mode(), torch.no_grad():
            return sum(float(scalar_loss(self.loss_fn, self.model, b)) for b in self.batches) / len(self.batches)

    def gradient(self) -> torch.Tensor:
        """Flat float64 gradient of the mean loss."""
        total = torch.zeros(self.dim, dtype=torch.float64, device=self.device)
        with self.mode():
            for batch in self.batches:
                loss = scalar_loss(self.loss_fn, self.model, batch)
                grads = torch.autograd.grad(loss, self.params, allow_unused=True)
                total += flatten(grad_or_zeros(grads, self.params)).double()
        return total / len(self.batches)

    def batch_gradient_graph(self, index: int) -> List[torch.Tensor]:
        """Gradient of batch `index`'s loss with its graph kept for a second differentiation."""
        if index in self.cached_grads:
            return self.cached_grads[index]
        loss = scalar_loss(self.loss_fn, self.model, self.batches[index])
        grads = grad_or_zeros(torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True), self.params)
        if self.cache_graph:
            self.cached_grads[index] = grads
        return grads

    def matvec(self, vector: torch.Tensor) -> torch.Tensor:
        """H @ vector for a flat vector of length dim; returns flat float64."""
        if vector.shape != (self.dim,):
            raise ValueError(f"vector must have shape ({self.dim},), got {tuple(vector.shape)}")
        pieces = unflatten(vector.to(self.device), self.params)
        total = torch.zeros(self.dim, dtype=torch.float64, device=self.device)
        with self.mode():
            for index in range(len(self.batches)):
                grads = self.batch_gradient_graph(index)
                live = [(g, v) for g, v in zip(grads, pieces) if g.requires_grad]
                if not live:
                    continue
                hv = torch.autograd.grad(
                    [g for g, _ in live], self.params, grad_outputs=[v for _, v in live],
                    retain_graph=self.cache_graph, allow_unused=True,
                )
                total += flatten(grad_or_zeros(hv, self.params)).double()
        self.num_products += 1
        return total / len(self.batches)

    def clear_cache(self) -> None:
        """Drop cached gradient graphs (required before the parameters are changed in place)."""
        self.cached_grads.clear()
