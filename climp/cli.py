"""`climp`: one command with a subcommand per job. Each subcommand lives in its own package's
`command` module (add_arguments + run), so this file only wires them together."""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

# name -> (module with add_arguments/run, one-line help)
SUBCOMMANDS = {
    "train": ("climp.train.command", "train a model (default: climp-tiny on the embedded benchmark)"),
    "eval": ("climp.eval.command", "zero-shot, retrieval, OOD, resolution, dense captions, hubness, shape bias"),
    "bench": ("climp.eval.bench_command", "FLOPs, peak memory and throughput across resolutions and lengths"),
    "hessian": ("climp.analysis.command", "Hessian spectrum, trace and loss landscape of the contrastive loss"),
    "reproduce": ("climp.reproduce.command", "train, evaluate and analyse the papers' models side by side"),
    "models": ("climp.models.command", "list the named models with their parameter counts"),
    "convert": ("climp.models.convert", "a released CLIMP or CLIP-Mamba checkpoint -> model.safetensors + config.json"),
}


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The parser; only the chosen subcommand's module is imported (each pulls in its own stack)."""
    parser = argparse.ArgumentParser(
        prog="climp", description="Contrastive language-image pretraining with Mamba encoders."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text,
                                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        if name == command:
            module = importlib.import_module(module_name)
            module.add_arguments(command_parser)
            command_parser.set_defaults(run=module.run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
