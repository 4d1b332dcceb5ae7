"""The course seen as a learner sees it: JupyterLab in headless Chromium.

One JupyterLab server (helpers.tools.browser.jupyterlab: a free 127.0.0.1 port, a random
token, throw-away Jupyter folders, the course's settings from the virtualenv) and one
Chromium, driven by Playwright, for the whole module. The test

- opens every lesson, lab and solution and checks that every ```mermaid block rendered
  as a diagram (JupyterLab 4 draws it as an SVG image inside ``.jp-RenderedMermaid``)
  and none as JupyterLab's error box (``.jp-RenderedMermaid.jp-mod-warning``, with
  Mermaid's parse error in ``details > pre``), cell by cell, and saves a picture of each
  notebook to build/screenshots/;
- draws the fast Mermaid check's examples (tests/mermaid_examples.py) with the same
  JupyterLab: the diagrams it accepts must draw, the mistakes it calls fatal must show the
  error box. That proves the detector sees a failure (a check that cannot see one proves
  nothing) and keeps ``python -m helpers diagrams`` in step with the real renderer;
- runs lesson 00's code cells with Shift+Enter in a real kernel and reads their outputs;
- runs the warm-up lab, as shipped, down to ``await check("q1")`` and reads its feedback.

Cells are not windowed (a test-local setting, ``windowingMode: none``), so every Markdown
cell is in the page; autosave is off, and the module checks that no notebook in the
repository changed. Skipped, with the reason, where Playwright or Chromium is missing
(``COURSE_CHROMIUM`` names a Chromium elsewhere); CI sets ``COURSE_REQUIRE_BROWSER=1``,
which turns that skip into a failure.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mermaid_examples import BAD, GOOD

from helpers.core.mermaid import find_mermaid_blocks
from helpers.tools.browser import LabServer, find_chromium, jupyterlab, launch_chromium

# CI sets COURSE_REQUIRE_BROWSER=1: there a missing browser is a failure, not a skip.
REQUIRED = os.environ.get("COURSE_REQUIRE_BROWSER", "") not in ("", "0")
try:
    from playwright import sync_api
except ImportError:
    if REQUIRED:
        pytest.fail("COURSE_REQUIRE_BROWSER is set but Playwright is not installed (pip install playwright)", pytrace=False)
    pytest.skip("Playwright is not installed (pip install playwright)", allow_module_level=True)
CHROMIUM = find_chromium()
if CHROMIUM is None:
    reason = "no Chromium found: install Debian's `chromium` package (apt-get install chromium) or set COURSE_CHROMIUM"
    if REQUIRED:
        pytest.fail(f"COURSE_REQUIRE_BROWSER is set but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "build" / "screenshots"
NOTEBOOKS = [
    p.relative_to(ROOT).as_posix()
    for folder in ("notebooks", "labs", "solutions")
    for p in sorted((ROOT / folder).glob("*.ipynb"))
]

# Generous limits: the course runs on 2 cores shared with other work. Every wait is for a condition.
LOAD_MS = 180_000  # JupyterLab's first page load
RENDER_MS = 60_000  # a notebook opened and its diagrams drawn
CELL_MS = 120_000  # one code cell run in the kernel
FULL_PAGE_MAX_PX = 16_000  # Chromium's largest screenshot; longer notebooks are cut there


# --- what the page is asked (JupyterLab's own objects, through window.jupyterapp) ---------------------

OPEN_JS = """
async (path) => {
    const widget = await window.jupyterapp.commands.execute('docmanager:open', {path, factory: 'Notebook'});
    await widget.context.ready;
    await widget.revealed;
    window.__courseNotebook = widget;
    return widget.content.widgets.length;
}
"""

CLOSE_JS = """
async () => {
    const widget = window.__courseNotebook;
    window.__courseNotebook = null;
    if (!widget) return;
    await widget.sessionContext.shutdown();  // no kernel left behind
    widget.dispose();                         // no "save changes?" dialog: nothing is written
}
"""

# How a .jp-RenderedMermaid box looks: ok when it holds an SVG image the browser decoded;
# otherwise why not: Mermaid's message from JupyterLab's error box (jp-mod-warning).
DESCRIBE_JS = """
async function describe(box) {
    const img = box.querySelector('figure > img');
    if (img !== null) await img.decode().catch(() => null);
    const svg = img !== null && (img.getAttribute('src') || '').startsWith('data:image/svg+xml');
    const details = box.querySelector('details.jp-RenderedMermaid-Details > pre');
    const warning = box.classList.contains('jp-mod-warning');
    const ok = !warning && svg && img.naturalWidth > 0;
    let error = '';
    if (warning) {
        const parsed = details ? details.textContent.trim() : '';
        error = parsed || 'JupyterLab error box (no parse message: Mermaid failed while drawing)';
    }
    else if (!ok) error = 'no SVG image';
    return {ok, warning, error};
}
"""

# Every diagram box in the open notebook, with the index of the cell it is in.
DIAGRAMS_JS = (
    """
async () => {
    """
    + DESCRIBE_JS
    + """
    const cells = window.__courseNotebook.content.widgets.map(cell => cell.node);
    const boxes = [...window.__courseNotebook.node.querySelectorAll('.jp-RenderedMermaid')];
    return Promise.all(boxes.map(async box => ({cell: cells.findIndex(node => node.contains(box)), ...(await describe(box))})));
}
"""
)

# A Markdown text rendered by the open notebook's own renderers, outside any cell: its diagram boxes.
RENDER_MARKDOWN_JS = (
    """
async (text) => {
    """
    + DESCRIBE_JS
    + """
    const renderer = window.__courseNotebook.content.rendermime.createRenderer('text/markdown');
    document.body.appendChild(renderer.node);
    try {
        await renderer.renderModel({data: {'text/markdown': text}, metadata: {}, trusted: false, setData() {}});
        return await Promise.all([...renderer.node.querySelectorAll('.jp-RenderedMermaid')].map(describe));
    } finally {
        renderer.node.remove();  // appended by hand, so dispose() would leave it on top of every later screenshot
        renderer.dispose();
    }
}
"""
)

# Select a cell in command mode and give the notebook the keyboard, as a click in its margin does.
SELECT_JS = """
(index) => {
    const notebook = window.__courseNotebook.content;
    notebook.mode = 'command';
    notebook.activeCellIndex = index;
    notebook.deselectAll();
    notebook.activeCell.node.scrollIntoView();
    notebook.node.focus();
}
"""

CELL_JS = """
(index) => {
    const cell = window.__courseNotebook.content.widgets[index];
    const prompt = cell.node.querySelector('.jp-InputArea-prompt');
    return {
        type: cell.model.type,
        prompt: prompt ? prompt.textContent.trim() : '',
        outputs: [...cell.node.querySelectorAll('.jp-OutputArea-output')].map(out => ({
            mime: out.getAttribute('data-mime-type') || '',
            text: out.innerText,
        })),
    };
}
"""


# --- fixtures: one server, one browser, one page for the module ------------------------------------------


@pytest.fixture(autouse=True)
def _stop_services() -> None:
    """Replaces conftest's async fixture of this name: Playwright's sync API runs its own event loop
    in this thread, so no pytest-asyncio loop may run here; and these tests start no HTTP service
    in this process (the services run in the notebooks' kernels)."""


def _fingerprint() -> dict[str, str]:
    """Hash of every notebook the browser opens: the test must not write into the repository."""
    return {path: hashlib.sha256((ROOT / path).read_bytes()).hexdigest() for path in NOTEBOOKS}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabServer]:
    """JupyterLab on the repository, its Jupyter folders in a temporary directory."""
    before = _fingerprint()
    with jupyterlab(ROOT, tmp_path_factory.mktemp("jupyter")) as server:
        yield server
    assert _fingerprint() == before, "the browser test changed a notebook in the repository (autosave must stay off)"


@pytest.fixture(scope="module")
def page(lab: LabServer) -> Iterator[Any]:
    """One Chromium tab with JupyterLab loaded (workspace reset), shared by every test here."""
    assert CHROMIUM is not None
    started = time.monotonic()
    with sync_api.sync_playwright() as playwright:
        browser = launch_chromium(playwright, CHROMIUM)
        tab = browser.new_page(viewport={"width": 1280, "height": 900})
        tab.set_default_timeout(RENDER_MS)
        tab.goto(lab.lab_url(), timeout=LOAD_MS)
        tab.wait_for_function("() => window.jupyterapp && window.jupyterapp.restored", timeout=LOAD_MS)
        tab.evaluate("() => window.jupyterapp.restored")  # resolves once the workspace is restored
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        try:
            yield tab
        finally:
            browser.close()
    print(f"\nbrowser tests: {time.monotonic() - started:.1f} s with JupyterLab and Chromium up")


def _open(page: Any, path: str) -> int:
    """Open ``path`` as a notebook (its kernel starts, as for a learner); returns its number of cells."""
    return int(page.evaluate(OPEN_JS, path))


def _close(page: Any) -> None:
    page.evaluate(CLOSE_JS)


# The notebook's scroller: how tall its content is, and how much of the window is not notebook.
SCROLLER_JS = """
() => {
    const content = window.__courseNotebook.content;
    const outer = content.node.querySelector('.jp-WindowedPanel-outer') || content.node;
    return {content: outer.scrollHeight, shown: outer.clientHeight, chrome: window.innerHeight - outer.clientHeight};
}
"""


def _screenshot(page: Any, path: str, prefix: str = "") -> Path:
    """The whole notebook as one picture: the window is made as tall as the notebook for the shot."""
    target = SCREENSHOTS / f"{prefix}{path.replace('/', '-').removesuffix('.ipynb')}.png"
    size = page.evaluate(SCROLLER_JS)
    height = min(size["content"] + size["chrome"], FULL_PAGE_MAX_PX)
    page.set_viewport_size({"width": 1280, "height": height})
    try:  # JupyterLab lays itself out again on the next frame
        page.wait_for_function(f"() => ({SCROLLER_JS.strip()})().shown >= {height - size['chrome'] - 2}", timeout=RENDER_MS)
        page.screenshot(path=str(target))
    finally:
        page.set_viewport_size({"width": 1280, "height": 900})
    return target


def _expected_diagrams(path: str) -> dict[int, int]:
    """Cell index -> number of ```mermaid blocks in that Markdown cell, from the file on disk."""
    cells = json.loads((ROOT / path).read_text(encoding="utf-8"))["cells"]
    expected = {}
    for index, cell in enumerate(cells):
        if cell["cell_type"] == "markdown":
            source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            if count := len(find_mermaid_blocks(source)):
                expected[index] = count
    return expected


def _cells_of(diagrams: list[dict[str, Any]]) -> dict[int, int]:
    found: dict[int, int] = {}
    for diagram in diagrams:
        found[diagram["cell"]] = found.get(diagram["cell"], 0) + 1
    return found


# --- every diagram renders ----------------------------------------------------------------------------------


def _fenced(text: str) -> str:
    return f"```mermaid\n{text}\n```\n"


def test_jupyterlab_agrees_with_the_fast_check(page: Any) -> None:
    """The fast check's examples, drawn by JupyterLab: the good ones draw, the mistakes it calls fatal are error boxes.

    This also proves the detector used on the course below: it sees JupyterLab's error box.
    """
    _open(page, "notebooks/00_welcome.ipynb")
    try:
        good = {name: page.evaluate(RENDER_MARKDOWN_JS, _fenced(text)) for name, text in GOOD.items()}
        bad = {b.id: page.evaluate(RENDER_MARKDOWN_JS, _fenced(b.text)) for b in BAD}
        stray = page.evaluate("() => document.querySelectorAll('body > .jp-RenderedMarkdown, body > .jp-RenderedMermaid').length")
        assert stray == 0, f"{stray} rendered examples were left in the page: later screenshots would show them"
    finally:
        _close(page)
    assert all(len(boxes) == 1 for boxes in [*good.values(), *bad.values()]), "one diagram box per example"
    not_drawn = [f"{name}: {boxes[0]['error']}" for name, boxes in good.items() if not boxes[0]["ok"]]
    assert not not_drawn, "JupyterLab cannot draw diagrams the fast check accepts:\n" + "\n".join(not_drawn)
    disagree = []
    for example in BAD:
        [box] = bad[example.id]
        if example.jupyterlab_rejects and not box["warning"]:
            disagree.append(f"{example.id}: JupyterLab drew it, yet the example says it fails there")
        elif not example.jupyterlab_rejects and not box["ok"]:
            disagree.append(f"{example.id}: JupyterLab fails on it now ({box['error'][:160]}): set jupyterlab_rejects=True")
    assert not disagree, "tests/mermaid_examples.py and JupyterLab disagree:\n" + "\n".join(disagree)


@pytest.mark.parametrize("path", NOTEBOOKS)
def test_every_diagram_renders(page: Any, path: str) -> None:
    """Each ```mermaid block of the notebook is a drawn SVG, in the cell it was written in; none is an error."""
    expected = _expected_diagrams(path)
    _open(page, path)
    try:
        total = sum(expected.values())
        try:  # every block has become a diagram or an error box
            page.wait_for_function(
                "(n) => window.__courseNotebook.node.querySelectorAll('.jp-RenderedMermaid').length >= n",
                arg=total,
                timeout=RENDER_MS,
            )
        except sync_api.TimeoutError:
            pass  # reported below with what did render
        diagrams = page.evaluate(DIAGRAMS_JS)
        # the test's setting took effect: no windowing, so every cell is rendered, not only those on screen
        windowing = page.evaluate("() => window.__courseNotebook.content.notebookConfig.windowingMode")
        _screenshot(page, path)
    finally:
        _close(page)
    assert windowing == "none", f"the notebook is windowed ({windowing!r}): cells off screen may never render"
    broken = [f"cell {d['cell']}: {d['error'][:240]}" for d in diagrams if not d["ok"]]
    assert not broken, f"{path}: diagrams JupyterLab could not draw:\n" + "\n".join(broken)
    assert _cells_of(diagrams) == expected, f"{path}: rendered diagrams per cell {_cells_of(diagrams)}, written {expected}"


# --- lesson 00 runs in a real kernel -------------------------------------------------------------------------


def _run_cells(page: Any, cells: range, path: str) -> list[dict[str, Any]]:
    """Select the first cell, then Shift+Enter once per cell, waiting for each code cell to finish."""
    page.evaluate(SELECT_JS, cells.start)
    results = []
    for index in cells:
        page.keyboard.press("Shift+Enter")
        cell = page.evaluate(CELL_JS, index)
        if cell["type"] == "code":
            try:
                page.wait_for_function(
                    "(i) => /^\\[\\d+\\]:$/.test(window.__courseNotebook.content.widgets[i].node"
                    ".querySelector('.jp-InputArea-prompt').textContent.trim())",
                    arg=index,
                    timeout=CELL_MS,
                )
            except sync_api.TimeoutError:
                _screenshot(page, path, prefix="stuck-")
                raise AssertionError(f"{path} cell {index} did not finish within {CELL_MS / 1000:.0f} s") from None
            cell = page.evaluate(CELL_JS, index)
        results.append({"index": index, **cell})
    return results


def _text(cell: dict[str, Any]) -> str:
    return "\n".join(out["text"] for out in cell["outputs"])


def _errors(cells: list[dict[str, Any]]) -> list[str]:
    return [
        f"cell {c['index']}: {out['text'][:300]}"
        for c in cells
        for out in c["outputs"]
        if out["mime"] == "application/vnd.jupyter.stderr"
    ]


def test_welcome_runs_with_shift_enter(page: Any) -> None:
    """Lesson 00, cell by cell with Shift+Enter: the doctor, a sync call and an MQTT message, then cleanup."""
    path = "notebooks/00_welcome.ipynb"
    count = _open(page, path)
    try:
        page.wait_for_function("() => window.__courseNotebook.sessionContext.session?.kernel?.status === 'idle'", timeout=CELL_MS)
        cells_on_disk = json.loads((ROOT / path).read_text(encoding="utf-8"))["cells"]
        last_code = max(i for i, c in enumerate(cells_on_disk) if c["cell_type"] == "code")
        assert count == len(cells_on_disk)
        ran = _run_cells(page, range(0, last_code + 1), path)
        _screenshot(page, path, prefix="ran-")
    finally:
        _close(page)
    code = [c for c in ran if c["type"] == "code"]
    assert all(re.fullmatch(r"\[\d+\]:", c["prompt"]) for c in code), [c["prompt"] for c in code]
    assert not _errors(ran), "errors in lesson 00:\n" + "\n".join(_errors(ran))
    everything = "\n".join(_text(c) for c in ran)
    for expected in (
        "All good: this machine can run the course.",
        "catalog service listening at http://127.0.0.1:",
        "status 200, waited",
        "'sku': 'sku-42'",
        "broker: ",
        'shop/orders {"order": 1, "item": "blue mug"}',
        "all services and the broker are stopped",
    ):
        assert expected in everything, f"lesson 00 did not print {expected!r}; it printed:\n{everything}"


def test_warmup_lab_check_gives_feedback(page: Any) -> None:
    """Lab 00 as shipped, run down to ``await check("q1")``: the check runs and says what is missing."""
    path = "labs/00_warmup.ipynb"
    cells_on_disk = json.loads((ROOT / path).read_text(encoding="utf-8"))["cells"]
    check_cell = next(
        i for i, c in enumerate(cells_on_disk) if c["cell_type"] == "code" and 'await check("q1")' in "".join(c["source"])
    )
    _open(page, path)
    try:
        page.wait_for_function("() => window.__courseNotebook.sessionContext.session?.kernel?.status === 'idle'", timeout=CELL_MS)
        ran = _run_cells(page, range(0, check_cell + 1), path)
        _screenshot(page, path, prefix="ran-")
    finally:
        _close(page)
    by_index = {c["index"]: c for c in ran}
    unsolved = "\n".join(_errors(ran))
    assert "NotImplementedError" in unsolved, f"the lab as shipped should stop at the learner's part; errors:\n{unsolved}"
    feedback = by_index[check_cell]
    assert not [o for o in feedback["outputs"] if o["mime"] == "application/vnd.jupyter.stderr"], _text(feedback)
    text = _text(feedback)
    assert re.search(r"^q1: 0/\d+ passed$", text, re.MULTILINE), f"no q1 feedback line in the check's output:\n{text}"
    assert "\u2717" in text, f"a failing check is marked:\n{text}"
    assert "why:" in text, f"a failing check says why:\n{text}"
