"""Profiles: known names, validated overrides, clear errors. Run: pytest tests/study/test_profiles.py"""
import pytest

from infra_study.profiles import PROFILES, get_profile, parse_overrides


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


def test_every_parameter_of_the_wrong_type_is_refused_by_name():
    """Each leaf parameter of every profile, given a value of another type, is refused with a
    ``TypeError`` or ``ValueError`` that names it (none is accepted, none fails later)."""
    import typing

    from infra_lib.checks import _fits
    from infra_study.profiles import flat_fields

    for name in PROFILES:
        for key, value in flat_fields(PROFILES[name]).items():
            wrong = 12345 if isinstance(value, str) else "oops"
            owner = get_profile(name)
            for part in key.split(".")[:-1]:
                owner = getattr(owner, part)
            if _fits(wrong, typing.get_type_hints(type(owner))[key.split(".")[-1]]):
                continue  # e.g. eval.system: str | None takes "oops"
            with pytest.raises((TypeError, ValueError)) as err:
                get_profile(name, {key: wrong})
            assert repr(key.split(".")[-1]) in str(err.value) or key.split(".")[-1] in str(err.value), (key, err.value)


def test_wrong_type_message_says_where_and_what():
    with pytest.raises(TypeError, match=r"profile 'tiny'\.sft: parameter 'seed' must be int, got 'x' \(str\)"):
        get_profile("tiny", {"sft.seed": "x"})
    with pytest.raises(TypeError, match="parameter 'max_length' must be int, got 2.5"):
        get_profile("smoke", {"max_length": 2.5})
    with pytest.raises(TypeError, match="must be bool"):
        get_profile("smoke", {"model.tie_word_embeddings": 1})
    assert get_profile("smoke", {"factors.damping": 1}).factors.damping == 1  # an int is a fine float
    with pytest.raises(TypeError, match="overrides must be a dict"):
        get_profile("smoke", ["seed=1"])


@pytest.mark.parametrize("sets, words", [
    (["sed=1"], "unknown parameter 'sed'"),
    (["sft.seed=abc"], "parameter 'seed' must be int"),
    (["seed"], "is not KEY=VALUE"),
    (["factors.strategy='exact'"], "strategy must be one of"),
])
def test_reproduce_refuses_bad_parameters_before_any_notebook(sets, words, tmp_path, capsys):
    from infra_study import reproduce

    argv = ["--profile", "smoke", "--prepare-only", "--out", str(tmp_path / "nb")]
    for s in sets:
        argv += ["--set", s]
    with pytest.raises(SystemExit) as ex:
        reproduce.main(argv)
    assert ex.value.code == 2 and words in capsys.readouterr().err
    assert not (tmp_path / "nb").exists()
    with pytest.raises(SystemExit) as ex:
        reproduce.main(["--profile", "tinyy", "--prepare-only"])
    assert ex.value.code == 2 and "invalid choice: 'tinyy'" in capsys.readouterr().err


def test_reproduce_sends_a_command_line_profile_to_the_command_line(tmp_path, capsys):
    from infra_study import reproduce

    with pytest.raises(SystemExit) as ex:
        reproduce.main(["--profile", "paper", "--prepare-only", "--out", str(tmp_path / "nb")])
    err = capsys.readouterr().err
    assert ex.value.code == 2 and "is for the command line" in err and "infra fit-factors --profile paper" in err
    assert "pretrained, smoke, tiny" in err
    assert not (tmp_path / "nb").exists()
