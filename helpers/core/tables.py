"""Print a list of row dicts as an aligned plain-text table (no pandas needed).

Plain text on purpose: it reads the same in JupyterLab, in a terminal, in a stored
notebook on GitHub, and nbval can compare it for deterministic results.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3g}" if value != int(value) else f"{value:.0f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(v) for v in value)
    return str(value)


def render(rows: Sequence[Mapping[str, object]], *, title: str | None = None) -> str:
    """The table as text: a header, a rule, one line per row (columns from the first row)."""
    if not rows:
        return f"{title}\n(no rows)" if title else "(no rows)"
    columns = list(rows[0])
    cells = [[_cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    numeric = [all(r[i].replace(",", "").replace(".", "", 1).lstrip("-").isdigit() for r in cells) for i in range(len(columns))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)).rstrip()

    out = [title] if title else []
    out += [line(columns), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    return "\n".join(out)


def show(rows: Sequence[Mapping[str, object]], *, title: str | None = None) -> None:
    """Print :func:`render`'s table."""
    print(render(rows, title=title))
