"""The grader's side inside a submission's kernel (not for notebooks; see helpers/grading/runner.py).

The grader runs the learner's notebook in a fresh kernel, and at each ``check("qN")``
cell it runs that question's checks *itself*, through this module. To keep the
learner's code from deciding its own score:

* The grader loads this module from its own copy of ``helpers/`` (by file path, after
  taking every ``helpers*`` entry out of ``sys.modules`` and dropping import finders the
  notebook defined), so a notebook that replaced ``check``, ``helpers.grading.checks``, the
  checks module or any helper does not change what the checks do. The learner's
  modules are put back afterwards, so the rest of their notebook runs as they wrote it.
* The checks module is executed fresh from its file under a random module name.
* Each result is printed on a line that starts with a random nonce the grader made for
  this run and revealed only in the cell that runs the checks; the grader ignores
  every other output of the notebook.
* A check while which the code under test replaced a function or class of the grader's
  own copies (they are fingerprinted before each check) does not count.
* Before each question's checks, :func:`scan` looks for signs of tampering (library
  functions replaced by notebook code, import hooks, trace functions, cell hooks) and
  reports them as flags for a human to look at.

This raises the bar against copy-paste cheating and accidents; it does not make the
checks tamper-proof: the notebook runs in the same process as the checks, and a
determined author can still read frames or the nonce. Keeping the notebook away from the
grader's files, network and resources is the sandbox's job (:mod:`helpers.grading.sandbox`;
see CONTRIBUTING.md, "How the grader works and its trust model").
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import re
import signal
import sys
from collections.abc import Iterator
from types import CodeType, FunctionType, MethodType, ModuleType
from typing import Any

from helpers.grading import checks as checking

MAX_FLAGS = 8
_CELL_FILE = re.compile(r"ipykernel_\d+[/\\]")


def _is_ours(name: str) -> bool:
    return name == "helpers" or name.startswith("helpers.")


def _take_helpers() -> dict[str, ModuleType]:
    """Remove and return every ``helpers*`` module from ``sys.modules``."""
    return {k: sys.modules.pop(k) for k in [k for k in list(sys.modules) if _is_ours(k)]}


def _cell_files() -> set[str]:
    try:
        from IPython import get_ipython

        shell = get_ipython()
        return set(getattr(shell.compile, "_filename_map", {})) if shell is not None else set()
    except Exception:  # noqa: BLE001 - no IPython: nothing came from cells
        return set()


def _code_of(obj: Any) -> CodeType | None:
    """The code object of a function-like value, without touching arbitrary attributes
    (a generic getattr can trigger lazy loaders, e.g. ctypes opening a library)."""
    if isinstance(obj, (staticmethod, classmethod, MethodType)):
        obj = obj.__func__
    elif isinstance(obj, property):
        obj = obj.fget
    return obj.__code__ if isinstance(obj, FunctionType) else None


def _from_cell(obj: Any, cell_files: set[str]) -> bool:
    """True when ``obj`` is a function (or method/property) whose code was written in a notebook cell."""
    code = _code_of(obj)
    if code is None:
        return False
    name = code.co_filename
    return name in cell_files or bool(_CELL_FILE.search(name)) or name.startswith("<ipython-input")


def _from_notebook(obj: Any) -> bool:
    cls = obj if isinstance(obj, type) else type(obj)
    return getattr(cls, "__module__", "") == "__main__"


def scan(extra_modules: dict[str, ModuleType] | None = None) -> list[str]:
    """Signs that notebook code changed the machinery the checks rely on (best effort)."""
    cells = _cell_files()
    modules = dict(sys.modules)
    modules.update(extra_modules or {})
    flags = _replaced_functions(modules, cells)
    for finder in sys.meta_path:
        if _from_notebook(finder):
            flags.append(f"an import hook defined in the notebook is installed ({finder!r})")
    if sys.gettrace() is not None or sys.getprofile() is not None:
        flags.append("a trace/profile function is installed")
    flags += _shell_hooks(cells)
    unique = list(dict.fromkeys(flags))
    if len(unique) > MAX_FLAGS:
        unique = unique[:MAX_FLAGS] + [f"... and {len(unique) - MAX_FLAGS} more"]
    return unique


def _replaced_functions(modules: dict[str, ModuleType], cells: set[str]) -> list[str]:
    """Module attributes, and members of the modules' own classes, whose code was written in a cell."""
    flags: list[str] = []
    for name, module in modules.items():
        if name == "__main__" or name.startswith("_labchecks") or not isinstance(module, ModuleType):
            continue
        try:
            items = list(vars(module).items())
        except TypeError:
            continue
        for attr, value in items:
            if _from_cell(value, cells):
                flags.append(f"{name}.{attr} was replaced by notebook code")
            elif isinstance(value, type) and value.__module__ == name:
                for member, inner in list(vars(value).items()):
                    if _from_cell(inner, cells):
                        flags.append(f"{name}.{value.__name__}.{member} was replaced by notebook code")
    return flags


def _shell_hooks(cells: set[str]) -> list[str]:
    """IPython event hooks and input transformers written in a cell, and a replaced ``sys.stdout``.

    What was found before an error is kept: the scan itself must never break grading.
    """
    flags: list[str] = []
    try:
        from IPython import get_ipython

        shell = get_ipython()
        if shell is not None:
            for event, callbacks in shell.events.callbacks.items():
                if any(_from_cell(cb, cells) for cb in callbacks):
                    flags.append(f"the notebook registered an IPython '{event}' hook")
            transforms = list(shell.input_transformers_post) + list(shell.input_transformer_manager.cleanup_transforms)
            if any(_from_cell(t, cells) for t in transforms):
                flags.append("the notebook installed an input transformer")
            if type(sys.stdout).__module__ != "ipykernel.iostream":
                flags.append(f"sys.stdout was replaced ({type(sys.stdout).__name__})")
    except Exception:  # noqa: BLE001 - the scan itself must never break grading
        pass
    return flags


def _fingerprint(modules: dict[str, ModuleType]) -> dict[tuple[str, str], int]:
    """Identity of every function and class (and their members) in ``modules``, to notice rewiring."""
    kinds = (FunctionType, type, staticmethod, classmethod, property)
    found: dict[tuple[str, str], int] = {}
    for name, module in modules.items():
        for attr, value in list(vars(module).items()):
            if isinstance(value, kinds):
                found[(name, attr)] = id(value)
            if isinstance(value, type) and value.__module__ == name:
                for member, inner in list(vars(value).items()):
                    if isinstance(inner, kinds):
                        found[(name, f"{attr}.{member}")] = id(inner)
    return found


@dataclasses.dataclass(frozen=True)
class Boot:
    """What the grader hands a question's session: written into its boot cell as literals (see :func:`boot_source`)."""

    nonce: str
    """This question's random tag: the session prints its result lines after it."""
    lab: str
    checks_dir: str
    """The grader's copy of the checks, loaded from here by file path."""
    markdown: tuple[str, ...] = ()
    """The submission's Markdown cells, from the file the grader read (not from the notebook's namespace)."""
    seed: str | None = None
    """When set, each check's ``ctx.rng`` is seeded from it and the check's name (a batch re-graded
    with the same seed draws the same inputs); None: fresh randomness, as in the notebook."""


class Session:
    """The checks of one lab, ready to run one by one from grader-written cells."""

    def __init__(
        self, boot: Boot, user_ns: dict[str, Any], learner_modules: dict[str, ModuleType], learner_meta_path: list[Any]
    ) -> None:
        self.nonce = boot.nonce
        self.seed = boot.seed
        self.user_ns = user_ns
        self.markdown = list(boot.markdown)
        self.checks = list(checking.load_checks(boot.lab, boot.checks_dir))
        self._scanned: set[str] = set()
        self._fresh = _take_helpers()  # our pristine copies, used only while checks run
        self._learner = learner_modules
        self._learner_meta_path = learner_meta_path
        self._leave(restore_only=True)
        self.emit({"boot": "ok", "checks": [c.name for c in self.checks]})

    def close(self) -> None:
        """Drop the session from the notebook's namespace and the nonce from cached cell sources,
        so cells that run later find neither (their results would be ignored anyway: the next
        question gets a new nonce)."""
        import linecache

        self.user_ns.pop(session_name(self.nonce), None)
        for key, entry in list(linecache.cache.items()):
            lines = entry[2] if len(entry) > 2 and isinstance(entry[2], list) else []
            if any(self.nonce in line for line in lines):
                linecache.cache.pop(key, None)
        self.checks = []

    def emit(self, payload: dict[str, Any]) -> None:
        """One result line, tagged with this run's nonce (the only output the grader reads)."""
        print(f"\n{self.nonce} {json.dumps(payload)}", flush=True)

    def _enter(self) -> None:
        self._learner = _take_helpers()
        sys.modules.update(self._fresh)
        self._learner_meta_path = list(sys.meta_path)
        sys.meta_path[:] = [f for f in sys.meta_path if not _from_notebook(f)]

    def _leave(self, restore_only: bool = False) -> None:
        fresh = _take_helpers()
        if not restore_only:
            self._fresh = fresh
        sys.modules.update(self._learner)
        sys.meta_path[:] = self._learner_meta_path

    @contextlib.contextmanager
    def _seeded(self, check: checking.Check) -> Iterator[None]:
        """While one check runs, its Context draws inputs from a generator seeded for this check.

        The grader's own copy of the module is patched and restored inside the check's run,
        so the fingerprint of the grader's modules (taken before and after) is unchanged.
        """
        if self.seed is None:
            yield
            return
        base = checking.Context
        seed = f"{self.seed}:{check.lab}:{check.name}"

        class SeededContext(base):  # type: ignore[valid-type,misc] # a subclass of the fresh copy's Context
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                self.rng = random.Random(seed)

        checking.Context = SeededContext  # type: ignore[misc]
        try:
            yield
        finally:
            checking.Context = base  # type: ignore[misc]

    async def run(self, index: int, timeout: float | None = None) -> None:
        """Run check ``index`` (grader order), at most ``timeout`` s, and print its result line."""
        check = self.checks[index]
        if timeout is not None and timeout < check.timeout:
            check = dataclasses.replace(check, timeout=timeout)
        flags: list[str] = []
        if check.question not in self._scanned:
            self._scanned.add(check.question)
            try:
                flags = scan(self._learner)
            except Exception as exc:  # noqa: BLE001 - the scan is advisory
                flags = [f"the tamper scan failed ({type(exc).__name__}: {exc})"]
        before = _fingerprint(self._fresh)
        self._enter()
        previous = signal.getsignal(signal.SIGINT)
        try:
            # ipykernel turns Ctrl-C into a task cancel, which cannot stop `while True: pass`;
            # the default handler raises KeyboardInterrupt inside the loop, which run_check catches.
            signal.signal(signal.SIGINT, signal.default_int_handler)
            with self._seeded(check):
                result = await checking.run_check(check, self.user_ns, catch_interrupt=True, markdown=list(self.markdown))
        finally:
            signal.signal(signal.SIGINT, previous)
            self._leave()
        after = _fingerprint(self._fresh)
        changed = [".".join(key) for key, ident in before.items() if after.get(key) != ident]
        if changed:  # the code under test rewired the grader's own copy while the check ran
            what = ", ".join(changed[:3])
            flags.append(f"code called by check {check.name} replaced {what} in the grader's modules")
            result = dataclasses.replace(
                result, passed=False, points=0.0, message=f"not counted: the code under test replaced {what}"
            )
        self.emit({"index": index, "result": result.to_dict(), "flags": flags})


BOOT = """
def __course_grader_boot():
    import importlib.util, sys
    mine = {{k: sys.modules.pop(k) for k in [k for k in list(sys.modules) if k == "helpers" or k.startswith("helpers.")]}}
    meta = list(sys.meta_path)
    sys.meta_path[:] = [f for f in meta if getattr(f if isinstance(f, type) else type(f), "__module__", "") != "__main__"]
    sys.path_importer_cache.pop({helpers_dir!r}, None)
    spec = importlib.util.spec_from_file_location("helpers", {helpers_init!r}, submodule_search_locations=[{helpers_dir!r}])
    package = importlib.util.module_from_spec(spec)
    sys.modules["helpers"] = package
    try:
        spec.loader.exec_module(package)
        kernel_side = importlib.import_module("helpers.grading.kernel")
        boot = kernel_side.Boot({nonce!r}, {lab!r}, {checks_dir!r}, {markdown!r}, {seed!r})
        return kernel_side.Session(boot, globals(), mine, meta)
    except BaseException:
        for k in [k for k in list(sys.modules) if k == "helpers" or k.startswith("helpers.")]:
            del sys.modules[k]
        sys.modules.update(mine)
        sys.meta_path[:] = meta
        raise
{session} = __course_grader_boot()
del __course_grader_boot
"""


def boot_source(boot: Boot, helpers_dir: str) -> str:
    """The cell that loads a pristine copy of helpers (from ``helpers_dir``) and the lab's checks into the kernel.

    ``boot.markdown``, the submission's Markdown cell sources as the grader read them from the
    file, travels in this grader-written cell as a Python literal (``repr`` of a tuple of
    str), so checks read the submitted text and nothing the notebook's code made up.
    """
    return BOOT.format(
        nonce=boot.nonce,
        lab=boot.lab,
        helpers_dir=helpers_dir,
        helpers_init=f"{helpers_dir}/__init__.py",
        checks_dir=boot.checks_dir,
        session=session_name(boot.nonce),
        markdown=tuple(str(text) for text in boot.markdown),
        seed=boot.seed,
    ).strip()


def close_source(nonce: str) -> str:
    """The cell that ends a session: forget it, and the cached source of the cells that named its nonce."""
    return f"{session_name(nonce)}.close()"


def session_name(nonce: str) -> str:
    """The global the session lives in: unguessable, so notebook code cannot have pre-empted it."""
    return f"__course_grader_{nonce}"


def run_source(nonce: str, index: int, timeout: float | None = None) -> str:
    """The cell that runs one check."""
    return f"await {session_name(nonce)}.run({index}, {timeout!r})"
