"""helpers.core.tracing: one trace across two real HTTP services and across a message envelope."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry import trace

from helpers.core.broker import Broker
from helpers.core.http import start_service
from helpers.core.messaging import decode, make_event, publish
from helpers.core.tracing import (
    clear,
    context_from_traceparent,
    current_traceparent,
    extract_headers,
    finished_spans,
    get_tracer,
    inject_headers,
    span_rows,
    trace_id_of,
)

TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")  # flags: sampled (+ random id bit)


@pytest.fixture(autouse=True)
def _fresh_spans() -> None:
    clear()


def by_name(spans: list[Any], name: str) -> Any:
    (span,) = [s for s in spans if s.name == name]
    return span


async def test_context_crosses_http_headers_between_two_services() -> None:
    back_tracer, front_tracer, user_tracer = get_tracer("stock"), get_tracer("gateway"), get_tracer("user")

    async def stock(request: web.Request) -> web.Response:
        with back_tracer.start_as_current_span("reserve", context=extract_headers(request.headers)):
            return web.json_response({"reserved": True})

    back = await start_service("stock", stock)

    async def gateway(request: web.Request) -> web.Response:
        with front_tracer.start_as_current_span("GET /order", context=extract_headers(request.headers)):
            async with aiohttp.ClientSession() as session, session.get(back.url, headers=inject_headers()) as r:
                return web.json_response(await r.json())

    front = await start_service("gateway", gateway)

    with user_tracer.start_as_current_span("click") as root:
        headers = inject_headers({"accept": "application/json"})
        assert headers["accept"] == "application/json", "existing headers are kept"
        assert TRACEPARENT.match(headers["traceparent"])
        assert int(headers["traceparent"][-2:], 16) & 1, "sampled: every span is recorded"
        async with aiohttp.ClientSession() as session, session.get(front.url, headers=headers) as r:
            assert await r.json() == {"reserved": True}

    trace_id = trace_id_of(root)
    spans = finished_spans(trace_id)
    assert {s.name for s in spans} == {"click", "GET /order", "reserve"}, "all three services share one trace id"
    click, order, reserve = by_name(spans, "click"), by_name(spans, "GET /order"), by_name(spans, "reserve")
    assert click.parent is None
    assert order.parent.span_id == click.context.span_id
    assert reserve.parent.span_id == order.context.span_id
    assert order.start_time <= reserve.start_time, "the sync call starts inside the order"
    assert reserve.end_time <= order.end_time, "the sync call ends inside the order"

    rows = span_rows(spans)
    assert [(r.service, r.name, r.depth) for r in rows] == [
        ("user", "click", 0),
        ("gateway", "GET /order", 1),
        ("stock", "reserve", 2),
    ]
    assert rows[0].start_ms == 0
    assert all(r.duration_ms >= 0 for r in rows)
    assert {r.trace_id for r in rows} == {f"{trace_id:032x}"}
    assert rows[2].parent_id == rows[1].span_id


async def test_context_crosses_a_message_envelope(broker: Broker, topic: str) -> None:
    producer, consumer = get_tracer("orders"), get_tracer("billing")
    async with broker.client(topic.replace("/", "-")) as client:
        await client.subscribe(topic, qos=1)
        with producer.start_as_current_span("place order") as sending:
            event = make_event("order.placed", {"n": 1}, traceparent=current_traceparent())
            await publish(client, topic, event)
        message = await asyncio.wait_for(client.messages.__anext__(), 5)

    received = decode(message.payload)
    assert received.traceparent == event.traceparent
    assert TRACEPARENT.match(received.traceparent or "")
    with consumer.start_as_current_span("bill", context=context_from_traceparent(received.traceparent)) as billing:
        pass
    assert trace_id_of(billing) == trace_id_of(sending)
    bill = by_name(finished_spans(trace_id_of(sending)), "bill")
    assert bill.parent.span_id == sending.get_span_context().span_id
    assert [(r.name, r.depth) for r in span_rows(finished_spans(trace_id_of(sending)))] == [("place order", 0), ("bill", 1)]


def test_no_current_span_means_no_traceparent_and_a_new_trace() -> None:
    assert current_traceparent() is None
    tracer = get_tracer("solo")
    with tracer.start_as_current_span("a", context=context_from_traceparent(None)) as a:
        pass
    with tracer.start_as_current_span("b", context=context_from_traceparent(None)) as b:
        pass
    assert trace_id_of(a) != trace_id_of(b), "without a traceparent each message starts its own trace"
    assert by_name(finished_spans(), "a").parent is None


def test_garbage_traceparent_starts_a_fresh_trace() -> None:
    with get_tracer("solo").start_as_current_span("x", context=context_from_traceparent("not-a-traceparent")) as span:
        pass
    assert span.get_span_context().is_valid
    assert by_name(finished_spans(), "x").parent is None


def test_clear_and_filter_by_trace() -> None:
    tracer = get_tracer("svc")
    with tracer.start_as_current_span("one") as one:
        pass
    with tracer.start_as_current_span("two"):
        pass
    assert len(finished_spans()) == 2
    assert [s.name for s in finished_spans(trace_id_of(one))] == ["one"]
    assert trace_id_of(finished_spans(trace_id_of(one))[0]) == trace_id_of(one), "works on finished spans too"
    clear()
    assert finished_spans() == []
    assert span_rows([]) == []


def test_span_rows_depth_and_order_with_a_missing_parent() -> None:
    tracer = get_tracer("svc")
    with tracer.start_as_current_span("root"):
        with tracer.start_as_current_span("child"):
            with tracer.start_as_current_span("grandchild"):
                pass
        with tracer.start_as_current_span("sibling"):
            pass
    spans = finished_spans()
    rows = span_rows(spans)
    assert [(r.name, r.depth) for r in rows] == [("root", 0), ("child", 1), ("grandchild", 2), ("sibling", 1)]
    assert [r.start_ms for r in rows] == sorted(r.start_ms for r in rows)
    # Only part of a trace (e.g. one service's spans): depth counts known ancestors only.
    partial = span_rows([s for s in spans if s.name in ("grandchild", "sibling")])
    assert [(r.name, r.depth) for r in partial] == [("grandchild", 0), ("sibling", 0)]


def test_span_rows_carry_the_span_kind() -> None:
    """A client span and the server span of the same call are told apart by their kind, not only their service."""
    tracer = get_tracer("svc")
    with tracer.start_as_current_span("plain"):
        with tracer.start_as_current_span("GET /x", kind=trace.SpanKind.CLIENT):
            with tracer.start_as_current_span("GET /{path}", kind=trace.SpanKind.SERVER):
                pass
    assert [(r.name, r.kind) for r in span_rows(finished_spans())] == [
        ("plain", "internal"),
        ("GET /x", "client"),
        ("GET /{path}", "server"),
    ]


def test_one_sdk_provider_for_every_tracer() -> None:
    from opentelemetry.sdk.trace import TracerProvider

    get_tracer("a")
    assert isinstance(trace.get_tracer_provider(), TracerProvider)
