"""One order, traced twice: through a broker (async) and through HTTP calls (sync).

A trace only crosses a hop if the hop carries the trace context. Over HTTP it rides
in the ``traceparent`` header; over MQTT we put it in the CloudEvents envelope
(:attr:`helpers.core.messaging.Event.traceparent`), and each consumer starts its span as a
child of that context. The broker itself is not traced: it shows up as the gap
between the producer's span and the consumers'.

The shape of the two waterfalls is the lesson: the sync Order span *contains* its
callees (it cannot end before they do), the async Order span is over before the
consumers have even started, and the consumers then run side by side, each as long as
its own work.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Mapping

import aiohttp
from aiohttp import web

from helpers.core import tracing
from helpers.core.broker import Broker
from helpers.core.events import ORDER_PLACED
from helpers.core.http import Handler, Service, start_service
from helpers.core.lifecycle import running
from helpers.core.messaging import Consumer, Event, EventHandler, make_event, manual_ack, publish
from helpers.core.tracing import SpanRow

WORK: dict[str, float] = {"fulfillment": 0.1, "notification": 0.05, "fraud-agent": 0.3}


async def traced_async_order(broker: Broker, topic: str, *, work: Mapping[str, float] = WORK) -> list[SpanRow]:
    """Place one order through the broker; return the trace's spans (producer + each consumer)."""
    done = asyncio.Event()
    handled: list[str] = []

    def consumer_for(service: str, seconds: float) -> EventHandler:
        tracer = tracing.get_tracer(service)

        async def handle(event: Event) -> None:
            parent = tracing.context_from_traceparent(event.traceparent)  # continue the producer's trace
            with tracer.start_as_current_span(f"handle {event.type}", context=parent):
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
            event = make_event(
                ORDER_PLACED, {"order_id": run_id}, source="/shop/orders", traceparent=tracing.current_traceparent()
            )
            await publish(publisher, topic, event, qos=1)
        trace_id = tracing.trace_id_of(span)
        await asyncio.wait_for(done.wait(), 10)
    return _in_service_order(tracing.span_rows(tracing.finished_spans(trace_id)), work)


def _traced_handler(service: str, seconds: float) -> Handler:
    """An HTTP handler that does ``seconds`` of work in a span continuing the caller's trace."""
    tracer = tracing.get_tracer(service)

    async def handle(request: web.Request) -> web.Response:
        with tracer.start_as_current_span("handle POST /orders", context=tracing.extract_headers(request.headers)):
            await asyncio.sleep(seconds)
        return web.json_response({"ok": True})

    return handle


def _in_service_order(rows: list[SpanRow], work: Mapping[str, float]) -> list[SpanRow]:
    """Producer first, then the services in a fixed order, so both waterfalls share rows and colours."""
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
