"""Lanczos iteration with full reorthogonalisation, and the extreme eigenpairs it gives.

Lanczos builds an orthonormal Krylov basis Q and a tridiagonal T = Q^T H Q from products with
H alone. The eigenvalues of T (Ritz values) converge first at both ends of the spectrum, so one
run yields the top-k eigenvalues and the most negative one. Reorthogonalising every new vector
against the whole basis (twice, classical Gram-Schmidt) keeps Q orthonormal in floating point,
which avoids the spurious duplicate Ritz values of plain Lanczos. Memory: the basis holds
steps x parameters float64 values (40 steps over 1M parameters: 320 MB).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import torch
from tqdm.auto import tqdm

MatVec = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class LanczosState:
    """Tridiagonal coefficients and (optionally) the basis after some Lanczos steps.

    alphas: diagonal of T (m,), betas: off-diagonal (m-1,), basis: rows are q_1..q_m or None,
    last_beta: norm of the residual after step m (0 when an invariant subspace was found).
    """

    alphas: torch.Tensor
    betas: torch.Tensor
    basis: Optional[torch.Tensor]
    last_beta: float


def tridiagonal_eigh(alphas: torch.Tensor, betas: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (ascending) and eigenvectors (columns) of the symmetric tridiagonal T."""
    T = torch.diag(alphas) + torch.diag(betas, 1) + torch.diag(betas, -1)
    return torch.linalg.eigh(T)


def lanczos(
    matvec: MatVec,
    start: torch.Tensor,
    num_steps: int,
    keep_basis: bool = True,
    on_step: Optional[Callable[[LanczosState], bool]] = None,
    progress: Optional[str] = None,
    restart_generator: Optional[torch.Generator] = None,
) -> LanczosState:
    """Run up to num_steps Lanczos steps from `start` (normalised here), with full
    reorthogonalisation. Stops early when on_step(state) returns True, or when the Krylov space
    becomes invariant (residual ~ 0), unless restart_generator is given: then the run goes on
    from a fresh random vector orthogonal to the basis (T gets a zero off-diagonal there), as
    eigenvalue searches need to find repeated eigenvalues (a Krylov space holds one copy of
    each). on_step is not consulted at such a breakdown. `progress` names a tqdm bar."""
    if num_steps < 1:
        raise ValueError(f"Lanczos needs num_steps >= 1, got {num_steps}")
    num_steps = min(num_steps, start.numel())
    Q = start.new_zeros(num_steps, start.numel(), dtype=torch.float64)  # the basis, one row per step
    Q[0] = start.double() / start.double().norm()
    alphas: List[torch.Tensor] = []
    betas: List[torch.Tensor] = []
    bar = tqdm(total=num_steps, desc=progress, leave=False, disable=progress is None)
    for step in range(num_steps):
        w = matvec(Q[step]).double()
        alphas.append(torch.dot(w, Q[step]))
        basis = Q[:step + 1]
        for _ in range(2):
            w = w - basis.T @ (basis @ w)
        beta = w.norm()
        state = LanczosState(torch.stack(alphas), torch.stack(betas) if betas else Q.new_zeros(0),
                             basis if keep_basis else None, float(beta))
        bar.update(1)
        scale = max(float(state.alphas.abs().max()), float(state.betas.abs().max()) if betas else 0.0, 1e-300)
        invariant = float(beta) <= 1e-10 * scale
        if step == num_steps - 1 or (invariant and restart_generator is None):
            break
        if not invariant and on_step is not None and on_step(state):
            break
        if invariant:
            w = torch.randn(w.numel(), generator=restart_generator, dtype=torch.float64).to(w.device)
            for _ in range(2):
                w = w - basis.T @ (basis @ w)
            beta = w.new_zeros(())
            w = w / w.norm()
        else:
            w = w / beta
        betas.append(beta)
        Q[step + 1] = w
    bar.close()
    return state


@dataclass
class EigenResult:
    """Extreme eigenpairs of H from one Lanczos run.

    top_values: the k largest eigenvalues, descending; top_vectors: (k, dim) unit eigenvectors;
    min_value: the smallest (most negative) eigenvalue; residuals: |beta_m s_mi| bounds on
    ||H x - theta x|| for each top value; steps: Lanczos steps (= Hessian-vector products).
    """

    top_values: List[float]
    top_vectors: torch.Tensor
    min_value: float
    min_residual: float
    residuals: List[float]
    steps: int


def ritz_residuals(state: LanczosState) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ritz values (ascending), eigenvectors of T, and residual-norm bounds |beta_m * s_{m,i}|."""
    values, vectors = tridiagonal_eigh(state.alphas, state.betas)
    return values, vectors, (state.last_beta * vectors[-1]).abs()


def top_eigenpairs(
    matvec: MatVec,
    dim: int,
    k: int = 3,
    max_steps: int = 60,
    tol: float = 1e-3,
    generator: Optional[torch.Generator] = None,
    device: torch.device | str = "cpu",
    progress: Optional[str] = "Lanczos (top eigenvalues)",
) -> EigenResult:
    """Top-k eigenpairs and the minimum eigenvalue of a symmetric operator.

    Stops once the residual bound of each of the top k and of the minimum Ritz value is below
    tol * max|Ritz value|, after max_steps, or when the Krylov space is exhausted.
    """
    if k < 1:
        raise ValueError(f"top-k needs k >= 1, got {k}")
    if k > dim:
        raise ValueError(f"top-k: k={k} exceeds the number of parameters {dim}")
    if max_steps < k:
        raise ValueError(f"Lanczos max_steps={max_steps} must be at least k={k}")
    start = torch.randn(dim, generator=generator, dtype=torch.float64).to(device)

    def converged(state: LanczosState) -> bool:
        if state.alphas.numel() < k + 1:
            return False
        values, _, residual = ritz_residuals(state)
        bound = tol * float(values.abs().max())
        return bool((residual[-k:] <= bound).all() and residual[0] <= bound)

    restart = torch.Generator().manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
    state = lanczos(matvec, start, max_steps, on_step=converged, progress=progress, restart_generator=restart)
    values, vectors, residual = ritz_residuals(state)
    order = torch.arange(values.numel() - 1, values.numel() - 1 - k, -1)
    top_vectors = (vectors[:, order].T @ state.basis)
    return EigenResult(
        top_values=[float(values[i]) for i in order],
        top_vectors=top_vectors / top_vectors.norm(dim=1, keepdim=True),
        min_value=float(values[0]),
        min_residual=float(residual[0]),
        residuals=[float(residual[i]) for i in order],
        steps=int(state.alphas.numel()),
    )
