"""Configs as data: dataclasses built from JSON-style dicts that reject unknown keys."""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Type, TypeVar

T = TypeVar("T", bound="FromDict")


class FromDict:
    """Mixin for config dataclasses: `from_dict` refuses unknown keys (they are usually typos
    that would otherwise be silently ignored) and `to_dict` gives the JSON-ready fields.
    `config_label` names the config in the error (default: "<ClassName> keys")."""

    config_label: str = ""

    @classmethod
    def from_dict(cls: Type[T], values: Mapping[str, Any]) -> T:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            label = cls.config_label or f"{cls.__name__} keys"
            raise ValueError(f"unknown {label} {unknown}; known keys: {sorted(known)}")
        return cls(**values)

    def require_positive_ints(self, *names: str) -> None:
        """Raise ValueError naming the first of these fields that is not an int >= 1 (a bool is
        not an int here)."""
        for name in names:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{type(self).__name__}.{name} must be a positive int, got {value!r}")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)
