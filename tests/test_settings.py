"""The dataclass-to-argparse adapter: types from hints, aliases, bool flags, lists, recipe
precedence, help for every field, unknown recipe keys."""
import argparse
import dataclasses
import json
from pathlib import Path
from typing import List, Literal, Optional

import pytest

from climp.cli import SUBCOMMANDS
from climp.settings import (add_settings_arguments, flags_of, from_args, from_values, leaf_fields, resolve, setting,
                            settings_fields)


@dataclasses.dataclass
class Toy:
    name: str = setting("a", help="a name", group="first")
    count: int = setting(3, help="a count", group="first", aliases=["--n-items"])
    rate: Optional[float] = setting(None, help="a rate", group="second")
    fast: bool = setting(False, help="go fast", group="second")
    maybe: Optional[bool] = setting(None, help="tri-state")
    sizes: List[int] = setting(default_factory=lambda: [1, 2], help="sizes")
    repeated: List[str] = setting(default_factory=list, help="repeatable", list_style="append", flag="--item")
    params: List[str] = setting(default_factory=lambda: ["all"], help="several", list_style="nargs")
    out: Optional[Path] = setting(None, help="output directory", required=True)
    mode: Literal["x", "y"] = setting("x", help="a mode")
    style: str = setting("s", help="a style", choices=("s", "t"))


def _parser():
    parser = argparse.ArgumentParser(prog="toy")
    add_settings_arguments(parser, Toy)
    return parser


def _settings(argv):
    return from_args(Toy, _parser().parse_args(argv))


def test_types_come_from_the_hints_and_defaults_from_the_dataclass():
    s = _settings(["--out", "o", "--count", "5", "--rate", "0.5", "--sizes", "4,8", "--mode", "y"])
    assert s == Toy(out=Path("o"), count=5, rate=0.5, sizes=[4, 8], mode="y")
    assert isinstance(s.out, Path) and isinstance(s.count, int) and isinstance(s.rate, float)
    for bad in (["--count", "x"], ["--mode", "z"], ["--style", "u"], ["--sizes", "4,b"]):
        with pytest.raises(SystemExit):
            _parser().parse_args(bad)


def test_aliases_bool_flags_and_list_styles():
    s = _settings(["--out", "o", "--n-items", "7", "--fast", "--no-maybe", "--item", "a", "--item", "b",
                   "--params", "visual", "text"])
    assert (s.count, s.fast, s.maybe, s.repeated, s.params) == (7, True, False, ["a", "b"], ["visual", "text"])
    assert _settings(["--out", "o", "--maybe"]).maybe is True
    assert _settings(["--out", "o"]).maybe is None


def test_recipe_values_sit_between_defaults_and_explicit_flags(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("n-items: 4\nrate: 0.1\nsizes: 16,32\nout: here\n")  # alias spelling accepted
    s = _settings(["--config", str(recipe), "--rate", "0.2"])
    assert (s.count, s.rate, s.sizes, s.out, s.name) == (4, 0.2, [16, 32], Path("here"), "a")
    as_json = tmp_path / "r.json"
    as_json.write_text(json.dumps({"sizes": [5], "fast": True, "out": "x"}))
    s = resolve(Toy, {"fast": False}, as_json)
    assert (s.sizes, s.fast, s.out) == ([5], False, Path("x"))


def test_unknown_recipe_keys_and_missing_required_values_are_errors(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("cuont: 9\nout: o\n")
    with pytest.raises(ValueError, match=r"unknown keys \['cuont'\]"):
        _settings(["--config", str(recipe)])
    recipe.write_text("mode: z\nout: o\n")
    with pytest.raises(ValueError, match="mode='z' is not one of"):
        _settings(["--config", str(recipe)])
    with pytest.raises(ValueError, match="--out is required"):
        _settings([])
    with pytest.raises(FileNotFoundError):
        _settings(["--config", str(tmp_path / "missing.yaml")])


def test_help_is_grouped_and_every_field_has_help():
    text = _parser().format_help()
    assert "first:" in text and "second:" in text
    assert "a count (default: 3)" in text and "--n-items" in text and "--no-fast" in text

    @dataclasses.dataclass
    class NoHelp:
        x: int = 1

    with pytest.raises(TypeError, match="NoHelp.x has no help"):
        settings_fields(NoHelp)


JOBS = {"train": "climp.train.config:TrainConfig", "eval": "climp.eval.job:EvalJob",
        "hessian": "climp.analysis.job:HessianJob", "bench": "climp.eval.bench:BenchSettings",
        "reproduce": "climp.reproduce.job:ReproduceSettings"}


@pytest.mark.parametrize("command", sorted(JOBS))
def test_every_job_setting_has_help_text_and_a_flag_in_the_help(command):
    import importlib

    module, name = JOBS[command].split(":")
    cls = getattr(importlib.import_module(module), name)
    parser = argparse.ArgumentParser(prog=f"climp {command}")
    importlib.import_module(SUBCOMMANDS[command][0]).add_arguments(parser)
    text = parser.format_help()
    for spec, _ in leaf_fields(cls):
        assert len(spec.metadata["help"]) > 5, (cls, spec.name)
        assert flags_of(spec)[0] in text, spec.name
    assert "--config" in text


@dataclasses.dataclass
class Inner:
    depth: int = setting(2, help="inner depth", group="inner")
    tags: List[str] = setting(default_factory=list, help="inner tags")


@dataclasses.dataclass
class Outer:
    name: str = setting("o", help="outer name")
    inner: Inner = setting(default_factory=Inner, help="nested settings")


def test_nested_settings_are_flat_flags_and_recipe_keys(tmp_path):
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser, Outer)
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"depth": 5, "tags": "a,b"}))
    s = from_args(Outer, parser.parse_args(["--config", str(recipe), "--name", "x", "--depth", "7"]))
    assert s == Outer(name="x", inner=Inner(depth=7, tags=["a", "b"]))
    with pytest.raises(ValueError, match=r"unknown Outer keys \['inner'\]"):
        from_values(Outer, {"inner": {}})

    @dataclasses.dataclass
    class Clash:
        depth: int = setting(1, help="clashes with Inner.depth")
        inner: Inner = setting(default_factory=Inner, help="nested settings")

    with pytest.raises(TypeError, match="depth"):
        leaf_fields(Clash)


def test_eval_and_hessian_recipes_under_explicit_flags(tmp_path):
    from climp.analysis import command as hessian_command
    from climp.analysis.job import HessianJob
    from climp.eval import command as eval_command
    from climp.eval.job import EvalJob

    recipe = tmp_path / "eval.yaml"
    recipe.write_text("model: clip-vit-tiny\nout: results\nnum-samples: 3\ntasks: zeroshot,shifts\n"
                      "shifts: [contrast]\ndataset: [cifar10]\ndataset_root: data\n")
    parser = argparse.ArgumentParser()
    eval_command.add_arguments(parser)
    job = from_args(EvalJob, parser.parse_args(["--config", str(recipe), "--num-samples", "4"]))
    assert (job.models, job.out, job.tasks) == (["clip-vit-tiny"], Path("results"), ["zeroshot", "shifts"])
    assert (job.settings.num_samples, job.settings.shifts, job.settings.datasets) == (4, ["contrast"], ["cifar10"])
    recipe.write_text("model: clip-vit-tiny\nout: results\ntasks: zeroshot,retrievl\n")
    with pytest.raises(ValueError, match="unknown or no eval tasks"):
        from_args(EvalJob, parser.parse_args(["--config", str(recipe)]))

    recipe = tmp_path / "hessian.json"
    recipe.write_text(json.dumps({"model": "climp-tiny", "top_k": 3, "params": ["visual"], "no_such": 1}))
    parser = argparse.ArgumentParser()
    hessian_command.add_arguments(parser)
    with pytest.raises(ValueError, match=r"unknown keys \['no_such'\]"):
        from_args(HessianJob, parser.parse_args(["--config", str(recipe)]))
    recipe.write_text(json.dumps({"model": "climp-tiny", "top_k": 3, "params": ["visual"], "landscape": "2d"}))
    job = from_args(HessianJob, parser.parse_args(["--config", str(recipe), "--top-k", "4", "--no-progress"]))
    assert (job.model, job.params, job.settings.top_k, job.settings.landscape, job.settings.progress) == (
        "climp-tiny", ["visual"], 4, "2d", False)
