"""The notebooks in a real browser (marker `browser`): JupyterLab served on localhost with a random token, driven by
headless Chromium through Playwright. Notebook 03 runs every cell (Run → Run All Cells) with tiny parameters, ends
without an error output and draws its figure; notebook 02's α slider renders and redraws the figure when moved; a
notebook whose cell raises is reported as failing, so a pass means something.

Chromium is Debian's package (`make browser-deps` installs it; Playwright's own browser download is not used), found
as `chromium` on PATH or at `$WORKBENCH_CHROMIUM`. Without it these tests fail and say how to install it;
`WORKBENCH_ALLOW_NO_BROWSER=1` turns that into a skip, for a machine where it cannot be installed (CI never sets it).
Each page's screenshot is written to the test's tmp folder (`browser-shots/`).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import pytest
from test_notebooks import NOTEBOOKS, TINY

# `notebooks` too: they execute notebooks, so the fast subset (-m "not notebooks and not slow") leaves them out
pytestmark = [pytest.mark.browser, pytest.mark.notebooks, pytest.mark.timeout(600)]

ALLOW_NO_BROWSER = "WORKBENCH_ALLOW_NO_BROWSER"
# one notebook's Run All with tiny parameters (notebook 03: ~25 s on 2 busy cores)
RUN_TIMEOUT_S = 240


def chromium_path() -> str | None:
    """``$WORKBENCH_CHROMIUM``, else Debian's ``chromium`` (or ``chromium-browser``) on PATH."""
    if os.environ.get("WORKBENCH_CHROMIUM"):
        return os.environ["WORKBENCH_CHROMIUM"]
    return shutil.which("chromium") or shutil.which("chromium-browser")


def missing(what: str) -> None:
    """Fail, naming the fix; a skip only where ``WORKBENCH_ALLOW_NO_BROWSER=1`` allows it."""
    message = f"{what}: `make browser-deps` installs it (Debian's chromium; pip's playwright comes with .[dev])"
    if os.environ.get(ALLOW_NO_BROWSER) == "1":
        pytest.skip(f"{message}; skipped because {ALLOW_NO_BROWSER}=1")
    pytest.fail(f"{message}; set {ALLOW_NO_BROWSER}=1 to skip the browser tests on a machine without it")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# JupyterLab settings for a reproducible page: every cell kept in the DOM (no virtual scrolling), no news or update
# checks (no network here), no toasts over the notebook
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
        "doNotDisturbMode": True,
    },
}


@dataclass
class Lab:
    """A running ``jupyter lab``: its notebooks folder, address and token."""

    root: Path
    url: str
    token: str
    process: subprocess.Popen
    log: Path
    shots: Path

    def notebook_url(self, name: str) -> str:
        # ?reset: a fresh workspace, so the tabs of an earlier test do not reopen
        return f"{self.url}/lab/tree/{name}?reset&token={self.token}"

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def api(self, path: str, method: str = "GET"):
        request = urllib.request.Request(f"{self.url}/api/{path}?token={self.token}", method=method)
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
        return json.loads(body) if body else None

    def shut_down_kernels(self) -> None:
        """End every notebook's session (and its kernel), so one test's kernel does not run beside the next."""
        for session in self.api("sessions"):
            self.api(f"sessions/{session['id']}", method="DELETE")


@pytest.fixture(scope="module")
def lab(tmp_path_factory, tiny_gym):
    """``jupyter lab`` on a free localhost port with a random token, its root a tmp folder, its settings, config and
    runtime folders private; the kernel shows figures inline and writes figures under the tmp folder only."""
    base = tmp_path_factory.mktemp("lab")
    root, settings = base / "notebooks", base / "settings"
    root.mkdir()
    for relative, values in LAB_SETTINGS.items():
        (settings / relative).parent.mkdir(parents=True, exist_ok=True)
        (settings / relative).write_text(json.dumps(values))
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(base / "config"),
        "JUPYTER_RUNTIME_DIR": str(base / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(settings),
        "JUPYTERLAB_WORKSPACES_DIR": str(base / "workspaces"),
        "WORKBENCH_FIGURES": str(base / "figures"),
        # the kernel imports this checkout's package whatever the environment's install points to
        "PYTHONPATH": os.pathsep.join(filter(None, [str(NOTEBOOKS.parent), os.environ.get("PYTHONPATH")])),
    }
    env.pop("MPLBACKEND", None)  # the kernel's inline backend, so figures reach the page
    env.pop("WORKBENCH_WIDGETS", None)  # explorers detect the frontend themselves (plots.widget_frontend)
    port, token = free_port(), secrets.token_hex(16)
    log = base / "lab.log"
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1"]
    command += [f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--ServerApp.root_dir={root}"]
    command += [f"--IdentityProvider.token={token}"]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=root)
    server = Lab(root, f"http://127.0.0.1:{port}", token, process, log, base / "browser-shots")
    server.shots.mkdir()
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"jupyter lab exited ({process.returncode}):\n{server.log_tail()}")
            try:
                with urllib.request.urlopen(f"{server.url}/api/status?token={token}", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"jupyter lab did not answer on port {port} in 90 s:\n{server.log_tail()}")
            time.sleep(0.5)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (Debian's) under Playwright."""
    path = chromium_path()
    if path is None or not Path(path).exists():
        missing(f"no Chromium found (looked for $WORKBENCH_CHROMIUM, `chromium`, `chromium-browser`; got {path!r})")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("the playwright package is not installed")
    with sync_playwright() as playwright:
        # --disable-dev-shm-usage: a container's small /dev/shm would crash the renderer on a page of figures
        chromium = playwright.chromium.launch(executable_path=path, headless=True, args=["--disable-dev-shm-usage"])
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser, lab):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        yield context.new_page()
    finally:
        context.close()
        lab.shut_down_kernels()


def write_notebook(lab: Lab, source: Path | nbformat.NotebookNode, name: str, parameters: dict | None = None) -> Path:
    """A copy of ``source`` in the lab's root with ``parameters`` injected as papermill injects them (a
    ``# Parameters`` cell after the ``parameters`` cell)."""
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    nb = load_notebook_node(str(source)) if isinstance(source, Path) else source
    if parameters:
        nb = parameterize_notebook(nb, parameters, kernel_name="python3", language="python")
    path = lab.root / name
    nbformat.write(nb, path)
    return path


@dataclass
class RunReport:
    """What Run All left: error outputs in the saved notebook and tracebacks on the page, code cells never run,
    images on the page."""

    name: str
    errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    not_run: list[int] = field(default_factory=list)
    images: int = 0
    seconds: float = 0.0

    def problems(self) -> list[str]:
        out = [f"error output: {e}" for e in self.errors] + [f"traceback on the page: {e}" for e in self.page_errors]
        return out + ([f"code cells never run: {self.not_run}"] if self.not_run else [])


# the open notebook (the current tab's panel)
PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden)"
FIGURES = f"{PANEL} .jp-OutputArea-output img"

RUN_FINISHED = """() => {
  const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  if (!panel) return false;
  const prompts = [...panel.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(p => p.textContent);
  const status = panel.querySelector('.jp-Notebook-ExecutionIndicator')?.dataset.status;
  return prompts.some(t => /\\[\\d+\\]/.test(t)) && !prompts.some(t => t.includes('*')) && status === 'idle';
}"""

PAGE_STATE = """() => {
  const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  return {
    title: document.title,
    prompts: panel ? [...panel.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(p => p.textContent) : null,
    status: [...document.querySelectorAll('#jp-main-statusbar .jp-StatusBar-TextItem')].map(e => e.textContent),
    dialogs: [...document.querySelectorAll('.jp-Dialog')].map(d => d.innerText),
  };
}"""

# the status bar's kernel item ("Python 3 (ipykernel) | Idle"): the toolbar's execution indicator reads idle before
# the kernel exists, and Run All then clears the cells without running them
KERNEL_IDLE = """() => [...document.querySelectorAll('#jp-main-statusbar .jp-StatusBar-TextItem')]
  .some(e => / \\| Idle$/.test(e.textContent) && !e.textContent.startsWith('No Kernel'))"""


def page_state(page) -> str:
    """The current tab's cell prompts, status bar and open dialogs, for a failure message."""
    return json.dumps(page.evaluate(PAGE_STATE))


def open_notebook(page, lab: Lab, name: str) -> None:
    """Open ``name`` in JupyterLab and wait for its kernel to be started and idle."""
    page.goto(lab.notebook_url(name))
    page.wait_for_selector(f"{PANEL} .jp-Notebook-ExecutionIndicator", timeout=120_000)
    page.wait_for_function(KERNEL_IDLE, timeout=120_000, polling=250)


def menu(page, *labels: str) -> None:
    """Click a menu bar entry, then each label in the menus it opens (as a user does: Run → Run All Cells)."""
    page.locator(".lm-MenuBar-itemLabel", has_text=labels[0]).first.click()
    for label in labels[1:]:
        page.locator(".lm-Menu:visible .lm-Menu-itemLabel", has_text=label).first.click()


def run_all(page, lab: Lab, name: str, timeout_s: float = RUN_TIMEOUT_S) -> RunReport:
    """Open ``name``, Run → Run All Cells, wait for the kernel to finish, File → Save Notebook, and report the error
    outputs of the saved notebook, the tracebacks on the page, the code cells left unrun and the images drawn."""
    open_notebook(page, lab, name)
    start = time.monotonic()
    menu(page, "Run", "Run All Cells")
    try:
        page.wait_for_function(RUN_FINISHED, timeout=timeout_s * 1000, polling=500)
    except Exception as error:  # playwright's TimeoutError: say where the page stood
        shot = lab.shots / f"{Path(name).stem}-timeout.png"
        page.screenshot(path=str(shot))
        raise AssertionError(
            f"{name}: Run All did not finish in {timeout_s} s ({shot}); {page_state(page)}\n"
            f"server log:\n{lab.log_tail()}"
        ) from error
    report = RunReport(name, seconds=time.monotonic() - start)
    path = lab.root / name
    saved_before = path.stat().st_mtime_ns
    menu(page, "File", "Save Notebook")
    deadline = time.monotonic() + 30
    while path.stat().st_mtime_ns == saved_before or page.locator(".lm-TabBar-tab.jp-mod-current.jp-mod-dirty").count():
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} was not saved in 30 s; {page_state(page)}")
        time.sleep(0.2)
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        if cell.execution_count is None and cell.source.strip():
            report.not_run.append(i)
        for output in cell.get("outputs", []):
            if output.output_type == "error":
                report.errors.append(f"cell {i}: {output.ename}: {output.evalue}")
    # JupyterLab renders an error output as stderr: a traceback's last line names the exception
    stderr = page.locator(f"{PANEL} .jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    for text in stderr.all_inner_texts():
        if "Traceback" in text:
            report.page_errors.append(text.strip().splitlines()[-1])
    report.images = page.locator(FIGURES).count()
    return report


def check_runs_clean(page, lab: Lab, name: str) -> RunReport:
    """``run_all``, writing the page's screenshot and failing with every problem named when a cell errs or is left
    unrun."""
    report = run_all(page, lab, name)
    shot = lab.shots / f"{Path(name).stem}.png"
    page.screenshot(path=str(shot))
    problems = report.problems()
    assert not problems, f"{name} in JupyterLab ({shot}):\n" + "\n".join(problems)
    return report


def test_notebook_03_runs_all_cells_in_jupyterlab_and_draws_its_figure(page, lab, tmp_path):
    name = "03_pad_train.ipynb"
    write_notebook(lab, NOTEBOOKS / name, name, {**TINY[name], "output_dir": str(tmp_path / "run")})
    report = check_runs_clean(page, lab, name)
    assert report.images >= 1, f"{name} drew no figure on the page (screenshot in {lab.shots})"
    figure = page.locator(FIGURES).first
    figure.scroll_into_view_if_needed()
    assert figure.evaluate("img => img.complete && img.naturalWidth > 0"), "the figure's image did not load"
    page.screenshot(path=str(lab.shots / "03_pad_train-figure.png"))
    assert list((tmp_path / "run" / "figures").glob("*.png")), "the run wrote no figure to its output folder"


def test_a_cell_that_raises_fails_the_run_all_check(page, lab):
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
    nb.cells = [
        nbformat.v4.new_markdown_cell("# A notebook that fails"),
        nbformat.v4.new_code_cell('print("first cell runs")'),
        nbformat.v4.new_code_cell('raise ValueError("raised on purpose")'),
        nbformat.v4.new_code_cell('print("never reached")'),
    ]
    name = "raises.ipynb"
    write_notebook(lab, nb, name)
    with pytest.raises(AssertionError) as failure:
        check_runs_clean(page, lab, name)
    message = str(failure.value)
    assert "error output: cell 1: ValueError: raised on purpose" in message  # the saved notebook
    assert "traceback on the page: ValueError: raised on purpose" in message  # the DOM
    assert "code cells never run: [2]" in message  # Run All stops at the error


def test_notebook_02_alpha_slider_renders_and_redraws_the_figure(page, lab, tmp_path):
    name = "02_calibration_alpha_sweep.ipynb"
    write_notebook(lab, NOTEBOOKS / name, name, {**TINY[name], "output_dir": str(tmp_path / "run")})
    check_runs_clean(page, lab, name)
    label = page.locator(".widget-label", has_text=re.compile(r"^\s*alpha\s*$"))
    alpha_slider = page.locator(".jupyter-widgets.widget-slider").filter(has=label)
    slider = page.locator(PANEL).locator(alpha_slider).first
    slider.wait_for(state="visible", timeout=30_000)
    slider.scroll_into_view_if_needed()
    page.screenshot(path=str(lab.shots / "02_calibration_alpha_sweep-slider.png"))
    # the explorer: ipywidgets.interactive, its controls above the output area holding the figure
    figure = page.locator(f"{PANEL} .widget-interact").filter(has=alpha_slider).locator(".jp-OutputArea-output img")
    sources = lambda: figure.evaluate_all("imgs => imgs.map(img => img.src)")
    readout = slider.locator(".widget-readout")
    before_value, before_sources = readout.inner_text(), sources()
    assert before_sources, f"{name}: no figure under the alpha slider"
    handle = slider.locator(".noUi-handle").first
    handle.focus()
    handle.press("ArrowLeft")  # one step, as a user's arrow key moves the slider
    if readout.inner_text() == before_value:  # already at its lowest value
        handle.press("ArrowRight")
    assert readout.inner_text() != before_value, f"the alpha slider did not move (readout {before_value!r})"
    deadline = time.monotonic() + 60
    while not (sources() and set(sources()) - set(before_sources)):
        if time.monotonic() > deadline:
            page.screenshot(path=str(lab.shots / "02_calibration_alpha_sweep-moved.png"))
            moved = f"{before_value} -> {readout.inner_text()}"
            raise AssertionError(f"the figure was not redrawn in 60 s after moving alpha {moved}")
        time.sleep(0.25)
    figure.first.scroll_into_view_if_needed()
    page.screenshot(path=str(lab.shots / "02_calibration_alpha_sweep-moved.png"))
