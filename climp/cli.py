"""`climp`: one command with a subcommand per job. Each subcommand lives in its own package's
`command` module (add_arguments + run), so this file only wires them together."""
from __future__ import annotations

import argparse
import importlib
import sys
import warnings
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


# Exceptions that mean bad input rather than a bug: printed as one line (traceback with --debug).
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
               FloatingPointError)
DEBUG_HELP = "show the full traceback of errors"


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The parser; only the chosen subcommand's module is imported (each pulls in its own stack)."""
    parser = argparse.ArgumentParser(
        prog="climp", description="Contrastive language-image pretraining with Mamba encoders."
    )
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text,
                                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        if name == command:
            module = importlib.import_module(module_name)
            module.add_arguments(command_parser)
            command_parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                        help=DEBUG_HELP)
            command_parser.set_defaults(run=module.run)
    return parser


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"climp: warning: {message}\n"


def main(argv: Optional[List[str]] = None) -> int:
    """Run one subcommand. Bad input prints `climp: error: <message>` and returns 2; an
    exception carrying an `exit_code` (a training stopped by a signal) prints its message and
    returns that code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    if args.debug:
        return int(args.run(args) or 0)
    default_format, warnings.formatwarning = warnings.formatwarning, _one_line_warning
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("climp: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if hasattr(err, "exit_code"):
            print(f"climp: {err}", file=sys.stderr)
            return int(err.exit_code)
        if isinstance(err, USER_ERRORS):
            print(f"climp: error: {err}", file=sys.stderr)
            return 2
        raise
    finally:
        warnings.formatwarning = default_format


if __name__ == "__main__":
    sys.exit(main())
