"""What a person does and sees in JupyterLab 4, as Playwright calls on one page (selectors checked on 4.6).

A notebook is opened in its own workspace (so no other tab reopens), run with Run > Run All Cells, and read
back from the DOM: the input prompts (`[ ]`, `[*]`, `[3]`), the output areas (an error renders as a stderr
output with the traceback text) and the ipywidgets renderer, which writes "Loading widget..." into its
output node until the view exists, "Error displaying widget..." when it fails, and draws its error widget
("Click to show javascript error.") when the view's code cannot be loaded.
"""
from __future__ import annotations

import re
import time

from playwright.sync_api import Locator, Page

KERNEL_STATUS = "span.jp-StatusBar-TextItem[title^='Change kernel']"   # "Python 3 (ipykernel) | Idle"
PROMPTS = ".jp-CodeCell .jp-InputPrompt"
WIDGET_TROUBLE = ("Loading widget...", "Error displaying widget")
WIDGET_ERROR = ".jupyter-widgets-error-widget"
TRACEBACK = "Traceback (most recent call last)"


def open_notebook(page: Page, url: str, *, timeout_s: float = 180) -> None:
    """Go to `url` (a /lab/workspaces/<name>/tree/<path> URL) and wait until the kernel reports Idle."""
    page.goto(url)
    page.wait_for_function(
        f"() => (document.querySelector(\"{KERNEL_STATUS}\")?.textContent ?? '').endsWith('| Idle')",
        timeout=timeout_s * 1000)


def prompts(page: Page) -> list[str]:
    """The input prompt of every code cell, in order: '[ ]:', '[*]:' or '[12]:'."""
    return [t.strip() for t in page.locator(PROMPTS).all_text_contents()]


def run_all(page: Page, *, timeout_s: float = 600, settle_s: float = 2.0) -> float:
    """Run > Run All Cells through the menu bar; wait until the kernel is idle and no cell is pending (the
    state held for `settle_s`, so a gap between two queued cells does not count). Returns the seconds taken.
    A cell that raises stops the queue: the cells after it keep '[ ]', which `problems` reports."""
    t0 = time.time()
    page.click(".lm-MenuBar-itemLabel:text-is('Run')")
    page.click("li.lm-Menu-item[data-command='runmenu:run-all']")
    page.wait_for_function(   # the queue has started: some prompt is [*] or numbered
        f"() => [...document.querySelectorAll('{PROMPTS}')].some(e => /\\[(\\*|\\d+)\\]/.test(e.textContent))",
        timeout=60_000)
    quiet_since = None
    while time.time() - t0 < timeout_s:
        idle = page.locator(KERNEL_STATUS).text_content().endswith("| Idle")
        if idle and not any("*" in p for p in prompts(page)):
            quiet_since = quiet_since or time.time()
            if time.time() - quiet_since >= settle_s:
                return quiet_since - t0
        else:
            quiet_since = None
        time.sleep(0.5)
    raise TimeoutError(f"cells still running after {timeout_s:.0f} s: {prompts(page)}")


def wait_widgets(page: Page, *, timeout_s: float = 60) -> None:
    """Give every widget view up to `timeout_s` to leave "Loading widget..." (then `problems` reports it)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline and any(t.startswith(WIDGET_TROUBLE[0]) for t in output_texts(page)):
        time.sleep(0.5)


def output_texts(page: Page) -> list[str]:
    """The text of every innermost output (an Output widget nests output areas: count each text once)."""
    return page.evaluate("""() => [...document.querySelectorAll('.jp-OutputArea-output')]
        .filter(o => !o.querySelector('.jp-OutputArea-output')).map(o => o.textContent)""")


def problems(page: Page) -> list[str]:
    """What a person would see go wrong, one line each: a code cell that did not run, an output showing a
    traceback (cells and widget callbacks alike), a widget view that failed or is still loading."""
    found = [f"code cell {i + 1} did not run (prompt {p})" for i, p in enumerate(prompts(page))
             if not re.fullmatch(r"\[\d+\]:", p)]
    for text in output_texts(page):
        if TRACEBACK in text:
            lines = [x for x in text.splitlines() if x.strip()]
            found.append("traceback: " + (lines[-1] if lines else text)[:300])
        elif text.startswith(WIDGET_TROUBLE):
            found.append("widget: " + text.strip()[:300])
    found += ["widget: a view failed to load (its error widget shows)"] * page.locator(WIDGET_ERROR).count()
    return found


def screenshot_whole(page: Page, path, *, max_height: int = 16000) -> None:
    """A screenshot of the whole notebook: the window made as tall as the notebook's scrolled content (up to
    `max_height` px, below Chromium's texture limit) for the picture, then set back."""
    size = page.viewport_size
    content = page.evaluate("() => document.querySelector('.jp-WindowedPanel-outer')?.scrollHeight ?? 0")
    page.set_viewport_size({"width": size["width"], "height": max(size["height"], min(max_height, content + 200))})
    try:
        page.locator(".jp-WindowedPanel-outer").evaluate("e => e.scrollTo(0, 0)")
        page.screenshot(path=str(path))
    finally:
        page.set_viewport_size(size)


def image_src(widget: Locator) -> str:
    """The data URL of the (first) picture drawn inside `widget`, '' while there is none."""
    img = widget.locator("img")
    return (img.first.get_attribute("src") or "") if img.count() else ""


def wait_new_image(widget: Locator, old: str, *, timeout_s: float = 120) -> str:
    """Wait until `widget` shows a picture whose data differs from `old`; return it ('' if none came)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        src = image_src(widget)
        if src and src != old:
            return src
        time.sleep(0.5)
    return image_src(widget)


def slider_readout(widget: Locator, label: str) -> Locator:
    """The editable number beside the slider labelled `label`."""
    return widget.locator(".widget-slider").filter(has=widget.page.locator(f"label:text-is('{label}')")) \
        .locator(".widget-readout")


def set_slider(widget: Locator, label: str, value: float) -> None:
    """Type `value` into the readout of the slider labelled `label` and press Enter, as a person would."""
    readout = slider_readout(widget, label)
    readout.click()
    readout.press("Control+A")
    readout.type(str(value))
    readout.press("Enter")
