"""Stage log lines go to stderr, never stdout: the book drops a notebook's stderr, so a log line on
stdout would print a machine path into the rendered page."""
import importlib

import pytest

MODULES = ["arms", "evaluation", "pipeline", "pretrained", "pretrained_data", "pretrained_stages", "training"]


@pytest.mark.parametrize("name", MODULES)
def test_log_writes_to_stderr_only(name, capsys):
    mod = importlib.import_module(f"infra_study.{name}")
    mod._log("reusing /some/machine/path")
    out, err = capsys.readouterr()
    assert out == "" and "/some/machine/path" in err
