"""Eigenvalue spectral density by stochastic Lanczos quadrature (SLQ).

For a unit start vector q, m Lanczos steps give a Gauss quadrature of the spectral measure
mu_q = sum_i (q . u_i)^2 delta(lambda_i): nodes are the Ritz values theta_j and weights the
squared first components of T's eigenvectors, exact for polynomials up to degree 2m-1. With
q a normalised Rademacher vector, E[mu_q] is the spectral density (1/n) sum_i delta(lambda_i);
averaging several runs and replacing each node by a Gaussian gives a smooth density estimate
(Ghorbani et al. 2019; PyHessian's density). negative_mass.py reads the same quadratures.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch
from tqdm.auto import tqdm

from .eigen import lanczos, tridiagonal_eigh
from .trace import rademacher

MatVec = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Quadrature:
    """One SLQ run: nodes (Ritz values, ascending) and weights summing to 1; the Lanczos
    tridiagonal they come from (alphas, betas) and the residual norm after its last step
    (last_beta), from which quadratures with a prescribed node follow; exact: the run exhausted
    its Krylov space, so the quadrature is the probe's spectral measure itself."""

    nodes: torch.Tensor
    weights: torch.Tensor
    alphas: torch.Tensor
    betas: torch.Tensor
    last_beta: float
    exact: bool = False

    @property
    def steps(self) -> int:
        """Lanczos steps of the run (fewer than asked when its Krylov space was exhausted)."""
        return int(self.nodes.numel())


def slq_quadratures(
    matvec: MatVec,
    dim: int,
    num_runs: int = 3,
    num_steps: int = 30,
    generator: Optional[torch.Generator] = None,
    device: torch.device | str = "cpu",
    progress: Optional[str] = "SLQ density",
) -> List[Quadrature]:
    """num_runs Gauss quadratures of the spectral measure, each from num_steps Lanczos steps
    started at a normalised Rademacher vector."""
    if num_runs < 1:
        raise ValueError(f"SLQ needs num_runs >= 1, got {num_runs}")
    runs = []
    for run in tqdm(range(num_runs), desc=progress, leave=False, disable=progress is None):
        start = rademacher(dim, generator).to(device)
        state = lanczos(matvec, start, num_steps, keep_basis=False,
                        progress=None if progress is None else f"{progress} run {run + 1}")
        values, vectors = tridiagonal_eigh(state.alphas, state.betas)
        exhausted = values.numel() == dim or state.last_beta <= 1e-10 * max(float(values.abs().max()), 1e-300)
        runs.append(Quadrature(values.cpu(), (vectors[0] ** 2).cpu(), state.alphas.cpu(), state.betas.cpu(),
                               state.last_beta, exact=exhausted))
    return runs


@dataclass
class SpectralDensity:
    """Smoothed density on a grid plus the moments derived from the quadratures: SLQ estimates
    of (1/n) tr(H) and (1/n) tr(H^2). The density is for plotting: its broadening (a fraction of
    the whole spectral range) smears the bulk of eigenvalues near zero across zero, so the
    negative mass is estimated separately (negative_mass.py)."""

    grid: torch.Tensor
    density: torch.Tensor
    sigma: float
    quadratures: List[Quadrature]
    mean: float
    second_moment: float
    node_min: float
    node_max: float

    def to_dict(self) -> Dict[str, object]:
        return {
            "grid": self.grid.tolist(), "density": self.density.tolist(), "sigma": self.sigma,
            "nodes": [q.nodes.tolist() for q in self.quadratures],
            "weights": [q.weights.tolist() for q in self.quadratures],
            "lanczos": [{"alphas": q.alphas.tolist(), "betas": q.betas.tolist(), "last_beta": q.last_beta,
                         "exact": q.exact} for q in self.quadratures],
            "mean": self.mean, "second_moment": self.second_moment,
            "node_min": self.node_min, "node_max": self.node_max,
        }


def gaussian_broadening(quadratures: List[Quadrature], grid: torch.Tensor, sigma: float) -> torch.Tensor:
    """Average over runs of sum_j w_j N(x; theta_j, sigma^2) evaluated on the grid."""
    density = torch.zeros_like(grid)
    for q in quadratures:
        kernel = torch.exp(-0.5 * ((grid[:, None] - q.nodes[None, :]) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
        density += kernel @ q.weights
    return density / len(quadratures)


def spectral_density(
    quadratures: List[Quadrature],
    num_grid: int = 1000,
    relative_sigma: float = 0.01,
) -> SpectralDensity:
    """Smooth the quadratures with Gaussians of std relative_sigma * (node range) on a grid
    reaching 6 std beyond the extreme nodes, so the density integrates to 1."""
    if relative_sigma <= 0:
        raise ValueError(f"relative_sigma must be positive, got {relative_sigma}")
    nodes = torch.cat([q.nodes for q in quadratures])
    lo, hi = float(nodes.min()), float(nodes.max())
    sigma = relative_sigma * max(hi - lo, abs(hi), abs(lo), 1e-12)
    grid = torch.linspace(lo - 6 * sigma, hi + 6 * sigma, num_grid, dtype=torch.float64)
    density = gaussian_broadening(quadratures, grid, sigma)
    return SpectralDensity(
        grid=grid,
        density=density,
        sigma=sigma,
        quadratures=quadratures,
        mean=sum(float(q.weights @ q.nodes) for q in quadratures) / len(quadratures),
        second_moment=sum(float(q.weights @ q.nodes ** 2) for q in quadratures) / len(quadratures),
        node_min=lo,
        node_max=hi,
    )
