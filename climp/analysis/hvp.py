"""Hessian-vector products of a loss averaged over a fixed list of batches.

The objective is L(theta) = mean_b loss_fn(model, batch_b), each batch weighted equally. Two
ways to compute Hv:

- "autograd": double backward (Pearlmutter's trick), differentiate <grad L, v> once more.
  Exact to rounding, but every op must be twice differentiable: the selective scan then runs
  on its slow pure-PyTorch "chunked" backend and attention on the math kernel.
- "finite-difference": central differences of first-order gradients,
  Hv ~ ||v|| (g(theta + h u) - g(theta - h u)) / (2 h) with u = v / ||v|| and
  h = eps_rel * (1 + rms(theta)), rms the root mean square of the selected parameters (the size
  of a typical parameter, whatever their number). Two ordinary gradients per product (fast scan
  kernel, fused attention), no graph kept. The error is O(h^2) (truncation, largest along the top
  eigenvectors) plus O(eps_mach / h) (rounding, largest along random directions); the default
  steps (DEFAULT_EPS_REL) balance the two for each parameter dtype, and the tests bound
  ||Hv_fd - Hv|| / (||H|| ||v||) against double backward for every tower in float64 (float64
  models compute in float64 end to end). The parameters are restored bit for bit after each
  product.

Vectors are flat float64 tensors over the selected parameters, so the Krylov methods built on
top (Lanczos, Hutchinson) keep their orthogonality in double precision whatever the model's dtype.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .params import flatten, restored, unflatten

LossFn = Callable[[nn.Module, Any], torch.Tensor]

HVP_METHODS = ("autograd", "finite-difference")
DEFAULT_EPS_REL = {torch.float64: 1e-7, torch.float32: 3e-4}


def default_eps_rel(dtype: torch.dtype) -> float:
    """Relative finite-difference step for parameters of `dtype` (see the module docstring)."""
    if dtype not in DEFAULT_EPS_REL:
        raise ValueError(f"finite-difference Hessian-vector products need float32 or float64 parameters, got {dtype}")
    return DEFAULT_EPS_REL[dtype]


def double_backward_context() -> contextlib.AbstractContextManager:
    """climp.ops.double_backward_mode() when the ops package provides it: it makes the
    selective scan's "auto" backend pick one that supports double backward."""
    import climp.ops

    return getattr(climp.ops, "double_backward_mode", contextlib.nullcontext)()


@contextlib.contextmanager
def analysis_mode(model: nn.Module, params: Sequence[nn.Parameter], double_backward: bool = True) -> Iterator[None]:
    """Make the model deterministic (and, with double_backward, twice differentiable) for the duration.

    - eval mode on every module (dropout and drop-path off, norms use running statistics);
    - only the selected parameters require grad, so no graph is built for the rest;
    - double_backward=True: the twice-differentiable selective-scan backend
      (double_backward_context) and the math backend of scaled_dot_product_attention (the
      fused CPU/flash kernels have no double backward). False keeps the fast kernels.
    Every flag is restored on exit.
    """
    training = {m: m.training for m in model.modules()}
    requires = {p: p.requires_grad for p in model.parameters()}
    selected = {id(p) for p in params}
    try:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(id(p) in selected)
        if double_backward:
            with double_backward_context(), sdpa_kernel(SDPBackend.MATH):
                yield
        else:
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

    method: "autograd" (exact, double backward) or "finite-difference" (two first-order
    gradients per product, step eps_rel * (1 + rms(theta)); eps_rel None picks
    default_eps_rel(parameter dtype)); see the module docstring.
    cache_graph=True (autograd only) keeps each batch's gradient graph between products (one
    forward and one backward saved per product, at the cost of holding every batch's graph in
    memory). `num_products` counts Hessian-vector products, for cost reports.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        batches: Sequence[Any],
        params: Mapping[str, nn.Parameter] | Sequence[nn.Parameter],
        cache_graph: bool = False,
        method: str = "autograd",
        eps_rel: Optional[float] = None,
    ) -> None:
        if len(batches) == 0:
            raise ValueError("HessianOperator needs at least one batch")
        self.names = list(params.keys()) if isinstance(params, Mapping) else [str(i) for i in range(len(params))]
        self.params = list(params.values()) if isinstance(params, Mapping) else list(params)
        if not self.params:
            raise ValueError("HessianOperator needs at least one parameter")
        if method not in HVP_METHODS:
            raise ValueError(f"unknown Hessian-vector product method {method!r}; choose one of {HVP_METHODS}")
        if cache_graph and method != "autograd":
            raise ValueError("cache_graph keeps double-backward graphs; it applies to method='autograd' only")
        if eps_rel is not None and not eps_rel > 0:
            raise ValueError(f"eps_rel must be positive, got {eps_rel}")
        self.model, self.loss_fn, self.batches = model, loss_fn, list(batches)
        self.method = method
        self.eps_rel = (eps_rel if eps_rel is not None else default_eps_rel(self.params[0].dtype)
                        if method == "finite-difference" else None)
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

    def mode(self, double_backward: bool = False) -> contextlib.AbstractContextManager:
        """analysis_mode for this operator's model and parameters."""
        return analysis_mode(self.model, self.params, double_backward)

    def loss(self) -> float:
        """Mean loss over the batches at the current parameters (no graph)."""
        with self.mode(), torch.no_grad():
            return sum(float(scalar_loss(self.loss_fn, self.model, b)) for b in self.batches) / len(self.batches)

    def gradient(self) -> torch.Tensor:
        """Flat float64 gradient of the mean loss (first order: the fast kernels)."""
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
        vector = vector.to(self.device, torch.float64)
        product = self.autograd_product(vector) if self.method == "autograd" else self.finite_difference_product(vector)
        self.num_products += 1
        return product

    def autograd_product(self, vector: torch.Tensor) -> torch.Tensor:
        """Hv by double backward, batch by batch."""
        pieces = unflatten(vector, self.params)
        total = torch.zeros(self.dim, dtype=torch.float64, device=self.device)
        with self.mode(double_backward=True):
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
        return total / len(self.batches)

    def finite_difference_step(self) -> float:
        """h = eps_rel * (1 + rms(theta)), theta the selected parameters: the root mean square
        is the typical size of one parameter, independent of how many there are."""
        total = sum(p.detach().double().pow(2).sum() for p in self.params)
        return self.eps_rel * (1.0 + float(torch.sqrt(total / self.dim)))

    def finite_difference_product(self, vector: torch.Tensor) -> torch.Tensor:
        """Hv ~ ||v|| (g(theta + h u) - g(theta - h u)) / (2 h), u = v / ||v||; theta restored exactly."""
        norm = float(vector.norm())
        if norm == 0.0:
            return torch.zeros(self.dim, dtype=torch.float64, device=self.device)
        step = self.finite_difference_step()
        direction = unflatten(vector / norm, [p.double() for p in self.params])
        gradients = []
        with restored(self.params):
            origin = [p.detach().to(torch.float64, copy=True) for p in self.params]
            for sign in (1.0, -1.0):
                with torch.no_grad():
                    for p, o, d in zip(self.params, origin, direction):
                        p.copy_(o + (sign * step) * d)
                gradients.append(self.gradient())
        return (gradients[0] - gradients[1]) * (norm / (2.0 * step))

    def finite_difference_consistency(self, vector: torch.Tensor) -> float:
        """||Hv(h) - Hv(4h)|| / ||Hv(h)|| for central differences with steps h and 4h (two
        products). Small for a loss that is smooth at the step's scale (truncation and rounding
        change it by a few percent at most); of order 1 or more where the gradient jumps within
        the step (max pooling, ReLU kinks), whose differences then measure the jumps, not H."""
        if self.method != "finite-difference":
            raise ValueError("the consistency check applies to method='finite-difference' only")
        fine = self.matvec(vector)
        eps_rel = self.eps_rel
        try:
            self.eps_rel = 4 * eps_rel
            coarse = self.matvec(vector)
        finally:
            self.eps_rel = eps_rel
        return float((fine - coarse).norm()) / max(float(fine.norm()), 1e-300)

    def clear_cache(self) -> None:
        """Drop cached gradient graphs (required before the parameters are changed in place)."""
        self.cached_grads.clear()
