"""`climp eval`: run evaluation tasks for one or more models; writes results.json and report.md."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import List, Optional

import torch

from .report import write_report
from .runner import FILE_TASKS, TASKS, EvalSettings, evaluate
from .shifts import SHIFTS


def csv_list(text: str) -> List[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def task_list(text: str) -> List[str]:
    """--tasks: known task names only, so a typo fails before any model is built."""
    tasks = csv_list(text)
    unknown = [t for t in tasks if t not in TASKS + FILE_TASKS]
    if unknown or not tasks:
        raise argparse.ArgumentTypeError(f"unknown or no eval tasks {unknown}; "
                                         f"choose from {','.join(TASKS + FILE_TASKS)}")
    return tasks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=csv_list, help="model name(s), comma separated")
    parser.add_argument("--checkpoint", action="append", default=None,
                        help="checkpoint per model, in --model order (repeat the flag): a run directory, "
                             "its checkpoints/ directory, checkpoints/latest, a step directory or a "
                             "weights file; omit for random init")
    parser.add_argument("--tasks", type=task_list, default=None,
                        help=f"subset of {','.join(TASKS)}, or the local-file tasks {','.join(FILE_TASKS)} "
                             "(default: every task that has data)")
    parser.add_argument("--embedded", action=argparse.BooleanOptionalAction, default=None,
                        help="evaluate the embedded benchmark too (default: only when no local data is named)")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer.json (or its directory) for models that read a language model's ids")
    parser.add_argument("--pretrained-weights", choices=["ema", "online"], default=None,
                        help="CLIP-Mamba checkpoints: EMA (default) or online weights")
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--dataset-root", default=None, help="root of local real datasets (nothing downloads)")
    parser.add_argument("--dataset", action="append", default=[], help="real zero-shot dataset name (repeatable)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--retrieval-file", default=None, help="JSON/CSV of (image, caption) for retrieval")
    parser.add_argument("--nocaps-file", default=None,
                        help="NoCaps' COCO-style caption JSON (task nocaps: CLIMP's retrieval protocol)")
    parser.add_argument("--dense-file", default=None, help="JSON [{image, caption}] of long captions")
    parser.add_argument("--image-root", default=None, help="images of the caption files (default: their folder)")
    parser.add_argument("--ood-root", default=None, help="folder of OOD images")
    parser.add_argument("--ood-in-dataset", default=None, help="in-distribution dataset for --ood-root")
    parser.add_argument("--cue-conflict-root", default=None, help="Geirhos cue-conflict folder")
    parser.add_argument("--shifts", type=csv_list, default=list(SHIFTS))
    parser.add_argument("--shift-dataset", default=None, help="real dataset for shifts/resolution")
    parser.add_argument("--resolution-scales", type=lambda s: [int(v) for v in csv_list(s)], default=[1, 2, 4])
    parser.add_argument("--num-samples", type=int, default=200, help="embedded benchmark samples per task")
    parser.add_argument("--resolution", type=int, default=None, help="embedded benchmark side (default: model's)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the embedded data and of a model's random initialisation")
    parser.add_argument("--device", default="cpu")


def settings_from_args(args: argparse.Namespace) -> EvalSettings:
    return EvalSettings.from_dict(dict(
        batch_size=args.batch_size, num_samples=args.num_samples, seed=args.seed, resolution=args.resolution,
        dataset_root=args.dataset_root, datasets=args.dataset, split=args.split,
        retrieval_file=args.retrieval_file, nocaps_file=args.nocaps_file, dense_file=args.dense_file, image_root=args.image_root,
        ood_root=args.ood_root, ood_in_dataset=args.ood_in_dataset, cue_conflict_root=args.cue_conflict_root,
        shifts=args.shifts, shift_dataset=args.shift_dataset, resolution_scales=args.resolution_scales,
        embedded=args.embedded))


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


def run(args: argparse.Namespace) -> int:
    import climp
    checkpoints: List[Optional[str]] = args.checkpoint or [None] * len(args.model)
    check_models(args.model, checkpoints, args.resolution)
    settings = settings_from_args(args)
    tasks = args.tasks if args.tasks is not None else settings.tasks_with_data()
    settings.check_tasks(tasks)
    results = {}
    for name, ckpt in zip(args.model, checkpoints):
        torch.manual_seed(args.seed)  # a model without a checkpoint is a reproducible random one
        options = {k: v for k, v in (("tokenizer", args.tokenizer),
                                     ("pretrained_weights", args.pretrained_weights)) if v is not None}
        model, _, preprocess = climp.create_model_and_transforms(name, pretrained=ckpt, **options)
        model.to(args.device)
        results[name] = evaluate(model, climp.get_tokenizer(model), preprocess, tasks, settings)
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"settings": vars(settings), "models": dict(zip(args.model, checkpoints)), "results": results}
    (args.out / "results.json").write_text(json.dumps(payload, indent=2))
    report = write_report(results, args.out)
    print(f"wrote {args.out / 'results.json'} and {report}")
    return 0
