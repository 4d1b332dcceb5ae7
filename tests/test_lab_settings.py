"""make lab starts JupyterLab with the course's settings: no news popup, no update checks."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_overrides_turn_off_news_and_update_checks() -> None:
    overrides = json.loads((ROOT / "jupyter" / "overrides.json").read_text())
    notification = overrides["@jupyterlab/apputils-extension:notification"]
    assert notification == {"fetchNews": "false", "checkForUpdates": False}


def test_overrides_name_real_settings_of_the_installed_jupyterlab() -> None:
    """A renamed plugin or setting would be ignored silently: check against the installed schema."""
    schemas = Path(sys.prefix) / "share" / "jupyter" / "lab" / "schemas"  # where pip puts JupyterLab's schemas
    schema = json.loads((schemas / "@jupyterlab" / "apputils-extension" / "notification.json").read_text())
    for name in ("fetchNews", "checkForUpdates"):
        assert name in schema["properties"], f"JupyterLab no longer has the setting {name!r}"


def test_make_installs_the_overrides_into_the_virtualenv_only() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"cp jupyter/overrides\.json \$\(VENV\)/share/jupyter/lab/settings/overrides\.json", makefile)
