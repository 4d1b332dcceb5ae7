"""The HTML pages make run writes render their Mermaid diagrams and math with no network, from file://.

A real browser is the only honest judge: Chromium opens the page from disk while every
request that is not ``file:`` or ``data:`` is aborted (and recorded, so a page that even
tries to reach a CDN fails the test), then we look for one SVG per diagram and for math
typeset by MathJax.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TypedDict
from urllib.parse import unquote

import nbformat
import pytest

from helpers.tools import html

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).is_file(),
    reason="no Chromium installed (apt-get install chromium); playwright drives the system browser, it downloads none",
)

TINY = nbformat.v4.new_notebook(
    cells=[
        nbformat.v4.new_markdown_cell("# Offline\n\nFive hops cost $n \\times 50$ ms, and $x^2$ too."),
        nbformat.v4.new_markdown_cell("```mermaid\nflowchart LR\n  upload[Upload] -->|HTTP| storage[Storage]\n```"),
        nbformat.v4.new_markdown_cell("```mermaid\nsequenceDiagram\n  Caller->>Gateway: GET /product\n```"),
    ]
)


class Rendered(TypedDict):
    """What the page showed in Chromium, counted by the script in :func:`open_offline`."""

    diagrams: int
    svgs: list[str]
    warnings: int
    math: int
    text: str


def open_offline(page_path: Path) -> tuple[Rendered, list[str]]:
    """Open ``page_path`` in Chromium with the network cut; what rendered, and what it tried to fetch."""
    from playwright.sync_api import Route, sync_playwright

    blocked: list[str] = []

    def only_local(route: Route) -> None:
        if route.request.url.startswith(("file:", "data:")):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        try:
            context = browser.new_context()
            context.route("**/*", only_local)
            page = context.new_page()
            page.goto(page_path.as_uri())
            page.wait_for_function(
                "document.querySelectorAll('.jp-RenderedMermaid').length === document.querySelectorAll('pre.mermaid').length",
                timeout=30_000,
            )
            if page.locator("script[src*='MathJax.js']").count():
                page.wait_for_function("window.MathJax && MathJax.Hub && MathJax.Hub.queue.pending === 0", timeout=30_000)
            found: Rendered = page.evaluate(
                """() => ({
                    diagrams: document.querySelectorAll('pre.mermaid').length,
                    svgs: [...document.querySelectorAll('.jp-RenderedMermaid figure img')].map(img => img.src),
                    warnings: document.querySelectorAll('.jp-RenderedMermaid.jp-mod-warning').length,
                    math: document.querySelectorAll('.MathJax').length,
                    text: document.body.innerText,
                })"""
            )
        finally:
            browser.close()
    return found, blocked


def svg_text(data_url: str) -> str:
    assert data_url.startswith("data:image/svg+xml,"), data_url[:60]
    return unquote(data_url.split(",", 1)[1])


def test_a_page_renders_diagrams_and_math_with_no_network(tmp_path: Path) -> None:
    page = html.write_page(TINY, tmp_path / "notebooks" / "tiny.html", tmp_path)
    found, blocked = open_offline(page)
    assert blocked == [], f"the page tried to reach the network: {blocked}"
    assert found["diagrams"] == 2
    assert found["warnings"] == 0
    svgs = [svg_text(src) for src in found["svgs"]]
    assert len(svgs) == 2
    assert all("<svg" in svg for svg in svgs)
    assert "Upload" in svgs[0]
    assert "Storage" in svgs[0]
    assert "GET /product" in svgs[1]
    assert found["math"] == 2, "both formulas typeset by MathJax"
    assert "$x^2$" not in found["text"], "the TeX source is replaced by typeset math"


def test_a_lessons_stored_page_renders_every_diagram_offline(tmp_path: Path) -> None:
    lesson = nbformat.read(ROOT / "notebooks" / "07_mini_challenge.ipynb", as_version=4)
    page = html.write_page(lesson, tmp_path / "notebooks" / "07_mini_challenge.html", tmp_path)
    found, blocked = open_offline(page)
    assert blocked == [], f"the page tried to reach the network: {blocked}"
    assert found["diagrams"] >= 2
    assert found["warnings"] == 0
    assert len(found["svgs"]) == found["diagrams"]
    assert all("<svg" in svg_text(src) for src in found["svgs"])
    assert any("Upload" in svg_text(src) for src in found["svgs"])


def test_the_assets_come_from_the_pinned_packages(tmp_path: Path) -> None:
    """Copied at build time, next to the pages; nothing committed, nothing fetched."""
    assets = html.copy_assets(tmp_path)
    assert (assets / "mermaid.js").read_bytes() == html.mermaid_script().read_bytes()
    assert (assets / "mathjax" / "MathJax.js").is_file()
    assert (assets / "mathjax" / "jax" / "output" / "HTML-CSS" / "fonts" / "STIX-Web").is_dir()
