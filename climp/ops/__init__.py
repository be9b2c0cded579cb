"""Selective-scan kernels, the SS2D cross-scan, the fused SS2D op, the fused Mamba-1 scan, Mamba's
causal conv, SS2D's depthwise conv2d, RMSNorm and the Mamba-2 SSD scan; imports nothing else from climp."""
from .causal_conv import causal_conv1d_silu, causal_conv1d_silu_reference
from .cpu_build import build_cpu_kernel, cpu_kernel_available
from .cpu_scan import selective_scan_flops
from .dwconv2d import dwconv2d_silu, dwconv2d_silu_reference, fused_dwconv2d_available
from .cross_scan import cross_merge, cross_scan
from .reference import selective_scan_reference
from .selective_scan import BACKENDS, double_backward_mode, resolve_backend, selective_scan
from .fused_ss2d import fused_ss2d_available, ss2d, ss2d_reference
from .fused_mamba1d import fused_mamba1d_available, mamba1d_scan, mamba1d_scan_reference
from .rms_norm import fused_rms_norm_available, rms_norm, rms_norm_reference
from .split_linear import linear_halves
from .ssd import ssd_chunk_scan

__all__ = [
    "BACKENDS",
    "build_cpu_kernel",
    "causal_conv1d_silu",
    "causal_conv1d_silu_reference",
    "cpu_kernel_available",
    "cross_merge",
    "cross_scan",
    "double_backward_mode",
    "dwconv2d_silu",
    "dwconv2d_silu_reference",
    "fused_dwconv2d_available",
    "fused_mamba1d_available",
    "fused_rms_norm_available",
    "fused_ss2d_available",
    "linear_halves",
    "mamba1d_scan",
    "mamba1d_scan_reference",
    "resolve_backend",
    "rms_norm",
    "rms_norm_reference",
    "selective_scan",
    "selective_scan_flops",
    "selective_scan_reference",
    "ss2d",
    "ss2d_reference",
    "ssd_chunk_scan",
]
