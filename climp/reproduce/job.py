"""`run_reproduce(settings)` / `reproduce(...)`: run (or resume) a whole reproduction and write its
report; `climp reproduce` is this behind the flags of `ReproduceSettings`."""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..settings import setting
from .presets import DEFAULT_MODELS, get_preset, preset_names


def seed_list(text: str) -> List[int]:
    """--seeds: comma-separated integers."""
    try:
        seeds = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"seeds must be integers, got {text!r}") from err
    if not seeds:
        raise argparse.ArgumentTypeError("expected a comma-separated list of seeds")
    return seeds


@dataclass
class ReproduceSettings:
    """Which preset, models and seeds to reproduce, and where the report goes."""

    preset: str = setting("quick", choices=preset_names(), help="how long to train and how much to measure")
    models: List[str] = setting(default_factory=lambda: list(DEFAULT_MODELS), help="comma-separated subset of models")
    seeds: Optional[List[int]] = setting(None, parse=seed_list, help=(
        "comma-separated training seeds (default: the preset's)"))
    out: Optional[Path] = setting(None, metavar="DIR", help="output directory (default: runs/reproduce-<preset>)")
    progress: bool = setting(True, help="show progress bars (the stages' and the training and Hessian bars)")


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


def run_reproduce(settings: ReproduceSettings, stage_functions: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """`reproduce` with its arguments as settings."""
    return reproduce(settings.preset, settings.models, settings.out, settings.seeds, settings.progress,
                     stage_functions)
