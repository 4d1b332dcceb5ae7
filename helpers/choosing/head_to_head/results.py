"""Lesson 05's result of one design under one scenario: the caller's samples and every effect, read every way."""

from __future__ import annotations

import math
from dataclasses import dataclass

from helpers.choosing.head_to_head.designs import DesignKind
from helpers.choosing.head_to_head.effects import Effects
from helpers.choosing.head_to_head.workload import Scenario, Workload
from helpers.core.measure import LoadRun, Summary, percentile, summarize


@dataclass
class Result:
    """One design under one scenario: the caller's samples and every effect applied."""

    design: DesignKind
    scenario: Scenario
    workload: Workload
    run: LoadRun
    order_ids: list[str]
    effects: Effects
    received: dict[str, float]
    down_window: tuple[float, float] | None = None
    """Loop times when the service went down and came back (None: no outage)."""
    redelivered: int = 0
    """Deliveries beyond the first per event and consumer, after a consumer restart (async only)."""
    in_progress_at_kill: int = 0
    """Events the killed consumer was working on when it died (async only; they come again)."""

    @property
    def t0(self) -> float:
        """The first order's intended send time: time zero of the plots."""
        return self.run.samples[0].intended

    @property
    def caller(self) -> Summary:
        """What the caller saw: answer latency from the intended send time, errors, answers per second."""
        return self.run.summary()

    @property
    def errors(self) -> int:
        return sum(not s.ok for s in self.run.samples)

    def completions(self) -> list[tuple[str, float, float]]:
        """(order id, intended send time, done time) of every order whose three effects were applied."""
        pairs = zip(self.order_ids, self.run.samples, strict=True)
        return [(oid, s.intended, d) for oid, s in pairs if (d := self.effects.done_at(oid)) is not None]

    @property
    def done(self) -> int:
        """Orders with every effect applied."""
        return len(self.completions())

    @property
    def not_done(self) -> int:
        """Orders that never got all their effects (lost work, or work handed back to the caller as an error)."""
        return len(self.order_ids) - self.done

    @property
    def half_done(self) -> int:
        """Orders with some effects applied and not all: stock reserved and nobody charged, say."""
        total = len(self.effects.services)
        return sum(0 < self.effects.steps_done(oid) < total for oid in self.order_ids)

    def half_done_at(self, when: float) -> int:
        """Orders that were half done at loop time ``when``: some effects finished by then, not all."""
        total = len(self.effects.services)
        count = 0
        for oid in self.order_ids:
            finished = sum(
                1 for s in self.effects.services if (a := self.effects.applied[s].get(oid)) is not None and a.finished <= when
            )
            count += 0 < finished < total
        return count

    def finished_before(self, first: str, then: str) -> int:
        """Orders whose ``first`` effect finished before their ``then`` effect (e.g. notified before paid)."""
        applied_first, applied_then = self.effects.applied[first], self.effects.applied[then]
        both = [oid for oid in self.order_ids if oid in applied_first and oid in applied_then]
        return sum(applied_first[oid].finished < applied_then[oid].finished for oid in both)

    @property
    def done_s(self) -> list[float]:
        """Per done order, seconds from its intended send time until its last effect."""
        return [done - intended for _, intended, done in self.completions()]

    @property
    def done_summary(self) -> Summary:
        """Percentiles of :attr:`done_s` (in ms, like the caller's)."""
        return summarize(self.done_s)

    @property
    def done_per_s(self) -> float:
        """Orders completed per second, from the first intended send to the last completion."""
        done = self.completions()
        if not done:
            return 0.0
        span = max(d for _, _, d in done) - self.t0
        return len(done) / span if span > 0 else math.nan

    @property
    def handoff_ms(self) -> float:
        """p50 time from the Order service receiving an order until a downstream service starts on it.

        The cost of handing the work over: an HTTP call in the sync design, a publish, the
        broker and a delivery in the async one (the downstream's own work is not in it).
        """
        gaps = [
            (started - self.received[oid]) * 1000
            for oid in self.order_ids
            if oid in self.received and (started := self.effects.first_started(oid)) is not None
        ]
        return percentile(gaps, 50)

    @property
    def waiting_at_return(self) -> list[tuple[str, float, float]]:
        """After an outage: the orders accepted before the service returned and not done yet at
        that moment, as (order id, intended send time, done time or NaN)."""
        if self.down_window is None:
            return []
        back = self.down_window[1]
        waiting = []
        for oid, sample in zip(self.order_ids, self.run.samples, strict=True):
            done = self.effects.done_at(oid)
            if sample.ok and sample.intended < back and (done is None or done > back):
                waiting.append((oid, sample.intended, math.nan if done is None else done))
        return waiting

    @property
    def caught_up_s(self) -> float | None:
        """After an outage: seconds from the service's return until every order that was waiting
        then was done (0.0: nothing was waiting; NaN: one never got done). None without an outage."""
        if self.down_window is None:
            return None
        back = self.down_window[1]
        gaps = [done - back for _, _, done in self.waiting_at_return]
        return math.nan if any(math.isnan(g) for g in gaps) else max(gaps, default=0.0)

    def as_row(self) -> dict[str, object]:
        """One row of the summary table; latencies (caller, done, hand-off) in ms.

        Every percentile stands beside the count it is over and the count it leaves out:
        caller latencies are over the answered orders (``errors`` beside them), done
        latencies over the orders done (``not done`` beside them). A tail over fewer than
        :data:`helpers.core.measure.P99_MIN_SAMPLES` values says "max", not p99.
        """
        caller, done = self.caller, self.done_summary
        caught_up = self.caught_up_s
        return {
            "design": self.design,
            "scenario": self.scenario.name,
            "answered": caller.answered,
            "errors": self.errors,
            "caller p50": _ms(caller.p50_ms),
            "caller p99": caller.tail_cell(),
            "done": self.done,
            "not done": self.not_done,
            "done p50": _ms(done.p50_ms),
            "done p99": done.tail_cell(),
            "half done": self.half_done,
            "done/s": _ms(self.done_per_s),
            "catch-up s": "" if caught_up is None else _ms(caught_up, 2),
            "hand-off": _ms(self.handoff_ms, 2),
        }

    def caller_line(self) -> str:
        """The caller's side in one line: how many answered, p50 and p99 (or max), and the errors beside them."""
        return _line(f"{self.caller.answered} answered", "caller", self.caller, f"{self.errors} error(s)")

    def done_line(self) -> str:
        """The work's side in one line: how many done, p50 and p99 (or max) until done, and the orders not done."""
        return _line(f"{self.done} done", "done", self.done_summary, f"{self.not_done} not done")


def _line(counted: str, name: str, summary: Summary, left_out: str) -> str:
    """One side in one line: the count, p50 and the tail (p99 or max), and what the figures leave out."""
    label, tail = summary.tail()
    return f"{counted}, {name} p50 {_ms(summary.p50_ms)} ms, {label} {_ms(tail)} ms; {left_out}, not in those figures"


def _ms(value: float, digits: int = 1) -> float | str:
    """A number rounded for a table, or "-" when there is none (NaN: nothing was answered or done)."""
    return "-" if math.isnan(value) else round(value, digits)
