"""The page check fails, never skips, without a browser (the browser-side checks are in
test_html_browser.py). Run: `.venv/bin/python -m pytest tests/study/test_pagecheck.py`."""
import pytest

from infra_study import pagecheck


def test_missing_chromium_is_a_failure(tmp_path, capsys):
    with pytest.raises(RuntimeError, match="chromium"):
        pagecheck.open_browser(chromium=tmp_path / "no-chromium", chromedriver=tmp_path / "no-driver")
    (tmp_path / "index.html").write_text("<html></html>")
    assert pagecheck.main([str(tmp_path), "--chromium", str(tmp_path / "no-chromium")]) == 1
    assert "FAILED" in capsys.readouterr().err


def test_no_pages_is_a_failure(tmp_path):
    with pytest.raises(RuntimeError, match="no pages"):
        pagecheck.check_book(tmp_path)
