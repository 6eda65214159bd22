"""``make lab``: JupyterLab started headless through the Makefile's own recipe, on a copy of notebooks/.

Through the server's REST API, every ``NN_*.py`` lists and opens as a notebook with its cells;
saving it without edits leaves the file byte for byte as it was, and an edit of the ``parameters``
cell lands in the same ``.py`` (no ``.ipynb`` appears); a kernel started for the notebook runs its
first code cell in the project's environment. In headless Chromium (Debian's chromium and
chromium-driver; that test is skipped without them), a double click's default viewer opens
``00_setting.py`` as a notebook with all its cells, and Shift+Enter runs its first code cell.

The recipe runs with the interpreter running these tests as its venv (``make -o install lab
VENV=sys.prefix``), so it installs the project's JupyterLab defaults there as ``make lab`` does in
``.venv``. The server runs in its own process group on a free port with a token, with Jupyter's
config, data and runtime folders in the test's temporary folder; it is stopped when the module's
tests end, kernels included.
``INFRA_LAB_SCREENSHOT=path.png`` keeps a screenshot of the browser. About 30-60 s on 2 cores.
Run: ``.venv/bin/python -m pytest tests/study/test_lab.py``.
"""
from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

pytest.importorskip("jupyterlab", reason="JupyterLab is not installed here (the project's book extra has it)")
pytest.importorskip("jupytext", reason="jupytext is not installed here (the project's book extra has it)")

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted(p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
FIRST = "00_setting.py"
START_TIMEOUT = 120  # seconds for the server to answer; a loaded 2-core machine needs 10-30


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """A running ``make lab`` server: its folder, URL and token, and small REST helpers."""

    def __init__(self, folder: Path, port: int, token: str, proc: subprocess.Popen, log: Path):
        self.folder, self.port, self.token, self.proc, self.log = folder, port, token, proc, log
        self.url = f"http://127.0.0.1:{port}"

    def api(self, method: str, path: str, body: dict | None = None) -> dict | None:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.url}/api/{path}", data=data, method=method,
                                     headers={"Authorization": f"token {self.token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            raw = r.read()
        return json.loads(raw) if raw else None

    def wait_up(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"make lab exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                self.api("GET", "status")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        pytest.fail(f"JupyterLab did not answer within {START_TIMEOUT} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        """Stop the server's whole process group (make, jupyter, kernels): politely, then for sure."""
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """``make lab`` (the documented recipe, with the interpreter running these tests as its venv) on a
    copy of notebooks/, so that saves never touch the checkout."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed here")
    tmp = tmp_path_factory.mktemp("lab")
    folder = tmp / "notebooks"
    shutil.copytree(ROOT / "notebooks", folder, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
    port, token = _free_port(), secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    for var, sub in (("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_DATA_DIR", "data"), ("JUPYTER_RUNTIME_DIR", "runtime"),
                     ("JUPYTERLAB_SETTINGS_DIR", "user-settings"), ("JUPYTERLAB_WORKSPACES_DIR", "workspaces")):
        env[var] = str(tmp / sub)
    env["OMP_NUM_THREADS"] = "1"
    args = f"--no-browser --port={port} --ServerApp.port_retries=0 --ServerApp.ip=127.0.0.1 --IdentityProvider.token={token}"
    log = tmp / "lab.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["make", "--no-print-directory", "-o", "install", "lab", f"VENV={sys.prefix}",
                                 f"LAB_DIR={folder}", f"LAB_ARGS={args}"],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = Lab(folder, port, token, proc, log)
    try:
        server.wait_up()
        yield server
    finally:
        server.stop()


def _execute(lab: Lab, kernel_id: str, code: str, expressions: dict[str, str], timeout: float = 120) -> dict:
    """Run ``code`` in a kernel through the server's websocket; the ``execute_reply`` content."""
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    async def run() -> dict:
        req = HTTPRequest(f"ws://127.0.0.1:{lab.port}/api/kernels/{kernel_id}/channels",
                          headers={"Authorization": f"token {lab.token}"}, connect_timeout=30)
        conn = await websocket_connect(req)
        msg_id = uuid.uuid4().hex
        await conn.write_message(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "test",
                       "session": uuid.uuid4().hex, "version": "5.3", "date": ""},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": True, "allow_stdin": False,
                        "stop_on_error": True, "user_expressions": expressions}}))
        try:
            while True:
                raw = await asyncio.wait_for(conn.read_message(), timeout)
                assert raw is not None, "the kernel's websocket closed before the reply"
                msg = json.loads(raw)
                if msg.get("channel") == "shell" and msg["parent_header"].get("msg_id") == msg_id:
                    return msg["content"]
        finally:
            conn.close()

    return asyncio.run(run())


def test_py_notebooks_open_as_notebooks_and_save_back(lab):
    """Each NN_*.py lists and opens as a notebook whose first code cell is its `parameters` cell; a save
    without edits changes no byte, and an edited parameter is written to the same .py."""
    listing = {c["name"]: c["type"] for c in lab.api("GET", "contents")["content"]}
    assert NOTEBOOKS and all(listing.get(n) == "notebook" for n in NOTEBOOKS), listing
    model = lab.api("GET", f"contents/{FIRST}?type=notebook")
    assert model["type"] == "notebook" and model["format"] == "json"
    cells = model["content"]["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert len(cells) > 10 and cells[0]["cell_type"] == "markdown"
    assert code[0]["metadata"].get("tags") == ["parameters"] and 'profile = "tiny"' in code[0]["source"]
    assert model["content"]["metadata"]["kernelspec"]["name"] == "python3"

    path = lab.folder / FIRST
    before = path.read_bytes()
    lab.api("PUT", f"contents/{FIRST}", {"type": "notebook", "format": "json", "content": model["content"]})
    assert path.read_bytes() == before, "a save without edits changed the .py"
    code[0]["source"] = code[0]["source"].replace('profile = "tiny"', 'profile = "smoke"')
    lab.api("PUT", f"contents/{FIRST}", {"type": "notebook", "format": "json", "content": model["content"]})
    assert path.read_bytes() == before.replace(b'profile = "tiny"', b'profile = "smoke"', 1)
    assert not list(lab.folder.glob("*.ipynb"))
    path.write_bytes(before)


def test_kernel_runs_the_first_code_cell(lab):
    """A kernel started for the notebook (as JupyterLab starts one) runs its first code cell, in this
    environment, where the study imports."""
    cells = lab.api("GET", f"contents/{FIRST}?type=notebook")["content"]["cells"]
    first = next(c["source"] for c in cells if c["cell_type"] == "code")
    session = lab.api("POST", "sessions", {"path": FIRST, "name": FIRST, "type": "notebook",
                                           "kernel": {"name": "python3"}})
    try:
        reply = _execute(lab, session["kernel"]["id"], first, {
            "profile": "profile", "overrides": "overrides", "prefix": "__import__('sys').prefix",
            "study": "__import__('infra_study').__name__"})
    finally:
        lab.api("DELETE", f"sessions/{session['id']}")
    assert reply["status"] == "ok", reply
    got = {k: v.get("data", {}).get("text/plain", v) for k, v in reply["user_expressions"].items()}
    assert got == {"profile": "'tiny'", "overrides": "{}", "prefix": repr(sys.prefix), "study": "'infra_study'"}


def test_chromium_opens_the_py_as_a_notebook(lab, tmp_path):
    """What a person sees: JupyterLab in headless Chromium opens 00_setting.py with the default viewer
    as a notebook with all its cells, Shift+Enter on the first code cell runs it ([1]), and Ctrl+S
    saves it back to the same .py, unchanged."""
    chromium, driver_path = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
    if not (chromium.exists() and driver_path.exists()):
        pytest.skip("needs Debian's chromium and chromium-driver (INFRA_BROWSER_TESTS=1 bash .ci/setup-system.sh)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed here (the test extra has it)")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    n_cells = len(lab.api("GET", f"contents/{FIRST}?type=notebook")["content"]["cells"])
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never fetch a driver
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(chromium)
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--window-size=1400,1000",
                f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=str(driver_path)))
    try:
        driver.set_page_load_timeout(60)
        driver.get(f"{lab.url}/lab/tree/{FIRST}?token={lab.token}")
        wait = WebDriverWait(driver, 180)  # a loaded CI machine starts the kernel slowly
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel .jp-Notebook .jp-Cell")) == n_cells,
                   f"{FIRST} did not open as a notebook of {n_cells} cells")
        first = driver.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel .jp-CodeCell")[0]
        editor = first.find_element(By.CSS_SELECTOR, ".jp-InputArea-editor")
        assert 'profile = "tiny"' in editor.text
        editor.click()
        editor.find_element(By.CSS_SELECTOR, ".cm-content").send_keys(Keys.SHIFT, Keys.ENTER)
        wait.until(lambda d: "[1]" in first.find_element(By.CSS_SELECTOR, ".jp-InputPrompt").text,
                   "the first code cell did not run ([1])")
        # saved after a run: outputs and execution counts never reach the .py, so it is unchanged
        saved = (lab.folder / FIRST).stat().st_mtime_ns
        driver.find_element(By.CSS_SELECTOR, ".jp-NotebookPanel .jp-Notebook").send_keys(Keys.CONTROL, "s")
        wait.until(lambda d: (lab.folder / FIRST).stat().st_mtime_ns != saved
                   and not d.find_elements(By.CSS_SELECTOR, ".lm-TabBar-tab.jp-mod-dirty"),
                   f"Ctrl+S did not save {FIRST}")
        assert (lab.folder / FIRST).read_bytes() == (ROOT / "notebooks" / FIRST).read_bytes()
        if os.environ.get("INFRA_LAB_SCREENSHOT"):
            driver.save_screenshot(os.environ["INFRA_LAB_SCREENSHOT"])
    finally:
        driver.quit()
