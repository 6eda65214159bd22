"""The layering holds: infra_lib never imports infra_study, no import circles inside either package,
and the library imports without the study's dependencies.

The contracts live in pyproject.toml ([tool.importlinter]) and are checked by import-linter, an
independent tool that builds the import graph from the source. A contract that must fail (the
study does import the library) shows that the check reads the real graph.
Run: pytest tests/lib/test_layers.py
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
lint_imports = Path(sys.executable).parent / "lint-imports"
pytestmark = pytest.mark.skipif(not lint_imports.exists(), reason="import-linter is in the `test` extra")


def _lint(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(lint_imports), "--config", str(config), "--no-cache"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_declared_contracts_are_kept():
    res = _lint(ROOT / "pyproject.toml")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 broken" in res.stdout


def test_a_false_contract_is_reported_broken(tmp_path):
    cfg = tmp_path / ".importlinter"
    cfg.write_text(textwrap.dedent("""\
        [importlinter]
        root_packages =
            infra_lib
            infra_study

        [importlinter:contract:1]
        name = the study stands without the library (false)
        type = forbidden
        source_modules = infra_study
        forbidden_modules = infra_lib
        """))
    res = _lint(cfg)
    assert res.returncode != 0 and "BROKEN" in res.stdout, res.stdout + res.stderr


def test_library_imports_without_the_study_dependencies():
    """Every infra_lib module imports with the study's extras (and the study itself) blocked."""
    code = textwrap.dedent("""\
        import importlib, pkgutil, sys
        blocked = ("infra_study", "matplotlib", "pandas", "scipy", "seaborn", "tokenizers.trainers", "papermill", "jupytext")
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in blocked or name in blocked:
                    raise ImportError(f"blocked: {name}")
        sys.meta_path.insert(0, Block())
        import infra_lib
        names = [m.name for m in pkgutil.iter_modules(infra_lib.__path__, "infra_lib.") if m.name != "infra_lib.__main__"]
        for n in names:
            importlib.import_module(n)
        print(len(names))
        """)
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert int(res.stdout.split()[-1]) >= 12
