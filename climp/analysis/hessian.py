"""One Hessian analysis end to end (eigenvalues, trace, density, landscape) and its table.

`analyse_hessian` is the entry point shared by `climp hessian`, `climp reproduce` and Python
users; it works for any loss_fn(model, batch) -> scalar and list of batches.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence

import torch
from torch import nn

from .density import slq_quadratures, spectral_density
from .eigen import top_eigenpairs
from .hvp import HVP_METHODS, HessianOperator, LossFn
from .landscape import filter_normalized_direction, loss_slice
from .negative_mass import DEFAULT_THRESHOLD_REL, negative_mass
from .params import select_parameters
from .trace import hutchinson_trace, rademacher
from ..config_mixin import FromDict
from ..settings import setting

LANDSCAPE_MODES = ("none", "1d", "2d")
DIRECTION_KINDS = ("eigen", "random")
# Largest ||Hv(h) - Hv(4h)|| / ||Hv(h)|| accepted from finite differences: smooth losses stay
# within a few percent (rounding, truncation), non-smooth ones (max pooling) reach 1 or more.
FD_CONSISTENCY_LIMIT = 0.25
AUTO = "auto"  # finite differences, replaced by double backward when their consistency check fails
HVP_CHOICES = HVP_METHODS + (AUTO,)
HESSIAN, LANDSCAPE = "Hessian", "loss landscape"


@dataclass
class HessianSettings(FromDict):
    """Knobs of one analysis. Defaults (about 270 Hessian-vector products, finite
    differences: about 540 gradient evaluations) keep a tiny model on a CPU in minutes;
    publication-grade numbers want more (e.g. top_k 5, lanczos_steps 60, hutchinson_samples
    100, slq_runs 10 x slq_steps 100). Finite-difference products are checked for smoothness
    in every analysis (FD_CONSISTENCY_LIMIT); the negative mass is computed from the SLQ runs
    (negative_mass.py)."""

    config_label = "Hessian settings"

    top_k: int = setting(2, group=HESSIAN, help="top eigenvalues to compute")
    lanczos_steps: int = setting(20, group=HESSIAN, help="max Lanczos steps (products)")
    lanczos_tol: float = setting(1e-2, group=HESSIAN, help="relative Ritz residual to stop at")
    hutchinson_samples: int = setting(10, group=HESSIAN, help="trace probes")
    confidence: float = setting(0.95, group=HESSIAN, help="confidence level of the trace and negative-mass bounds")
    slq_runs: int = setting(4, group=HESSIAN, help="SLQ runs (Rademacher probes, >= 2) for the density and the "
                                                   "negative mass")
    slq_steps: int = setting(60, group=HESSIAN, help=(
        "Lanczos steps per SLQ run (more resolve the negative mass at smaller thresholds)"))
    density_grid: int = setting(1000, group=HESSIAN, help="points of the spectral density grid")
    density_sigma: float = setting(0.01, group=HESSIAN, help="Gaussian broadening std, relative to the spectral range")
    negative_threshold: float = setting(DEFAULT_THRESHOLD_REL, group=HESSIAN, help=(
        "negative mass counts eigenvalues below -this * max|lambda| (keep it above the products' "
        "relative error, ~2e-4 for float32 finite differences)"))
    landscape: str = setting("1d", group=LANDSCAPE, choices=LANDSCAPE_MODES, help="slice dimension")
    landscape_directions: str = setting("eigen", group=LANDSCAPE, choices=DIRECTION_KINDS, help=(
        "top eigenvectors (unit norm) or filter-normalised random directions"))
    landscape_steps: int = setting(11, group=LANDSCAPE, help="grid points per axis")
    landscape_range: float = setting(1.0, group=LANDSCAPE, help="slice coordinates run over [-range, range]")
    ignore_1d: bool = setting(False, group=LANDSCAPE, help=(
        "random directions leave biases, norms and scalars unchanged (Li et al.)"))
    seed: int = setting(0, group=HESSIAN, help="data and random-vector seed")
    hvp: str = setting("finite-difference", group=HESSIAN, choices=HVP_CHOICES, help=(
        "Hessian-vector products by central finite differences of gradients (2 fast gradients each, "
        "error ~2e-4 of ||H|| in float32), exact double backward (through a selective scan it needs "
        "the pure-PyTorch scan, several times slower), or auto: finite differences while their "
        "consistency check passes, else double backward"))
    fd_eps_rel: Optional[float] = setting(None, group=HESSIAN, help=(
        "finite-difference step relative to 1 + rms(theta) (default: 3e-4 float32, 1e-7 float64)"))
    cache_graph: bool = setting(False, group=HESSIAN, help=(
        "with --hvp autograd: keep each batch's gradient graph between products (faster, more memory)"))
    progress: bool = setting(True, group=HESSIAN, help="show progress bars")

    def __post_init__(self) -> None:
        positive = ("top_k", "lanczos_steps", "slq_runs", "slq_steps", "landscape_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"HessianSettings.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("hutchinson_samples", "slq_runs"):
            if getattr(self, name) < 2:
                raise ValueError(f"HessianSettings.{name} must be >= 2 (a standard error needs 2 probes), "
                                 f"got {getattr(self, name)}")
        if not 0 < self.negative_threshold < 1:
            raise ValueError(f"HessianSettings.negative_threshold must lie in (0, 1), got {self.negative_threshold}")
        if self.landscape not in LANDSCAPE_MODES:
            raise ValueError(f"HessianSettings.landscape must be one of {LANDSCAPE_MODES}, got {self.landscape!r}")
        if self.landscape_directions not in DIRECTION_KINDS:
            raise ValueError(f"HessianSettings.landscape_directions must be one of {DIRECTION_KINDS}, "
                             f"got {self.landscape_directions!r}")
        if self.landscape == "2d" and self.landscape_directions == "eigen" and self.top_k < 2:
            raise ValueError("a 2d landscape along eigenvectors needs top_k >= 2")
        if self.hvp not in HVP_CHOICES:
            raise ValueError(f"HessianSettings.hvp must be one of {HVP_CHOICES}, got {self.hvp!r}")
        if self.cache_graph and self.hvp not in ("autograd", AUTO):
            raise ValueError("HessianSettings.cache_graph applies to hvp='autograd' (or 'auto') only")
        if self.fd_eps_rel is not None and not self.fd_eps_rel > 0:
            raise ValueError(f"HessianSettings.fd_eps_rel must be positive, got {self.fd_eps_rel}")
        if self.landscape_range <= 0:
            raise ValueError(f"HessianSettings.landscape_range must be positive, got {self.landscape_range}")



def seeded(seed: int, stage: int) -> torch.Generator:
    """An independent CPU generator per stage, so changing one stage's settings leaves the
    random draws of the others unchanged."""
    return torch.Generator().manual_seed(seed * 1000 + stage)


def landscape_directions(op: HessianOperator, settings: HessianSettings, eigenvectors: torch.Tensor):
    """The 1 or 2 slice directions the settings ask for."""
    count = 1 if settings.landscape == "1d" else 2
    if settings.landscape_directions == "eigen":
        return [eigenvectors[i] for i in range(count)]
    generator = seeded(settings.seed, 4)
    return [filter_normalized_direction(op.params, generator, settings.ignore_1d) for _ in range(count)]


def hvp_description(op: HessianOperator, consistency: Optional[float]) -> Dict[str, Any]:
    """How the operator computes products: method, parameter dtype and, for finite
    differences, the relative and absolute step and the consistency check (whether the products
    can be trusted: see HessianOperator.finite_difference_consistency). Exact products (double
    backward) need no check: "consistent" is None for them, and "consistency" keeps the check of
    the finite differences they replaced, if any."""
    fd = op.method == "finite-difference"
    return {"method": op.method, "dtype": str(op.params[0].dtype).replace("torch.", ""),
            "eps_rel": op.eps_rel, "step": op.finite_difference_step() if fd else None,
            "consistency": consistency,
            "consistent": consistency <= FD_CONSISTENCY_LIMIT if fd and consistency is not None else None}


def inconsistency_warning(consistency: float) -> str:
    return (f"finite-difference products change by {consistency:.3g} (relative) between steps h and 4h "
            f"(limit {FD_CONSISTENCY_LIMIT}): the loss is not smooth at the step's scale (max pooling, "
            "kinks), so the products measure gradient jumps, not the Hessian, and every curvature figure "
            "of this analysis is unreliable. Use --hvp autograd.")


def analyse_hessian(
    model: nn.Module,
    batches: Sequence[Any],
    loss_fn: LossFn,
    params: Sequence[str] | Mapping[str, nn.Parameter] = ("all",),
    settings: Optional[HessianSettings] = None,
    exclude: Sequence[str] = (),
) -> Dict[str, Any]:
    """Curvature of mean_b loss_fn(model, batch_b) w.r.t. the chosen parameters.

    params: selection names (see select_parameters: "all", "visual", "text", module paths,
    parameter-name prefixes) or a {name: Parameter} mapping; exclude: names dropped from a
    selection by names. The model runs in eval mode; its state is unchanged afterwards.
    Returns a JSON-ready dict: loss, gradient norm, eigenvalues, |min|/max, trace with CI,
    spectral density, negative mass with its bounds and threshold, landscape slice, how the
    Hessian-vector products were computed ("hvp", with the finite-difference consistency
    check), warnings (a failed check), cost (products and seconds).
    """
    settings = settings or HessianSettings()
    chosen = dict(params) if isinstance(params, Mapping) else select_parameters(model, params, exclude)

    def operator(method: str) -> HessianOperator:
        return HessianOperator(model, loss_fn, batches, chosen, method=method, eps_rel=settings.fd_eps_rel,
                               cache_graph=settings.cache_graph and method == "autograd")

    op = operator("finite-difference" if settings.hvp == AUTO else settings.hvp)
    device = op.device
    bar = (lambda name: name) if settings.progress else (lambda name: None)
    seconds: Dict[str, float] = {}
    products: Dict[str, int] = {}

    def stage(name: str, fn):
        before, start = op.num_products, time.perf_counter()
        out = fn()
        seconds[name], products[name] = time.perf_counter() - start, op.num_products - before
        return out

    loss = stage("loss", op.loss)
    grad_norm = stage("gradient", lambda: float(op.gradient().norm()))
    consistency = None
    if op.method == "finite-difference":
        probe = rademacher(op.dim, seeded(settings.seed, 5)).to(device)
        consistency = stage("hvp check", lambda: op.finite_difference_consistency(probe))
        if settings.hvp == AUTO and consistency > FD_CONSISTENCY_LIMIT:
            op.clear_cache()
            op = operator("autograd")
    eig = stage("eigen", lambda: top_eigenpairs(
        op.matvec, op.dim, settings.top_k, settings.lanczos_steps, settings.lanczos_tol,
        seeded(settings.seed, 1), device, bar("Lanczos (top eigenvalues)")))
    trace = stage("trace", lambda: hutchinson_trace(
        op.matvec, op.dim, settings.hutchinson_samples, seeded(settings.seed, 2), settings.confidence,
        device, bar("Hutchinson trace")))
    quadratures = stage("density", lambda: slq_quadratures(
        op.matvec, op.dim, settings.slq_runs, settings.slq_steps, seeded(settings.seed, 3), device,
        bar("SLQ density")))
    density = spectral_density(quadratures, settings.density_grid, settings.density_sigma)
    scale = max(abs(eig.min_value), abs(eig.top_values[0]))
    negative = negative_mass(quadratures, settings.negative_threshold, scale, settings.confidence)
    op.clear_cache()

    result: Dict[str, Any] = {
        "num_parameters": op.dim,
        "parameter_names": op.names,
        "hvp": hvp_description(op, consistency),
        "warnings": [] if consistency is None or consistency <= FD_CONSISTENCY_LIMIT or op.method == "autograd"
        else [inconsistency_warning(consistency)],
        "num_batches": len(op.batches),
        "loss": loss,
        "grad_norm": grad_norm,
        "eigen": {"top": eig.top_values, "residuals": eig.residuals, "min": eig.min_value,
                  "min_residual": eig.min_residual, "lanczos_steps": eig.steps},
        "abs_min_over_max": abs(eig.min_value) / eig.top_values[0] if eig.top_values[0] > 0 else None,
        "trace": trace.to_dict(),
        "density": {**density.to_dict(), "trace_estimate": density.mean * op.dim},
        "negative_mass": negative.to_dict(),
    }
    if settings.landscape != "none":
        directions = landscape_directions(op, settings, eig.top_vectors)
        coords = torch.linspace(-settings.landscape_range, settings.landscape_range, settings.landscape_steps,
                                dtype=torch.float64)
        surface = stage("landscape", lambda: loss_slice(op.loss, op.params, directions, [coords] * len(directions),
                                                        bar("loss landscape")))
        result["landscape"] = {"mode": settings.landscape, "directions": settings.landscape_directions,
                               "coordinates": coords.tolist(), "loss": surface.tolist()}
    result["cost"] = {"hessian_vector_products": products, "seconds": seconds,
                      "total_seconds": sum(seconds.values())}
    result["settings"] = dataclasses.asdict(settings)
    return result


def landscape_rise(result: Mapping[str, Any]) -> Optional[float]:
    """Largest loss increase over the slice relative to the centre (a flatness summary)."""
    if "landscape" not in result:
        return None
    values = torch.tensor(result["landscape"]["loss"], dtype=torch.float64)
    return float(values.max()) - result["loss"]


def format_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def consistency_text(hvp: Mapping[str, Any]) -> Optional[str]:
    """"True (0.03)": the finite-difference check's verdict and value; None for autograd, or the
    failed check that made `auto` switch to exact products."""
    if hvp.get("consistency") is None:
        return None
    if hvp.get("method") == "autograd":
        return f"False ({hvp['consistency']:.2g}): exact double-backward products used"
    return f"{hvp['consistent']} ({hvp['consistency']:.2g})"


def summary_rows(result: Mapping[str, Any]) -> Dict[str, Any]:
    """The headline numbers of one analysis, in table order."""
    t = result["trace"]
    rows: Dict[str, Any] = {
        "parameters": result["num_parameters"],
        "Hessian-vector products by": result["hvp"]["method"],
        "finite differences consistent (h vs 4h)": consistency_text(result["hvp"]),
        "batches": result["num_batches"],
        "loss": result["loss"],
        "gradient norm": result["grad_norm"],
    }
    for i, value in enumerate(result["eigen"]["top"]):
        rows[f"lambda_{i + 1}"] = value
    rows["lambda_min"] = result["eigen"]["min"]
    rows["|lambda_min| / lambda_max"] = result["abs_min_over_max"]
    rows["trace (Hutchinson)"] = f"{t['trace']:.4g} +- {t['ci_high'] - t['trace']:.2g}"
    rows["trace (SLQ)"] = result["density"]["trace_estimate"]
    n = result["negative_mass"]
    label = f"negative mass (lambda < -{n['threshold_rel']:g} max|lambda|)"
    rows[label] = f"{n['fraction']:.3g} (std err {n['stderr']:.2g})"
    rows[f"negative mass bounds ({n['confidence']:.0%})"] = f"[{n['bounds'][0]:.3g}, {n['bounds'][1]:.3g}]"
    rows["landscape max rise"] = landscape_rise(result)
    rows["Hessian-vector products"] = sum(result["cost"]["hessian_vector_products"].values())
    rows["seconds"] = result["cost"]["total_seconds"]
    return rows


def format_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """A plain-text table with one column per analysed model."""
    columns = {label: {k: format_value(v) for k, v in summary_rows(r).items()} for label, r in results.items()}
    names = list(dict.fromkeys(k for col in columns.values() for k in col))
    widths = [max(len(n) for n in names)] + [max(len(label), *(len(c.get(n, "-")) for n in names))
                                             for label, c in columns.items()]
    lines = ["  ".join(text.ljust(w) for text, w in zip(["metric", *columns], widths))]
    lines.append("  ".join("-" * w for w in widths))
    for name in names:
        cells = [name, *(c.get(name, "-") for c in columns.values())]
        lines.append("  ".join(text.ljust(w) for text, w in zip(cells, widths)))
    return "\n".join(lines)
