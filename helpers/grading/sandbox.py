"""Where a submission's kernel runs: a bubblewrap sandbox (``bwrap``), or plainly (``none``).

The grader runs code it has never seen. In ``bwrap`` mode each submission's kernel gets:

* **its own network namespace**, with only its own loopback: the embedded broker and the
  learner's services run inside it, and nothing on the host's 127.0.0.1 (the grader's
  ports, a database, another kernel) can be reached. The grader talks to the kernel over
  ZeroMQ's IPC transport (Unix sockets in a folder bound into the sandbox), not TCP;
* **a file system built from read-only binds** of what a kernel needs (``/usr``, ``/etc``,
  the Python installation, the course's ``helpers/`` and checks) plus one writable scratch
  folder (its working copy, also ``HOME``) and a small private ``/tmp``: the grader's home
  and working folder, the other submissions and the results files are not there at all;
* **its own PID, IPC and UTS namespaces** (it sees only its own processes) and, when the
  grader runs as root, an **unprivileged uid** of its own (``setpriv``, no new privileges),
  so the process-count limit applies (Linux does not apply ``RLIMIT_NPROC`` to root);
* **resource limits** set with ``prlimit`` in the launched command (bubblewrap has none):
  address space (``RLIMIT_AS``), processes and threads (``RLIMIT_NPROC``), size of any one
  file written (``RLIMIT_FSIZE``), open files (``RLIMIT_NOFILE``);
* **a clean environment**: only the variables a kernel needs (the grader's tokens and
  keys are not inherited).

Not covered: CPU time (the grader's own per-cell and per-submission timeouts bound it),
the kernel's total disk use in its scratch folder (one file is capped, many files are
not), and kernel exploits (bubblewrap is namespaces, not a VM). ``none`` keeps the old
behaviour: the kernel runs as the grader's user with its files and network (see
CONTRIBUTING.md, "How the grader works and its trust model").

Where bubblewrap cannot start (Docker's default seccomp profile forbids the namespaces:
Gradescope, PrairieLearn, many CI runners) and the grader runs as root, ``setpriv`` mode
(:class:`Fallback`, what ``auto`` picks there) keeps what needs no namespace: the
unprivileged uid, the ``prlimit`` limits, the private scratch folder as working folder,
HOME and TMPDIR, and the clean environment. :data:`FALLBACK_MISSING` lists, plainly, what
it does not give.
"""

from __future__ import annotations

import functools
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODES = ("auto", "bwrap", "setpriv", "none")
HELPERS_DIR = Path(__file__).resolve().parents[1]

GIB = 1024**3
MIB = 1024**2


@dataclass(frozen=True)
class Limits:
    """Per-kernel limits enforced in ``bwrap`` mode (measured defaults: see CONTRIBUTING.md)."""

    memory_bytes: int = 4 * GIB
    """RLIMIT_AS, per process: a lab 07 kernel peaks at about 1.8 GB of address space (threads reserve arenas)."""
    processes: int = 256
    """RLIMIT_NPROC: processes and threads of the sandbox's uid (a kernel uses about 25)."""
    file_bytes: int = 256 * MIB
    """RLIMIT_FSIZE: the largest file the kernel may write."""
    open_files: int = 1024
    tmp_bytes: int = 256 * MIB
    """Size of the private /tmp and /dev/shm (memory-backed)."""


UID_BASE = 61000
"""Sandboxed kernels run as uids UID_BASE .. UID_BASE + UID_SPAN - 1 (when the grader is root)."""
UID_SPAN = 4000
_uids = itertools.count(os.getpid() * 37 % UID_SPAN)  # two graders on one machine start far apart

KEEP_ENV = ("PATH", "LANG", "LANGUAGE", "TZ", "TERM", "MQTT_URL", "PYTHONUNBUFFERED", "MPLBACKEND", "PYTHONHASHSEED")
"""Environment variables a sandboxed kernel inherits (plus LC_*); everything else stays with the grader."""


FALLBACK_MISSING = (
    "no network isolation (the kernel reaches the host's 127.0.0.1 ports, and any network the machine has)",
    "no private file system view (files readable by every user, other submissions included if their "
    "permissions allow, can be read; it can write only its scratch folder and world-writable places like /tmp)",
    "no private process list",
)
"""What ``setpriv`` mode does not protect against, compared with ``bwrap``: said in its notice and in the JSON."""


class SandboxError(RuntimeError):
    """The sandbox asked for cannot be used here (the message says why and what to do)."""


def bwrap_path() -> str | None:
    """The bubblewrap executable, if installed."""
    return shutil.which("bwrap")


@functools.cache
def probe() -> str | None:
    """None when a ``bwrap`` sandbox works on this machine, else why not (run once, cached)."""
    bwrap = bwrap_path()
    if bwrap is None:
        return "bubblewrap is not installed (apt-get install bubblewrap)"
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        return "setpriv (util-linux) is not installed: a sandbox run as root needs it to drop to an unprivileged uid"
    if shutil.which("prlimit") is None:
        return "prlimit (util-linux) is not installed: the sandbox's limits need it"
    with tempfile.TemporaryDirectory(prefix="grade-probe-") as scratch:
        box = Sandbox(Path(scratch), Limits())
        box.prepare()
        cmd = box.wrap([sys.executable, "-c", "import socket; socket.socket().bind(('127.0.0.1', 0)); print('ok')"])
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=box.env({}))
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"bubblewrap did not run: {exc}"
        if run.returncode != 0 or run.stdout.strip() != "ok":
            return f"bubblewrap cannot create the sandbox here: {(run.stderr or run.stdout).strip()[:300]}"
    return None


@functools.cache
def probe_fallback() -> str | None:
    """None when ``setpriv`` mode works here (root, setpriv and prlimit, and the dropped uid can
    start Python with the course and ipykernel), else why not (run once, cached)."""
    if os.geteuid() != 0:
        return "the grader does not run as root, so it cannot run the kernel as another, unprivileged uid"
    missing = [tool for tool in ("setpriv", "prlimit") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} (util-linux) not installed"
    with tempfile.TemporaryDirectory(prefix="grade-probe-") as scratch:
        box = Fallback(Path(scratch), Limits())
        box.prepare()
        code = "import ipykernel, helpers.grading.kernel; open('probe', 'w').write('ok'); print('ok')"
        env = box.env({"PYTHONPATH": str(HELPERS_DIR.parent)})
        try:
            run = subprocess.run(
                box.wrap([sys.executable, "-c", code]), capture_output=True, text=True, timeout=60, env=env, cwd=box.work
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"setpriv did not run: {exc}"
        if run.returncode != 0 or run.stdout.strip() != "ok":
            why = (run.stderr or run.stdout).strip()[-300:]
            return f"an unprivileged uid cannot start the kernel here (are the course and its Python world-readable?): {why}"
    return None


def fallback_notice(why_not_bwrap: str) -> str:
    """What ``auto`` says when it falls back to ``setpriv``: why, and what protection is missing."""
    missing = "; ".join(FALLBACK_MISSING)
    return (
        f"notice: bubblewrap cannot sandbox here ({why_not_bwrap}): kernels run as an unprivileged uid with "
        f"the resource limits and a private scratch folder (--sandbox setpriv). MISSING: {missing}"
    )


def resolve(mode: str) -> tuple[str, str]:
    """The mode to use for ``--sandbox mode``, and a notice to print ('' when none is due).

    ``auto`` is ``bwrap`` when it works here, else ``setpriv`` when that works (root), else
    ``none``, with a notice saying why and what is missing. ``bwrap`` or ``setpriv`` that
    cannot work is an error (:class:`SandboxError`), never a silent downgrade. A broker on
    the host (``MQTT_URL``) cannot be reached from bwrap's network; ``setpriv`` keeps it.
    """
    if mode not in MODES:
        raise SandboxError(f"--sandbox must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == "none":
        return "none", ""
    if mode == "setpriv":
        why_not = probe_fallback()
        if why_not is not None:
            raise SandboxError(f"--sandbox setpriv: {why_not}")
        return "setpriv", f"notice: --sandbox setpriv: MISSING: {'; '.join(FALLBACK_MISSING)}"
    if os.environ.get("MQTT_URL"):
        why = "MQTT_URL is set, and a sandboxed kernel has its own network: it could not reach that broker"
        if mode == "bwrap":
            raise SandboxError(f"--sandbox bwrap: {why}; unset MQTT_URL (embedded broker) or use --sandbox none")
    else:
        why_not_bwrap = probe()
        if why_not_bwrap is None:
            return "bwrap", ""
        if mode == "bwrap":
            raise SandboxError(f"--sandbox bwrap: {why_not_bwrap}")
        why = why_not_bwrap
    why_not_fallback = probe_fallback()
    if why_not_fallback is None:
        return "setpriv", fallback_notice(why)
    return "none", (
        f"notice: grading WITHOUT a sandbox (learner code runs as you, with your files and network): {why}; "
        f"and no fallback: {why_not_fallback}"
    )


def readable_copy(source: Path, target: Path) -> Path:
    """A copy of the ``*.py`` files of ``source`` that anyone may read and only the grader may change.

    The checks folder may be private to the grader (a test's temporary folder is 0700); the
    sandbox's uid must read the checks, and must not be able to swap them.
    """
    target.mkdir(mode=0o755)
    target.chmod(0o755)
    for path in Path(source).glob("*.py"):
        copy = target / path.name
        shutil.copyfile(path, copy)
        copy.chmod(0o644)
    return target


def _python_dirs() -> list[Path]:
    """Folders the kernel's Python needs: its installation, the virtualenv, site-packages outside both."""
    dirs = {Path(sys.base_prefix), Path(sys.prefix), Path(sys.exec_prefix), Path(sys.executable).parent}
    for entry in sys.path:
        path = Path(entry) if entry else None
        if path is None or not path.is_dir():
            continue
        if not {"site-packages", "dist-packages"} & set(path.parts):
            continue  # the script's folder, the cwd, a course checkout: not libraries (helpers/ is bound alone)
        dirs.add(path)
    found: set[Path] = set()
    for d in dirs:
        found.add(d.absolute())
        found.add(d.resolve())
    return sorted(p for p in found if p.exists())


def _minimal(paths: Iterable[Path]) -> list[Path]:
    """Drop paths inside another path of the list (one bind covers them)."""
    ordered = sorted(set(paths), key=lambda p: (len(p.parts), str(p)))
    kept: list[Path] = []
    for p in ordered:
        if not any(p == k or k in p.parents for k in kept):
            kept.append(p)
    return kept


@dataclass
class Sandbox:
    """One kernel's sandbox: a scratch folder (working copy, HOME, connection files) and limits.

    ``scratch`` is bound read-write at the same path inside; ``extra_ro`` are more folders
    bound read-only (the checks folder); ``hide`` are folders that must not be visible even
    when inside a bound one (submission folders, the results files, the grader's cwd).
    """

    scratch: Path
    limits: Limits = field(default_factory=Limits)
    extra_ro: Sequence[Path] = ()
    hide: Sequence[Path] = ()
    uid: int | None = None

    def __post_init__(self) -> None:
        self.scratch = Path(self.scratch).resolve()
        if self.uid is None and os.geteuid() == 0:
            self.uid = UID_BASE + next(_uids) % UID_SPAN

    @property
    def work(self) -> Path:
        """The kernel's working folder and HOME."""
        return self.scratch / "work"

    @property
    def conn(self) -> Path:
        """Connection file and IPC sockets: the only channel between grader and kernel."""
        return self.scratch / "conn"

    def prepare(self) -> None:
        """Create the scratch layout, owned by the sandbox's uid (it writes there, nowhere else)."""
        for d in (self.work, self.conn, self.work / "tmp"):
            d.mkdir(parents=True, exist_ok=True)
        self.give(self.scratch)
        for d in (self.work, self.conn, self.work / "tmp"):
            self.give(d)

    def give(self, path: Path) -> None:
        """Make ``path`` the sandbox uid's (a no-op when the grader is not root)."""
        if self.uid is not None:
            os.chown(path, self.uid, self.uid)

    def ro_binds(self) -> list[Path]:
        """Every read-only bind: system folders, Python, the course's helpers and checks."""
        ro = [Path(p) for p in ("/usr", "/etc") if Path(p).is_dir()]
        ro += _python_dirs() + [HELPERS_DIR] + [Path(p).resolve() for p in self.extra_ro]
        return _minimal(p for p in ro if p.exists() and p != Path("/"))

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """The bwrap command that runs ``argv`` (a kernel) inside this sandbox."""
        bwrap = bwrap_path() or "bwrap"
        cmd = [bwrap, "--die-with-parent", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts"]
        cmd += ["--hostname", "sandbox"]
        if os.geteuid() != 0:
            cmd += ["--unshare-user"]  # unprivileged bwrap: RLIMIT_NPROC counts this user namespace's tasks
        ro = self.ro_binds()
        for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
            p = Path(top)
            if p.is_symlink():
                cmd += ["--symlink", os.readlink(p), top]
            elif p.is_dir() and not any(p == r or r in p.parents for r in ro):
                ro.append(p)
        made: set[Path] = set()

        def parents(path: Path, covered: list[Path]) -> list[str]:
            # bwrap makes missing mount points with the umask's mode (0700 here): a dropped uid
            # could not walk through them, so each parent is made 0755 first
            out: list[str] = []
            for parent in reversed(path.parents):
                if parent == Path("/") or parent in made or any(parent == c or c in parent.parents for c in covered):
                    continue
                made.add(parent)
                out += ["--perms", "0755", "--dir", str(parent)]
            return out

        # /tmp first: a bind under /tmp (the checks of a test, the scratch folder) goes on top of it
        cmd += ["--dev", "/dev", "--proc", "/proc"]
        size = str(self.limits.tmp_bytes)
        cmd += ["--perms", "1777", "--size", size, "--tmpfs", "/tmp"]
        cmd += ["--perms", "1777", "--size", size, "--tmpfs", "/dev/shm"]
        made.add(Path("/tmp"))
        for path in ro:
            cmd += parents(path, ro)
        for path in ro:
            cmd += ["--ro-bind", str(path), str(path)]
        cmd += parents(self.scratch, ro)
        cmd += ["--bind", str(self.scratch), str(self.scratch)]
        for path in self._hidden(ro):
            cmd += ["--tmpfs", str(path)]
        cmd += ["--chdir", str(self.work), "--"]
        if self.uid is not None:
            cmd += ["setpriv", f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups", "--no-new-privs", "--"]
        cmd += _prlimit(self.limits)
        # ipykernel exits when its parent changes to pid 1; in the sandbox's PID namespace the
        # parent IS pid 1 (bwrap's reaper), so the kernel is told nothing of its parent:
        # --die-with-parent already ends the sandbox with the grader
        cmd += ["env", "-u", "JPY_PARENT_PID", "--"]
        return cmd + list(argv)

    def _hidden(self, ro: list[Path]) -> list[Path]:
        """Folders to cover with an empty tmpfs: asked to hide, and inside something bound."""
        out = []
        for h in (Path(p).resolve() for p in self.hide):
            inside = any(r in h.parents for r in ro)
            covers_bind = any(h == r or h in r.parents for r in ro)
            if inside and not covers_bind and h != self.scratch and h not in self.scratch.parents:
                out.append(h)
        return _minimal(out)

    def env(self, base: dict[str, str]) -> dict[str, str]:
        """The kernel's environment: what it needs, nothing of the grader's secrets."""
        keep = {k: v for k, v in os.environ.items() if k in KEEP_ENV or k.startswith("LC_")}
        home = str(self.work)
        keep.update(
            {
                "HOME": home,
                "TMPDIR": str(self.work / "tmp"),
                "IPYTHONDIR": f"{home}/.ipython",
                "MPLCONFIGDIR": f"{home}/.matplotlib",
                "JUPYTER_RUNTIME_DIR": str(self.conn),
                "JUPYTER_CONFIG_DIR": f"{home}/.jupyter",
                "JUPYTER_DATA_DIR": f"{home}/.local/share/jupyter",
                "JUPYTER_PLATFORM_DIRS": "1",
                "PYTHONNOUSERSITE": "1",
                "MALLOC_ARENA_MAX": "4",
            }
        )
        for name in ("PYTHONPATH", "COURSE_GRADING", "MQTT_URL"):
            if name in base:
                keep[name] = base[name]
        return keep


@dataclass
class Fallback(Sandbox):
    """``setpriv`` mode: the kernel as an unprivileged uid with the limits, in its scratch folder, with
    no namespaces (for where bubblewrap cannot start). The grader must be root (to change uid)."""

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """``setpriv`` to the sandbox's uid, then ``prlimit``, then the kernel (run in :attr:`work`)."""
        if self.uid is None:
            raise SandboxError("--sandbox setpriv needs the grader to run as root")
        drop = ["setpriv", f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups", "--no-new-privs", "--"]
        return drop + _prlimit(self.limits) + list(argv)


def _prlimit(lim: Limits) -> list[str]:
    """The ``prlimit`` command prefix that applies ``lim`` to what it runs."""
    return [
        "prlimit",
        f"--as={lim.memory_bytes}",
        f"--nproc={lim.processes}",
        f"--fsize={lim.file_bytes}",
        f"--nofile={lim.open_files}",
        "--core=0",
        "--",
    ]


def make(mode: str, scratch: Path, limits: Limits, extra_ro: Sequence[Path] = (), hide: Sequence[Path] = ()) -> Sandbox | None:
    """The sandbox of a resolved ``mode`` for one kernel (None for ``none``)."""
    if mode == "bwrap":
        return Sandbox(scratch, limits, extra_ro=extra_ro, hide=hide)
    if mode == "setpriv":
        return Fallback(scratch, limits, extra_ro=extra_ro, hide=hide)
    return None


def describe(mode: str, limits: Limits | None = None) -> dict[str, Any]:
    """How submissions were isolated, for the JSON report."""
    if mode not in ("bwrap", "setpriv"):
        return {"mode": mode}
    lim = limits or Limits()
    return {
        "mode": mode,
        "network": "own namespace, loopback only" if mode == "bwrap" else "the host's (not isolated)",
        "memory_bytes": lim.memory_bytes,
        "processes": lim.processes,
        "file_bytes": lim.file_bytes,
        "unprivileged_uid": os.geteuid() == 0,
        "missing": [] if mode == "bwrap" else list(FALLBACK_MISSING),
    }
