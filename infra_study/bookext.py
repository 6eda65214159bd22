"""A small Sphinx extension for the book (``_config.yml``: ``sphinx.extra_extensions``).

- Offline formulas: MathJax 3 is served from the book itself. ``.ci/setup-system.sh`` installs the
  ``mathjax`` npm package into ``.book-node/`` (git-ignored); at build time its ``es5/`` folder is
  copied to ``build/book-static/mathjax`` and added to ``html_static_path``, and ``mathjax_path``
  points at ``mathjax/tex-chtml.js``. Without it the build fails with a warning that says how to
  install it (the build runs with warnings as errors): a book that quietly fetches a CDN would show
  raw LaTeX offline.
- No console errors from the theme stack: sphinx-thebe adds its config script (``const
  THEBE_JS_URL = ...``) from an ``env-before-read-docs`` handler, after the HTML builder exists, so
  Sphinx registers it with both the application and the builder and every page carries it twice
  (a SyntaxError: the constant is declared twice; sphinx-togglebutton's selector line doubles the
  same way). Identical scripts are written once per page.
- The intro's status headline: a MyST comment line ``% infra-status-headline`` in ``book/intro.md``
  is replaced by ``book/_generated/status_headline.html``, which the summary notebook writes. When
  that file is absent (no findings yet) the intro says so; the page never breaks.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from sphinx.util import logging

__all__ = ["MATHJAX_SOURCE", "STATUS_MARKER", "STATUS_FILE", "setup"]

logger = logging.getLogger(__name__)

MATHJAX_SOURCE = Path(".book-node/node_modules/mathjax/es5")
STATUS_MARKER = "% infra-status-headline"
STATUS_FILE = Path("book/_generated/status_headline.html")
_NO_STATUS = ("*No findings yet: `make book` runs the notebooks, and the summary writes the status "
              "of every claim here.*")


def _bundle_mathjax(app) -> None:
    src = Path(app.srcdir) / MATHJAX_SOURCE
    if not (src / "tex-chtml.js").is_file():
        logger.warning(f"MathJax is not installed in {MATHJAX_SOURCE}: formulas would need the internet; "
                       "install it with `bash .ci/setup-system.sh` (npm package mathjax@3)")
        return
    static = Path(app.srcdir) / "build" / "book-static"
    dest = static / "mathjax"
    stamp = dest / ".source-mtime"
    mtime = str((src / "tex-chtml.js").stat().st_mtime)
    if not (stamp.is_file() and stamp.read_text() == mtime):
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(src, dest)
        stamp.write_text(mtime)
    app.config.html_static_path = [*app.config.html_static_path, str(static)]
    app.config.mathjax_path = "mathjax/tex-chtml.js"


def _status_headline(app, docname: str, source: list[str]) -> None:
    if STATUS_MARKER not in source[0]:
        return
    path = Path(app.srcdir) / STATUS_FILE
    app.env.note_dependency(str(path))
    if path.is_file():
        block = "```{raw} html\n" + path.read_text() + "\n```"
    else:
        block = _NO_STATUS
    source[0] = source[0].replace(STATUS_MARKER, block)


def _dedupe_scripts(app, pagename, templatename, context, doctree) -> None:
    files = context.get("script_files")
    if not files:
        return
    seen, kept = set(), []
    for js in files:
        key = (getattr(js, "filename", None) or "", repr(sorted(getattr(js, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            kept.append(js)
    files[:] = kept


def setup(app):
    app.connect("builder-inited", _bundle_mathjax)
    app.connect("html-page-context", _dedupe_scripts, priority=900)
    app.connect("source-read", _status_headline)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
