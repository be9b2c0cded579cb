"""Fraction of Hessian eigenvalues below -tau, with bounds, by stochastic Lanczos quadrature.

The target is F = (1/n) #{i : lambda_i < -tau}, tau = threshold_rel * max|lambda|: the share of
directions curving down by more than a small fraction of the sharpest curvature. For a
normalised Rademacher probe q, E[q^T f(H) q] = (1/n) sum_i f(lambda_i), and each SLQ run gives a
Gauss quadrature (nodes theta_j, weights w_j) of q's spectral measure.

- Estimate: f is the indicator of lambda < -tau smoothed into the Gaussian step
  Phi((-tau - lambda) / sigma), sigma = tau / STEP_SHARPNESS (weight Phi(-4) = 3e-5 on eigenvalues
  at zero, 1/2 at -tau), averaged over probes; stderr is the probes' standard error.
- Bounds: among all measures with the moments that m Lanczos steps fix (degree 2m), the weight
  below x is smallest and largest for the Gauss-Radau quadrature with a node prescribed at x
  (Chebyshev-Markov-Stieltjes: the weight strictly below x, and that plus the weight of the node
  at x). The quadrature comes from T_m extended by one row so that x is an eigenvalue (Golub's
  construction, using the residual norm beta_m); a run that exhausted its Krylov space is exact.
  Averaged over probes and widened by z standard errors (z the normal quantile of
  `confidence`), they bracket F, given exact products. They are wide exactly when m steps do not
  resolve the spectrum at -tau, i.e. when the moments allow much of the bulk near zero to lie
  on either side of -tau.
- Uncertainty: the half-width of the smallest interval centred on the estimate that holds the
  bounds, so estimate +- uncertainty brackets F.
Resolving a smaller threshold takes more Lanczos steps (a degree of order range / tau).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Dict, List, Sequence, Tuple

import torch

from .density import Quadrature
from .eigen import tridiagonal_eigh

DEFAULT_THRESHOLD_REL = 1e-2
STEP_SHARPNESS = 4.0


def smooth_step(values: torch.Tensor, threshold: float, width: float) -> torch.Tensor:
    """Phi((-threshold - values) / width): ~1 well below -threshold, 1/2 at it, ~0 above."""
    return 0.5 * torch.erfc((values + threshold) / (width * math.sqrt(2.0)))


@dataclass
class NegativeMass:
    """Estimate of the fraction of eigenvalues below -threshold, and bounds on it.

    fraction: the smoothed-step estimate; stderr: its std over probes / sqrt(probes); bounds:
    (low, high) bracket of the fraction at `confidence`; uncertainty: max(fraction - low,
    high - fraction); threshold = threshold_rel * scale, scale the largest |lambda| seen (Lanczos
    extremes and Ritz values, lower bounds of max|lambda|); width: sigma of the smoothed step;
    probes / steps: SLQ runs and Lanczos steps per run; samples: the per-probe estimates.
    """

    fraction: float
    stderr: float
    bounds: Tuple[float, float]
    uncertainty: float
    confidence: float
    threshold: float
    threshold_rel: float
    scale: float
    width: float
    probes: int
    steps: int
    samples: List[float]

    def to_dict(self) -> Dict[str, object]:
        out = asdict(self)
        out["bounds"] = list(self.bounds)
        return out


def radau_quadrature(quadrature: Quadrature, x: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Nodes and weights of the (m + 1)-node Gauss-Radau quadrature with a node at x: T_m
    bordered by beta_m, its last diagonal entry x + delta_m where (T_m - x I) delta = beta_m^2 e_m."""
    alphas, betas = quadrature.alphas.double(), quadrature.betas.double()
    m = alphas.numel()
    T = torch.diag(alphas) + torch.diag(betas, 1) + torch.diag(betas, -1)
    rhs = torch.zeros(m, dtype=torch.float64)
    rhs[-1] = quadrature.last_beta ** 2
    delta = torch.linalg.solve(T - x * torch.eye(m, dtype=torch.float64), rhs)
    extended_alphas = torch.cat([alphas, (x + delta[-1]).reshape(1)])
    extended_betas = torch.cat([betas, torch.tensor([quadrature.last_beta], dtype=torch.float64)])
    values, vectors = tridiagonal_eigh(extended_alphas, extended_betas)
    return values, vectors[0] ** 2


def quadrature_bracket(quadrature: Quadrature, x: float) -> Tuple[float, float]:
    """Bounds on the weight of the probe's spectral measure strictly below x, given the moments
    of its Lanczos run (see the module docstring)."""
    if quadrature.exact:
        weight = float(quadrature.weights[quadrature.nodes < x].sum())
        return weight, weight
    try:
        nodes, weights = radau_quadrature(quadrature, x)
    except torch.linalg.LinAlgError:  # x is a Ritz value: move it below by a rounding error
        nodes, weights = radau_quadrature(quadrature, x - 1e-12 * abs(x))
    at_x = int((nodes - x).abs().argmin())
    low = float(weights[:at_x].sum())
    return min(max(low, 0.0), 1.0), min(low + float(weights[at_x]), 1.0)


def mean_and_stderr(values: Sequence[float]) -> Tuple[float, float]:
    samples = torch.tensor(list(values), dtype=torch.float64)
    return float(samples.mean()), float(samples.std(unbiased=True)) / math.sqrt(len(values))


def negative_mass(
    quadratures: Sequence[Quadrature],
    threshold_rel: float = DEFAULT_THRESHOLD_REL,
    scale: float = 0.0,
    confidence: float = 0.95,
) -> NegativeMass:
    """Fraction of eigenvalues below -threshold_rel * max|lambda| from SLQ runs started at
    normalised Rademacher vectors. scale: a known lower bound of max|lambda| (e.g. from the
    top-eigenvalue Lanczos run); the Ritz values of the runs raise it when larger."""
    if len(quadratures) < 2:
        raise ValueError(f"the negative mass needs at least 2 SLQ runs for a standard error, got {len(quadratures)}")
    if not 0 < threshold_rel < 1:
        raise ValueError(f"threshold_rel must lie in (0, 1), got {threshold_rel}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    scale = max([abs(scale)] + [float(q.nodes.abs().max()) for q in quadratures])
    threshold, width = threshold_rel * scale, threshold_rel * scale / STEP_SHARPNESS
    steps = min(q.steps for q in quadratures)
    if threshold == 0.0:  # H vanishes on every probe's Krylov space: no negative eigenvalue
        return NegativeMass(0.0, 0.0, (0.0, 0.0), 0.0, confidence, 0.0, threshold_rel, 0.0, 0.0,
                            len(quadratures), steps, [0.0] * len(quadratures))
    samples = [float(q.weights @ smooth_step(q.nodes, threshold, width)) for q in quadratures]
    fraction, stderr = mean_and_stderr(samples)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    brackets = [quadrature_bracket(q, -threshold) for q in quadratures]
    low, low_err = mean_and_stderr([b[0] for b in brackets])
    high, high_err = mean_and_stderr([b[1] for b in brackets])
    bounds = (max(low - z * low_err, 0.0), min(high + z * high_err, 1.0))
    uncertainty = max(fraction - bounds[0], bounds[1] - fraction, 0.0)
    return NegativeMass(fraction, stderr, bounds, uncertainty, confidence, threshold, threshold_rel, scale, width,
                        len(samples), steps, samples)
