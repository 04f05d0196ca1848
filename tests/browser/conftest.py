"""The browser test's machinery: a JupyterLab server on a copy of the notebooks, and a headless Chromium.

- The server is started by scripts/lab.py (what `make lab` runs), bound to 127.0.0.1 on a free port with a
  random token, with its own Jupyter config/runtime folders (settings: autosave off, every cell kept in the
  DOM, no news check) so nothing of the user's setup leaks in or out. It always stops at the end, kernels
  included, and the test fails if its port or a kernel outlives it.
- The copy (a temp folder) holds notebooks/*.ipynb with `# NBVAL_SKIP` cells turned into raw cells (they need
  COCO or a GPU; nbval skips them the same way) and links to checkpoints/, results/, figures/ so relative
  paths such as notebook 00's "../checkpoints" resolve. JupyterLab writes only into the copy.
- Chromium is Debian's (IUQ_CHROMIUM overrides the path), driven by Playwright; nothing is downloaded. When
  it cannot start: one line saying what is missing and how to install it; an error in CI (CI set), a skip
  elsewhere.
- Screenshots, the server log and times.json (per-notebook UI seconds) go to tests/browser/artefacts/.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[2]
ARTEFACTS = Path(__file__).resolve().parent / "artefacts"
CHROMIUM = os.environ.get("IUQ_CHROMIUM", "/usr/bin/chromium")
# a closed network refuses Chromium's background connections: switch them off rather than wait on them
CHROMIUM_ARGS = ["--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic", "--disable-dev-shm-usage"]
INSTALL = "apt-get install -y --no-install-recommends chromium fonts-liberation"
SETTINGS = {   # JupyterLab user settings of the test server, {plugin id: {setting: value}}
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},  # every cell in the DOM, not just visible
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
}
TIMES: dict[str, dict[str, float]] = {}   # notebook -> {"open": s, "run_all": s, ...}, filled by the tests


def chromium_args() -> list[str]:
    return CHROMIUM_ARGS + (["--no-sandbox"] if os.geteuid() == 0 else [])   # the sandbox refuses root


def unavailable(reason: str) -> str:
    return f"browser test: {reason}; install it with `{INSTALL}` (.ci/run does), or set IUQ_CHROMIUM"


def check_chromium() -> str | None:
    """None when Playwright can start and stop Chromium here, else the one line that says why not."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return "browser test: the Python package playwright is missing; `make venv` installs it (extra [browser])"
    if not Path(CHROMIUM).exists():
        return unavailable(f"no Chromium at {CHROMIUM}")
    try:
        with sync_playwright() as p:
            p.chromium.launch(executable_path=CHROMIUM, args=chromium_args()).close()
    except Exception as e:  # noqa: BLE001 - any failure to start means the same thing to the reader
        return unavailable(f"Chromium at {CHROMIUM} does not start ({str(e).strip().splitlines()[0][:200]})")
    return None


def pytest_collection_modifyitems(config, items):
    """Check the browser once, before any server starts: stop the run (CI) or skip every test (elsewhere)."""
    if not any("browser" in item.path.parts for item in items):
        return
    problem = check_chromium()
    if problem is None:
        return
    if os.environ.get("CI"):
        pytest.exit(problem, returncode=1)
    for item in items:
        item.add_marker(pytest.mark.skip(reason=problem))


def pytest_terminal_summary(terminalreporter):
    if not TIMES:
        return
    terminalreporter.section("notebooks in JupyterLab (seconds: open, Run All Cells to idle)")
    for name, t in sorted(TIMES.items()):
        terminalreporter.write_line(f"{t.get('open', 0):6.1f} {t.get('run_all', 0):7.1f}  {name}")
    terminalreporter.write_line(f"{'':6s} {sum(t.get('run_all', 0) for t in TIMES.values()):7.1f}  total")
    (ARTEFACTS / "times.json").write_text(json.dumps(TIMES, indent=1))


# ---- the copy of the notebooks -------------------------------------------------------------------------------

def make_copy(root: Path, notebooks: list[Path]) -> None:
    """root/notebooks/<copies>, root/{checkpoints,results,figures} -> the repo's (read only by notebooks)."""
    (root / "notebooks").mkdir(parents=True)
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        for i, cell in enumerate(nb.cells):
            if cell.cell_type == "code" and cell.source.lstrip().startswith("# NBVAL_SKIP"):
                nb.cells[i] = nbformat.v4.new_raw_cell(cell.source)
        nbformat.write(nb, root / "notebooks" / path.name)
    for name in ("checkpoints", "results", "figures"):
        (root / name).symlink_to(REPO / name, target_is_directory=True)


# ---- the server ------------------------------------------------------------------------------------------------

@dataclass
class Lab:
    base: str           # http://127.0.0.1:PORT
    token: str
    root: Path          # the folder it serves (the copy)
    proc: subprocess.Popen
    runtime: Path       # JUPYTER_RUNTIME_DIR: kernel connection files name it on their command line

    def notebook_url(self, name: str) -> str:
        return f"{self.base}/lab/workspaces/{name}/tree/notebooks/{name}.ipynb?token={self.token}"

    def api(self, method: str, path: str, timeout: float = 30):
        req = urllib.request.Request(f"{self.base}{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read()
        return json.loads(body) if body else None

    def stop_kernels(self) -> None:
        for session in self.api("GET", "/api/sessions"):
            self.api("DELETE", f"/api/sessions/{session['id']}")


def start_lab(tmp: Path, *, timeout_s: float = 120) -> Lab:
    config, runtime = tmp / "config", tmp / "runtime"
    for plugin, values in SETTINGS.items():
        path = config / "lab" / "user-settings" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    token = secrets.token_hex(24)
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(config), JUPYTER_RUNTIME_DIR=str(runtime))
    ARTEFACTS.mkdir(exist_ok=True)
    log_path = ARTEFACTS / "server.log"
    with open(log_path, "w") as log:   # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / "lab.py"), str(tmp / "root"),
                                 "--ip=127.0.0.1", "--port=0", "--no-browser", f"--token={token}"],
                                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    lab = None
    deadline = time.time() + timeout_s
    while time.time() < deadline and proc.poll() is None:
        m = re.search(r"^JupyterLab: (http://[^/]+)/", log_path.read_text(), re.MULTILINE)
        if lab is None and m:
            lab = Lab(m.group(1), token, tmp / "root", proc, runtime)
        if lab is not None:
            try:
                lab.api("GET", "/api/status", timeout=5)
                return lab
            except OSError:
                pass
        time.sleep(0.3)
    stop_lab(lab, proc, runtime)
    tail = log_path.read_text()[-2000:]
    raise RuntimeError(f"JupyterLab did not come up in {timeout_s:.0f} s (log: {log_path}):\n{tail}")


def own_kernels(runtime: Path) -> list[int]:
    """Processes whose command line names our runtime folder (the kernels this server started)."""
    pids = []
    for proc_dir in Path("/proc").glob("[0-9]*"):
        try:
            if str(runtime).encode() in (proc_dir / "cmdline").read_bytes():
                pids.append(int(proc_dir.name))
        except OSError:
            continue
    return pids


def stop_lab(lab: Lab | None, proc: subprocess.Popen, runtime: Path) -> list[str]:
    """Shut the server down (its REST shutdown; SIGTERM, then SIGKILL of its process group if it lingers) and
    kill any kernel it left. Returns what outlived it (kernels, an open port), for the test to report."""
    if lab is not None and proc.poll() is None:
        try:
            lab.api("POST", "/api/shutdown", timeout=10)
        except OSError:
            pass
    for sig, wait_s in ((None, 30), (signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        if sig is not None and proc.poll() is None:
            print(f"JupyterLab did not stop: sending {sig.name}", file=sys.stderr)
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait_s)
            break
        except subprocess.TimeoutExpired:
            continue
    left = []
    for pid in own_kernels(runtime):
        left.append(f"kernel process {pid}")
        os.kill(pid, signal.SIGKILL)
    if lab is not None:
        port = int(lab.base.rsplit(":", 1)[1])
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                left.append(f"port {port} still open")
    return left


@pytest.fixture(scope="session")
def times() -> dict[str, dict[str, float]]:
    """Where the tests record per-notebook seconds (printed at the end and saved as artefacts/times.json)."""
    return TIMES


@pytest.fixture(scope="session")
def notebooks() -> list[Path]:
    return sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.fixture(scope="session")
def lab(tmp_path_factory, notebooks) -> Lab:
    tmp = tmp_path_factory.mktemp("lab")
    make_copy(tmp / "root", notebooks)
    lab = start_lab(tmp)
    yield lab
    left = stop_lab(lab, lab.proc, lab.runtime)
    assert not left, f"outlived the JupyterLab server: {left}"


# ---- the browser -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=chromium_args())
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser, lab):
    """A fresh browser context (no shared storage) on a 1400x900 window; its kernels stop afterwards."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    yield page
    context.close()
    lab.stop_kernels()
