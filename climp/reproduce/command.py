"""`climp reproduce`: train the papers' tiny models side by side, evaluate, benchmark and analyse
them, and write one report stating for every claim whether it holds here."""
from __future__ import annotations

import argparse

from ..settings import add_settings_arguments, from_args
from .job import ReproduceSettings, reproduce, run_reproduce

__all__ = ["add_arguments", "run", "reproduce", "run_reproduce", "ReproduceSettings"]

DESCRIPTION = """Reproduce the claims of CLIMP and CLIP-Mamba on the embedded benchmark.

Trains every model (default: climp-tiny-paper, the papers' CLIMP in miniature; climp-tiny, our
pyramid-pooling variant, reported in extra rows; clip-vit-tiny; climp-mamba1d-tiny; ~8.6M
parameters each) with the same data, steps and seeds; runs the evaluation suite, the efficiency benchmark,
the image tower's training activation memory and the Hessian analysis on each; writes REPORT.md
(tables, plots, one verdict per claim: holds / does not hold / inconclusive within the seed
spread; CLIMP's "5x less memory" holds only if the measured training-memory ratio reaches 5x)
and results.json into --out.
Rerunning the same command resumes: finished stages are reused, training continues from its
latest checkpoint. Presets: quick (1 seed, <= 15 min on 2 cores), full (3 seeds, <= 2 h),
smoke (seconds; checks the pipeline only)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add_settings_arguments(parser, ReproduceSettings)


def run(args: argparse.Namespace) -> int:
    from .report import summary_text

    results = run_reproduce(from_args(ReproduceSettings, args))
    print(summary_text(results))
    print(f"\nreport: {results['paths']['report']}\nresults: {results['paths']['results']}")
    return 0
