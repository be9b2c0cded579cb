"""The config mixin: unknown keys and non-positive integer fields are refused by name."""
from dataclasses import dataclass

import pytest

from climp.config_mixin import FromDict


@dataclass
class Sizes(FromDict):
    width: int = 4
    depth: int = 2

    def __post_init__(self) -> None:
        self.require_positive_ints("width", "depth")


def test_round_trip_and_unknown_keys():
    assert Sizes.from_dict({"width": 8}).to_dict() == {"width": 8, "depth": 2}
    with pytest.raises(ValueError, match=r"unknown Sizes keys \['wdith'\]"):
        Sizes.from_dict({"wdith": 8})


@pytest.mark.parametrize("bad", [0, -1, True, 2.0, "3"])
def test_positive_int_fields_reject_other_values(bad):
    with pytest.raises(ValueError, match=r"Sizes.depth must be a positive int"):
        Sizes(depth=bad)
