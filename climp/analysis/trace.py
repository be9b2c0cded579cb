"""Hutchinson's estimator of the Hessian trace with Rademacher probes.

tr(H) = E[v^T H v] for v with independent +-1 entries; the sample mean of m probes is unbiased
and its standard error is std / sqrt(m). The confidence interval uses the normal quantile, which
is accurate for the usual m >= 30 and a little narrow for fewer probes.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Callable, Dict, List, Optional

import torch
from tqdm.auto import tqdm

MatVec = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class TraceEstimate:
    """Hutchinson estimate: mean of the probe values, their sample std, the standard error,
    and a two-sided confidence interval at `confidence`."""

    trace: float
    std: float
    stderr: float
    ci_low: float
    ci_high: float
    confidence: float
    samples: List[float]

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)


def rademacher(dim: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A float64 vector of independent +-1 entries."""
    return torch.randint(0, 2, (dim,), generator=generator).double() * 2 - 1


def hutchinson_trace(
    matvec: MatVec,
    dim: int,
    num_samples: int = 30,
    generator: Optional[torch.Generator] = None,
    confidence: float = 0.95,
    device: torch.device | str = "cpu",
    progress: Optional[str] = "Hutchinson trace",
) -> TraceEstimate:
    """Estimate tr(H) from num_samples Rademacher probes v^T H v."""
    if num_samples < 2:
        raise ValueError(f"Hutchinson needs at least 2 samples for a confidence interval, got {num_samples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    samples = []
    for _ in tqdm(range(num_samples), desc=progress, leave=False, disable=progress is None):
        v = rademacher(dim, generator).to(device)
        samples.append(float(torch.dot(v, matvec(v).double())))
    values = torch.tensor(samples, dtype=torch.float64)
    mean, std = float(values.mean()), float(values.std(unbiased=True))
    stderr = std / math.sqrt(num_samples)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    return TraceEstimate(mean, std, stderr, mean - z * stderr, mean + z * stderr, confidence, samples)
