"""Selective-scan kernels and the SS2D cross-scan; imports nothing else from climp."""
from .selective_scan import BACKENDS, selective_scan
from .reference import selective_scan_reference

__all__ = ["selective_scan", "selective_scan_reference", "BACKENDS"]
from .cross_scan import cross_merge, cross_scan

__all__ += ["cross_scan", "cross_merge"]
