"""`climp bench`: the flags and recipe keys of `BenchSettings`, run by `run_bench`."""
from __future__ import annotations

import argparse

from ..settings import add_settings_arguments, from_args
from .bench import BenchSettings, run_bench


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_settings_arguments(parser, BenchSettings)


def run(args: argparse.Namespace) -> int:
    print(run_bench(from_args(BenchSettings, args))["markdown"])
    return 0
