"""CLIMP's design choices on real images: scikit-learn's handwritten digits (1,797 8x8 grey
scans, 10 classes, shipped with scikit-learn, nothing downloads), trained and evaluated through
the product's own commands.

The digits are written as grey PNGs with a stratified train/test split, a training caption table
in the "Your own data" layout (image, caption; captions without a trailing full stop) and, for
the test split, a caption table (retrieval, caption_shifts) and two zero-shot class-folder sets
with the same images: `digits` (templates without a full stop) and `digits_stop` (the same
templates ending with "."). Each model is then trained with `climp train --train-data` and
evaluated with `climp eval` (zero-shot on both sets, retrieval, caption_shifts, and the
resolution task on the test class folders at 1x/2x/4x the training side).

    python benchmarks/real_data.py --steps 300 --out runs/real_data/results.json
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CAPTIONS = ("a photo of the number {c}", "a handwritten {c}", "the digit {c}", "a picture of the number {c}")
TEMPLATES = ("a photo of the number {c}", "a blurry photo of the number {c}", "a photo of the digit {c}",
             "an image of the number {c}")
PLAIN, STOP = "digits", "digits_stop"
# climp-tiny with caption normalisation off (the file differs from climp-tiny only there)
RAW_CAPTIONS_MODEL = "benchmarks/resolution/pyramid_grid.json"
DEFAULT_MODELS = ("climp-tiny", "climp-tiny-paper", "clip-vit-tiny", RAW_CAPTIONS_MODEL)
LABELS = {RAW_CAPTIONS_MODEL: "climp-tiny, normalisation off"}


@dataclass
class DigitsLayout:
    """Where write_digits put each part of the data set."""
    root: str
    train_csv: str
    test_csv: str
    zeroshot_root: str
    resolution_folder: str
    num_train: int
    num_test: int


def digit_images(side: int):
    """(list of grey PIL images side x side, labels) for scikit-learn's digits; values 0-16
    scaled to 0-255, upsampled with bicubic interpolation."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = []
    for pixels in digits.images:
        grey = Image.fromarray(np.clip(np.rint(pixels * 255.0 / 16.0), 0, 255).astype(np.uint8), "L")
        images.append(grey.resize((side, side), Image.Resampling.BICUBIC))
    return images, [int(t) for t in digits.target]


def split_indices(labels: Sequence[int], test_fraction: float, seed: int):
    """Stratified (train, test) index lists with a fixed seed."""
    from sklearn.model_selection import train_test_split

    indices = list(range(len(labels)))
    train, test = train_test_split(indices, test_size=test_fraction, random_state=seed, stratify=list(labels))
    return sorted(train), sorted(test)


def _write_table(path: Path, rows: List[List[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        writer.writerows(rows)


def write_digits(root: str | Path, side: int = 32, test_fraction: float = 0.2, seed: int = 0,
                 limit: Optional[int] = None) -> DigitsLayout:
    """Write the digits under `root` (see the module docstring); `limit` keeps the first N
    images (for tests). Training captions cycle through CAPTIONS; each test image has one
    caption, CAPTIONS[0]."""
    root = Path(root)
    images, labels = digit_images(side)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    train, test = split_indices(labels, test_fraction, seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        image.save(root / "images" / f"{i:04d}.png")
    train_rows = [[f"images/{i:04d}.png", CAPTIONS[k % len(CAPTIONS)].format(c=NUMBER_WORDS[labels[i]])]
                  for k, i in enumerate(train)]
    _write_table(root / "train.csv", train_rows)
    _write_table(root / "test.csv", [[f"images/{i:04d}.png", CAPTIONS[0].format(c=NUMBER_WORDS[labels[i]])]
                                     for i in test])
    for name, templates in ((PLAIN, list(TEMPLATES)), (STOP, [t + "." for t in TEMPLATES])):
        folder = root / "zeroshot" / name / "test"
        for i in test:
            (folder / NUMBER_WORDS[labels[i]]).mkdir(parents=True, exist_ok=True)
            images[i].save(folder / NUMBER_WORDS[labels[i]] / f"{i:04d}.png")
        (folder / "templates.json").write_text(json.dumps(templates, indent=1))
    return DigitsLayout(str(root), str(root / "train.csv"), str(root / "test.csv"), str(root / "zeroshot"),
                        str(root / "zeroshot" / PLAIN / "test"), len(train), len(test))


def climp_command(args: List[str], log: Path) -> None:
    """Run `climp ARGS` from this checkout (one thread unless OMP_NUM_THREADS says otherwise),
    its output to `log`; a failure raises with the log's tail."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.setdefault("OMP_NUM_THREADS", "1")
    with log.open("w") as out:
        code = subprocess.call([sys.executable, "-m", "climp.cli", *args], stdout=out, stderr=subprocess.STDOUT,
                               env=env, cwd=REPO)
    if code != 0:
        tail = log.read_text()[-2000:]
        raise RuntimeError(f"climp {args[0]} failed with code {code}; log {log}:\n{tail}")


EVAL_TASKS = ("zeroshot", "retrieval", "caption_shifts", "resolution")
# Re-evaluations of a trained model's weights with one setting changed: what that setting does alone.
SAME_WEIGHTS = {
    "climp-tiny": (("same weights, plain max pooling (`pyramid`)", {"vision_cfg": {"pool": "pyramid"}}),
                   ("same weights, normalisation off", {"tokenizer_cfg": {"normalize": False}})),
}


def run_name(model: str, seed: int, train_sides: str = "") -> str:
    name = Path(model).stem if model.endswith(".json") else model
    name = f"{name}-raw" if model == RAW_CAPTIONS_MODEL else name
    name = f"{name}-sides{train_sides.replace(',', '-')}" if train_sides else name
    return f"{name}-seed{seed}" if seed else name


def eval_settings(layout: DigitsLayout) -> Dict[str, Any]:
    """The evaluation data: both zero-shot sets, the test table, the test class folders at each side."""
    return {"dataset_root": layout.zeroshot_root, "datasets": [PLAIN, STOP], "retrieval_file": layout.test_csv,
            "resolution_data": layout.resolution_folder}


def train_and_evaluate(model: str, layout: DigitsLayout, run_root: Path, steps: int, batch_size: int,
                       resolution: int, seed: int, reuse: bool = False, train_sides: str = "") -> Dict[str, Any]:
    """`climp train --train-data` then `climp eval` on the test split; returns the training
    summary and eval's results. `reuse` keeps a finished run's outputs instead of redoing them;
    `train_sides` trains at several sides (`climp train --train-sides`)."""
    name = run_name(model, seed, train_sides)
    run_root.mkdir(parents=True, exist_ok=True)
    if not (reuse and (run_root / name / "results.json").is_file()):
        climp_command(["train", "--model", model, "--train-data", layout.train_csv, "--steps", str(steps),
                       "--batch-size", str(batch_size), "--warmup", str(max(1, steps // 10)),
                       "--resolution", str(resolution), "--seed", str(seed), "--name", name,
                       "--output-dir", str(run_root), "--no-progress",
                       *(["--train-sides", train_sides] if train_sides else [])], run_root / f"{name}-train.log")
    train_results = json.loads((run_root / name / "results.json").read_text())
    eval_dir = run_root / name / "real-eval"
    if not (reuse and (eval_dir / "results.json").is_file()):
        data = eval_settings(layout)
        climp_command(["eval", "--model", model, "--checkpoint", str(run_root / name / "checkpoints" / "latest"),
                       "--tasks", ",".join(EVAL_TASKS), "--dataset-root", data["dataset_root"],
                       *[arg for d in data["datasets"] for arg in ("--dataset", d)],
                       "--retrieval-file", data["retrieval_file"], "--resolution-data", data["resolution_data"],
                       "--out", str(eval_dir)], run_root / f"{name}-eval.log")
    results = json.loads((eval_dir / "results.json").read_text())["results"][model]
    return {"train": {k: train_results.get(k) for k in ("final_loss", "steps", "train_seconds")}, "eval": results,
            "checkpoint": str(run_root / name / "checkpoints" / "latest")}


def reevaluate(model: str, checkpoint: str, overrides: Dict[str, Any], layout: DigitsLayout) -> Dict[str, Any]:
    """The evaluation of `climp eval` (same tasks and data, Python API) on a checkpoint built
    with config overrides (e.g. another pooling or tokenizer rule)."""
    import torch

    import climp
    from climp.eval import EvalSettings, evaluate

    torch.manual_seed(0)
    net, _, preprocess = climp.create_model_and_transforms(model, pretrained=checkpoint, **overrides)
    settings = EvalSettings.from_dict(eval_settings(layout))
    return evaluate(net, climp.get_tokenizer(net), preprocess, list(EVAL_TASKS), settings)


def summary_row(label: str, results: Dict[str, Any], layout: DigitsLayout) -> Dict[str, Any]:
    """The table's figures from one model's eval results."""
    ev = results["eval"]
    retrieval = ev["retrieval"][layout.test_csv]
    shifts = ev["caption_shifts"][layout.test_csv]
    sides = ev["resolution"][layout.resolution_folder]["sides"]
    ordered = [sides[k] for k in sorted(sides, key=int)]
    stop = shifts["shifts"]["full_stop"]
    return {
        "model": label,
        "zeroshot_top1": ev["zeroshot"][PLAIN]["top1"],
        "zeroshot_top1_stop": ev["zeroshot"][STOP]["top1"],
        "i2t_R@1_class": retrieval.get("class_image_to_text_R@1", retrieval["image_to_text_R@1"]),
        "t2i_R@1_class": retrieval.get("class_text_to_image_R@1", retrieval["text_to_image_R@1"]),
        "full_stop_cosine_mean": stop["cosine_mean"],
        "full_stop_cosine_min": stop["cosine_min"],
        "resolution_top1": [row["zero_shot_top1"] for row in ordered],
        "final_loss": results["train"]["final_loss"],
    }


def markdown_table(rows: List[Dict[str, Any]]) -> str:
    lines = ["| model | zero-shot top-1 (templates without / with \".\") | i->t / t->i class R@1 | "
             "caption + \".\": feature cosine mean / min | zero-shot top-1 at 1x / 2x / 4x side | final loss |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        shift = f"{r['full_stop_cosine_mean']:.3f} / {r['full_stop_cosine_min']:.3f}"
        lines.append(f"| {r['model']} | {r['zeroshot_top1']:.1%} / {r['zeroshot_top1_stop']:.1%} | "
                     f"{r['i2t_R@1_class']:.3f} / {r['t2i_R@1_class']:.3f} | {shift} | "
                     + " / ".join(f"{v:.1%}" for v in r["resolution_top1"])
                     + f" | {r['final_loss']:.3f} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated model names or JSON files")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--resolution", type=int, default=64, help="training side; the PNGs are written at it")
    parser.add_argument("--seed", type=int, default=0, help="training seed (the split's seed is --split-seed)")
    parser.add_argument("--train-sides", default="", help="train at these sides (e.g. 32,64,96), as `climp train`")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--data-dir", default="runs/real_data/digits", help="where the PNGs and tables go")
    parser.add_argument("--run-dir", default="runs/real_data", help="where the training runs go")
    parser.add_argument("--reuse", action="store_true", help="keep finished runs and evaluations found in --run-dir")
    parser.add_argument("--no-same-weights", dest="same_weights", action="store_false",
                        help="skip the same-weights re-evaluations (SAME_WEIGHTS)")
    parser.add_argument("--out", default=None, help="JSON file for every figure")
    args = parser.parse_args(argv)

    layout = write_digits(args.data_dir, side=args.resolution, seed=args.split_seed)
    print(f"digits: {layout.num_train} training and {layout.num_test} test images under {layout.root}")
    rows: List[Dict[str, Any]] = []
    everything: Dict[str, Any] = {}

    def record(label: str, results: Dict[str, Any]) -> None:
        everything[label] = results
        rows.append(summary_row(label, results, layout))
        print(markdown_table(rows[-1:]), flush=True)
        if args.out:  # after every row, so a long run keeps what it finished
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps({"args": vars(args), "layout": asdict(layout), "rows": rows,
                                                  "results": everything}, indent=2))

    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        results = train_and_evaluate(model, layout, Path(args.run_dir), args.steps, args.batch_size,
                                     args.resolution, args.seed, args.reuse, args.train_sides)
        label = (LABELS.get(model, model) + (f" `--train-sides {args.train_sides}`" if args.train_sides else "")
                 + (f" (seed {args.seed})" if args.seed else ""))
        record(label, results)
        for change, overrides in SAME_WEIGHTS.get(model, ()) if args.same_weights else ():
            record(f"{label}, {change}", {"train": results["train"], "overrides": overrides,
                                          "eval": reevaluate(model, results["checkpoint"], overrides, layout)})
    print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
