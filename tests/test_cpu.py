"""core.cpu: how many cores other programs kept busy while a measurement ran (the busy-machine guard of M14 and M16)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil  # type: ignore[import-untyped]  # psutil ships no hints

from helpers.core.cpu import QUIET_CORES, OtherPrograms, _ours

BUSY = "import time\nend = time.monotonic() + {s}\nwhile time.monotonic() < end: pass"


def test_our_children_are_ours_not_other_programs() -> None:
    child = subprocess.Popen([sys.executable, "-c", BUSY.format(s=5)])
    try:
        assert {os.getpid(), child.pid} <= _ours(), "the embedded broker and worker processes are this kernel's"
    finally:
        child.kill()
        child.wait()


def test_a_program_we_did_not_start_counts_as_other() -> None:
    # started through a shell that exits at once: the busy process is nobody's child of ours
    pid = int(subprocess.check_output(["sh", "-c", f"{sys.executable} -c '{BUSY.format(s=3)}' >/dev/null 2>&1 & echo $!"]))
    try:
        assert pid not in _ours()
        with OtherPrograms() as others:
            time.sleep(1.5)
        assert others.seconds >= 1.5
        # it keeps one core busy when it gets one; a shared 2-core machine gives it less, never almost none
        assert others.cores >= 0.25, f"a busy program for {others.seconds:.1f} s counted as {others.cores:.2f} cores"
        assert others.cores <= (psutil.cpu_count() or 1) + 0.1
        assert others.quiet == (others.cores <= QUIET_CORES)
    finally:
        os.kill(pid, signal.SIGKILL)
