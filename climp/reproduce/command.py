"""`climp reproduce`: train the papers' tiny models side by side, evaluate, benchmark and analyse
them, and write one report stating for every claim whether it holds here."""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .presets import DEFAULT_MODELS, get_preset, preset_names

DESCRIPTION = """Reproduce the claims of CLIMP and CLIP-Mamba on the embedded benchmark.

Trains every model (default: climp-tiny-paper, the papers' CLIMP in miniature; climp-tiny, our
pyramid-pooling variant, reported in extra rows; clip-vit-tiny; climp-mamba1d-tiny; ~8.6M
parameters each) with the same data, steps and seeds; runs the evaluation suite, the efficiency benchmark
and the Hessian analysis on each; writes REPORT.md (tables, plots, one verdict per claim:
holds / does not hold / inconclusive within the seed spread) and results.json into --out.
Rerunning the same command resumes: finished stages are reused, training continues from its
latest checkpoint. Presets: quick (1 seed, <= 15 min on 2 cores), full (3 seeds, <= 2 h),
smoke (seconds; checks the pipeline only)."""


def csv_list(text: str) -> List[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def seed_list(text: str) -> List[int]:
    try:
        return [int(v) for v in csv_list(text)]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"seeds must be integers, got {text!r}") from err


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--preset", choices=preset_names(), default="quick",
                        help="how long to train and how much to measure (default: quick)")
    parser.add_argument("--models", type=csv_list, default=list(DEFAULT_MODELS),
                        help=f"comma-separated subset of models (default: {','.join(DEFAULT_MODELS)})")
    parser.add_argument("--seeds", type=seed_list, default=None,
                        help="comma-separated training seeds (default: the preset's)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default: runs/reproduce-<preset>)")
    parser.add_argument("--no-progress", action="store_true", help="hide the stage progress bar")


def check_models(models: Sequence[str]) -> None:
    import climp

    known = climp.list_models()
    unknown = [m for m in models if m not in known]
    if unknown:
        raise ValueError(f"unknown models {unknown}; choose from {known}")
    if len(set(models)) != len(models):
        raise ValueError(f"--models lists a model twice: {list(models)}")


def environment(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    import torch

    return {"command": " ".join(["climp", *(argv if argv is not None else sys.argv[1:])]),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "load_start": round(os.getloadavg()[0], 2)}


def reproduce(preset_name: str, models: Sequence[str], out_dir: Optional[Path] = None,
              seeds: Optional[Sequence[int]] = None, progress: bool = True,
              stage_functions: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Run (or resume) a whole reproduction and write its report; returns the results dict."""
    from .pipeline import run_pipeline
    from .report import build_results, write_report

    preset = get_preset(preset_name)
    preset.validate()
    check_models(models)
    seeds = list(preset.seeds if seeds is None else seeds)
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ValueError(f"seeds must be distinct non-negative integers, got {seeds}")
    out_dir = Path(out_dir or Path("runs") / f"reproduce-{preset.name}")
    env = environment()
    start = time.perf_counter()
    pipeline = run_pipeline(preset, models, out_dir, seeds, stage_functions, progress)
    env["load_end"] = round(os.getloadavg()[0], 2)
    results = build_results(preset, models, seeds, pipeline, env, time.perf_counter() - start)
    results["paths"] = {k: str(v) for k, v in write_report(results, out_dir).items()}
    return results


def run(args: argparse.Namespace) -> int:
    from .report import summary_text

    results = reproduce(args.preset, args.models, args.out, args.seeds, progress=not args.no_progress)
    print(summary_text(results))
    print(f"\nreport: {results['paths']['report']}\nresults: {results['paths']['results']}")
    return 0
