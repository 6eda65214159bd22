"""The page check that ends ``make book``: every page of the built book in headless Chromium.

A page fails on
- a console error (any SEVERE entry of the browser log: a script error, a missing file),
- text overflowing its container (an element of the article whose box passes the article's right
  edge, outside any scroll box such as a wide table's),
- a figure placed more than two screens below its heading (the first image or explorer after a
  heading, before the next heading).

It prints one line per page (height in px, output blocks, console errors, problems) and exits 1
when any page fails. Without Chromium it fails too, never skips: Debian's ``chromium`` and
``chromium-driver`` at /usr/bin (``bash .ci/setup-system.sh`` installs them) driven by selenium;
nothing downloads a browser.

Run: ``python -m infra_study.pagecheck _build/html [--json report.json] [--width 1400 --height 900]``
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["PageReport", "list_pages", "open_browser", "check_page", "check_book", "main"]

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
LOAD_TIMEOUT_S = 90
SKIP_DIRS = {"_static", "_sources", "_images", "_downloads", "_sphinx_design_static"}

# measured in the page: height, output blocks, overflowing text, figures far below their heading
_MEASURE_JS = r"""
const art = document.querySelector('article.bd-article') || document.querySelector('main') || document.body
            || document.documentElement;
const ar = art.getBoundingClientRect();
const scrollY = window.scrollY;
const clips = el => {
  for (let a = el.parentElement; a && a !== art.parentElement; a = a.parentElement) {
    const ox = getComputedStyle(a).overflowX;
    if (ox === 'auto' || ox === 'scroll' || ox === 'hidden' || ox === 'clip') return true;
  }
  return false;
};
const overflow = [];
for (const el of art.querySelectorAll('*')) {
  if (overflow.length >= 5) break;
  const r = el.getBoundingClientRect();
  if (r.width === 0 || r.height === 0) continue;
  const cs = getComputedStyle(el);
  // content wider than a box that shows it anyway (overflow: visible), e.g. an unbreakable line
  const spills = cs.overflowX === 'visible' && el.clientWidth > 0 && el.scrollWidth > el.clientWidth + 2
                 && r.left + el.scrollWidth > ar.right + 2;
  if ((r.right > ar.right + 2 || spills) && !clips(el)) {
    const own = getComputedStyle(el).overflowX;
    if (own === 'auto' || own === 'scroll') {  // a scroll box wider than the article is itself overflow
      overflow.push(`${el.tagName.toLowerCase()}.${el.className} ${Math.round(r.right - ar.right)} px past the article`);
    } else {
      overflow.push(`${el.tagName.toLowerCase()}.${el.className} "${(el.textContent || '').trim().slice(0, 40)}" ${Math.round(Math.max(r.right, r.left + el.scrollWidth) - ar.right)} px past the article`);
    }
  }
}
// first figure after each heading, before the next heading
const far = [];
const nodes = art.querySelectorAll('h1, h2, h3, h4, img, svg.infra-figure, .infra-explorer');
let heading = null, seen = false;
for (const n of nodes) {
  if (/^H[1-4]$/.test(n.tagName)) { heading = n; seen = false; continue; }
  if (!heading || seen) continue;
  if (n.tagName === 'IMG' && n.closest('.headerlink, nav, header')) continue;
  seen = true;
  const gap = n.getBoundingClientRect().top - heading.getBoundingClientRect().top;
  if (gap > 2 * window.innerHeight) {
    far.push(`"${heading.textContent.replace('#', '').trim().slice(0, 50)}": first figure ${Math.round(gap)} px below it`);
  }
}
return {
  height: Math.round(document.documentElement.scrollHeight),
  outputs: document.querySelectorAll('.cell_output > .output, .cell_output > div').length,
  overflow: overflow,
  far: far,
};
"""


@dataclass
class PageReport:
    page: str
    height_px: int = 0
    output_blocks: int = 0
    console_errors: list[str] = field(default_factory=list)
    overflow: list[str] = field(default_factory=list)
    far_figures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.console_errors or self.overflow or self.far_figures)


def list_pages(root: Path) -> list[Path]:
    """Every ``.html`` page of a built book, in path order, without the static folders."""
    return sorted(p for p in Path(root).rglob("*.html") if not SKIP_DIRS & set(p.relative_to(root).parts[:-1]))


def open_browser(width: int = 1400, height: int = 900, chromium: Path = CHROMIUM, chromedriver: Path = CHROMEDRIVER):
    """Headless Chromium through selenium; raises RuntimeError (never skips) when either is missing."""
    missing = [str(p) for p in (chromium, chromedriver) if not Path(p).exists()]
    if missing:
        raise RuntimeError(f"page check needs Debian's chromium and chromium-driver; missing {missing} "
                           "(install: bash .ci/setup-system.sh)")
    try:
        from selenium import webdriver
    except ImportError as e:  # pragma: no cover - the project's test and book extras have it
        raise RuntimeError("page check needs the selenium package (pip install -e '.[book]')") from e
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never fetch a browser
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(chromium)
    profile = tempfile.mkdtemp(prefix="pagecheck-chromium-")
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", f"--window-size={width},{height}", f"--user-data-dir={profile}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=str(chromedriver)))
    driver.set_page_load_timeout(LOAD_TIMEOUT_S)
    return driver


def check_page(driver, path: Path, root: Path | None = None, settle_s: float = 0.5) -> PageReport:
    """Load one page from ``file://`` and measure it (see the module docstring)."""
    from selenium.common.exceptions import TimeoutException

    driver.get_log("browser")  # drain what earlier pages left
    late = []
    try:
        driver.get(Path(path).resolve().as_uri())
    except TimeoutException:  # a script from the network that never comes, offline
        late.append(f"page did not finish loading in {LOAD_TIMEOUT_S} s")
        driver.execute_script("window.stop()")
    deadline = time.time() + 20
    while driver.execute_script("return document.readyState") != "complete" and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(settle_s)  # async scripts (MathJax, the explorer) report their errors late
    m = driver.execute_script(_MEASURE_JS)
    errors = late + [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    name = str(Path(path).relative_to(root)) if root else Path(path).name
    return PageReport(name, m["height"], m["outputs"], errors, m["overflow"], m["far"])


def check_book(root: Path, width: int = 1400, height: int = 900, **browser) -> list[PageReport]:
    """Every page of ``root`` (a built book): one report each."""
    pages = list_pages(root)
    if not pages:
        raise RuntimeError(f"no pages under {root}: build the book first")
    from selenium.common.exceptions import WebDriverException

    driver = open_browser(width, height, **browser)
    reports = []
    try:
        for p in pages:
            try:
                reports.append(check_page(driver, p, root))
            except WebDriverException as e:  # a hung renderer: the page fails, the next gets a fresh browser
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                reports.append(PageReport(str(p.relative_to(root)), console_errors=[f"page did not respond: {msg}"]))
                driver.quit()
                driver = open_browser(width, height, **browser)
    finally:
        driver.quit()
    return reports


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path, nargs="?", default=Path("_build/html"))
    ap.add_argument("--json", type=Path, help="also write the reports here")
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--height", type=int, default=900)
    ap.add_argument("--chromium", type=Path, default=CHROMIUM)
    ap.add_argument("--chromedriver", type=Path, default=CHROMEDRIVER)
    args = ap.parse_args(argv)
    try:
        reports = check_book(args.root, args.width, args.height, chromium=args.chromium, chromedriver=args.chromedriver)
    except RuntimeError as e:
        print(f"pagecheck: FAILED: {e}", file=sys.stderr)
        return 1
    for r in reports:
        print(f"{'ok  ' if r.ok else 'FAIL'} {r.page:45s} {r.height_px:7d} px {r.output_blocks:4d} outputs "
              f"{len(r.console_errors)} console errors")
        for kind, items in (("console", r.console_errors), ("overflow", r.overflow), ("figure", r.far_figures)):
            for item in items:
                print(f"     {kind}: {item[:300]}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([asdict(r) for r in reports], indent=1))
    bad = [r.page for r in reports if not r.ok]
    print(f"pagecheck: {len(reports) - len(bad)} of {len(reports)} pages pass" + (f"; failing: {', '.join(bad)}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
