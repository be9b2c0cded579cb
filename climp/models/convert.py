"""`climp convert IN OUT`: a released CLIMP or CLIP-Mamba checkpoint -> a CLIMP model directory
(model.safetensors + config.json sidecar, as `climp train` writes), loadable with
`climp.create_model(name, pretrained=OUT)` or `climp.load_checkpoint(OUT)`."""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any, Optional, Union

import torch

from .checkpoint_files import write_model_files
from .factory import get_model_config, merge_overrides, model_from_config
from .released import WEIGHT_CHOICES, infer_model_name, read_released, to_climp_state_dict
from .weights import check_state_dict

PathLike = Union[str, Path]


def convert_released(src: PathLike, out: PathLike, model_name: Optional[str] = None, weights: Optional[str] = None,
                     tokenizer: Optional[PathLike] = None, **overrides: Any) -> Path:
    """Rename, shape-check (against the model built on the meta device) and write a released file.

    model_name: our named model; by default CLIP-Mamba's args.model or, for CLIMP, the text
    backbone's kind. weights: "ema" (CLIP-Mamba's default) or "online". tokenizer: a tokenizer.json
    (or its directory) copied beside the weights, where get_tokenizer finds it.
    """
    state, fmt, meta = read_released(src)
    if fmt is None:
        raise ValueError(f"{src} is neither a CLIMP release (vision_encoder.*, text_encoder.*) nor a CLIP-Mamba "
                         "checkpoint (visual.*, image_projection, token_embedding.weight, ...)")
    name = model_name or infer_model_name(state, fmt, meta)
    if name is None:
        raise ValueError(f"cannot tell which model {src} holds (args.model: {meta.get('args', {}).get('model')!r}); "
                         "pass --model")
    cfg = merge_overrides(get_model_config(name), overrides)
    cfg.pop("tokenizer", None)
    with torch.device("meta"):
        model = model_from_config(cfg)
    converted = to_climp_state_dict(state, fmt, cfg["vision_cfg"].get("type"), weights)
    check_state_dict(model.state_dict(), converted, source=f"{src} ({fmt} layout) for {name}")


    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer is not None:
        file = Path(tokenizer) / "tokenizer.json" if Path(tokenizer).is_dir() else Path(tokenizer)
        if not file.is_file():
            raise FileNotFoundError(f"no tokenizer.json at {tokenizer}")
        shutil.copyfile(file, out / "tokenizer.json")
    source = {"path": str(src), "format": fmt, "weights": weights or ("ema" if fmt == "clip-mamba" else None),
              **{k: meta[k] for k in ("epoch", "args") if k in meta}}
    write_model_files(out, converted, {"model_name": name, "model_cfg": cfg, "converted_from": source})
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", type=Path, help="released file or directory (CLIMP model.safetensors, "
                                               "CLIP-Mamba checkpoint.pt / checkpoint_best.pt)")
    parser.add_argument("out", type=Path, help="output directory")
    parser.add_argument("--model", default=None, help="named model (default: read from the file)")
    parser.add_argument("--weights", choices=WEIGHT_CHOICES, default=None,
                        help="CLIP-Mamba: EMA (default, as evaluated in the paper) or online weights")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer.json (or its directory) to copy beside the weights (CLIMP's models)")


def run(args: argparse.Namespace) -> int:
    out = convert_released(args.src, args.out, args.model, args.weights, args.tokenizer)
    print(f"wrote {out / 'model.safetensors'} and {out / 'config.json'}")
    return 0
