"""`climp eval`: run evaluation tasks for one or more models; writes results.json and report.md."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import List, Optional

from .report import write_report
from .runner import TASKS, EvalSettings, evaluate
from .shifts import SHIFTS


def csv_list(text: str) -> List[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=csv_list, help="model name(s), comma separated")
    parser.add_argument("--checkpoint", action="append", default=None,
                        help="checkpoint per model, in --model order (repeat the flag); omit for random init")
    parser.add_argument("--tasks", type=csv_list, default=list(TASKS), help=f"subset of {','.join(TASKS)}")
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--dataset-root", default=None, help="root of local real datasets (nothing downloads)")
    parser.add_argument("--dataset", action="append", default=[], help="real zero-shot dataset name (repeatable)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--retrieval-file", default=None, help="JSON/CSV of (image, caption) for retrieval")
    parser.add_argument("--dense-file", default=None, help="JSON [{image, caption}] of long captions")
    parser.add_argument("--image-root", default=None, help="images of the caption files (default: their folder)")
    parser.add_argument("--ood-root", default=None, help="folder of OOD images")
    parser.add_argument("--ood-in-dataset", default=None, help="in-distribution dataset for --ood-root")
    parser.add_argument("--cue-conflict-root", default=None, help="Geirhos cue-conflict folder")
    parser.add_argument("--shifts", type=csv_list, default=list(SHIFTS))
    parser.add_argument("--shift-dataset", default=None, help="real dataset for shifts/resolution")
    parser.add_argument("--resolution-data", default=None,
                        help="real images for the resolution task: a caption CSV/JSON (image, caption; retrieval) "
                             "or an ImageFolder with class folders (zero-shot), resized from the files to each side")
    parser.add_argument("--resolution-scales", type=lambda s: [int(v) for v in csv_list(s)], default=[1, 2, 4])
    parser.add_argument("--num-samples", type=int, default=200, help="embedded benchmark samples per task")
    parser.add_argument("--resolution", type=int, default=None, help="embedded benchmark side (default: model's)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")


def settings_from_args(args: argparse.Namespace) -> EvalSettings:
    return EvalSettings.from_dict(dict(
        batch_size=args.batch_size, num_samples=args.num_samples, seed=args.seed, resolution=args.resolution,
        dataset_root=args.dataset_root, datasets=args.dataset, split=args.split,
        retrieval_file=args.retrieval_file, dense_file=args.dense_file, image_root=args.image_root,
        ood_root=args.ood_root, ood_in_dataset=args.ood_in_dataset, cue_conflict_root=args.cue_conflict_root,
        shifts=args.shifts, shift_dataset=args.shift_dataset, resolution_scales=args.resolution_scales,
        resolution_data=args.resolution_data))


def run(args: argparse.Namespace) -> int:
    import climp
    checkpoints: List[Optional[str]] = args.checkpoint or [None] * len(args.model)
    if len(checkpoints) != len(args.model):
        raise ValueError(f"{len(args.model)} models but {len(checkpoints)} --checkpoint flags")
    settings = settings_from_args(args)
    results = {}
    for name, ckpt in zip(args.model, checkpoints):
        model, _, preprocess = climp.create_model_and_transforms(name, pretrained=ckpt)
        model.to(args.device)
        results[name] = evaluate(model, climp.get_tokenizer(model), preprocess, args.tasks, settings)
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"settings": vars(settings), "models": dict(zip(args.model, checkpoints)), "results": results}
    (args.out / "results.json").write_text(json.dumps(payload, indent=2))
    report = write_report(results, args.out)
    print(f"wrote {args.out / 'results.json'} and {report}")
    return 0
