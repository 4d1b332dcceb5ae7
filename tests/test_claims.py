"""helpers.core.claims: a claim shows its verdict, keeps a JSON copy, and raises when it fails."""

from __future__ import annotations

import nbformat
import pytest
from nbclient import NotebookClient

from helpers.core import claims


def test_a_claim_that_holds_is_recorded_and_returned() -> None:
    before = len(claims.recorded())
    claims.claim("M1", "5 hops", measured="257 ms", expected="250-275 ms", holds=True)
    assert claims.recorded()[before:] == [claims.Claim("M1", "5 hops", "257 ms", "250-275 ms", True)]


def test_a_claim_that_fails_raises_with_the_measurement() -> None:
    with pytest.raises(claims.ClaimFailed, match="measured 300 ms, expected 250-275 ms"):
        claims.claim("M1", "5 hops", measured="300 ms", expected="250-275 ms", holds=False)
    assert not claims.recorded()[-1].holds


def test_an_unknown_id_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown claim id 'M99'"):
        claims.claim("M99", "x", measured="1", expected="1", holds=True)


@pytest.mark.kernel
def test_claims_survive_in_an_executed_notebooks_outputs() -> None:
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell(
                "from helpers.core.claims import claim\n"
                "claim('M5', 'producer', measured='3 ms', expected='< 50 ms', holds=3 < 50)"
            ),
            nbformat.v4.new_code_cell("claim('M6', 'leveling', measured='0 lost', expected='0 lost', holds=False)"),
        ]
    )
    NotebookClient(nb, timeout=60, kernel_name="python3", allow_errors=True).execute()
    found = claims.from_outputs(nb.cells)
    assert [(c.id, c.holds) for c in found] == [("M5", True), ("M6", False)]
    assert "ClaimFailed" in str(nb.cells[1].outputs[-1])
