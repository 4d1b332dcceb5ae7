"""Chains of synchronous services: gateway -> product -> inventory, or N hops of "work".

Every service here does the same three things, which is what a synchronous hop is:

1. continue the caller's trace (the W3C ``traceparent`` header) in a SERVER span;
2. do its own work (``work_s`` seconds, standing in for a database read);
3. call the next service and *wait* for it, then answer its own caller.

Step 3 is the whole point of the lessons: while the next service thinks, this one is
stuck holding its caller's request. How the wait is guarded (timeout, breaker,
retries) lives in :class:`Downstream`, and can be changed while the chain runs:

    shop = await start_http_shop()
    shop.product.next.timeout_s = 0.2
    shop.product.next.breaker = CircuitBreaker()
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from opentelemetry.trace import SpanKind, Status, StatusCode
from tenacity import AsyncRetrying

from helpers.core.http import Handler, Service, start_service
from helpers.core.resilience import CircuitBreaker, CircuitOpenError, ServiceError, call_with_retries, get_json
from helpers.core.tracing import extract_headers, get_tracer, inject_headers


class Downstream:
    """A caller's connection to one downstream service, with its guards.

    ``timeout_s`` (None = wait forever), an optional ``breaker`` and an optional tenacity
    ``retry`` policy are plain attributes: change them while the chain runs. Each
    attempt is a CLIENT span whose context goes out in the request headers, so the
    next service's spans nest under it. The aiohttp session (and its connection pool
    of ``pool_limit`` connections) is created on first use inside the running loop.
    """

    def __init__(  # noqa: PLR0913  learner-facing: lessons 01-02 set these knobs
        self,
        caller: str,
        url: str,
        *,
        timeout_s: float | None = None,
        breaker: CircuitBreaker | None = None,
        retry: AsyncRetrying | None = None,
        pool_limit: int = 100,
    ) -> None:
        self.caller, self.url = caller, url.rstrip("/")
        self.timeout_s, self.breaker, self.retry = timeout_s, breaker, retry
        self.pool_limit = pool_limit
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self.pool_limit)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def _attempt(self, path: str) -> Any:
        tracer = get_tracer(self.caller)
        with tracer.start_as_current_span(f"GET {path}", kind=SpanKind.CLIENT):
            return await get_json(self.session, self.url + path, timeout_s=self.timeout_s, headers=inject_headers())

    async def get(self, path: str) -> Any:
        """GET ``path`` on the downstream service under the current guards; JSON back."""
        breaker = self.breaker

        def once() -> Any:
            return breaker.call(lambda: self._attempt(path)) if breaker else self._attempt(path)

        return await (call_with_retries(once, self.retry) if self.retry else once())

    async def aclose(self, *_: object) -> None:
        """Close the connection pool (called when the owning service stops)."""
        if self._session is not None and not self._session.closed:
            await self._session.close()

    def __repr__(self) -> str:
        return f"<Downstream {self.caller} -> {self.url} timeout={self.timeout_s} breaker={self.breaker is not None}>"


def failure_status(exc: BaseException) -> tuple[int, str]:
    """Map a failed downstream call to the status this hop answers, and why."""
    if isinstance(exc, asyncio.TimeoutError):
        return 504, "timed out"
    if isinstance(exc, CircuitOpenError):
        return 503, "circuit open (not called)"
    if isinstance(exc, ServiceError):
        return 502, f"answered {exc.status}"
    return 502, f"{type(exc).__name__}"


@dataclass
class Node:
    """One service in a chain: its own work, and the service it waits on next."""

    name: str
    work_s: float = 0.05
    next: Downstream | None = None
    service: Service | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        if self.service is None:
            raise RuntimeError(f"{self.name} is not started")
        return self.service.url


Respond = Callable[[web.Request, Any], dict[str, Any]]


def traced(service: str) -> Callable[[Handler], Handler]:
    """Decorator: run an aiohttp handler inside a SERVER span of ``service`` that
    continues the caller's trace (read from the ``traceparent`` request header).

    A 5xx answer marks the span as an error, so failures stand out in a waterfall.
    """
    tracer = get_tracer(service)

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def handle(request: web.Request) -> web.StreamResponse:
            route = request.match_info.route.resource.canonical if request.match_info.route.resource else request.path
            ctx = extract_headers(request.headers)
            with tracer.start_as_current_span(f"{request.method} {route}", context=ctx, kind=SpanKind.SERVER) as span:
                response = await handler(request)
                if response.status >= 500:
                    span.set_status(Status(StatusCode.ERROR, f"HTTP {response.status}"))
                return response

        return handle

    return wrap


def node_app(node: Node, route: str, next_path: Callable[[web.Request], str], respond: Respond) -> web.Application:
    """An aiohttp app for ``node``: trace, work, call next (if any), answer."""

    @traced(node.name)
    async def handle(request: web.Request) -> web.Response:
        if node.work_s > 0:
            await asyncio.sleep(node.work_s)
        answer = None
        if node.next is not None:
            try:
                answer = await node.next.get(next_path(request))
            except (TimeoutError, CircuitOpenError, ServiceError, aiohttp.ClientError) as exc:
                status, why = failure_status(exc)
                return web.json_response({"error": f"{node.name}: next service {why}"}, status=status)
        return web.json_response(respond(request, answer))

    app = web.Application()
    app.router.add_get(route, handle)
    if node.next is not None:
        app.on_cleanup.append(node.next.aclose)
    return app


async def start_node(node: Node, route: str, next_path: Callable[[web.Request], str], respond: Respond) -> Node:
    """Start ``node`` as a service named after it (replacing an old one of that name)."""
    node.service = await start_service(node.name, node_app(node, route, next_path, respond))
    return node


# --- the HTTP shop of lessons 01-02: gateway -> product -> inventory ---------------

CATALOG = {"42": ("espresso cup", 9.5), "7": ("teapot", 24.0), "3": ("coffee grinder", 59.0)}
STOCK = {"42": 17, "7": 0, "3": 4}


@dataclass
class HttpShop:
    """The three services of lessons 01-02, and the knobs between them.

    (The event-driven shop of lessons 03-04 is :class:`helpers.pubsub.shop.EventShop`.)
    """

    gateway: Node
    product: Node
    inventory: Node

    @property
    def url(self) -> str:
        """Where a user's request enters: the gateway."""
        return self.gateway.url

    @property
    def nodes(self) -> list[Node]:
        return [self.gateway, self.product, self.inventory]


def _stock(request: web.Request, _: Any) -> dict[str, Any]:
    item = request.match_info["item"]
    return {"item": item, "in_stock": STOCK.get(item, 0)}


def _product(request: web.Request, stock: Any) -> dict[str, Any]:
    item = request.match_info["item"]
    name, price = CATALOG.get(item, ("unknown item", 0.0))
    return {"item": item, "name": name, "price": price, "in_stock": stock["in_stock"]}


def _passthrough(_: web.Request, answer: Any) -> dict[str, Any]:
    return {**answer, "via": "gateway"}


async def start_http_shop(*, work_s: float = 0.02, timeout_s: float | None = None) -> HttpShop:
    """Start inventory, product and gateway (in that order, so each knows the next URL).

    ``work_s`` is each service's own work; ``timeout_s`` guards both internal calls
    (None: no timeout at all, the naive default of many HTTP clients).
    """
    inventory = await start_node(Node("inventory", work_s), "/stock/{item}", str, _stock)
    product = Node("product", work_s, Downstream("product", inventory.url, timeout_s=timeout_s))
    await start_node(product, "/products/{item}", lambda r: f"/stock/{r.match_info['item']}", _product)
    gateway = Node("gateway", work_s, Downstream("gateway", product.url, timeout_s=timeout_s))
    await start_node(gateway, "/products/{item}", lambda r: f"/products/{r.match_info['item']}", _passthrough)
    return HttpShop(gateway, product, inventory)


# --- N hops of pure work: latency adds up ----------------------------------------


@dataclass
class Chain:
    """``hop1 -> hop2 -> ... -> hopN``; a GET of ``/work`` at :attr:`url` visits every hop."""

    nodes: list[Node]
    path: str = "/work"

    @property
    def url(self) -> str:
        """The first hop's base URL."""
        return self.nodes[0].url

    def __len__(self) -> int:
        return len(self.nodes)


def _depth(_: web.Request, answer: Any) -> dict[str, Any]:
    return {"hops": 1 + (answer["hops"] if answer else 0)}


async def start_chain(hops: int, *, work_s: float = 0.05, prefix: str = "hop") -> Chain:
    """Start ``hops`` services, each doing ``work_s`` of work and then calling the next."""
    if hops < 1:
        raise ValueError(f"a chain needs at least one hop, got {hops}")
    nodes: list[Node] = []
    next_down: Downstream | None = None
    for i in range(hops, 0, -1):  # last hop first: each one needs the next one's URL
        node = Node(f"{prefix}{i}", work_s, next_down)
        await start_node(node, "/work", lambda _: "/work", _depth)
        next_down = Downstream(f"{prefix}{i - 1}", node.url)  # how the previous hop will call this one
        nodes.insert(0, node)
    return Chain(nodes)


async def stop_chain(chain: Chain | HttpShop) -> None:
    """Stop every service of a chain or shop (their connection pools close with them)."""
    for node in chain.nodes:
        if node.service is not None:
            await node.service.stop()
