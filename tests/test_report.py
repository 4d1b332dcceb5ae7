"""make run's report: claims collected from executed notebooks, what was not measured, the machine, exit status."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest

from helpers.core.claims import Claim
from helpers.tools import report, run_all


def notebook(path: Path, *sources: str) -> Path:
    """Write a notebook of code cells to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources]), path)
    return path


def run(path: str, ok: bool = True, *claims: Claim) -> report.NotebookRun:
    return report.NotebookRun(path, ok, 1.0, "ok" if ok else "RuntimeError: boom", list(claims))


def by_id(results: list[report.ClaimResult]) -> dict[str, report.ClaimResult]:
    return {r.id: r for r in results}


def test_a_claim_holds_only_when_every_part_holds() -> None:
    runs = [
        run(
            "notebooks/07_mini_challenge.ipynb",
            True,
            Claim("M13", "upload fast", "30 ms", "< 500 ms", True),
            Claim("M13", "notifier down", "1 lost", "0 lost", False),
        ),
        run("notebooks/05_head_to_head.ipynb", True, Claim("M14", "slow payment", "33x", "> 5x", True)),
    ]
    results = by_id(report.verdicts(runs))
    assert results["M13"].status == report.FAILS
    assert len(results["M13"].parts) == 2
    assert results["M13"].parts[1]["notebook"] == "notebooks/07_mini_challenge.ipynb"
    assert results["M14"].status == report.HOLDS
    assert list(results)[:16] == [f"M{i}" for i in range(1, 17)]


def test_each_missing_claim_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    runs = [run("notebooks/02_sync_failure_modes.ipynb", True), run("notebooks/03_async_messaging.ipynb", False)]
    results = by_id(report.verdicts(runs))
    assert results["M1"].status == report.NOT_MEASURED
    assert "does not report it yet" in results["M1"].reason
    assert "03_async_messaging failed before reporting it" in results["M5"].reason
    assert "07_mini_challenge was not run" in results["M13"].reason
    assert "08_beyond_one_kernel was not run" in results["M16"].reason
    assert "01_sync_request_response was not run" in results["M12"].reason
    assert "04_async_pitfalls" in results["M12"].reason
    monkeypatch.setitem(report.WHERE, "M16", ())
    assert by_id(report.verdicts(runs))["M16"].reason == "no notebook measures it yet"


def test_the_headline_says_whether_every_claim_holds() -> None:
    every = [run("x/all.ipynb", True, *(Claim(i, "w", "m", "e", True) for i in report.WHERE))]
    assert report.summary(every, report.verdicts(every))["headline"].startswith("Every claim holds")
    assert report.summary(every, report.verdicts(every))["all_hold"]
    some = [run("x/some.ipynb", True, Claim("M1", "w", "m", "e", True))]
    partial = report.summary(some, report.verdicts(some))
    assert not partial["all_hold"]
    assert "15 of 16 were not measured" in partial["headline"]
    failing = [run("x/bad.ipynb", False, Claim("M1", "w", "m", "e", False))]
    bad = report.summary(failing, report.verdicts(failing))
    assert bad["headline"] == "1 of 16 claims do not hold on this machine; 1 of 1 notebooks failed"


def test_the_page_is_self_contained_and_escapes_what_it_shows() -> None:
    runs = [run("notebooks/05_head_to_head.ipynb", True, Claim("M14", "<script>alert(1)</script>", "3 ms", "< 5 ms", True))]
    page = report.render(report.build(runs, report.machine(Path.cwd(), "embedded rumqttd (test)")))
    assert "<script>alert(1)" not in page
    assert "&lt;script&gt;alert(1)" in page
    assert not re.search(r"<(script|link|img|iframe)\b", page), "the report must load nothing"
    assert not re.search(r"(src|href)=\"(https?:)?//", page)
    assert 'href="notebooks/05_head_to_head.html"' in page


def test_the_machine_is_described() -> None:
    info = report.machine(Path(__file__).resolve().parents[1], report.broker_description({}))
    assert info["cpus"] >= 1
    assert info["ram_gib"] > 0
    assert info["cpu"]
    assert info["python"].count(".") == 2
    assert info["broker"].startswith("embedded rumqttd (iotcore ")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", info["date"])
    assert info["git_commit"] is None or re.match(r"[0-9a-f]{7,}", info["git_commit"])


def test_an_unreachable_external_broker_is_reported_not_raised() -> None:
    from helpers.core.net import free_port

    said = report.broker_description({"MQTT_URL": f"mqtt://127.0.0.1:{free_port()}"})
    assert said.startswith("MQTT_URL 127.0.0.1:")
    assert "unreachable" in said


@pytest.mark.broker
@pytest.mark.kernel
def test_make_run_collects_claims_and_fails_on_a_failed_claim(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Two notebooks in fresh kernels: claims come from their outputs, quietly, and the exit status says failure."""
    lessons = tmp_path / "notebooks"
    first = notebook(
        lessons / "02_sync_failure_modes.ipynb",
        "from helpers.core.claims import claim",
        "claim('M1', '5 hops', measured='257 ms', expected='250-275 ms', holds=True)",
        "claim('M2', 'breaker', measured='900 ms', expected='< 250 ms', holds=False)",
    )
    second = notebook(
        lessons / "03_async_messaging.ipynb",
        "from helpers.core.claims import claim",
        "raise RuntimeError('the broker went away')",
        "claim('M5', 'producer', measured='3 ms', expected='< 50 ms', holds=True)",
    )
    out = tmp_path / "build"
    assert run_all.main(["--out", str(out), str(first), str(second)]) == 1
    data = json.loads((out / "claims.json").read_text())
    claims = {c["id"]: c for c in data["claims"]}
    assert claims["M1"]["status"] == "holds"
    assert claims["M1"]["parts"][0]["measured"] == "257 ms"
    assert claims["M2"]["status"] == "does not hold"
    assert claims["M3"]["status"] == "not measured"
    assert claims["M3"]["reason"] == "02_sync_failure_modes failed before reporting it"
    assert claims["M5"]["reason"] == "03_async_messaging failed before reporting it"
    assert [(n["path"], n["ok"]) for n in data["notebooks"]] == [
        ("notebooks/02_sync_failure_modes.ipynb", False),
        ("notebooks/03_async_messaging.ipynb", False),
    ]
    assert data["notebooks"][1]["message"] == "RuntimeError: the broker went away"
    assert data["summary"]["failing"] == 1
    assert not data["summary"]["all_hold"]
    assert (out / "report.html").read_text().count("does not hold") >= 1
    assert (out / "notebooks" / "02_sync_failure_modes.html").is_file()
    printed = capfd.readouterr()
    assert "without encryption" not in printed.out + printed.err, "kernels must not warn about TCP"
    assert "Parent appears to have exited" not in printed.out + printed.err, "every kernel must be shut down"


@pytest.mark.broker
@pytest.mark.kernel
def test_in_place_stores_outputs_only_when_the_run_is_clean(tmp_path: Path) -> None:
    good = notebook(tmp_path / "good.ipynb", "print(6 * 7)")
    bad = notebook(tmp_path / "bad.ipynb", "print('before')", "1 / 0")
    assert run_all.main(["--in-place", str(good), str(bad)]) == 1
    assert nbformat.read(good, as_version=4).cells[0].outputs[0]["text"] == "42\n"
    assert nbformat.read(bad, as_version=4).cells[0].outputs == []
