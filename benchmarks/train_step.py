"""Training-step time of two CLIP models at several image sides, as a ratio measured in one run.

One step is what training repeats minus the optimizer: forward of both towers, open_clip's
contrastive loss, backward. For each side the models take turns for --rounds interleaved
rounds (after one untimed warm-up step each), so load from other processes hits both alike;
the table reports each model's median step and the median of the per-round time ratios
(other / first: above 1 means the first model is faster).

  python benchmarks/train_step.py                                   # climp-tiny vs clip-vit-tiny
  python benchmarks/train_step.py --sides 64,256 --batch 64 --rounds 5
  python benchmarks/train_step.py --unfused   # also the first model with VMamba's unfused SS2D path
  python benchmarks/train_step.py --unfused-text   # also the first model with the unfused Mamba text mixer
"""
from __future__ import annotations

import argparse
import sys
from statistics import median
from typing import Dict, List

from common import contrastive_step, random_batch, timed, write_json

import torch


def int_list(text: str) -> List[int]:
    return [int(v) for v in text.split(",") if v]


def bench_side(models: Dict[str, torch.nn.Module], side: int, batch: int, text_length: int,
               rounds: int) -> Dict[str, object]:
    images, texts = random_batch(batch, side, text_length, seed=side)
    steps = {name: contrastive_step(model, images, texts) for name, model in models.items()}
    for step in steps.values():
        step()
    times: Dict[str, List[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            times[name] += timed(step)
    first, *others = list(steps)
    return {
        "median_seconds": {name: median(t) for name, t in times.items()},
        "times": times,
        "ratios": {f"{o} / {first}": median(b / a for a, b in zip(times[first], times[o])) for o in others},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="climp-tiny,clip-vit-tiny",
                        help="comma-separated model names; the first is compared with the others")
    parser.add_argument("--sides", type=int_list, default=[64, 128, 256, 512])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--text-length", type=int, default=77, help="tokens per caption (the tokenizer's 77)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--unfused", action="store_true",
                        help="add the first model with scan_backend 'cpu' (SS2D unfused: cross-scan, "
                             "plain scan kernel, cross-merge) to measure what the fused op gives")
    parser.add_argument("--unfused-text", action="store_true",
                        help="add the first model with the text tower's scan_backend 'cpu' (the unfused "
                             "channel-first Mamba mixer) to measure what the fused 1D scan gives")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import climp

    torch.manual_seed(0)
    names = args.models.split(",")
    models = {name: climp.create_model(name).train() for name in names}
    if args.unfused:
        models[f"{names[0]} unfused"] = climp.create_model(names[0], vision_cfg={"scan_backend": "cpu"}).train()
    if args.unfused_text:
        models[f"{names[0]} unfused text"] = climp.create_model(names[0], text_cfg={"scan_backend": "cpu"}).train()
    print(f"$ python benchmarks/train_step.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"batch {args.batch}, text length {args.text_length}, {args.rounds} interleaved rounds, "
          f"{args.threads} threads")
    names = list(models)
    print("| side | " + " | ".join(f"{n} step (median)" for n in names) + " | "
          + " | ".join(f"{o} / {names[0]} time" for o in names[1:]) + " |")
    print("|---" * (2 * len(names)) + "|")
    results = {}
    for side in args.sides:
        r = bench_side(models, side, args.batch, args.text_length, args.rounds)
        results[side] = r
        cells = [f"{r['median_seconds'][n] * 1e3:.0f} ms" for n in names]
        cells += [f"{v:.2f}x" for v in r["ratios"].values()]
        print(f"| {side} | " + " | ".join(cells) + " |", flush=True)
    write_json(args.json, args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
