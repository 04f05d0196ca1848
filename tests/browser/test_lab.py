"""Every notebook opened, run and explored in JupyterLab in a real (headless) Chromium, as a teacher would.

For each notebook: open it, Run > Run All Cells, wait until the kernel is idle with no cell pending, then
require that every code cell ran, that no output (widget callbacks included) shows a traceback, and that every
widget view rendered; save a screenshot. Then behaviour: notebook 01's teaching run shows a tqdm progress
widget that reached its total; the explorers of notebooks 02 and 04 draw a different picture after a control
changes. Run alone: `make browser` (or `.venv/bin/python -m pytest tests/browser`).
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import nbformat
import pytest
import ui

REPO = Path(__file__).resolve().parents[2]
ARTEFACTS = Path(__file__).resolve().parent / "artefacts"     # git-ignored; conftest.py writes here too
NAMES = sorted(p.stem for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def run_in_lab(page, lab, times, name: str) -> None:
    """Open `name`, run all its cells through the menu, record the times, assert nothing went wrong."""
    t0 = time.time()
    try:
        ui.open_notebook(page, lab.notebook_url(name))
        times[name] = {"open": time.time() - t0}
        times[name]["run_all"] = ui.run_all(page)
        ui.wait_widgets(page)
    finally:                                              # also when it timed out: what did it show?
        ui.screenshot_whole(page, ARTEFACTS / f"{name}.png")
    problems = ui.problems(page)
    assert not problems, f"{name} in JupyterLab: " + "; ".join(problems)


def explorer(page):
    """The notebook's explorer: the last `interact` widget on the page."""
    return page.locator(".widget-interact").last


def screenshot_explorer(page, widget, path: Path) -> None:
    """The window with the explorer's cell at the top: what a person sees in JupyterLab."""
    page.locator(".jp-CodeCell").filter(has=widget).evaluate("e => e.scrollIntoView({block: 'start'})")
    page.screenshot(path=str(path))


def move_slider(widget, label: str, a: float, b: float) -> float:
    """Set the slider labelled `label` to `a`, or to `b` when it already reads `a`; return the value set."""
    value = b if float(ui.slider_readout(widget, label).inner_text().replace("\u2212", "-")) == a else a
    ui.set_slider(widget, label, value)
    return value


def assert_redraws(page, widget, change, what: str, *, timeout_s: float = 180) -> str:
    """Apply `change()` to the explorer and require a different picture afterwards (same page, no error)."""
    before = ui.image_src(widget)
    assert before.startswith("data:image/png"), f"the explorer shows no picture before {what}"
    change()
    after = ui.wait_new_image(widget, before, timeout_s=timeout_s)
    assert after.startswith("data:image/png") and after != before, f"the picture did not change after {what}"
    assert not ui.problems(page), ui.problems(page)
    return after


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_in_jupyterlab(page, lab, times, name):
    run_in_lab(page, lab, times, name)
    if name.startswith("01_"):
        check_progress_bar(page)
    elif name.startswith("02_"):
        widget = explorer(page)
        screenshot_explorer(page, widget, ARTEFACTS / f"{name}_explorer.png")
        assert_redraws(page, widget, lambda: move_slider(widget, "image", 7, 8), "moving the image slider")
    elif name.startswith("04_"):
        widget = explorer(page)
        screenshot_explorer(page, widget, ARTEFACTS / f"{name}_explorer.png")
        assert_redraws(page, widget, lambda: move_slider(widget, "angle", -45, 45), "moving the angle slider")
        select = widget.locator(".widget-dropdown select")
        shown = select.evaluate("s => s.options[s.selectedIndex].text")
        other = next(o for o in select.locator("option").all_text_contents() if o != shown)
        assert_redraws(page, widget, lambda: select.select_option(other), f"choosing the {other} transform")
    if name.startswith(("02_", "04_")):
        screenshot_explorer(page, widget, ARTEFACTS / f"{name}_explorer_changed.png")


def check_progress_bar(page):
    """The `tiny` teaching run's tqdm bar is an ipywidgets progress bar, full, reading N/N steps."""
    bars = page.locator(".widget-hprogress")
    assert bars.count() >= 1, "no progress widget in notebook 01 (the tiny run's tqdm bar)"
    bar = bars.last
    fill = bar.locator(".progress-bar")
    assert "width: 100%" in (fill.get_attribute("style") or ""), "the progress bar did not reach its total"
    assert "progress-bar-danger" not in (fill.get_attribute("class") or ""), "the progress bar shows a failure"
    text = bar.locator("xpath=..").inner_text()          # the tqdm HBox: "100%", the bar, "N/N [time, rate]"
    assert re.search(r"\b(\d+)/\1\b", text), f"the progress text does not read N/N: {text!r}"
    bar.locator("xpath=..").screenshot(path=str(ARTEFACTS / "01_progress.png"))


def test_the_checks_see_failures(page, lab):
    """The checks are not vacuous: a notebook with a raising cell, a raising widget callback and a widget whose
    view cannot load gets each of them reported (this notebook exists only in the server's copy)."""
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    nb.cells = [
        nbformat.v4.new_code_cell("import ipywidgets as w, traitlets as t\n"
                                  "w.interact(lambda x: 1 / x, x=w.IntSlider(0, 0, 3))"),
        nbformat.v4.new_code_cell("class Broken(w.DOMWidget):\n"
                                  "    _view_name = t.Unicode('NoSuchView').tag(sync=True)\n"
                                  "    _view_module = t.Unicode('no-such-module').tag(sync=True)\n"
                                  "    _view_module_version = t.Unicode('0.0.1').tag(sync=True)\n"
                                  "Broken()"),
        nbformat.v4.new_code_cell("raise ValueError('on purpose')"),
        nbformat.v4.new_code_cell("print('never runs')"),
    ]
    nbformat.write(nb, lab.root / "notebooks" / "failing.ipynb")
    ui.open_notebook(page, lab.notebook_url("failing"))
    ui.run_all(page)
    ui.wait_widgets(page, timeout_s=10)
    found = ui.problems(page)
    page.screenshot(path=str(ARTEFACTS / "failing.png"))
    assert any("ZeroDivisionError" in p for p in found), found     # inside the interact callback's output
    assert any(p.startswith("widget: ") for p in found), found      # the view that cannot load
    assert any("ValueError: on purpose" in p for p in found), found
    assert any("code cell 4 did not run" in p for p in found), found
    assert len(found) == 4, found


def test_copy_keeps_committed_notebooks_clean(lab):
    """Run last (file order): the committed .ipynb files have no outputs; only the server's copy got them."""
    for name in NAMES:
        nb = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
        assert all(c.get("outputs", []) == [] for c in nb.cells if c.cell_type == "code"), name
