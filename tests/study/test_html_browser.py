"""The HTML views (infra_lib/html.py) in headless Chromium: pages load from file:// without console
errors, clicking a step of the explorer lists the top-k training examples computed here with numpy,
switching query does too, heat-map tooltips show scores to 3 significant digits and colours follow
each step's own scale, and a long example shows its end.

Needs Debian's `chromium` and `chromium-driver` (/usr/bin/chromium, /usr/bin/chromedriver; the
project setup installs them: `INFRA_BROWSER_TESTS=1 bash .ci/setup-system.sh`) and the `selenium`
package; skipped with the reason when either is missing. No tool downloads a browser or driver of
its own: both paths are given, so Selenium Manager never runs. About 15 s.
Run: `.venv/bin/python -m pytest tests/study/test_html_browser.py`.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
_missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
if _missing:
    pytest.skip(f"headless browser tests need Debian's chromium and chromium-driver; missing {_missing} "
                "(install: INFRA_BROWSER_TESTS=1 bash .ci/setup-system.sh)", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver",
                                reason="selenium is not installed here (the project's test extra has it)")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

from infra_study import html as ih  # noqa: E402

from conftest import sig3  # noqa: E402

HOSTILE = '</script><script>window.__pwned=1</script><img src=x onerror="window.__pwned=2"> & <!--'
K = 3


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    os.environ["SE_OFFLINE"] = "true"  # belt and braces: Selenium Manager must never fetch anything
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path=str(CHROMEDRIVER))
    driver = webdriver.Chrome(options=opts, service=service)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def load(driver, path: Path, n_explorers: int = 0):
    driver.get(path.as_uri())
    if n_explorers:
        WebDriverWait(driver, 15).until(lambda d: d.execute_script(
            "return document.querySelectorAll('.infra-explorer[data-ready=\"1\"]').length") == n_explorers)


def severe(driver) -> list:
    """SEVERE entries of the browser console since the last call (reading drains the log)."""
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def console_messages(entries) -> list[str]:
    """Console messages without their source position (``URL line:col``), to compare two pages."""
    return sorted(re.sub(r"^\S+ \d+:\d+ ", "", e["message"]) for e in entries)


def css_rgb(hex_colour: str) -> str:
    return "rgb({}, {}, {})".format(*(int(hex_colour[k:k + 2], 16) for k in (1, 3, 5)))


def title_value(title: str) -> float:
    m = re.fullmatch(r"score ([+-]?[0-9.e+-]+) \(token (\d+)\)", title)
    assert m, title
    return float(m.group(1))


def make_inputs(seed: int, n_train: int = 12):
    rng = np.random.default_rng(seed)
    queries = [
        ih.ExplorerQuery(f"math-{seed}-q", "math", "What is 27 + 15? " + HOSTILE,
                         (("First add the ones: 7 + 5 = 12, write 2, carry 1.\n", "step"),
                          ("Then the tens: 2 + 1 + 1 = 4.\n", "step"),
                          ("So the answer is 42.\n", "answer"),
                          ("Check: 42 - 15 = 27.", "exploratory"))),
        ih.ExplorerQuery(f"code-{seed}-q", "code", "Write f(x) returning 3x.",
                         (("Multiply by three.\n", "step"), ("def f(x):\n    return 3 * x", "answer"))),
    ]
    train = [ih.ExplorerExample(f"s{seed}-tr{i:02d}", "math" if i % 3 else "code", 1 + i % 5,
                                ["First", " add", " 7", " +", " 5", "\n", "  ", HOSTILE if i % 4 == 0 else "ok", "."],
                                rng.normal(size=9) * 10.0 ** -(i % 3)) for i in range(n_train)]
    steps = {q.id: rng.normal(size=(len(q.segments), n_train)) for q in queries}
    return queries, train, steps


def expected_ids(train, s: np.ndarray, step: int) -> list[str]:
    return [train[j].id for j in np.argsort(s[step])[::-1][:K]]


def listed(driver, ns: str) -> list[str]:
    return [li.get_attribute("data-train-id") for li in driver.find_elements(By.CSS_SELECTOR, f"#{ns} .ix-list > li")]


def click_step(driver, ns: str, step: int):
    driver.find_element(By.CSS_SELECTOR, f'#{ns} .ix-step[data-step="{step}"]').click()


def check_heatmap_tokens(driver, item, ex: ih.ExplorerExample, scale: float):
    spans = item.find_elements(By.CSS_SELECTOR, ".ix-heat span[data-i]")
    assert len(spans) == len(ex.tokens)
    got = driver.execute_script(
        "return arguments[0].map(function (s) { var c = getComputedStyle(s);"
        " return [s.textContent, s.title, c.backgroundColor, c.color]; });", spans)
    for i, (text, title, bg, fg) in enumerate(got):
        assert text == ex.tokens[i]  # hostile markup shows as text
        assert title_value(title) == sig3(ex.scores[i])  # 3 significant digits
        assert len(re.sub(r"e.*", "", title.split()[1]).lstrip("+-").replace(".", "").lstrip("0")) <= 3
        assert bg == css_rgb(ih.score_color(sig3(ex.scores[i]), scale))  # the script's colour is Python's
        assert fg in ("rgb(0, 0, 0)", "rgb(255, 255, 255)")


def test_explorer_clicks_and_query_switch(browser, tmp_path):
    qa, ta, sa = make_inputs(0)
    qb, tb, sb = make_inputs(1)
    page = ih.render_step_explorer(qa, ta, sa, top_k=K, element_id="ex-a", title="first") + \
        ih.render_step_explorer(qb, tb, sb, top_k=K, element_id="ex-b", title="second")
    path = ih.save_html(tmp_path / "explorer.html", page, title="explorer")
    load(browser, path, n_explorers=2)
    assert severe(browser) == []
    assert browser.execute_script("return window.__pwned === undefined")
    prompt = browser.find_element(By.CSS_SELECTOR, "#ex-a .ix-prompt")
    assert browser.execute_script("return arguments[0].textContent", prompt) == qa[0].prompt
    assert not browser.find_element(By.CSS_SELECTOR, "#ex-a .ix-nojs").is_displayed()

    s0 = sa[qa[0].id]
    assert listed(browser, "ex-a") == expected_ids(ta, s0, 0)  # the first step is selected on load
    assert listed(browser, "ex-b") == expected_ids(tb, sb[qb[0].id], 0)
    assert expected_ids(ta, s0, 2) != expected_ids(ta, s0, 0)  # so that the click must change the list
    click_step(browser, "ex-a", 2)
    assert listed(browser, "ex-a") == expected_ids(ta, s0, 2)
    pressed = [b.get_attribute("aria-pressed") for b in browser.find_elements(By.CSS_SELECTOR, "#ex-a .ix-step")]
    assert pressed == ["false", "false", "true", "false"]
    assert listed(browser, "ex-b") == expected_ids(tb, sb[qb[0].id], 0)  # the other explorer did not move

    # the listed examples' heat-maps: text, rounded tooltips, and Python's colours on this step's scale
    by_id = {t.id: t for t in ta}
    scale = max(abs(sig3(v)) for i in expected_ids(ta, s0, 2) for v in by_id[i].scores)
    other = max(abs(sig3(v)) for i in expected_ids(ta, s0, 0) for v in by_id[i].scores)
    assert scale != other  # the examples differ in magnitude: so do the steps' scales
    legend = browser.find_element(By.CSS_SELECTOR, "#ex-a .ix-legend")
    assert float(legend.get_attribute("data-scale")) == scale
    assert f"+{ih.format_sig(scale).lstrip('+')} helpful" in legend.text
    items = browser.find_elements(By.CSS_SELECTOR, "#ex-a .ix-list > li")
    for item in items:
        check_heatmap_tokens(browser, item, by_id[item.get_attribute("data-train-id")], scale)
    shown = [float(e.text) for e in browser.find_elements(By.CSS_SELECTOR, "#ex-a .ix-score")]
    assert shown == [sig3(v) for v in sorted(s0[2], reverse=True)[:K]]
    click_step(browser, "ex-a", 0)
    assert float(legend.get_attribute("data-scale")) == other
    click_step(browser, "ex-a", 2)

    Select(browser.find_element(By.CSS_SELECTOR, "#ex-a .ix-query")).select_by_index(1)
    s1 = sa[qa[1].id]
    assert len(browser.find_elements(By.CSS_SELECTOR, "#ex-a .ix-step")) == 2
    assert listed(browser, "ex-a") == expected_ids(ta, s1, 0)
    click_step(browser, "ex-a", 1)
    assert listed(browser, "ex-a") == expected_ids(ta, s1, 1)
    click_step(browser, "ex-b", 3)
    assert listed(browser, "ex-b") == expected_ids(tb, sb[qb[0].id], 3)
    assert listed(browser, "ex-a") == expected_ids(ta, s1, 1)
    assert browser.execute_script("return window.__pwned === undefined")
    assert severe(browser) == []


def test_heatmap_tooltips_colours_and_whitespace(browser, tmp_path):
    tokens = ["def", " f", "(x):", "\n", "    ", "return", " <script>alert(1)</script>", "\n\n", "x"]
    scores = [0.25, -1.5, 0.0, 0.75, 1e-7, 3.0, -3.0, 0.1, -0.2 / 3]
    other = (["Check", " 2"], [0.5, -0.5])
    page = ih.render_heatmaps([("code CoT", tokens, scores), ("small", *other)], title="heat-maps")
    path = ih.save_html(tmp_path / "heatmap.html", page, title="heat-maps")
    load(browser, path)
    assert severe(browser) == []
    boxes = browser.find_elements(By.CSS_SELECTOR, ".infra-heatmap")
    assert len(boxes) == 2
    spans = boxes[0].find_elements(By.CSS_SELECTOR, "span[data-i]")
    info = browser.execute_script(
        "return arguments[0].map(function (s) { var r = s.getBoundingClientRect();"
        " return [s.textContent, s.title, getComputedStyle(s).backgroundColor, r.top]; });", spans)
    for i, (text, title, bg, _) in enumerate(info):
        assert text == tokens[i]
        assert title_value(title) == sig3(scores[i])
        assert bg == css_rgb(ih.score_color(scores[i], 3.0))
    assert info[5][2] == css_rgb(ih.POSITIVE_COLOR) and info[6][2] == css_rgb(ih.NEGATIVE_COLOR)
    assert info[2][2] == "rgb(255, 255, 255)"
    assert info[4][0] == "    " and info[5][3] > info[2][3]  # the newline breaks the line; spaces kept
    assert info[8][3] > info[5][3]
    assert browser.execute_script("return getComputedStyle(arguments[0].parentNode).whiteSpace", spans[0]) == "pre-wrap"
    assert severe(browser) == []


def test_long_example_shows_its_end_and_answer(browser, tmp_path):
    """A 60-line training example: its first lines, its last lines and its answer are on screen; the
    middle sits behind a button that shows it."""
    lines = [f"Step {i}: carry {i} to the next column.\n" for i in range(60)] + ["So the answer is 1234."]
    toks = [w if k == 0 else " " + w for line in lines for k, w in enumerate(line.split(" "))]
    answer_from = len(toks) - 5 - 8 * 8  # an answer of the last 8 step lines (8 tokens each) and the answer line
    qs, train, steps = make_inputs(3)
    train[0] = ih.ExplorerExample("long-one", "math", 4, toks, np.linspace(-1, 1, len(toks)), answer_from=answer_from)
    steps = {q: s.copy() for q, s in steps.items()}
    for s in steps.values():
        s[:, 0] = 50.0
    path = ih.save_html(tmp_path / "long.html", ih.render_step_explorer(qs, train, steps, top_k=K, element_id="ex-l"))
    load(browser, path, n_explorers=1)
    assert severe(browser) == []
    item = browser.find_element(By.CSS_SELECTOR, '#ex-l .ix-list > li[data-train-id="long-one"]')
    spans = item.find_elements(By.CSS_SELECTOR, "span[data-i]")
    assert len(spans) == len(toks)
    visible = [s.is_displayed() for s in spans]
    a, b = ih.elided_span(toks, answer_from)
    assert all(visible[:a]) and all(visible[b:]) and not any(visible[a:b])
    assert b == answer_from  # more than the last lines: the whole answer is kept
    box = item.find_element(By.CSS_SELECTOR, ".ix-heat")
    assert box.text.endswith("So the answer is 1234.")  # the end is on the page, not scrolled away
    assert browser.execute_script("return arguments[0].scrollHeight <= arguments[0].clientHeight + 1", box)
    more = item.find_element(By.CSS_SELECTOR, ".ix-more")
    assert f"{b - a} tokens" in more.text
    more.click()
    assert all(s.is_displayed() for s in spans) and more.get_attribute("aria-expanded") == "true"
    assert severe(browser) == []


@pytest.mark.skipif(shutil.which("jupyter-book", path=str(Path(sys.executable).parent)) is None,
                    reason="jupyter-book is not installed in this environment")
def test_explorer_inside_a_jupyter_book_page(browser, tmp_path):
    """The explorer as a notebook's HTML output, rendered by `jupyter-book build` (its theme's CSS and
    JS on the page), loads without console errors and reacts to clicks."""
    nbformat = pytest.importorskip("nbformat")
    queries, train, steps = make_inputs(2)
    explorer = ih.render_step_explorer(queries, train, steps, top_k=K, element_id="ex-book")
    heat = ih.render_heatmaps([(t.id, t.tokens, t.scores) for t in train[:2]])
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cells = []
    for src, body in (("HTML(explorer)", explorer), ("HTML(heat)", heat)):
        c = nbformat.v4.new_code_cell(src)
        c.outputs = [nbformat.v4.new_output("display_data", data={"text/html": body, "text/plain": "<HTML>"})]
        cells.append(c)
    nb.cells = [nbformat.v4.new_markdown_cell("# Explorer")] + cells
    book = tmp_path / "book"
    book.mkdir()
    nbformat.write(nb, book / "page.ipynb")
    (book / "_config.yml").write_text('title: t\nexecute:\n  execute_notebooks: "off"\n')
    (book / "_toc.yml").write_text("format: jb-book\nroot: page\nchapters:\n  - file: control\n")
    (book / "control.md").write_text("# Control\n\nA page without our views.\n")
    jb = Path(sys.executable).parent / "jupyter-book"
    r = subprocess.run([str(jb), "build", str(book), "-W", "-q"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    # the theme stack logs errors of its own on every page (jupyter-book 1.0.4: sphinx-thebe's config
    # script lands twice in <head>, "Identifier 'THEBE_JS_URL' has already been declared"; the
    # pydata theme's "Got invalid theme mode" on a first visit): a page without our views says which
    load(browser, book / "_build" / "html" / "control.html")
    baseline = console_messages(severe(browser))
    load(browser, book / "_build" / "html" / "page.html", n_explorers=1)
    assert set(console_messages(severe(browser))) <= set(baseline)  # our views add no error
    s = steps[queries[0].id]
    assert listed(browser, "ex-book") == expected_ids(train, s, 0)
    click_step(browser, "ex-book", 3)
    assert listed(browser, "ex-book") == expected_ids(train, s, 3) != expected_ids(train, s, 0)
    Select(browser.find_element(By.CSS_SELECTOR, "#ex-book .ix-query")).select_by_index(1)
    assert listed(browser, "ex-book") == expected_ids(train, steps[queries[1].id], 0)
    assert len(browser.find_elements(By.CSS_SELECTOR, ".infra-heatmap span[data-i]")) == 2 * len(train[0].tokens)
    assert browser.execute_script("return window.__pwned === undefined")
    assert severe(browser) == []  # clicks added nothing


def test_explorer_of_micro_model_step_scores(browser, micro, tmp_path):
    """Query-side segment scores of a real score pass (float64 micro Qwen2, EK-FAC) in the explorer:
    the page loads without console errors, the first step's list is that step's top-k by
    ``Scores.steps_of``, and clicking another step changes the list to its own top-k."""
    from infra_lib.factors import FactorConfig, fit_factors
    from infra_lib.scores import ScoreConfig, compute_scores

    model, train, queries = micro
    f = fit_factors(model, train, FactorConfig(dtype="float64"), progress=False)
    s = compute_scores(model, f, queries[:2], train,
                       ScoreConfig(token_scores=True, query_segment_scores=True, dtype="float64"), progress=False)
    qs, steps = [], {}
    for q in queries[:2]:
        seg = q["segment_ids"]
        n = int(seg.max()) + 1
        parts = tuple((" ".join(f"t{int(x)}" for x in q["input_ids"][seg == k]) + "\n", "step") for k in range(n))
        qs.append(ih.ExplorerQuery(q["id"], "math", "prompt of " + q["id"], parts))
        steps[q["id"]] = s.steps_of(q["id"], n).numpy()
        np.testing.assert_allclose(steps[q["id"]].sum(0), s.example[s.row_ids.index(q["id"])].numpy(), rtol=1e-9)
    ex = [ih.ExplorerExample(t["id"], "math", 1, [f" t{int(x)}" for x in t["input_ids"]], s.tokens_of(i)[0].numpy())
          for i, t in enumerate(train)]
    path = ih.save_html(tmp_path / "micro.html", ih.render_step_explorer(qs, ex, steps, top_k=K, element_id="ex-m"))
    load(browser, path, n_explorers=1)
    assert severe(browser) == []
    s0 = steps[qs[0].id]
    assert listed(browser, "ex-m") == expected_ids(ex, s0, 0)
    other = next(j for j in range(1, len(s0)) if expected_ids(ex, s0, j) != expected_ids(ex, s0, 0))
    click_step(browser, "ex-m", other)
    assert listed(browser, "ex-m") == expected_ids(ex, s0, other)
    assert severe(browser) == []


PNG = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")


def test_pagecheck_on_tiny_built_pages(browser, tmp_path):
    """The book's page check (infra_study/pagecheck.py) on four tiny pages: a clean one passes; a
    script error, a line of text wider than its article, and a figure three screens below its
    heading each fail, and say where."""
    from infra_study import pagecheck

    def page(name, body):
        path = tmp_path / "site" / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(f"<!doctype html><html><body><main style='width:400px'>{body}</main></body></html>")
        return path

    fig = f"<h2>Figure</h2><p>one sentence</p><img src='{PNG}' width='40' height='40'>"
    clean = pagecheck.check_page(browser, page("clean.html", fig + "<table><tr><td>short</td></tr></table>"), settle_s=0.1)
    assert clean.ok and clean.height_px > 0, clean
    err = pagecheck.check_page(browser, page("error.html", fig + "<script>undefinedFunction()</script>"), settle_s=0.1)
    assert not err.ok and any("undefinedFunction" in m for m in err.console_errors)
    wide = pagecheck.check_page(browser, page("wide.html", fig + "<p style='white-space:nowrap'>" + "overflowing " * 80 + "</p>"),
                                settle_s=0.1)
    assert not wide.ok and wide.overflow and "px past the article" in wide.overflow[0]
    scroll = pagecheck.check_page(browser, page("scroll.html", fig + "<div style='overflow-x:auto'><p style='white-space:nowrap'>"
                                                + "scrolled " * 80 + "</p></div>"), settle_s=0.1)
    assert scroll.ok, scroll  # a wide table in its own scroll box is fine
    far = pagecheck.check_page(browser, page("far.html", "<h2>Figure</h2><div style='height:4000px'>log lines</div>"
                                             f"<img src='{PNG}' width='40' height='40'>"), settle_s=0.1)
    assert not far.ok and far.far_figures and '"Figure"' in far.far_figures[0]
    assert [p.name for p in pagecheck.list_pages(tmp_path / "site")] == ["clean.html", "error.html", "far.html",
                                                                         "scroll.html", "wide.html"]


def test_verdict_table_keeps_its_claim_column_readable_at_the_book_width(browser, tmp_path):
    """A chapter's verdict table with long raw / per-token numbers, in a 784-px column (the book's
    article width): the claim column stays at least 12em wide (a column squeezed to one character
    per line made pages tens of thousands of px tall), numbers wrap only between their parts, and
    the table fits its box."""
    from infra_study import verdicts

    row = {"claim": "harder math examples help math reasoning more", "metric": "Spearman(level, influence)",
           "ours_raw": 0.0658, "ours_per_token": -0.261, "interval_raw": [0.0182, 0.112],
           "interval_per_token": [-0.302, -0.223],
           "paper": "positive", "verdict": "depends on normalisation", "reason": "raw score: holds; per-token score: does not hold",
           "primary": True}
    page = tmp_path / "table.html"
    seeds = {**row, "per_seed": [0.035, -0.040, -0.035, 0.050, -0.015, -0.070]}
    page.write_text(f'<html><body><div style="width:784px">{verdicts.render_findings_html([row, seeds, row])}</div></body></html>')
    load(browser, page)
    claim_w, font, table_w, box_w = browser.execute_script(
        "const td = document.querySelector('.infra-verdicts tbody td');"
        "return [td.getBoundingClientRect().width, parseFloat(getComputedStyle(td).fontSize),"
        " document.querySelector('.infra-verdicts table').scrollWidth, document.querySelector('.infra-verdicts').clientWidth];")
    assert claim_w >= 12 * font * 0.99, (claim_w, font)
    assert table_w <= box_w + 1, (table_w, box_w)
    parts = browser.execute_script(
        "return [...document.querySelectorAll('.infra-verdicts td.num .part')].map(p => p.getClientRects().length);")
    assert parts and all(n == 1 for n in parts), parts  # each part on one line
    assert not severe(browser)
