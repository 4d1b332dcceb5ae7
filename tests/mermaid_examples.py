"""Mermaid diagrams the fast check must accept, and mistakes it must reject, naming the line.

Shared by tests/test_mermaid_check.py (the fast check, no browser) and
tests/test_browser.py, which renders the same texts in JupyterLab: every accepted
diagram must draw there, and every mistake marked ``jupyterlab_rejects`` must show
JupyterLab's error box. So the fast check is held to what the real renderer does.
The others are stricter than Mermaid on purpose (it would draw them, but not as meant).
"""

from __future__ import annotations

from typing import NamedTuple


class Bad(NamedTuple):
    """A diagram with one mistake: the line it is on, a fragment of the message, and whether JupyterLab fails on it too."""

    id: str
    text: str
    line: int
    fragment: str
    jupyterlab_rejects: bool


GOOD = {
    "sequence-everything": """\
---
title: a job, heard four ways
---
sequenceDiagram
    %% a comment
    autonumber
    actor U as User
    participant C as Client #quot;web#quot;
    participant J as Jobs service
    participant B as MQTT broker
    U->>C: click
    C->>+J: POST /jobs {"plan": "x"}, Idempotency-Key
    J-->>-C: 202 Accepted, Location /jobs/42
    J-)B: job.queued
    B--)J: job.step_done
    J-xB: lost
    J--xB: lost too
    C->J: open
    C-->J: dotted open
    Note over C,J: polling #59; Retry-After 1
    Note left of U: waits
    Note right of B: QoS 1
    activate J
    loop every second
        C->>J: GET /jobs/42
        alt running
            J-->>C: 200 {#quot;state#quot;: #quot;running#quot;}
        else done
            J-->>C: 303 See Other
        end
    end
    deactivate J
    opt cancel
        C->>J: DELETE /jobs/42
    end
    par events
        B--)C: SSE
    and polling
        C->>J: GET
    end
    critical the result
        C->>J: GET /jobs/42/result
    option gone
        J-->>C: 410
    end
    break failed
        J-->>C: 500 problem+json
    end
    rect rgb(240, 240, 255)
        C->>J: GET /jobs/42/events
    end
""",
    "sequence-undeclared": "sequenceDiagram\n  A->>B: no participants declared: any name is one\n  B-->>A: ok\n",
    "flowchart-quotes": """\
flowchart LR
    you[this notebook] -- "GET /?name=Ada" --> hello[hello service]
    hello -- "{#quot;hello#quot;: #quot;Ada#quot;}" --> you
    hello -->|"say #quot;hi#quot;"| db[("store #quot;a#quot;")]
    db -.->|MQTT job.done| n>"flag"] --> m[say #quot;hi#quot;]
    subgraph s["a #quot;group#quot;"]
        x --> y
    end
    click x "https://example.com" "a tooltip"
    %% a comment with "quotes", on its own line
    x --> z
""",
}


BAD = [
    # flowcharts: quotes inside labels
    Bad("flow-quotes-in-quoted-json", 'flowchart LR\n  A["{"hello": "Ada"}"] --> B', 2, "inside a quoted label", True),
    Bad("flow-quote-in-plain-label", 'flowchart LR\n  A[say "hi"] --> B', 2, "inside a label", True),
    Bad("flow-quote-in-pipe-label", 'flowchart LR\n  A --> B\n  A -->|say "hi"| B', 3, "inside a label", True),
    Bad("flow-quotes-in-text-link", 'flowchart LR\n  A -- "{"id": 1}" --> B', 2, "inside a quoted label", True),
    Bad("flow-quote-in-cylinder", 'flowchart LR\n  A[("x "y" z")] --> B', 2, "inside a quoted label", True),
    Bad("flow-trailing-comment", "flowchart LR\n  A --> B %% why", 2, "a `%%` comment after a statement", True),
    # JupyterLab happens to draw this one; the rule is kept simple: a label's quotes are #quot;
    Bad("flow-quoted-word-in-quoted-label", 'flowchart LR\n  A["say "hi""] --> B', 2, "inside a quoted label", False),
    # sequence diagrams: syntax
    Bad("seq-semicolon-in-message", "sequenceDiagram\n  A->>B: hi; there", 2, "a `;` ends a statement", True),
    Bad("seq-semicolon-in-note", "sequenceDiagram\n  A->>B: hi\n  Note over A: x; y", 3, "a `;` ends a statement", True),
    Bad("seq-thick-arrow", "sequenceDiagram\n  A=>>B: hi", 2, "`=>>` is not a sequence arrow", True),
    Bad("seq-three-heads", "sequenceDiagram\n  A->>>B: hi", 2, "`->>>` is not a sequence arrow", True),
    Bad("seq-no-colon", "sequenceDiagram\n  A->>B hi", 2, "needs `: text`", True),
    Bad("seq-no-text", "sequenceDiagram\n  A->>B: x\n  B-->>A", 3, "needs `: text`", True),
    Bad("seq-note-no-participant", "sequenceDiagram\n  A->>B: x\n  Note over: x", 3, "cannot read the note", True),
    Bad("seq-note-on", "sequenceDiagram\n  A->>B: x\n  Note on A: x", 3, "cannot read the note", True),
    Bad("seq-note-no-text", "sequenceDiagram\n  A->>B: x\n  Note over A", 3, "needs `: text`", True),
    Bad("seq-not-a-statement", "sequenceDiagram\n  A->>B: x\n  A sends B a thing", 3, "cannot read `A sends B a thing`", True),
    # sequence diagrams: blocks and activations
    Bad("seq-unclosed-alt", "sequenceDiagram\n  alt x\n    A->>B: hi", 2, "`alt` is never closed with `end`", True),
    Bad("seq-stray-end", "sequenceDiagram\n  A->>B: hi\n  end", 3, "`end` without a block", True),
    Bad("seq-extra-end", "sequenceDiagram\n  alt a\n    A->>B: x\n  end\n  end", 5, "`end` without a block", True),
    Bad(
        "seq-else-in-opt",
        "sequenceDiagram\n  opt maybe\n    A->>B: x\n  else no\n    A->>B: y\n  end",
        4,
        "`else` belongs in an `alt` block, not inside `opt`",
        True,
    ),
    Bad(
        "seq-deactivate-inactive", "sequenceDiagram\n  A->>B: x\n  deactivate B", 3, "`B` is deactivated but is not active", True
    ),
    Bad("seq-minus-deactivates-sender", "sequenceDiagram\n  A->>-B: x", 2, "`A` is deactivated but is not active", True),
    Bad("seq-activate-never-closed", "sequenceDiagram\n  activate A", 2, "`A` is activated here and never deactivated", True),
    # sequence diagrams: stricter than Mermaid
    Bad("seq-plus-never-closed", "sequenceDiagram\n  A->>+B: x", 2, "`B` is activated here and never deactivated", False),
    Bad("seq-empty-text", "sequenceDiagram\n  A->>B:", 2, "has no text after `:`", False),
    Bad(
        "seq-typo-participant",
        "sequenceDiagram\n  participant C as Client\n  participant J as Jobs\n  C->>J: hi\n  J-->>Cl: ok",
        5,
        "`Cl` is not a declared participant (C, J)",
        False,
    ),
    Bad("seq-declared-twice", "sequenceDiagram\n  participant A\n  participant A as Again", 3, "declared twice", False),
    Bad("seq-header", "sequenceDiagram extra\n  A->>B: x", 1, "`sequenceDiagram` alone on the first line", True),
]
