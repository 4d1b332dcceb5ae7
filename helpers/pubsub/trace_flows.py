"""One order, traced twice: through a broker (async) and through HTTP calls (sync).

A trace only crosses a hop if the hop carries the trace context. Over HTTP it rides
in the ``traceparent`` header; over MQTT it goes into the CloudEvents envelope
(:attr:`helpers.core.messaging.Event.traceparent`), and each consumer starts its span as a
child of that context. The two steps are the learner's functions, written in lesson 04
with OpenTelemetry's propagator: :data:`Inject` on publish, :data:`Extract` on consume.
The broker itself is not traced: it shows up as the gap between the producer's span
and the consumers'.

The shape of the two waterfalls is the lesson: the sync Order span *contains* its
callees (it cannot end before they do), the async Order span is over before the
consumers have even started, and the consumers then run side by side, each as long as
its own work.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Mapping

import aiohttp
from aiohttp import web
from matplotlib.axes import Axes
from opentelemetry.context import Context

from helpers.core import tracing
from helpers.core.broker import Broker
from helpers.core.events import ORDER_PLACED
from helpers.core.http import Handler, Service, start_service
from helpers.core.lifecycle import running
from helpers.core.messaging import Consumer, Event, EventHandler, make_event, manual_ack, publish
from helpers.core.plots import waterfall
from helpers.core.tracing import SpanRow

WORK: dict[str, float] = {"fulfillment": 0.1, "notification": 0.05, "fraud-agent": 0.3}


Inject = Callable[[Event], Event]
"""The learner's publish side: the event, returned with the current trace context in its envelope."""

Extract = Callable[[Event], Context]
"""The learner's consume side: the trace context an event carries (an empty context if none)."""


async def traced_async_order(
    broker: Broker, topic: str, *, inject: Inject, extract: Extract, work: Mapping[str, float] = WORK
) -> list[SpanRow]:
    """Place one order through the broker with the learner's ``inject``/``extract``; return every span it made.

    Every trace the run touched is returned (the producer's, and any a consumer started on
    its own), so lost propagation shows as more than one trace instead of missing rows.
    """
    done = asyncio.Event()
    handled: list[str] = []
    traces: set[int] = set()

    def consumer_for(service: str, seconds: float) -> EventHandler:
        tracer = tracing.get_tracer(service)

        async def handle(event: Event) -> None:
            with tracer.start_as_current_span(f"handle {event.type}", context=extract(event)) as span:
                traces.add(tracing.trace_id_of(span))
                await asyncio.sleep(seconds)
            handled.append(service)
            if len(handled) == len(work):
                done.set()

        return handle

    run_id = uuid.uuid4().hex[:6]
    async with contextlib.AsyncExitStack() as stack:
        for service, seconds in work.items():
            client = await stack.enter_async_context(manual_ack(broker.client(f"{service}-traced-{run_id}")))
            await stack.enter_async_context(running(Consumer(client, topic, consumer_for(service, seconds)).run))
        publisher = await stack.enter_async_context(broker.client(f"orders-traced-{run_id}"))
        tracer = tracing.get_tracer("order-service")
        with tracer.start_as_current_span("POST /orders (async)") as span:
            event = inject(make_event(ORDER_PLACED, {"order_id": run_id}, source="/shop/orders"))
            await publish(publisher, topic, event, qos=1)
        traces.add(tracing.trace_id_of(span))
        await asyncio.wait_for(done.wait(), 10)
    spans = [s for trace_id in sorted(traces) for s in tracing.finished_spans(trace_id)]
    return _in_service_order(tracing.span_rows(spans), work)


def _traced_handler(service: str, seconds: float) -> Handler:
    """An HTTP handler that does ``seconds`` of work in a span continuing the caller's trace."""
    tracer = tracing.get_tracer(service)

    async def handle(request: web.Request) -> web.Response:
        with tracer.start_as_current_span("handle POST /orders", context=tracing.extract_headers(request.headers)):
            await asyncio.sleep(seconds)
        return web.json_response({"ok": True})

    return handle


def _in_service_order(rows: list[SpanRow], work: Mapping[str, float]) -> list[SpanRow]:
    """Producer first, then the services in a fixed order, so both waterfalls share rows and colors."""
    order = ["order-service", *work]
    return sorted(rows, key=lambda r: (r.depth, order.index(r.service) if r.service in order else len(order), r.start_ms))


async def traced_sync_order(*, work: Mapping[str, float] = WORK) -> list[SpanRow]:
    """Place one order with HTTP calls to the same services (in parallel); return the trace's spans."""
    services: list[Service] = []
    for name, seconds in work.items():
        services.append(await start_service(f"traced-sync-{name}", _traced_handler(name, seconds)))
    try:
        async with aiohttp.ClientSession() as session:

            async def call(url: str) -> None:
                async with session.post(f"{url}/orders", headers=tracing.inject_headers()) as response:
                    response.raise_for_status()

            tracer = tracing.get_tracer("order-service")
            with tracer.start_as_current_span("POST /orders (sync)") as span:
                await asyncio.gather(*(call(s.url) for s in services))
            trace_id = tracing.trace_id_of(span)
    finally:
        for service in services:
            await service.stop()
    return _in_service_order(tracing.span_rows(tracing.finished_spans(trace_id)), work)


def producer_gap_ms(rows: list[SpanRow], producer: str = "order-service") -> float:
    """Milliseconds from the end of the producer's span to the end of the first other span.

    Positive: the producer was done before any consumer had finished its work (async: it
    did not wait). Negative: the producer's span outlasted its callees (sync: it waited).
    Compared with the callees' *ends*, not their starts: on a fast loopback a consumer
    can begin a fraction of a millisecond before the publisher has its acknowledgement.
    """
    mine = [r for r in rows if r.service == producer and r.depth == 0]
    others = [r for r in rows if r.service != producer]
    if not mine or not others:
        raise ValueError("need the producer's root span and at least one other span")
    return min(r.end_ms for r in others) - max(r.end_ms for r in mine)


def plot_traces(sync_rows: list[SpanRow], async_rows: list[SpanRow]) -> tuple[Axes, Axes]:
    """The sync and async waterfalls one above the other on one time axis.

    One legend (the services and their colors are the same in both) and one x label,
    under the lower panel, with room on the right for the duration labels.
    """
    import matplotlib.pyplot as plt

    _, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), layout="constrained", sharex=True)
    waterfall(sync_rows, ax=top, title="sync: the Order service waits for all three calls")
    waterfall(async_rows, ax=bottom, title="async: the Order service is done at once, the consumers work on without it")
    top.set_xlabel("")
    legend = bottom.get_legend()
    if legend is not None:
        legend.remove()
    bottom.set_xlim(0, 1.15 * max(r.end_ms for r in [*sync_rows, *async_rows]))
    return top, bottom
