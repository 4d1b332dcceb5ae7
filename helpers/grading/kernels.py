"""The kernels a submission runs in, and the gate a parallel batch shares.

:class:`Kernel` is one kernel process (nbclient, on ZeroMQ's IPC transport, in the
sandbox when there is one) and the cells run in it, each with a time limit and a cap on
what its output may cost. :class:`Gate` is the batch's scheduler: timing-critical checks
run while nothing else runs. The runner (:mod:`helpers.grading.runner`) decides what to
run; this module only runs it and says how each run ended (:class:`CellRun`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import nbformat

from helpers.grading import sandbox as boxes
from helpers.grading.checks import Check
from helpers.grading.plan import MAX_OUTPUT_BYTES, Alone, GradingPlan

PROBE_TIMEOUT_S = 3.0
"""How long a kernel may take to answer a trivial cell after an interrupt (else it is stuck)."""
STARTUP_TIMEOUT_S = 60.0
"""How long a kernel may take to start."""

_TIMEOUT_REPLY = {"ename": "GraderTimeout", "evalue": "cell timed out", "traceback": []}


@dataclass(frozen=True)
class Workspace:
    """Where one submission's kernels run: a scratch folder, the sandbox, the environment."""

    scratch: Path
    cwd: Path
    env: dict[str, str]
    checks_dir: Path
    """Where the kernel loads the checks from (the sandbox's read-only copy, or the plan's folder)."""
    box: boxes.Sandbox | None = None


CellStatus = Literal["ok", "error", "timeout", "dead"]


@dataclass(frozen=True)
class GraderCell:
    """How a cell the grader wrote runs: out of the kernel's history (In/Out), unlike the learner's cells."""

    keep: str = ""
    """Lines starting with it are kept even past the output cap (the grader's result lines)."""
    exclusive: bool = False
    """Run while no other submission runs a step (:class:`Gate`)."""


@dataclass(frozen=True)
class CellRun:
    """How one cell's run ended, and the cell with its outputs."""

    status: CellStatus
    ename: str = ""
    evalue: str = ""
    cell: Any = None


class Gate:
    """The batch's scheduler: many steps may run at once, an exclusive one runs alone.

    With ``--jobs N`` several kernels run side by side, and a check that measures time
    (a 200 ms deadline, "refusing is instant") could see another kernel's load. So a
    timing-critical check (one that says so: ``timing=True``, see :func:`timing_critical`;
    every check with ``--alone all``) runs exclusive: it waits until no other submission
    is in a step, and no new step starts until it ends. Everything else (learner cells,
    kernel start-ups, loading the checks, checks that only wait for an outcome with a
    deadline) shares the machine. Time spent waiting here is not charged to the
    submission's budget, so a queue never costs points.
    """

    def __init__(self) -> None:
        self._cond = asyncio.Condition()
        self._shared = 0
        self._exclusive = False
        self._queued = 0

    @contextlib.asynccontextmanager
    async def step(self, exclusive: bool) -> AsyncIterator[float]:
        """``async with gate.step(exclusive) as waited:`` run one step; ``waited`` s were spent queueing."""
        began = time.monotonic()
        async with self._cond:
            if exclusive:
                self._queued += 1
                try:
                    await self._cond.wait_for(lambda: not self._exclusive and self._shared == 0)
                finally:
                    self._queued -= 1
                self._exclusive = True
            else:
                await self._cond.wait_for(lambda: not self._exclusive and self._queued == 0)
                self._shared += 1
        try:
            yield time.monotonic() - began
        finally:
            async with self._cond:
                if exclusive:
                    self._exclusive = False
                else:
                    self._shared -= 1
                self._cond.notify_all()


def timing_critical(check: Check, alone: Alone = "timing") -> bool:
    """Must this check run alone? ``alone="all"``: every check; else those that say ``timing=True``.

    A check says it with ``timing=True`` (a field of :class:`~helpers.grading.checks.Check`),
    or its function has ``timing = True``. A check is timing-critical when load on the
    machine can change its verdict: it asserts an upper bound on a duration measured
    while the learner's code runs (an instant refusal, a deadline kept, a 202 that does
    not wait). Waiting for an outcome with a generous deadline is not.
    """
    if alone == "all":
        return True
    return bool(getattr(check, "timing", False) or getattr(check.func, "timing", False))


def kernel_manager(kernel_name: str, connection_file: Path, box: boxes.Sandbox | None) -> Any:
    """A kernel manager on ZeroMQ's IPC transport (Unix sockets next to the connection file).

    IPC rather than TCP: a sandboxed kernel has its own network, which the grader cannot
    reach, and nothing else on the machine can connect to the kernel's ports (ipykernel
    warns about unencrypted TCP; over IPC it has nothing to warn about). In ``bwrap`` mode
    the launch command is wrapped in the sandbox.
    """
    from jupyter_client.manager import AsyncKernelManager

    class Manager(AsyncKernelManager):
        def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
            cmd: list[str] = super().format_kernel_cmd(extra_arguments)
            if box is None:
                return cmd
            box.give(Path(self.connection_file))  # written 0600 by us, read by the sandbox's uid
            # a SIGINT to the kernel's process group would hit bwrap first and end the sandbox:
            # interrupt by message, and ipykernel signals itself inside
            if self.kernel_spec is not None:
                self.kernel_spec.interrupt_mode = "message"
            return box.wrap(cmd)

    km = Manager(kernel_name=kernel_name, transport="ipc", connection_file=str(connection_file))
    return km


def _nb_client_class() -> type:
    from nbclient import NotebookClient

    class Client(NotebookClient):
        """nbclient, with our kernel manager and a cap on what a cell's output may cost."""

        make_km: Callable[[], Any] | None = None
        max_output = MAX_OUTPUT_BYTES
        keep = ""
        used = 0
        dropped = 0

        def create_kernel_manager(self) -> Any:
            if self.make_km is None:
                return super().create_kernel_manager()
            self.km = self.make_km()
            return self.km

        def output(self, outs: list[Any], msg: dict[str, Any], display_id: str | None, cell_index: int) -> Any:
            content = msg.get("content", {})
            if msg.get("msg_type") == "stream":
                size = len(content.get("text", ""))
            else:
                size = sum(len(str(v)) for v in content.get("data", {}).values()) + len(str(content.get("traceback", "")))
            if self.used + size > self.max_output:
                self.dropped += size
                text = content.get("text", "") if msg.get("msg_type") == "stream" else ""
                if not (self.keep and self.keep in text):
                    return None
                kept = "\n".join(ln for ln in text.splitlines() if ln.startswith(self.keep)) + "\n"
                msg = {**msg, "content": {**content, "text": kept}}  # the grader's result lines survive a flood
                size = len(kept)
            self.used += size
            return super().output(outs, msg, display_id, cell_index)

    return Client


class Kernel:
    """One kernel process and the cells run in it."""

    def __init__(
        self,
        nb: nbformat.NotebookNode,
        plan: GradingPlan,
        ws: Workspace,
        connection_file: Path,
        gate: Callable[[bool], contextlib.AbstractAsyncContextManager[float]] | None = None,
    ) -> None:
        self.env = ws.env
        self.client = _nb_client_class()(
            nb,
            kernel_name=plan.kernel_name,
            timeout=math.ceil(plan.cell_timeout),
            startup_timeout=int(STARTUP_TIMEOUT_S),
            allow_errors=True,
            interrupt_on_timeout=True,
            error_on_timeout=_TIMEOUT_REPLY,
            iopub_timeout=2,
            record_timing=False,
            shutdown_kernel="immediate",
            resources={"metadata": {"path": str(ws.cwd)}},
        )
        self.client.make_km = lambda: kernel_manager(plan.kernel_name, connection_file, ws.box)
        self.client.max_output = plan.max_output
        self.gate = gate
        self.truncated: list[int] = []
        """Indices of cells whose output went past the cap."""
        self._reply: dict[str, Any] = {}
        self.alive = True
        self.client.on_cell_executed = self._on_executed

    def _on_executed(self, cell: Any, cell_index: int, execute_reply: dict[str, Any]) -> None:
        self._reply = execute_reply.get("content", {})

    @contextlib.asynccontextmanager
    async def setup(self) -> AsyncIterator[None]:
        """``async with kernel.setup():`` start the kernel (and always shut it down)."""
        async with contextlib.AsyncExitStack() as stack:
            if self.gate is not None:
                async with self.gate(False):  # starting a kernel is CPU work: not while a timing check runs
                    await stack.enter_async_context(self._start())
            else:
                await stack.enter_async_context(self._start())
            yield

    def _start(self) -> Any:
        return self.client.async_setup_kernel(env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def _is_alive(self) -> bool:
        from jupyter_client.asynchronous import AsyncKernelClient

        kc = self.client.kc
        return isinstance(kc, AsyncKernelClient) and await kc.is_alive()

    async def run(self, cell: Any, index: int, timeout: float, grader: GraderCell | None = None) -> CellRun:
        """Execute one cell: the learner's, or (``grader`` given) one the grader wrote (see :class:`GraderCell`)."""
        if self.gate is None:
            return await self._run(cell, index, timeout, grader)
        async with self.gate(grader is not None and grader.exclusive):
            return await self._run(cell, index, timeout, grader)

    async def _run(self, cell: Any, index: int, timeout: float, grader: GraderCell | None) -> CellRun:
        from nbclient.exceptions import DeadKernelError

        trusted = grader is not None
        self.client.timeout = max(1, math.ceil(timeout))
        self.client.keep, self.client.used, self.client.dropped = grader.keep if grader else "", 0, 0
        self._reply = {}
        try:
            await self.client.async_execute_cell(cell, index, store_history=not trusted)
        except DeadKernelError:
            self.alive = False
            return CellRun("dead", cell=cell)
        except Exception as exc:  # noqa: BLE001 - a kernel/channel failure is an outcome, not a crash
            self.alive = await self._is_alive()
            return CellRun("error" if self.alive else "dead", type(exc).__name__, str(exc), cell)
        finally:
            if self.client.dropped and not trusted:
                self.truncated.append(index)
        content = self._reply
        if content.get("ename") == _TIMEOUT_REPLY["ename"]:
            return CellRun("timeout", cell=cell)
        if content.get("status") == "error":
            return CellRun("error", content.get("ename", ""), content.get("evalue", ""), cell)
        return CellRun("ok", cell=cell)

    async def run_source(self, source: str, timeout: float, *, keep: str = "", exclusive: bool = False) -> CellRun:
        return await self.run(nbformat.v4.new_code_cell(source), 0, timeout, GraderCell(keep, exclusive))

    async def responsive(self) -> bool:
        """After a timeout: did the interrupt work, i.e. does the kernel answer a trivial cell?"""
        return (await self.run_source("pass", PROBE_TIMEOUT_S)).status == "ok"


def tagged(cell: Any, nonce: str) -> list[dict[str, Any]]:
    """The JSON payloads of this run's nonce-tagged lines in a cell's stdout."""
    found = []
    for output in cell.get("outputs", []):
        if output.get("output_type") != "stream" or output.get("name") != "stdout":
            continue
        for line in output.get("text", "").splitlines():
            if line.startswith(nonce + " "):
                try:
                    payload = json.loads(line[len(nonce) + 1 :])
                except ValueError:
                    continue
                if isinstance(payload, dict):
                    found.append(payload)
    return found
