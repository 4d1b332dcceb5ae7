"""Notebook HTML pages that render their Mermaid diagrams and math with no network.

nbconvert's ``lab`` template loads RequireJS, MathJax and Mermaid from a CDN. An
instructor who opens ``build/`` in a classroom without internet (or from a USB stick)
would see raw diagram source and ``$...$``. This module writes the same pages with the
scripts copied, at build time, from two pinned PyPI packages into ``build/_assets/``,
next to the pages, and referenced by relative URLs:

- **Mermaid**: ``mmdc`` (pinned in requirements.txt) ships Mermaid's own classic,
  self-contained build (``mmdc/assets/mermaid.js`` is byte for byte the official
  ``mermaid@11.12.0`` ``dist/mermaid.min.js``; :data:`MERMAID_SHA256` checks it, so a new
  mmdc cannot slip in something else). nbconvert's loader ``import()``s an ES module, and a page opened
  from disk (``file://``) may not import a module file: Chromium blocks it as a
  cross-origin request. So the page loads the classic script with a ``<script src>``
  (allowed from ``file://``) and nbconvert's loader imports a one-line ``data:`` module that
  hands it ``window.mermaid``; the rest of nbconvert's Mermaid code (theme, error
  display, SVG clean-up) is used as is. The classic build starts rendering every
  ``.mermaid`` element on page load by itself (into the hidden source block, which gives
  broken sizes and replaces the source nbconvert reads), so the page turns that off
  right after loading it. No other PyPI package we found ships a standalone
  Mermaid build: JupyterLab's own copy is split into webpack chunks with hashed names, and
  the Sphinx and MkDocs plugins load it from a CDN.
- **Math**: ``jupyter-server-mathjax`` (the Jupyter project's package of MathJax 2.7, the
  version nbconvert's template is written for) ships MathJax with its fonts; the whole
  folder is copied, because MathJax loads its parts on demand.
- **RequireJS** is only needed for Jupyter widgets, which the course does not use: the
  page does not load it.

Why not render the diagrams to SVG at build time instead? That needs a browser on the
instructor's machine when ``make run`` runs; vendoring needs only the pinned packages,
and the pages still render in any browser, online or not. The assets are copied at build
time and never committed. ``tests/test_offline_html.py`` opens a page in Chromium with
every non-``file:`` request aborted and finds an SVG for each diagram and rendered math.
"""

from __future__ import annotations

import hashlib
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

from jinja2 import DictLoader
from nbconvert import HTMLExporter

#: The folder, next to the pages, that holds the copied scripts.
ASSETS = "_assets"

#: SHA-256 of the official ``mermaid@11.12.0`` ``dist/mermaid.min.js``, which ``mmdc==0.7.0`` ships.
MERMAID_SHA256 = "07e37dfa97b337ccc85365d57eddf99b9706f09db3b59b260d0333b23b343c4b"

#: nbconvert's lab template, minus RequireJS, plus the classic Mermaid script; MathJax is told
#: to use STIX-Web, the only web font the package ships (its default, TeX, is absent).
_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}
<script>window.MathJax = {"HTML-CSS": {availableFonts: [], webFont: "STIX-Web", imageFont: null}};</script>
{{ super() }}
{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}
<script src="{{ resources.offline_mermaid_script }}"></script>
<script>window.mermaid.startOnLoad = false; window.mermaid.initialize({startOnLoad: false});</script>
{{ super() }}
{%- endblock html_head_js_mermaidjs -%}
"""

#: An ES module that nbconvert's loader can import from a file:// page: it re-exports the
#: Mermaid the classic script set up.
_MERMAID_SHIM = "data:text/javascript,export default window.mermaid;"


def mermaid_script() -> Path:
    """The classic (non-module) Mermaid build that the pinned ``mmdc`` package ships."""
    path = Path(str(resources.files("mmdc") / "assets" / "mermaid.js"))
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: mmdc moved its Mermaid build; check the mmdc pin in requirements.txt")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != MERMAID_SHA256:
        raise ValueError(
            f"{path} is not the Mermaid 11.12.0 build the pages were tested with (SHA-256 {digest}); "
            "check the mmdc pin in requirements.txt, and update MERMAID_SHA256 after testing a new one"
        )
    return path


def mathjax_folder() -> Path:
    """MathJax 2.7 as the pinned ``jupyter-server-mathjax`` package ships it."""
    path = Path(str(resources.files("jupyter_server_mathjax") / "static"))
    if not (path / "MathJax.js").is_file():
        raise FileNotFoundError(f"{path}/MathJax.js is missing: check the jupyter-server-mathjax pin in requirements.txt")
    return path


def copy_assets(out_dir: Path) -> Path:
    """Copy Mermaid and MathJax into ``out_dir/_assets`` (once; later calls reuse it)."""
    target = out_dir / ASSETS
    if not (target / "mermaid.js").is_file():
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(mermaid_script(), target / "mermaid.js")
    if not (target / "mathjax" / "MathJax.js").is_file():
        shutil.copytree(mathjax_folder(), target / "mathjax", dirs_exist_ok=True)
    return target


def exporter(assets_url: str) -> HTMLExporter:
    """An HTML exporter whose pages take their scripts from ``assets_url`` (relative to the page)."""
    html = HTMLExporter(extra_loaders=[DictLoader({"offline.html.j2": _TEMPLATE})], template_file="offline.html.j2")
    html.mathjax_url = f"{assets_url}/mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe"
    html.mermaid_js_url = _MERMAID_SHIM
    html.mermaid_layout_elk_js_url = ""  # the ELK layout is not used by the course's diagrams
    return html


def write_page(nb: Any, page: Path, out_root: Path) -> Path:
    """Write ``nb`` as ``page`` (somewhere under ``out_root``) with the scripts in ``out_root/_assets``."""
    copy_assets(out_root)
    assets_url = Path(*[".."] * len(page.parent.relative_to(out_root).parts), ASSETS).as_posix()
    html = exporter(assets_url)
    body, _ = html.from_notebook_node(nb, resources={"offline_mermaid_script": f"{assets_url}/mermaid.js"})
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(body, encoding="utf-8")
    return page
