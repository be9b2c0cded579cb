"""Hessian analysis of the contrastive loss: Hessian-vector products over batches, top
eigenvalues (Lanczos), trace (Hutchinson), spectral density and negative mass (SLQ) and
loss-landscape slices."""
from .contrastive import ContrastiveLoss, make_batches
from .density import SpectralDensity, slq_quadratures, spectral_density
from .eigen import EigenResult, lanczos, top_eigenpairs
from .hvp import HVP_METHODS, HessianOperator, analysis_mode
from .landscape import filter_normalized_direction, loss_slice
from .negative_mass import NegativeMass, negative_mass
from .params import select_parameters
from .plots import plot_results
from .hessian import HessianSettings, analyse_hessian, format_table
from .trace import TraceEstimate, hutchinson_trace

__all__ = [
    "ContrastiveLoss", "make_batches", "SpectralDensity", "slq_quadratures", "spectral_density",
    "EigenResult", "lanczos", "top_eigenpairs", "HVP_METHODS", "HessianOperator", "analysis_mode",
    "filter_normalized_direction", "loss_slice", "NegativeMass", "negative_mass", "select_parameters", "plot_results",
    "HessianSettings", "analyse_hessian", "format_table", "TraceEstimate", "hutchinson_trace",
]
