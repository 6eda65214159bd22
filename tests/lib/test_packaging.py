"""The pins in pyproject.toml and environment.yml agree, and torch is pinned to 2.13.0.

Run: pytest tests/lib/test_packaging.py
"""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _pyproject_pins() -> dict[str, str]:
    d = tomllib.loads((ROOT / "pyproject.toml").read_text())
    deps = list(d["project"]["dependencies"])
    for extra in d["project"]["optional-dependencies"].values():
        deps += extra
    pins = {}
    for dep in deps:
        if dep.startswith(d["project"]["name"] + "["):  # an extra naming another extra of this project
            continue
        name, _, ver = dep.partition("==")
        assert ver, f"pyproject.toml: {dep!r} is not pinned with =="
        pins[name.strip().lower()] = ver.strip()
    return pins


def _environment_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "environment.yml").read_text().splitlines():
        m = re.match(r"\s*-\s*([A-Za-z0-9_.\-]+)==([^\s#]+)", line)
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


def test_pins_agree():
    py, env = _pyproject_pins(), _environment_pins()
    missing = sorted(set(py) - set(env))
    assert not missing, f"pinned in pyproject.toml but not environment.yml: {missing}"
    differ = {k: (py[k], env[k]) for k in py if env[k] != py[k]}
    assert not differ, f"pins differ (pyproject, environment): {differ}"


def test_torch_pinned_to_cpu_wheel_version():
    assert _pyproject_pins()["torch"] == "2.13.0"


def test_kronfluence_installed_without_deps_in_makefile():
    mk = (ROOT / "Makefile").read_text()
    pin = _environment_pins()["kronfluence"]
    assert f"--no-deps kronfluence=={pin}" in mk
