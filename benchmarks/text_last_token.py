"""What computing the text feature at the pooled token only saves, measured in one run.

A Mamba text tower with pooling "last" runs its last layer's work after the scan (gate half of
in_proj, gate, out_proj, residual, drop path) and the final norm on the pooled token of each row
only. This compares it with the full computation on the same model and weights (every layer
and the final norm on every token, then pooling: `tower.pool(tower.backbone(ids), ids)`): the
text tower's forward+backward and a whole training step (both towers, CLIP loss, backward, as
benchmarks/train_step.py), the variants taking turns for --rounds interleaved rounds. Reported:
median times and the median of the per-round ratios full / pooled (above 1: pooled is faster).

  python benchmarks/text_last_token.py                       # climp-tiny, 64 px, batch 64, 77 tokens
  python benchmarks/text_last_token.py --rounds 9 --cpu-time
"""
from __future__ import annotations

import argparse
import sys
from statistics import median
from typing import Callable, Dict, List

from common import add_clock_arguments, contrastive_step, interleaved, random_batch, set_up_clock, write_json

import torch


def full_text_path(tower: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The tower's forward computed on every token, then pooled (the reference computation)."""
    def forward(token_ids: torch.Tensor) -> torch.Tensor:
        token_ids = tower.trim(token_ids.long())
        return tower.proj(tower.pool(tower.backbone(token_ids), token_ids))

    return forward


def with_text_forward(model: torch.nn.Module, step: Callable[[], None],
                      forward: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], None]:
    """step() run with model.text's forward replaced by `forward`."""
    def run() -> None:
        model.text.forward = forward
        try:
            step()
        finally:
            del model.text.forward

    return run


def text_step(tower: Callable[[torch.Tensor], torch.Tensor], model: torch.nn.Module,
              texts: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        tower(texts).sum().backward()
        model.zero_grad(set_to_none=True)

    return step


def ratio(times: Dict[str, List[float]], first: str, other: str) -> float:
    return median(b / a for a, b in zip(times[first], times[other]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="climp-tiny")
    parser.add_argument("--side", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--text-length", type=int, default=77)
    parser.add_argument("--rounds", type=int, default=5)
    add_clock_arguments(parser)
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    clock = set_up_clock(args)
    import climp

    torch.manual_seed(0)
    model = climp.create_model(args.model).train()
    if getattr(model.text.cfg, "pooling", None) != "last":
        raise SystemExit(f"{args.model}'s text tower does not pool at the last token: nothing to compare")
    images, texts = random_batch(args.batch, args.side, args.text_length, seed=args.side)
    full = full_text_path(model.text)
    steps = {
        "text pooled": text_step(model.text, model, texts),
        "text full": text_step(full, model, texts),
        "train step pooled": contrastive_step(model, images, texts),
        "train step full": with_text_forward(model, contrastive_step(model, images, texts), full),
    }
    times = interleaved(steps, args.rounds, clock)
    print(f"$ python benchmarks/text_last_token.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"{args.model}, {args.side} px, batch {args.batch}, {args.text_length} tokens, {args.rounds} interleaved "
          f"rounds, {args.threads} threads{', CPU time' if args.cpu_time else ''}")
    print("| what | pooled (ms) | full (ms) | saved (ms) | full / pooled time |")
    print("|---|---|---|---|---|")
    results = {}
    for what in ("text", "train step"):
        pooled, whole = median(times[f"{what} pooled"]), median(times[f"{what} full"])
        results[what] = {"pooled_s": pooled, "full_s": whole, "ratio": ratio(times, f"{what} pooled", f"{what} full")}
        print(f"| {what} | {1e3 * pooled:.1f} | {1e3 * whole:.1f} | {1e3 * (whole - pooled):.1f} | "
              f"{results[what]['ratio']:.3f} |")
    write_json(args.json, args, {"times": times, **results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
