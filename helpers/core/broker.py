"""An MQTT broker for the lessons: embedded (rumqttd, via iotcore) or real (MQTT_URL).

Learners should not need to install anything, so by default we start an embedded
broker bound to 127.0.0.1 on a free port: rumqttd, a Rust MQTT broker that the
``iotcore`` package ships as a wheel and runs in a child process of the kernel (the
child exits when the kernel does). It behaves like Mosquitto in everything the lessons
rely on: persistent sessions queue for offline clients, unacknowledged QoS 1 messages
are redelivered on resume, ``$share/...`` subscriptions split work, keepalive is
enforced and a silent client's will is sent (tests/test_broker_conformance.py proves
each on both brokers). It is stricter than Mosquitto in one way the course respects:
a client must acknowledge QoS 1 messages in the order they arrived.

Setting ``MQTT_URL=mqtt://[user:pass@]host:port`` points every notebook at a real broker
(Mosquitto, EMQX, HiveMQ) instead, with no code change (``mqtts://`` for TLS).

On a shared classroom broker (``python -m helpers classroom``) every learner may use only
topics under ``course/<username>/``. When MQTT_URL carries a user name, the course's
clients put every topic there and take it off again on the way in, so a notebook that
publishes to ``orders/placed`` works unchanged on a laptop and on the classroom broker.

    async with mqtt_broker() as broker:
        async with broker.client("sensor") as client:
            await client.publish("temp", b"21.5", qos=1)
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import socket
import ssl
import uuid
from dataclasses import dataclass
from functools import cache
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import aiomqtt

from helpers.core import internals
from helpers.core.net import CLASSROOM_ROOT, free_port

CONNECT_TIMEOUT_S = 5.0
"""A broker that does not answer within this many seconds is reported, never waited on."""

KEEPALIVE_S = 30
"""Seconds between keepalive pings. Must be > 0: rumqttd never answers a CONNECT with keepalive 0."""

MAX_PAYLOAD_BYTES = 1 << 20
"""The embedded broker's payload limit (rumqttd's default is 20 KiB). The course's messages
carry references, never image bytes (claim check), so 1 MiB leaves wide room; a larger
publish closes the publisher's connection, which :class:`BrokerError` then explains."""

EMBEDDED_START_TIMEOUT_S = 10.0

NOT_IN_TOPICS = frozenset("/+#")
"""Characters a user name cannot have when it becomes a topic level (wildcards and the separator)."""

_running: dict[str, Broker] = {}


class BrokerError(RuntimeError):
    """The broker could not be configured, started or reached; the message says why."""


class ConnectRefused(BrokerError, aiomqtt.MqttError):
    """A client got no CONNACK in time. Also an ``aiomqtt.MqttError``, so code that
    handles connection errors the aiomqtt way keeps working."""


class SubscriptionRefused(BrokerError, aiomqtt.MqttError):
    """The broker answered a SUBSCRIBE with "failure" (0x80): its ACL does not let this user read there.

    aiomqtt returns the failure code as if it were a granted QoS, so without this check a
    refused subscription looks like a working one that never receives anything.
    """


@dataclass(frozen=True)
class Endpoint:
    """Where a broker listens and how to log in to it."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: bool = False
    """``mqtts://``: the connection is TLS, checked against ``cafile`` or the system's CAs."""
    cafile: str | None = None

    @property
    def url(self) -> str:
        """The URL with any password hidden, safe to print in a notebook."""
        user = quote(self.username, safe="") if self.username else ""
        auth = f"{user}:***@" if self.password else (f"{user}@" if user else "")
        query = f"?cafile={quote(self.cafile)}" if self.cafile else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{auth}{self.host}:{self.port}{query}"

    @property
    def topic_prefix(self) -> str:
        """``course/<username>/`` when the URL names a user, else ``""``.

        A classroom broker's ACL lets each learner read and write only there
        (``pattern readwrite course/%u/#``); the course client adds and removes it.
        """
        if not self.username:
            return ""
        if NOT_IN_TOPICS & set(self.username):
            raise BrokerError(
                f"the user name {self.username!r} in MQTT_URL cannot become a topic level "
                "(it has '/', '+' or '#'); ask for a user name of letters, digits, '.', '_' or '-'"
            )
        return f"{CLASSROOM_ROOT}/{self.username}/"


URL_HINT = "expected mqtt://[user:pass@]host[:port] (or mqtts://...[?cafile=PATH] for TLS), e.g. mqtt://127.0.0.1:1883"


def parse_mqtt_url(url: str) -> Endpoint:
    """Turn ``mqtt[s]://[user:pass@]host[:port][?cafile=PATH]`` into an :class:`Endpoint`, or say what is wrong.

    ``mqtts://`` (port 8883 unless given) checks the broker's certificate against the
    system's CAs, or against ``?cafile=PATH`` for a classroom's own (self-signed) CA.
    """
    text = url.strip()
    hint = URL_HINT
    shown = _redacted(text)  # errors end up in notebooks and CI logs: never with the password
    if "://" not in text:
        raise BrokerError(f"MQTT_URL {shown!r} has no scheme; {hint}")
    parts = urlsplit(text)
    if parts.scheme not in ("mqtt", "tcp", "mqtts"):
        raise BrokerError(f"MQTT_URL scheme {parts.scheme!r} is not supported (only mqtt:// and mqtts://); {hint}")
    tls = parts.scheme == "mqtts"
    if not parts.hostname:
        raise BrokerError(f"MQTT_URL {shown!r} has no host; {hint}")
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError as exc:
        raise BrokerError(f"MQTT_URL {shown!r} has a bad port ({exc}); {hint}") from None
    if parts.path not in ("", "/"):
        raise BrokerError(f"MQTT_URL {shown!r} has an unexpected path or query; {hint}")
    cafile = None
    if parts.query:
        query = parse_qs(parts.query, keep_blank_values=True)
        if not tls or set(query) != {"cafile"} or len(query["cafile"]) != 1 or not query["cafile"][0]:
            raise BrokerError(f"MQTT_URL {shown!r} has an unexpected path or query (only mqtts:// takes ?cafile=PATH); {hint}")
        cafile = query["cafile"][0]
        if not os.path.isfile(cafile):
            raise BrokerError(
                f"MQTT_URL names cafile={cafile!r}, which is not a file; give the path of the broker's CA certificate; {hint}"
            )
    return Endpoint(
        host=parts.hostname,
        port=port,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls=tls,
        cafile=cafile,
    )


def _redacted(url: str) -> str:
    """``url`` with the password, if any, replaced by ``***``."""
    return re.sub(r"^([^:/?#]*://[^:@/?#]*):[^/?#]*@", r"\1:***@", url)


@cache
def _tls_context(cafile: str | None) -> ssl.SSLContext:
    """A client TLS context that checks the broker's certificate and host name (loaded once per CA file)."""
    try:
        return ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise BrokerError(f"cannot load the CA certificate {cafile!r} named in MQTT_URL: {exc}") from None


class Broker:
    """A running broker (embedded or external) and a factory for named clients.

    Use ``async with mqtt_broker() as broker`` in scripts and tests; in a notebook,
    ``broker = await start_broker()`` in one cell and ``await broker.stop()`` at the end.
    """

    def __init__(self, url: str | None = None, name: str = "default", *, embedded: bool = False) -> None:
        self.name = name
        if embedded and url:
            raise BrokerError("pass either a url or embedded=True, not both")
        self._url = None if embedded else (url if url is not None else os.environ.get("MQTT_URL") or None)
        self.endpoint: Endpoint | None = parse_mqtt_url(self._url) if self._url else None
        self._embedded: Any = None  # the iotcore.Broker while it runs
        self.started_in_s: float | None = None
        """How long the embedded broker took to accept connections (None for an external one)."""

    @property
    def embedded(self) -> bool:
        """True when the course starts the broker itself (no MQTT_URL)."""
        return self._url is None

    @property
    def kind(self) -> str:
        """A label for tables and plots: which broker answered."""
        return "embedded rumqttd" if self.embedded else f"external ({self.endpoint.host if self.endpoint else '?'})"

    @property
    def url(self) -> str:
        """Where the broker listens (password hidden)."""
        if self.endpoint is None:
            raise BrokerError("the broker is not started yet; use 'async with mqtt_broker()' or start_broker()")
        return self.endpoint.url

    @property
    def supports_shared_subscriptions(self) -> bool:
        """Whether ``$share/GROUP/topic`` splits messages among a group's members.

        rumqttd and every real broker the course targets (Mosquitto, EMQX, HiveMQ) do;
        kept as a property so a lesson can say which design it runs. Caveat (measured, see
        tests/test_broker_conformance.py): on rumqttd a member that dies holding an
        unacknowledged message strands it, so work that must survive a crash uses one
        subscription + a worker pool there.
        """
        return True

    async def start(self) -> Broker:
        """Start the embedded broker, or check the external one answers within 5 s."""
        previous = _running.get(self.name)
        if previous is not None and previous is not self:
            await previous.stop()
        if self.embedded:
            await self._start_embedded()
        await self.ping()
        _running[self.name] = self
        return self

    async def _start_embedded(self) -> None:
        """Start rumqttd (iotcore) on a free 127.0.0.1 port; retry if another program took the port first."""
        try:
            from iotcore import Broker as IotCoreBroker
        except ImportError as exc:
            raise BrokerError(
                f"the embedded MQTT broker needs the iotcore package ({exc}): run 'make lab' or 'pip install -e .'"
            ) from None
        loop = asyncio.get_running_loop()
        problem = "no attempt made"
        for _attempt in range(3):
            port = free_port()  # iotcore cannot bind port 0: pick one, and retry on a race
            broker = IotCoreBroker(port=port, listen="127.0.0.1", max_payload_size=MAX_PAYLOAD_BYTES)
            began = loop.time()
            try:
                await asyncio.to_thread(broker.start, EMBEDDED_START_TIMEOUT_S)  # blocks ~0.1-0.2 s: not on the loop
            except OSError as exc:  # the port was taken between free_port() and the bind
                problem = f"port {port} is busy ({exc})"
                continue
            except RuntimeError as exc:  # rumqttd aborts (exit -6) when its bind loses that race: try another port
                problem = f"the broker process failed on port {port}: {exc}"
                continue
            self._embedded, self.started_in_s = broker, loop.time() - began
            self.endpoint = Endpoint("127.0.0.1", port)
            return
        raise BrokerError(f"the embedded MQTT broker did not start after 3 attempts: {problem}")

    async def stop(self) -> None:
        """Stop the embedded broker (external brokers are left running). Safe to call twice."""
        if self._embedded is not None:
            broker, self._embedded = self._embedded, None
            await asyncio.to_thread(broker.stop)
        if _running.get(self.name) is self:
            del _running[self.name]

    async def __aenter__(self) -> Broker:
        return await self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    def client(
        self, name: str | None = None, *, clean_session: bool = True, topic_prefix: str | None = None, **kwargs: Any
    ) -> aiomqtt.Client:
        """An aiomqtt client whose MQTT client id is ``name``.

        The same name plus ``clean_session=False`` resumes the same persistent session,
        which is what lets a consumer pick up messages sent while it was away. A client
        that gets no CONNACK raises :class:`ConnectRefused` saying why that may be.

        When MQTT_URL names a user (a classroom broker), topics and the client id get that
        user's prefix on the wire and lose it on the way in (see :class:`_CourseClient`);
        ``topic_prefix=""`` turns that off (an instructor's observer, a test of the ACL).
        """
        if self.endpoint is None:
            raise BrokerError("the broker is not started yet; use 'async with mqtt_broker()' or start_broker()")
        if self.embedded and self._embedded is None:  # not an MqttError: a reconnecting client stops trying here
            raise BrokerError(f"the embedded broker at {self.endpoint.url} was stopped; start it again to connect")
        keepalive = kwargs.setdefault("keepalive", KEEPALIVE_S)
        if not keepalive or keepalive <= 0:
            raise BrokerError(
                f"keepalive must be > 0 seconds, got {keepalive!r}: a broker may never answer a CONNECT without one"
            )
        kwargs.setdefault("timeout", CONNECT_TIMEOUT_S)
        if self.endpoint.tls and "tls_context" not in kwargs and "tls_params" not in kwargs:
            kwargs["tls_context"] = _tls_context(self.endpoint.cafile)
        prefix = self.endpoint.topic_prefix if topic_prefix is None else topic_prefix
        will = kwargs.get("will")
        if will is not None:
            kwargs["will"] = dataclasses.replace(will, topic=to_broker_topic(prefix, will.topic))
        name = name or f"client-{uuid.uuid4().hex[:8]}"
        # Client ids are global on a broker, and a second client with the same id disconnects
        # the first: on a shared broker two learners' "consumer" would keep kicking each other
        # out. ':' cannot be in a classroom user name, so "ada:consumer" cannot collide.
        owner = f"{self.endpoint.username}:" if self.endpoint.username and prefix else ""
        client = _CourseClient(
            self,
            prefix,
            owner,
            self.endpoint.host,
            self.endpoint.port,
            identifier=owner + name,
            username=self.endpoint.username,
            password=self.endpoint.password,
            clean_session=clean_session,
            **kwargs,
        )
        _no_nagle(client)
        internals.quick_acks(client)
        return client

    async def end_sessions(self, *client_ids: str, quietly: bool = False) -> None:
        """Drop the persistent sessions of ``client_ids`` (a clean-session connect ends one, MQTT 3.1.1 section
        3.1.2.4): at the end of a run nobody resumes them, and a broker keeps queueing for a session it keeps.
        ``quietly``: a broker that is gone already has nothing to end."""
        for client_id in client_ids:
            try:
                async with self.client(client_id, clean_session=True):
                    pass
            except (aiomqtt.MqttError, OSError, TimeoutError):
                if not quietly:
                    raise

    async def ping(self) -> float:
        """Round-trip one QoS 1 message through the broker; return seconds, or raise BrokerError."""
        try:
            return await asyncio.wait_for(self._round_trip(), CONNECT_TIMEOUT_S)
        except (TimeoutError, aiomqtt.MqttError, OSError) as exc:
            timed_out = isinstance(exc, asyncio.TimeoutError)
            reason = f"no answer within {CONNECT_TIMEOUT_S:g} s" if timed_out else str(exc) or type(exc).__name__
            where = self.endpoint.url if self.endpoint else "?"
            fix = "" if self.embedded else " Is it running? Unset MQTT_URL to use the embedded broker."
            raise BrokerError(f"cannot reach the MQTT broker at {where}: {reason}.{fix}") from None

    async def _round_trip(self) -> float:
        loop = asyncio.get_running_loop()
        topic = f"helpers/ping/{uuid.uuid4().hex}"
        client = self.client()
        try:
            async with client:
                await client.subscribe(topic, qos=1)
                start = loop.time()
                await client.publish(topic, b"ping", qos=1)
                async for _ in client.messages:
                    return loop.time() - start
        except asyncio.CancelledError:
            # Timed out (often while waiting for CONNACK): aiomqtt leaves that socket
            # registered with the loop, and when the broker finally hangs up its callback
            # fails with an "Exception in callback" log. Close it now; no-op if already closed.
            internals.close_socket(client)
            raise
        raise BrokerError("the broker closed the ping subscription without a message")


def to_broker_topic(prefix: str, topic: str) -> str:
    """``topic`` as the broker sees it: under ``prefix``, ``$share/GROUP/`` kept in front.

    Other ``$`` topics (``$SYS/...``) are left alone: they are the broker's, never a
    learner's, and a classroom broker refuses them with a clear error rather than the
    client quietly subscribing to an empty ``course/ada/$SYS/...``.
    """
    if not prefix:
        return topic
    if topic.startswith("$share/"):
        parts = topic.split("/", 2)
        if len(parts) == 3 and parts[2]:
            return f"$share/{parts[1]}/{prefix}{parts[2]}"
        return topic  # malformed: the broker's refusal names it
    if topic.startswith("$"):
        return topic
    return prefix + topic


class _CourseClient(aiomqtt.Client):
    """An aiomqtt client that says what to check when the broker refuses it, and stays in its lane.

    A broker that ignores a CONNECT (wrong credentials on some brokers, keepalive 0 on
    rumqttd, a firewall) leaves aiomqtt with a bare "Operation timed out"; a refused
    SUBSCRIBE comes back as a "granted QoS" of 128. Both become errors that say why.

    On a classroom broker (``prefix`` is ``course/<user>/``) every topic the code names is
    put under the prefix on the way out (publish, subscribe, unsubscribe, will) and taken
    off received messages before anyone sees them, including spies chained on paho's
    ``on_message``: ``message.topic`` reads ``orders/placed`` as on a private broker.
    """

    def __init__(self, broker: Broker, prefix: str, owner: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._course_broker = broker
        self.topic_prefix = prefix
        """What this client puts in front of every topic on the wire (``""``: nothing)."""
        self._owner = owner
        if prefix:
            internals.paho_of(self).message_callback_add(f"{prefix}#", _strip_prefix(prefix))

    @property
    def identifier(self) -> str:
        """The client id the code asked for (the broker sees it with the user's prefix, see :attr:`wire_identifier`)."""
        wire = self.wire_identifier
        return wire[len(self._owner) :] if self._owner and wire.startswith(self._owner) else wire

    @property
    def wire_identifier(self) -> str:
        """The client id the broker sees: ``ada:consumer`` on a classroom broker."""
        return super().identifier

    async def __aenter__(self) -> _CourseClient:
        try:
            await super().__aenter__()
        except aiomqtt.MqttError as exc:
            broker = self._course_broker
            where = broker.endpoint.url if broker.endpoint else "?"
            hint = (
                "is the broker still running (did a cell stop it)?"
                if broker.embedded
                else "is it running, and are the user name and password in MQTT_URL right?"
            )
            if _login_refused(exc):
                hint = "the broker refused the login: check the user name and password in MQTT_URL" + (
                    "" if broker.endpoint and broker.endpoint.username else " (this broker refuses anonymous clients)"
                )
            internals.close_socket(self)
            raise ConnectRefused(
                f"client {self.identifier!r} could not connect to the MQTT broker at {where}: {exc}; {hint}"
            ) from None
        return self

    async def subscribe(
        self,
        /,
        topic: Any,
        qos: int = 0,
        options: Any = None,
        properties: Any = None,
        *args: Any,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Any:
        """Subscribe as aiomqtt does (a filter, ``(filter, qos)`` or a list of them), under the prefix.

        Raises :class:`SubscriptionRefused` when the broker answers "failure" for any filter.
        """
        asked = [topic] if isinstance(topic, str) else [topic[0]] if isinstance(topic, tuple) else [t[0] for t in topic]
        if isinstance(topic, str):
            wire: Any = to_broker_topic(self.topic_prefix, topic)
        elif isinstance(topic, tuple):
            wire = (to_broker_topic(self.topic_prefix, topic[0]), *topic[1:])
        else:
            wire = [(to_broker_topic(self.topic_prefix, t[0]), *t[1:]) for t in topic]
        outside = [f for f in asked if not self._inside(f)]
        if outside:  # Mosquitto's acl_file grants it and then delivers nothing: say so now
            raise SubscriptionRefused(self._refusal("refused to subscribe to", outside[0]))
        granted = await super().subscribe(wire, qos, options, properties, *args, timeout=timeout, **kwargs)
        refused = [f for f, code in zip(asked, granted, strict=False) if _failed(code)]
        if refused:
            raise SubscriptionRefused(self._refusal("the broker refused the subscription to", refused[0]))
        return granted

    def _inside(self, topic: str) -> bool:
        """Whether ``topic`` lands under this client's prefix (always, without one).

        Only ``$`` topics other than ``$share`` escape the prefix, and a classroom
        broker's ACL denies them: Mosquitto (2.0, ``acl_file``) even grants such a
        subscription and then silently delivers nothing, so the client refuses it itself.
        """
        return not self.topic_prefix or to_broker_topic(self.topic_prefix, topic).startswith((self.topic_prefix, "$share/"))

    def _refusal(self, what: str, topic: str) -> str:
        """``what`` happened to ``topic`` (as the code wrote it), and why: the rule of a classroom broker."""
        endpoint = self._course_broker.endpoint
        wire = to_broker_topic(self.topic_prefix, topic)
        shown = repr(topic) if wire == topic else f"{topic!r} ({wire} on the broker)"
        if endpoint is not None and endpoint.username:
            own = f"{CLASSROOM_ROOT}/{endpoint.username}/"
            return (
                f"{what} {shown}: on a classroom broker you can use only topics "
                f"under {own} (the course adds that prefix for you; other learners' topics and $SYS are off limits)"
            )
        return f"{what} {shown}: the broker's access control does not let this client use it"

    async def unsubscribe(
        self, /, topic: str | list[str], properties: Any = None, *args: Any, timeout: float | None = None, **kwargs: Any
    ) -> None:
        """Unsubscribe as aiomqtt does, under the prefix."""
        wire = (
            to_broker_topic(self.topic_prefix, topic)
            if isinstance(topic, str)
            else [to_broker_topic(self.topic_prefix, t) for t in topic]
        )
        await super().unsubscribe(wire, properties, *args, timeout=timeout, **kwargs)

    async def publish(  # noqa: PLR0913  aiomqtt's Client.publish signature, mirrored
        self,
        /,
        topic: str,
        payload: Any = None,
        qos: int = 0,
        retain: bool = False,
        properties: Any = None,
        *args: Any,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        """Publish as aiomqtt does, under the prefix.

        A classroom broker drops a publish its ACL denies without a word (MQTT 3.1.1 has no
        way to say no); the prefix is what keeps a learner's publishes where they may go,
        and a ``$`` topic that would escape it is refused here, loudly.
        """
        if not self._inside(topic):
            raise BrokerError(self._refusal("refused to publish to", topic))
        await super().publish(
            to_broker_topic(self.topic_prefix, topic), payload, qos, retain, properties, *args, timeout=timeout, **kwargs
        )


def _login_refused(exc: aiomqtt.MqttError) -> bool:
    """Whether a CONNACK said "bad user name or password" / "not authorized" (3.1.1 codes 4, 5; 5.0 codes 134, 135)."""
    code = getattr(exc, "rc", None)
    value = getattr(code, "value", code)
    return value in (4, 5, 134, 135)


def _failed(code: object) -> bool:
    """Whether a SUBACK entry says "failure": paho gives a ReasonCode (value 0x80), older code an int."""
    value = getattr(code, "value", code)
    return isinstance(value, int) and value >= 0x80


def _strip_prefix(prefix: str) -> Any:
    """A paho topic callback that takes ``prefix`` off a received message, then hands it on.

    paho calls a topic callback *instead of* ``on_message``, so it looks ``on_message`` up
    at call time: whatever was chained on later (aiomqtt's queue, the course's spies)
    sees the message with the topic the code subscribed to.
    """

    def strip(paho: Any, userdata: Any, message: Any) -> None:
        topic = message.topic
        if topic.startswith(prefix):
            message.topic = topic[len(prefix) :].encode()
        handler = paho.on_message
        if handler is not None:
            handler(paho, userdata, message)

    return strip


def _no_nagle(client: aiomqtt.Client) -> None:
    """Send small MQTT packets at once (TCP_NODELAY), as asyncio and most brokers do.

    paho leaves Nagle's algorithm on; with delayed ACKs a small packet written right
    after another (a PUBACK, then a reply) then waits ~40 ms, which would add a fake
    40-90 ms to every request/reply or chained-message measurement in the course.
    """

    def nodelay(c: Any, userdata: Any, sock: Any) -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):  # not a TCP socket (unix/websocket transport)
            pass

    internals.on_socket_open(client, nodelay)


def mqtt_broker(url: str | None = None, name: str = "default", *, embedded: bool = False) -> Broker:
    """A broker to use with ``async with``: ``url``, else MQTT_URL if set, else embedded.

    ``embedded=True`` starts the embedded broker whatever MQTT_URL says (benchmarks compare the two).
    """
    return Broker(url, name=name, embedded=embedded)


async def start_broker(url: str | None = None, name: str = "default") -> Broker:
    """Start (or restart) the notebook's broker; re-running the cell replaces the old one."""
    return await Broker(url, name=name).start()
