"""`climp eval`: the flags and recipe keys of `EvalJob`, run by `run_eval`."""
from __future__ import annotations

import argparse

from ..settings import add_settings_arguments, from_args
from .job import EvalJob, run_eval


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_settings_arguments(parser, EvalJob)


def run(args: argparse.Namespace) -> int:
    paths = run_eval(from_args(EvalJob, args))["paths"]
    print(f"wrote {paths['results']} and {paths['report']}")
    return 0
