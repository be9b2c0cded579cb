"""Typed settings for every job: dataclasses whose fields carry their help in metadata, turned
into argparse flags, read from YAML/JSON recipes, and merged as defaults < recipe < explicit flags.

A field's metadata (see `setting`) holds its help text and help group, and optionally its flag
spelling, old spellings kept as aliases, a metavar, choices, how a list is given on the command
line ("comma": `--x a,b`, "append": `--x a --x b`, "nargs": `--x a b`) and whether a value is
required after the merge, or a `parse` function (text -> value) replacing the one the type gives.
Types come from the type hints: Optional, bool (`--x/--no-x`), int, float, str, Path, Literal
(choices) and List/Tuple of those. A field whose type is itself a settings dataclass contributes
its fields as flags and recipe keys of their own (flat: field names must not clash), so job
settings compose library settings.
"""
from __future__ import annotations

import argparse
import collections.abc
import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Mapping, Optional, Sequence, Tuple, Type, TypeVar, Union

T = TypeVar("T")
LIST_STYLES = ("comma", "append", "nargs")


def setting(default: Any = dataclasses.MISSING, *, help: str, group: str = "options",
            flag: Optional[str] = None, aliases: Sequence[str] = (), metavar: Optional[str] = None,
            choices: Optional[Sequence[Any]] = None, list_style: str = "comma", required: bool = False,
            parse: Optional[Callable[[str], Any]] = None, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with its command-line description in metadata."""
    if list_style not in LIST_STYLES:
        raise ValueError(f"list_style must be one of {LIST_STYLES}, got {list_style!r}")
    metadata = {"help": help, "group": group, "flag": flag, "aliases": tuple(aliases), "metavar": metavar,
                "choices": None if choices is None else tuple(choices), "list_style": list_style,
                "required": required, "parse": parse}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def _strip_optional(hint: Any) -> Any:
    if typing.get_origin(hint) is Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _item_type(hint: Any) -> Tuple[Any, bool]:
    """(scalar type, is a list) of a hint without Optional."""
    origin = typing.get_origin(hint)
    if origin in (list, tuple, collections.abc.Sequence):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return (args[0] if args else str), True
    return hint, False


def _scalar_parser(hint: Any, choices: Optional[Sequence[Any]]) -> Tuple[Callable[[str], Any], Optional[Tuple[Any, ...]]]:
    """(string -> value, allowed values) for a scalar type."""
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        hint = type(choices[0])
    if hint not in (int, float, str, Path):
        raise TypeError(f"settings fields support int, float, str, Path, bool, Literal and lists of them, not {hint}")
    return hint, (tuple(choices) if choices is not None else None)


def _comma_list(convert: Callable[[str], Any], choices: Optional[Tuple[Any, ...]]) -> Callable[[str], List[Any]]:
    def parse(text: str) -> List[Any]:
        items = [convert(t.strip()) for t in text.split(",") if t.strip()]
        bad = [t for t in items if choices is not None and t not in choices]
        if bad or not items:
            allowed = f"; choose from {','.join(map(str, choices))}" if choices else ""
            raise argparse.ArgumentTypeError(f"invalid or empty list {text!r}{allowed}")
        return items
    parse.__name__ = "comma-separated list"
    return parse


def _default_of(spec: dataclasses.Field) -> Any:
    if spec.default is not dataclasses.MISSING:
        return spec.default
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    return None


def flags_of(spec: dataclasses.Field) -> List[str]:
    """A field's flag and its aliases."""
    main = spec.metadata.get("flag") or "--" + spec.name.replace("_", "-")
    return [main, *spec.metadata.get("aliases", ())]


def settings_fields(cls: type) -> List[Tuple[dataclasses.Field, Any]]:
    """(field, resolved type hint) of a settings dataclass; every field must have help text."""
    hints = typing.get_type_hints(cls, include_extras=False)
    out = []
    for spec in dataclasses.fields(cls):
        if not spec.metadata.get("help"):
            raise TypeError(f"{cls.__name__}.{spec.name} has no help text in its metadata")
        out.append((spec, hints[spec.name]))
    return out


def leaf_fields(cls: type) -> List[Tuple[dataclasses.Field, Any]]:
    """The fields of `cls` and of the settings dataclasses nested in it, flattened; TypeError when
    two share a name."""
    out: List[Tuple[dataclasses.Field, Any]] = []
    for spec, hint in settings_fields(cls):
        out += leaf_fields(hint) if _is_settings(hint) else [(spec, hint)]
    names = [spec.name for spec, _ in out]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise TypeError(f"{cls.__name__}: nested settings share the field names {clashes}")
    return out


def _is_settings(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def add_settings_arguments(parser: argparse.ArgumentParser, cls: type, recipe: bool = True) -> None:
    """One flag per field of `cls`, grouped by the fields' help groups. Flags left unset stay out
    of the namespace (default SUPPRESS), so `resolve` can tell explicit values from defaults."""
    if recipe:
        parser.add_argument("--config", dest="config", default=argparse.SUPPRESS, metavar="RECIPE",
                            help="YAML or JSON recipe with any of the options below (explicit flags win)")
    groups: Dict[str, Any] = {}
    for spec, hint in leaf_fields(cls):
        meta = spec.metadata
        title = meta.get("group", "options")
        if title == "options":  # argparse's own group of optional arguments
            group = parser
        else:
            group = groups.get(title) or groups.setdefault(title, parser.add_argument_group(title))
        default = _default_of(spec)
        text = meta["help"]
        if meta.get("required"):
            text += " (required)"
        elif default is not None and default != []:
            shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else repr(default)
            text += f" (default: {shown})"
        kwargs: Dict[str, Any] = dict(dest=spec.name, default=argparse.SUPPRESS, help=text)
        base = _strip_optional(hint)
        if base is bool:
            group.add_argument(*flags_of(spec), action=argparse.BooleanOptionalAction, **kwargs)
            continue
        item, is_list = _item_type(base)
        convert, choices = _scalar_parser(item, meta.get("choices"))
        if meta.get("parse") is not None:
            kwargs.update(type=meta["parse"], metavar=meta.get("metavar") or ("A,B,..." if is_list else None))
        elif is_list and meta.get("list_style", "comma") == "comma":
            kwargs.update(type=_comma_list(convert, choices), metavar=meta.get("metavar") or "A,B,...")
        else:
            kwargs.update(type=convert, choices=choices)
            if is_list:
                kwargs.update(action="append") if meta["list_style"] == "append" else kwargs.update(nargs="+")
            if choices is None:
                kwargs["metavar"] = meta.get("metavar") or {int: "N", float: "X", Path: "PATH"}.get(convert)
        group.add_argument(*flags_of(spec), **kwargs)


def explicit_values(args: argparse.Namespace, cls: type) -> Dict[str, Any]:
    """The fields of `cls` (nested ones included, flat) given explicitly on the command line."""
    names = {f.name for f, _ in leaf_fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names}


def load_recipe(path: Union[str, Path]) -> Dict[str, Any]:
    """Read a YAML or JSON recipe into a dict with underscore keys (dashes accepted)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe not found: {path}")
    text = path.read_text()
    if path.suffix.lower() == ".json":
        recipe = json.loads(text)
    elif path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        recipe = yaml.safe_load(text) or {}
    else:
        raise ValueError(f"recipe {path} must end in .json, .yaml or .yml")
    if not isinstance(recipe, dict):
        raise ValueError(f"recipe {path} must hold a mapping of option: value, got {type(recipe).__name__}")
    return {str(k).lstrip("-").replace("-", "_"): v for k, v in recipe.items()}


def recipe_values(cls: type, recipe: Mapping[str, Any], source: str = "recipe") -> Dict[str, Any]:
    """Recipe keys as field names (a flag's alias spelling is accepted), with values coerced to the
    field types (a comma-separated string for a list, a string for a Path); unknown keys are errors
    naming them."""
    names: Dict[str, Tuple[dataclasses.Field, Any]] = {}
    for spec, hint in leaf_fields(cls):
        for spelling in [spec.name] + [f.lstrip("-").replace("-", "_") for f in flags_of(spec)]:
            names.setdefault(spelling, (spec, hint))
    unknown = sorted(k for k in recipe if k not in names)
    if unknown:
        raise ValueError(f"unknown keys {unknown} in {source} for {cls.__name__}; known keys: "
                         f"{sorted(f.name for f, _ in leaf_fields(cls))}")
    out: Dict[str, Any] = {}
    for key, value in recipe.items():
        spec, hint = names[key]
        parse = spec.metadata.get("parse")
        if parse is not None and isinstance(value, str):
            try:
                out[spec.name] = parse(value)
            except argparse.ArgumentTypeError as err:
                raise ValueError(f"{source}: {key}: {err}") from None
        else:
            out[spec.name] = _coerce(value, _strip_optional(hint))
        _check_choices(key, out[spec.name], spec, hint, source)
    return out


def _check_choices(key: str, value: Any, spec: dataclasses.Field, hint: Any, source: str) -> None:
    """ValueError when a recipe value is not among the field's choices (argparse checks flags)."""
    base = _strip_optional(hint)
    if base is bool or value is None:
        return
    item, is_list = _item_type(base)
    _, choices = _scalar_parser(item, spec.metadata.get("choices"))
    bad = [v for v in (value if is_list else [value]) if choices is not None and v not in choices]
    if bad:
        raise ValueError(f"{source}: {key}={value!r} is not one of {list(choices)}")


def _coerce(value: Any, hint: Any) -> Any:
    item, is_list = _item_type(hint)
    if is_list and isinstance(value, str):
        value = [t.strip() for t in value.split(",") if t.strip()]
    if is_list and isinstance(value, (list, tuple)):
        return [_coerce(v, item) for v in value]
    if item is Path and isinstance(value, str):
        return Path(value)
    if item in (int, float) and isinstance(value, str):
        return item(value)
    return value


def check_required(settings: Any) -> None:
    """ValueError naming the first required field still unset."""
    for spec in dataclasses.fields(settings):
        value = getattr(settings, spec.name)
        if dataclasses.is_dataclass(value):
            check_required(value)
        elif spec.metadata.get("required") and (value is None or value == []):
            raise ValueError(f"{flags_of(spec)[0]} is required (on the command line or in --config)")


def resolve(cls: Type[T], explicit: Mapping[str, Any], recipe_path: Optional[Union[str, Path]] = None) -> T:
    """Defaults < recipe file < explicit values, as an instance of `cls` (its `from_dict` when it
    has one), with required fields checked."""
    merged = recipe_values(cls, load_recipe(recipe_path), str(recipe_path)) if recipe_path else {}
    merged.update(explicit)
    settings = from_values(cls, merged)
    check_required(settings)
    return settings


def from_values(cls: Type[T], values: Mapping[str, Any], label: str = "") -> T:
    """`build` after refusing keys that name no field (nested ones included)."""
    unknown = sorted(set(values) - {f.name for f, _ in leaf_fields(cls)})
    if unknown:
        raise ValueError(f"unknown {label or cls.__name__} keys {unknown}; known keys: "
                         f"{sorted(f.name for f, _ in leaf_fields(cls))}")
    return build(cls, values)


def build(cls: Type[T], values: Mapping[str, Any]) -> T:
    """An instance of `cls` from flat field values (nested settings take theirs by name), through
    the class's `from_dict` when it has one."""
    own: Dict[str, Any] = {}
    for spec, hint in settings_fields(cls):
        if _is_settings(hint):
            own[spec.name] = build(hint, values)
        elif spec.name in values:
            own[spec.name] = values[spec.name]
    from_dict = getattr(cls, "from_dict", None)
    return from_dict(own) if from_dict is not None else cls(**own)


def from_args(cls: Type[T], args: argparse.Namespace) -> T:
    """The settings of a parsed command line: its --config recipe, then its explicit flags."""
    return resolve(cls, explicit_values(args, cls), getattr(args, "config", None))
