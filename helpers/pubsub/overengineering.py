"""When a queue is not worth it: a quick lookup done over HTTP vs squeezed through a broker.

Some interactions *need* an answer now and take milliseconds: look up a price,
check a password. Doing them over messaging means request/reply on top of pub/sub: a
request topic, a reply topic per caller, a correlation id to match answers to
questions, a timeout for answers that never come, and a broker to run and watch.
:func:`http_lookup` and :func:`mqtt_lookup` do the same lookup both ways so the cost
is measured, not argued. :data:`MOVING_PARTS` lists what each one makes you own.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import aiohttp
from aiohttp import web

from helpers.core.broker import Broker
from helpers.core.http import start_service
from helpers.core.lifecycle import running
from helpers.core.measure import Summary, time_calls
from helpers.core.messaging import Consumer, Event, decode, make_event, publish

PRICES = {"book": 12.5, "pen": 1.2, "lamp": 30.0}

MOVING_PARTS: list[dict[str, str]] = [
    {"concern": "who answers", "HTTP call": "the price service", "request/reply over MQTT": "the price service + a broker"},
    {
        "concern": "matching answer to question",
        "HTTP call": "the connection does it",
        "request/reply over MQTT": "correlation id + a reply topic per caller",
    },
    {"concern": "no answer", "HTTP call": "a timeout", "request/reply over MQTT": "a timeout + orphaned replies to ignore"},
    {
        "concern": "errors",
        "HTTP call": "status code back to the caller",
        "request/reply over MQTT": "an error message format + dead letters",
    },
    {"concern": "to run and monitor", "HTTP call": "1 service", "request/reply over MQTT": "1 service + 1 broker"},
]


async def http_lookup(n: int = 50) -> Summary:
    """Time ``n`` price lookups over a plain HTTP GET."""

    async def price(request: web.Request) -> web.Response:
        return web.json_response({"item": request.match_info["item"], "price": PRICES.get(request.match_info["item"])})

    routes = web.RouteTableDef()
    routes.get("/price/{item}")(price)
    service = await start_service(f"price-http-{uuid.uuid4().hex[:4]}", routes)
    try:
        async with aiohttp.ClientSession() as session:

            async def call() -> float:
                async with session.get(f"{service.url}/price/book") as response:
                    return (await response.json())["price"]

            return (await time_calls(call, n, timeout=2)).summary()
    finally:
        await service.stop()


async def mqtt_lookup(broker: Broker, topic: str, n: int = 50) -> Summary:
    """Time ``n`` price lookups done as request/reply through the broker."""
    requests, replies = f"{topic}/requests", f"{topic}/replies/{uuid.uuid4().hex[:6]}"
    waiting: dict[str, asyncio.Future[float]] = {}

    async with broker.client() as server, broker.client() as caller:

        async def answer(event: Event) -> None:
            reply = make_event("price.answered", {"price": PRICES.get(event.data["item"])}, source="/prices", id=uuid.uuid4().hex)
            body = {**reply.to_dict(), "correlationid": event.id}  # a CloudEvents extension attribute
            await server.publish(event.data["reply_to"], json.dumps(body).encode(), qos=1)

        async def route_replies(ready: asyncio.Event) -> None:
            await caller.subscribe(replies, qos=1)
            ready.set()
            async for message in caller.messages:
                body = json.loads(bytes(message.payload))
                future = waiting.pop(body.get("correlationid", ""), None)
                if future is not None and not future.done():  # a late or unknown reply is dropped here
                    future.set_result(decode(json.dumps(body)).data["price"])

        async def call() -> float:
            request = make_event("price.requested", {"item": "book", "reply_to": replies}, source="/shop")
            waiting[request.id] = asyncio.get_running_loop().create_future()
            await publish(caller, requests, request, qos=1)
            try:
                return await waiting[request.id]
            finally:
                waiting.pop(request.id, None)

        async with running(Consumer(server, requests, answer).run), running(route_replies):
            return (await time_calls(call, n, timeout=2)).summary()
