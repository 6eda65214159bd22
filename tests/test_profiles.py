"""Profiles: known names, validated overrides, clear errors. Run: pytest tests/test_profiles.py"""
import pytest

from infra_lib.profiles import PROFILES, get_profile, parse_overrides


def test_three_profiles():
    assert {"smoke", "tiny", "paper"} <= set(PROFILES)


def test_unknown_profile_names_the_known_ones():
    with pytest.raises(KeyError, match="unknown profile 'tinyy'.*smoke"):
        get_profile("tinyy")


def test_override_applies_and_validates():
    p = get_profile("tiny", {"seed": 3})
    assert p.seed == 3 and PROFILES["tiny"].seed == 0
    with pytest.raises(ValueError, match="seed"):
        get_profile("tiny", {"seed": -1})


def test_unknown_parameter_is_named():
    with pytest.raises(KeyError, match="unknown parameter 'sed'.*known"):
        get_profile("tiny", {"sed": 1})


def test_parse_overrides_literals():
    assert parse_overrides(["seed=2", "name=abc", "x.y=[1, 2]"]) == {"seed": 2, "name": "abc", "x.y": [1, 2]}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_overrides(["seed"])
