"""The dataclass-to-argparse adapter: types from hints, aliases, bool flags, lists, recipe
precedence, help for every field, unknown recipe keys."""
import argparse
import dataclasses
import json
from pathlib import Path
from typing import List, Literal, Optional

import pytest

from climp.settings import add_settings_arguments, from_args, resolve, setting, settings_fields


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


@pytest.mark.parametrize("module", ["climp.train.config"])
def test_every_job_setting_has_help_text(module):
    import importlib

    mod = importlib.import_module(module)
    classes = [v for v in vars(mod).values() if dataclasses.is_dataclass(v) and isinstance(v, type)
               and v.__module__ == module]
    assert classes
    for cls in classes:
        for spec, _ in settings_fields(cls):
            assert len(spec.metadata["help"]) > 5, (cls, spec.name)
