"""Why a VMamba CLIP tower's retrieval changes above its training side: statistics of one
trained checkpoint on the same test scenes rendered at 1x, 2x and 4x the side.

- embedding consistency: cosine between a scene's image embedding at 1x and at each side;
- pooled features: mean over channels of each stage's pooled vector (max- or mean-pooled);
- the scan's decay exp(delta * A) per stage: its quantiles, and the memory in tokens
  1 / (1 - decay) as a share of the scan's row length (the map's width).

python benchmarks/resolution/diagnose.py --model MODEL --checkpoint CKPT [--samples 48]
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict

import torch
import torch.nn.functional as F

import climp
from climp.data import synthetic
from climp.eval.features import clip_normalize, pixels_from_image
from climp.models.vmamba import SS2D
from climp.ops import cross_scan


def record_decays(tower, store):
    """Wrap every SS2D's scan_2d to record the decays of its scan (per stage, by map width)."""
    for module in tower.modules():
        if isinstance(module, SS2D):
            original = module.scan_2d

            def wrapped(x, module=module, original=original):
                xs = cross_scan(x)
                x_dbl = torch.matmul(module.x_proj_weight, xs)
                dts = x_dbl.split([module.dt_rank, module.d_state, module.d_state], dim=2)[0]
                dts = torch.matmul(module.dt_projs_weight, dts) + module.dt_projs_bias[None, :, :, None]
                delta = F.softplus(dts)  # (batch, 4, d_inner, L)
                a = -torch.exp(module.A_logs.float()).view(4, module.d_inner, module.d_state)[:, :, 0]
                decay = torch.exp(delta * a[None, :, :, None])
                store[x.shape[-1]].append(decay.flatten())
                return original(x)
            module.scan_2d = wrapped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--checkpoint", default=None, help="weights (default: random init)")
    parser.add_argument("--samples", type=int, default=48)
    parser.add_argument("--scales", default="1,2,4")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    model, _, _ = climp.create_model_and_transforms(args.model, pretrained=args.checkpoint)
    model.eval()
    tower = model.visual
    base = model.config["vision_cfg"]["image_size"]
    scales = [int(s) for s in args.scales.split(",")]
    decays = defaultdict(list)
    record_decays(tower, decays)
    dims = list(tower.cfg.dims)
    result = {"model": args.model, "pool": tower.cfg.pool, "sides": {}}
    embeddings = {}
    for scale in scales:
        side = base * scale
        data = synthetic.retrieval_set("test", args.samples, side, 0, captions_per_image=1)
        images = torch.stack([clip_normalize(pixels_from_image(data[i][0])) for i in range(len(data))])
        decays.clear()
        with torch.no_grad():
            feats = tower.forward_features(images)
            emb = F.normalize(tower.head(feats), dim=-1)
        embeddings[scale] = emb
        row = {"side": side}
        if tower.stage_norms is not None:
            parts = torch.split(feats, dims, dim=-1)
            row["pooled_mean_per_stage"] = [round(p.mean().item(), 4) for p in parts]
        else:
            row["pooled_mean"] = round(feats.mean().item(), 4)
        row["pooled_norm"] = round(feats.norm(dim=-1).mean().item(), 3)
        row["cos_to_1x"] = round((emb * embeddings[scales[0]]).sum(-1).mean().item(), 4)
        stages = {}
        for width, chunks in sorted(decays.items(), reverse=True):
            d = torch.cat(chunks)
            d = d[torch.randperm(d.numel())[:2_000_000]]
            q = torch.quantile(d.double(), torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)).tolist()
            memory = (1.0 / (1.0 - d.double().clamp(max=1 - 1e-9))).median().item()
            stages[f"width {width}"] = {"decay_q10_q50_q90": [round(v, 4) for v in q],
                                        "median_memory_tokens": round(memory, 2),
                                        "memory_over_width": round(memory / width, 4),
                                        "decay_mean": round(d.mean().item(), 4)}
        row["scan"] = stages
        result["sides"][str(side)] = row
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
