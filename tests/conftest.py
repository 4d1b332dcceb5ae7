"""Shared fixtures, and the markers that let a run pick its tests by what they need.

Markers are given by what a test uses, not by lists: a test that takes the ``broker``
fixture is marked ``broker`` here, every notebook cell (nbval) is marked ``notebook``
and ``kernel``. A test that starts a broker or a kernel some other way carries the mark
itself, and a guard fails any test that starts one without it: so ``-m broker`` (CI's
Mosquitto pass) and ``-m "not broker and not kernel and not browser"`` (``make check``)
select exactly what they say.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from helpers.core.broker import Broker, mqtt_broker
from helpers.core.http import stop_all

if TYPE_CHECKING:
    from helpers.capstone.pipeline import ReferenceSystem

NEEDS = {
    "broker": "talks to an MQTT broker (embedded, or MQTT_URL)",
    "kernel": "starts a Jupyter kernel (notebooks, solutions, the grader, make run)",
    "notebook": "a cell of a lesson or solution notebook, run by nbval",
}


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    """A started broker: the embedded rumqttd, or MQTT_URL's broker when that is set."""
    async with mqtt_broker(name=f"test-{uuid.uuid4().hex[:6]}") as running:
        yield running


@pytest.fixture
async def pipeline(broker: Broker, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[ReferenceSystem]:
    """Lesson 07's reference system for one test; a test module sets ``WORKERS`` (2) and ``WORK`` (0.1 s) to its needs."""
    from helpers.capstone.pipeline import start_pipeline  # here, not at the top: most tests never start the capstone

    workers, work = getattr(request.module, "WORKERS", 2), getattr(request.module, "WORK", 0.1)
    running = await start_pipeline(broker, tmp_path, workers=workers, work=work)
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture
def topic() -> str:
    """A topic prefix no other test (or earlier run on a shared broker) uses."""
    return f"test/{uuid.uuid4().hex[:10]}"


@pytest.fixture(autouse=True)
async def _stop_services() -> AsyncIterator[None]:
    """Every test leaves no HTTP service running."""
    yield
    await stop_all()


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Side by side (``pytest -n 4``): a notebook's cells together on one worker, in order (they
    share one kernel), and the browser tests together (one JupyterLab and one Chromium, not one
    per worker: 10-20 s of start-up each); every other test on its own, so one slow test file is
    no bottleneck."""
    from xdist.scheduler import LoadScopeScheduling  # type: ignore[import-untyped]  # xdist ships no type hints

    class NotebooksTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return path if path.endswith(".ipynb") or path.endswith("test_browser.py") else nodeid

    return NotebooksTogether(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test by what it uses: the broker fixture, or a notebook cell (nbval)."""
    for item in items:
        if "broker" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.broker)
        if item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.notebook)
            item.add_marker(pytest.mark.kernel)
    # Longest first: the tests that start a Jupyter kernel (notebooks, the grader) take 10-90 s
    # each, the rest well under one. Handed out first, they overlap with each other and the
    # short tests fill the gaps at the end, instead of one 90 s test starting last and running
    # alone. The browser tests (about 3 minutes on one worker) go first too. The sort is stable:
    # a notebook's cells keep their order.
    items.sort(key=lambda item: item.get_closest_marker("kernel") is None and item.get_closest_marker("browser") is None)


@pytest.fixture(autouse=True)
def _marked_for_what_it_starts(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail a test that starts a broker or a kernel in this process without the mark that says so."""
    started: set[str] = set()
    _spy(monkeypatch, Broker, "start", lambda: started.add("broker"))
    from jupyter_client.provisioning.local_provisioner import LocalProvisioner

    _spy(monkeypatch, LocalProvisioner, "launch_kernel", lambda: started.add("kernel"))
    yield
    unmarked = sorted(need for need in started if request.node.get_closest_marker(need) is None)
    if unmarked:
        marks = ", ".join(f"@pytest.mark.{need}" for need in unmarked)
        pytest.fail(f"this test starts {' and '.join(unmarked)} but is not marked so: add {marks}", pytrace=False)


def _spy(monkeypatch: pytest.MonkeyPatch, owner: type, name: str, seen: Any) -> None:
    """Wrap the coroutine method ``owner.name`` so each call that succeeds is noted."""
    original = getattr(owner, name)

    async def noted(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = await original(self, *args, **kwargs)
        seen()
        return result

    monkeypatch.setattr(owner, name, noted)
