"""`climp hessian`: the flags and recipe keys of `HessianJob`, run by `run_hessian`.

Defaults analyse all parameters but the token embedding over 1 batch of 8 samples of the
embedded benchmark at the model's nominal resolution, with finite-difference Hessian-vector
products, and write results.json, density.png and the landscape plot.
"""
from __future__ import annotations

import argparse

from ..settings import add_settings_arguments, from_args
from .job import HessianJob, run_hessian


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_settings_arguments(parser, HessianJob)


def run(args: argparse.Namespace) -> int:
    run_hessian(from_args(HessianJob, args))
    return 0
