"""How much a contrastive batch of embedded training scenes needs each attribute.

For each attribute A, an oracle that reads every attribute of a scene but A can match an image to
its caption except where another scene of the batch differs from it only in A. Per attribute this
prints the share of scenes with such a twin, and the oracle's contrastive loss (mean log of the
number of batch scenes it cannot tell apart; 0 for a perfect model) when it ignores A alone,
and when it knows only the attributes a model learns first (colour, position, count, background).

    python benchmarks/attribute_needs.py --batch-size 64 --batches 100
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from collections import Counter
from typing import Dict, FrozenSet, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from climp.data.scenes import Scene  # noqa: E402
from climp.data.synthetic import SyntheticScenes  # noqa: E402

ATTRIBUTES = ("shape", "colour", "size", "position", "background", "count")


def description(scene: Scene, known: FrozenSet[str]) -> Tuple:
    """What an oracle knowing only `known` sees of a scene: the kind, the object count and, per
    object, the known attributes (as a sorted tuple, so object order does not matter)."""
    objects = tuple(sorted(tuple(getattr(o, a) if a in known else None
                                 for a in ("shape", "colour", "size", "position")) for o in scene.objects))
    count = len(scene.objects) if "count" in known else None
    background = scene.background if "background" in known else None
    return scene.kind, count, background, objects


def batch_loss(scenes, known: FrozenSet[str]) -> Tuple[float, float]:
    """(mean log of the number of scenes sharing each scene's description, share with a twin)."""
    seen = [description(s, known) for s in scenes]
    counts = Counter(seen)
    return (sum(math.log(counts[d]) for d in seen) / len(seen),
            sum(counts[d] > 1 for d in seen) / len(seen))


def measure(batch_size: int, batches: int, seed: int) -> Dict[str, Tuple[float, float]]:
    ds = SyntheticScenes("train", num_samples=batch_size * batches, seed=seed)
    everything = frozenset(ATTRIBUTES)
    cases = {f"all but {a}": everything - {a} for a in ATTRIBUTES}
    cases["all"] = everything
    cases["colour, position, count, background"] = frozenset({"colour", "position", "count", "background"})
    cases["+ size"] = frozenset({"colour", "position", "count", "background", "size"})
    results = {}
    for name, known in cases.items():
        sums = [0.0, 0.0]
        for b in range(batches):
            loss, twins = batch_loss([ds.scene(b * batch_size + i) for i in range(batch_size)], known)
            sums[0] += loss
            sums[1] += twins
        results[name] = (sums[0] / batches, sums[1] / batches)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"batch {args.batch_size}, {args.batches} batches; chance loss ln {args.batch_size} = "
          f"{math.log(args.batch_size):.3f}")
    print(f"{'oracle knows':40s} {'loss (nats)':>12s} {'scenes with a twin':>20s}")
    for name, (loss, twins) in measure(args.batch_size, args.batches, args.seed).items():
        print(f"{name:40s} {loss:12.4f} {100 * twins:19.2f}%")


if __name__ == "__main__":
    main()
