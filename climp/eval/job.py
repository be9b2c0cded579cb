"""`run_eval(job)`: evaluate one or more models under one set of settings and write results.json
and report.md; `climp eval` is this function behind the flags of `EvalJob`."""
from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from ..settings import setting
from .report import write_report
from .runner import FILE_TASKS, TASKS, EvalSettings, evaluate

MODELS = "models"


def task_list(text: str) -> List[str]:
    """--tasks: known task names only, so a typo fails before any model is built."""
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS + FILE_TASKS]
    if unknown or not tasks:
        raise argparse.ArgumentTypeError(f"unknown or no eval tasks {unknown}; "
                                         f"choose from {','.join(TASKS + FILE_TASKS)}")
    return tasks


@dataclass
class EvalJob:
    """Which models to evaluate on which tasks, where the results go, and the evaluation settings."""

    models: List[str] = setting(default_factory=list, group=MODELS, flag="--model", required=True,
                                help="model name(s), comma separated")
    checkpoints: List[str] = setting(default_factory=list, group=MODELS, flag="--checkpoint",
                                     list_style="append", metavar="CKPT", help=(
        "checkpoint per model, in --model order (repeat the flag): a run directory, its checkpoints/ "
        "directory, checkpoints/latest, a step directory or a weights file; omit for random init"))
    tasks: Optional[List[str]] = setting(None, group=MODELS, parse=task_list, help=(
        f"subset of {','.join(TASKS)}, or the local-file tasks {','.join(FILE_TASKS)} "
        "(default: every task that has data)"))
    tokenizer: Optional[str] = setting(None, group=MODELS, metavar="PATH", help=(
        "tokenizer.json (or its directory) for models that read a language model's ids"))
    pretrained_weights: Optional[str] = setting(None, group=MODELS, choices=("ema", "online"), help=(
        "CLIP-Mamba checkpoints: EMA (default) or online weights"))
    out: Optional[Path] = setting(None, group=MODELS, metavar="DIR", required=True, help="output directory")
    device: str = setting("cpu", group=MODELS, help="torch device")
    settings: EvalSettings = setting(default_factory=EvalSettings, help="data sizes and local data locations")

    def checkpoint_list(self) -> List[Optional[str]]:
        """One checkpoint (or None: random init) per model."""
        return list(self.checkpoints) if self.checkpoints else [None] * len(self.models)


def check_models(models: List[str], checkpoints: List[Optional[str]], resolution: Optional[int]) -> None:
    """What can be checked before building a model: names, checkpoint paths, image size."""
    from climp.models.checkpoint_files import resolve_checkpoint_path
    from climp.models.clip import check_image_size
    from climp.models.factory import get_model_config

    if len(checkpoints) != len(models):
        raise ValueError(f"{len(models)} models but {len(checkpoints)} --checkpoint flags")
    for name, checkpoint in zip(models, checkpoints):
        cfg = get_model_config(name)
        if checkpoint is not None:
            resolve_checkpoint_path(checkpoint)
        if resolution is not None:
            check_image_size(cfg["vision_cfg"], resolution, name)


def run_eval(job: EvalJob) -> Dict[str, Any]:
    """Evaluate every model of the job; writes <out>/results.json and <out>/report.md and returns
    the results.json payload (its "paths" the two files)."""
    import climp

    settings = job.settings
    checkpoints = job.checkpoint_list()
    check_models(job.models, checkpoints, settings.resolution)
    tasks = job.tasks if job.tasks is not None else settings.tasks_with_data()
    settings.check_tasks(tasks)
    results = {}
    for name, ckpt in zip(job.models, checkpoints):
        torch.manual_seed(settings.seed)  # a model without a checkpoint is a reproducible random one
        options = {k: v for k, v in (("tokenizer", job.tokenizer),
                                     ("pretrained_weights", job.pretrained_weights)) if v is not None}
        model, _, preprocess = climp.create_model_and_transforms(name, pretrained=ckpt, **options)
        model.to(job.device)
        results[name] = evaluate(model, climp.get_tokenizer(model), preprocess, tasks, settings)
    out = Path(job.out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"settings": dataclasses.asdict(settings), "models": dict(zip(job.models, checkpoints)),
               "results": results}
    (out / "results.json").write_text(json.dumps(payload, indent=2))
    report = write_report(results, out)
    return {**payload, "paths": {"results": str(out / "results.json"), "report": str(report)}}
