"""The instructor's report of ``make run``: does every claim hold on this machine?

``make run`` executes every lesson and solution. Each notebook states the claims it
measures with :func:`helpers.core.claims.claim`, which leaves a JSON copy in the cell's
output; this module collects those copies from the executed notebooks
(:func:`helpers.core.claims.from_outputs`), so the report never re-measures and never
keeps a second list of numbers. It adds what the notebooks cannot say about themselves:
the claims that were expected but never reported (the notebook failed before it got
there, was not run, or does not state the claim yet), each notebook's status and run
time, and the machine it all ran on. It writes ``claims.json`` (for scripts and CI) and
``report.html``: one self-contained page (inline CSS, no script, no external asset) that
says at the top whether every claim holds.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import jinja2

from helpers.core.claims import TITLES, Claim

#: Where each claim is measured (the course map in README.md): notebook stems. A claim whose
#: notebook ran but reported nothing is "not measured: not instrumented yet". M16 (several
#: processes on a real broker) has no notebook yet.
WHERE: dict[str, tuple[str, ...]] = {
    "M1": ("02_sync_failure_modes",),
    "M2": ("02_sync_failure_modes",),
    "M3": ("02_sync_failure_modes",),
    "M4": ("02_sync_failure_modes",),
    "M5": ("03_async_messaging",),
    "M6": ("03_async_messaging",),
    "M7": ("03_async_messaging", "06_choosing_and_hybrid"),
    "M8": ("04_async_pitfalls",),
    "M9": ("04_async_pitfalls",),
    "M10": ("04_async_pitfalls",),
    "M11": ("03_async_messaging",),
    "M12": ("01_sync_request_response", "04_async_pitfalls"),
    "M13": ("07_mini_challenge",),
    "M14": ("05_head_to_head",),
    "M15": ("06_choosing_and_hybrid",),
    "M16": ("08_beyond_one_kernel",),
}

HOLDS, FAILS, NOT_MEASURED = "holds", "does not hold", "not measured"


@dataclass
class NotebookRun:
    """One notebook's run: where it is (relative to the repository), ok or not, how long, and why."""

    path: str
    ok: bool
    seconds: float
    message: str = "ok"
    claims: list[Claim] = field(default_factory=list)

    @property
    def stem(self) -> str:
        """The file name without folder or ``.ipynb`` (what :data:`WHERE` names)."""
        return Path(self.path).stem

    @property
    def page(self) -> str:
        """The notebook's HTML page, relative to the report."""
        return str(Path(self.path).with_suffix(".html").as_posix())


@dataclass
class ClaimResult:
    """Every reported part of one claim id, and the verdict over all of them."""

    id: str
    title: str
    status: str
    parts: list[dict[str, Any]]
    reason: str = ""


def _run(command: Sequence[str], cwd: Path | None = None) -> str | None:
    """A command's trimmed output, or None when it is missing or fails (the report just says unknown)."""
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def cpu_model() -> str:
    """The CPU's marketing name: /proc/cpuinfo on Linux, sysctl on macOS, else what platform knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    if platform.system() == "Darwin":
        return _run(["sysctl", "-n", "machdep.cpu.brand_string"]) or platform.machine()
    return platform.processor() or platform.machine() or "unknown"


def git_commit(root: Path) -> str | None:
    """``abc1234`` (plus ``+ local changes`` when the tree is dirty), or None outside a git checkout."""
    commit = _run(["git", "rev-parse", "--short", "HEAD"], cwd=root)
    if commit is None:
        return None
    dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root)
    return f"{commit} + local changes" if dirty else commit


def machine(root: Path, broker: str) -> dict[str, Any]:
    """What the numbers were measured on: a claim that holds on one laptop may not on another."""
    import psutil  # type: ignore[import-untyped]  # pinned, ships no type hints; imported here to keep this module light

    return {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "broker": broker,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "git_commit": git_commit(root),
    }


def embedded_broker_version() -> str:
    """The embedded broker's name and the iotcore version that ships it."""
    try:
        return f"embedded rumqttd (iotcore {metadata.version('iotcore')})"
    except metadata.PackageNotFoundError:
        return "embedded rumqttd (iotcore not installed)"


def external_broker_version(url: str, timeout: float = 3.0) -> str:
    """``host:port``, and the version the broker publishes on ``$SYS/broker/version`` (Mosquitto does).

    The probe also tells the instructor, before 13 notebooks fail one by one, that the
    broker in MQTT_URL does not answer.
    """
    import asyncio

    from helpers.core.broker import mqtt_broker, parse_mqtt_url

    endpoint = parse_mqtt_url(url)
    where = f"MQTT_URL {endpoint.host}:{endpoint.port}"

    async def probe() -> str:
        async with mqtt_broker(url) as broker, broker.client() as client:
            await client.subscribe("$SYS/broker/version")
            try:
                async with asyncio.timeout(timeout):
                    async for message in client.messages:
                        return bytes(message.payload).decode(errors="replace")  # $SYS payloads are bytes
            except TimeoutError:
                pass
            return "version not published"

    try:
        return f"{where}: {asyncio.run(probe())}"
    except Exception as exc:  # noqa: BLE001 - any failure to reach the broker is reported, not raised
        return f"{where}: unreachable ({exc})"


def broker_description(environ: dict[str, str] | None = None) -> str:
    """Which broker the notebooks use (MQTT_URL or embedded), with its version."""
    url = (os.environ if environ is None else environ).get("MQTT_URL")
    return external_broker_version(url) if url else embedded_broker_version()


def verdicts(runs: Iterable[NotebookRun]) -> list[ClaimResult]:
    """One result per claim id (M1-M16 in order, then any unknown to :data:`WHERE`)."""
    runs = list(runs)
    by_stem = {run.stem: run for run in runs}
    parts: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        for found in run.claims:
            parts.setdefault(found.id, []).append({**asdict(found), "notebook": run.path})
    results = []
    for claim_id in [*TITLES, *sorted(set(parts) - set(TITLES))]:
        got = parts.get(claim_id, [])
        if got:
            status = HOLDS if all(part["holds"] for part in got) else FAILS
            results.append(ClaimResult(claim_id, TITLES.get(claim_id, "?"), status, got))
        else:
            results.append(ClaimResult(claim_id, TITLES[claim_id], NOT_MEASURED, [], _why_missing(claim_id, by_stem)))
    return results


def _why_missing(claim_id: str, by_stem: dict[str, NotebookRun]) -> str:
    """Why a claim has no measurement: a failed notebook, a notebook not run, or no claim() call yet."""
    stems = WHERE.get(claim_id, ())
    if not stems:
        return "no notebook measures it yet"
    reasons = []
    for stem in stems:
        run = by_stem.get(stem)
        if run is None:
            reasons.append(f"{stem} was not run")
        elif not run.ok:
            reasons.append(f"{stem} failed before reporting it")
        else:
            reasons.append(f"{stem} does not report it yet (no claim() call)")
    return "; ".join(reasons)


def summary(runs: Sequence[NotebookRun], results: Sequence[ClaimResult]) -> dict[str, Any]:
    """The counts and the one-line verdict the report opens with."""
    count = {status: sum(r.status == status for r in results) for status in (HOLDS, FAILS, NOT_MEASURED)}
    failed_notebooks = sum(not run.ok for run in runs)
    all_hold = count[FAILS] == 0 and count[NOT_MEASURED] == 0 and failed_notebooks == 0
    if count[FAILS]:
        headline = f"{count[FAILS]} of {len(results)} claims do not hold on this machine"
    elif all_hold:
        headline = f"Every claim holds on this machine ({len(results)} of {len(results)} measured)"
    elif count[HOLDS] == 0:
        headline = f"No claim was measured ({len(results)} of {len(results)} not measured)"
    else:
        headline = f"Every measured claim holds on this machine, but {count[NOT_MEASURED]} of {len(results)} were not measured"
    if failed_notebooks:
        headline += f"; {failed_notebooks} of {len(runs)} notebooks failed"
    return {
        "all_hold": all_hold,
        "headline": headline,
        "holding": count[HOLDS],
        "failing": count[FAILS],
        "not_measured": count[NOT_MEASURED],
        "notebooks": len(runs),
        "notebooks_failed": failed_notebooks,
    }


def build(runs: Sequence[NotebookRun], machine_info: dict[str, Any]) -> dict[str, Any]:
    """Everything the report shows, as plain JSON-able data (what claims.json holds)."""
    results = verdicts(runs)
    return {
        "summary": summary(runs, results),
        "machine": machine_info,
        "notebooks": [
            {
                "path": r.path,
                "page": r.page,
                "ok": r.ok,
                "seconds": round(r.seconds, 1),
                "message": r.message,
                "claims": len(r.claims),
            }
            for r in runs
        ],
        "claims": [asdict(result) for result in results],
    }


_PAGE = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string(
    """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Course check: {{ summary.headline }}</title>
<style>
  body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328; margin: 2rem auto;
         max-width: 70rem; padding: 0 1rem; }
  h1 { font-size: 1.5rem; margin-bottom: .25rem; }
  h2 { font-size: 1.15rem; margin-top: 2rem; border-bottom: 1px solid #d0d7de; padding-bottom: .25rem; }
  .verdict { padding: .9rem 1.1rem; border-radius: 6px; font-size: 1.15rem; font-weight: 600; margin: 1rem 0; }
  .good { background: #dafbe1; border: 1px solid #4ac26b; }
  .partial { background: #fff8c5; border: 1px solid #d4a72c; }
  .bad { background: #ffebe9; border: 1px solid #ff8182; }
  .counts { font-weight: normal; font-size: .95rem; margin-top: .3rem; }
  table { border-collapse: collapse; width: 100%; margin: .5rem 0; }
  th, td { text-align: left; vertical-align: top; padding: .35rem .6rem; border-bottom: 1px solid #d0d7de; }
  th { background: #f6f8fa; font-weight: 600; }
  td.claim { width: 11rem; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
  .tag { display: inline-block; font-weight: 600; padding: 0 .5rem; border-radius: 1rem; font-size: .85rem; white-space: nowrap; }
  .tag.holds, .tag.ok { background: #dafbe1; color: #116329; }
  .tag.fails, .tag.failed { background: #ffebe9; color: #a40e26; }
  .tag.missing { background: #eaeef2; color: #57606a; }
  .reason { color: #57606a; }
  dl { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem; }
  dt { font-weight: 600; }
  dd { margin: 0; }
  code { font-size: .9em; }
</style>
</head>
<body>
<h1>Sync vs Async Service Communication: course check</h1>
<div class="verdict {{ 'good' if summary.all_hold else ('bad' if summary.failing or summary.notebooks_failed else 'partial') }}">
  {{ '✓' if summary.all_hold else ('✗' if summary.failing or summary.notebooks_failed else '⚠') }} {{ summary.headline }}.
  <div class="counts">{{ summary.holding }} claims hold, {{ summary.failing }} do not hold,
  {{ summary.not_measured }} not measured;
  {{ summary.notebooks - summary.notebooks_failed }} of {{ summary.notebooks }} notebooks ran cleanly.</div>
</div>

<h2>The machine</h2>
<dl>
  <dt>CPU</dt><dd>{{ machine.cpu }} ({{ machine.cpus }} logical CPUs)</dd>
  <dt>Memory</dt><dd>{{ machine.ram_gib }} GiB</dd>
  <dt>OS</dt><dd>{{ machine.os }}</dd>
  <dt>Python</dt><dd>{{ machine.python }}</dd>
  <dt>MQTT broker</dt><dd>{{ machine.broker }}</dd>
  <dt>Run on</dt><dd>{{ machine.date }}</dd>
  <dt>Course version</dt>
  <dd>{{ ('git commit ' ~ machine.git_commit) if machine.git_commit else 'unknown (not a git checkout)' }}</dd>
</dl>

<h2>The claims (M1-M16)</h2>
<table>
  <tr><th>claim</th><th>part</th><th>measured</th><th>expected</th><th>verdict</th><th>notebook</th></tr>
  {%- for c in claims %}
    {%- if c.parts %}
      {%- for p in c.parts %}
  <tr>
    {%- if loop.first %}<td class="claim" rowspan="{{ c.parts | length }}"><b>{{ c.id }}</b> {{ c.title }}</td>{% endif %}
    <td>{{ p.what }}</td><td>{{ p.measured }}</td><td>{{ p.expected }}</td>
    <td><span class="tag {{ 'holds' if p.holds else 'fails' }}">{{ '✓ holds' if p.holds else '✗ does not hold' }}</span></td>
    <td><a href="{{ p.notebook | replace('.ipynb', '.html') }}" title="{{ p.notebook }}">
      {{- p.notebook.split('/')[-1] | replace('.ipynb', '') }}</a></td>
  </tr>
      {%- endfor %}
    {%- else %}
  <tr>
    <td class="claim"><b>{{ c.id }}</b> {{ c.title }}</td>
    <td colspan="3" class="reason">{{ c.reason }}</td>
    <td><span class="tag missing">not measured</span></td><td></td>
  </tr>
    {%- endif %}
  {%- endfor %}
</table>

<h2>The notebooks</h2>
<table>
  <tr><th>notebook</th><th>status</th><th>run time</th><th>claims reported</th><th>error</th></tr>
  {%- for n in notebooks %}
  <tr>
    <td><a href="{{ n.page }}">{{ n.path }}</a></td>
    <td><span class="tag {{ 'ok' if n.ok else 'failed' }}">{{ 'ok' if n.ok else 'failed' }}</span></td>
    <td class="num">{{ '%.1f' % n.seconds }} s</td>
    <td class="num">{{ n.claims }}</td>
    <td class="reason">{{ '' if n.ok else n.message }}</td>
  </tr>
  {%- endfor %}
</table>
<p class="reason">Each notebook runs in a fresh kernel; its executed copy and HTML page are next to this report.
The same data is in <code>claims.json</code>.</p>
</body>
</html>
"""
)


def render(data: dict[str, Any]) -> str:
    """``report.html`` from :func:`build`'s data."""
    return _PAGE.render(**data)


def write(out_dir: Path, runs: Sequence[NotebookRun], machine_info: dict[str, Any]) -> dict[str, Any]:
    """Write ``claims.json`` and ``report.html`` into ``out_dir``; return the data."""
    data = build(runs, machine_info)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "claims.json").write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out_dir / "report.html").write_text(render(data), encoding="utf-8")
    return data
