"""Every place the course touches a third-party library's private names, in one module.

The course needs a few things that aiomqtt, paho-mqtt and amqtt do not expose publicly.
Each is a small function here, with why we need it and the version it was checked
against, so an upgrade breaks one file, in one obvious place, and nothing else in
``helpers`` reaches past a leading underscore. A test (tests/test_internals.py) runs
every function here against the pinned versions.

Checked against: aiomqtt 2.5.1 (``Client._client`` is its paho client), paho-mqtt
2.2.0, amqtt 0.12.1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import aiomqtt
    import paho.mqtt.client as paho_mqtt


def paho_of(client: aiomqtt.Client) -> paho_mqtt.Client:
    """The paho client inside an aiomqtt client.

    aiomqtt 2.5 keeps it in ``Client._client`` and has no public accessor; we need it for
    manual acknowledgements, TCP_NODELAY and closing a half-open socket.
    """
    paho: paho_mqtt.Client = client._client  # noqa: SLF001 - the only way to reach paho in aiomqtt 2.5
    return paho


def set_manual_ack(client: aiomqtt.Client) -> None:
    """Acknowledge QoS 1 messages only when :func:`send_ack` is called.

    aiomqtt acknowledges on receipt; paho's public ``manual_ack_set`` switches that off.
    """
    paho_of(client).manual_ack_set(True)


def acks_manually(client: aiomqtt.Client) -> bool:
    """True once :func:`set_manual_ack` was applied (paho keeps the switch in ``_manual_ack``)."""
    return bool(getattr(paho_of(client), "_manual_ack", False))


def send_ack(client: aiomqtt.Client, mid: int, qos: int) -> None:
    """Send the PUBACK for message ``mid`` (paho's public ``ack``; reached through paho)."""
    paho_of(client).ack(mid, qos)


def replace_ack(client: aiomqtt.Client, ack: Any) -> None:
    """Swap paho's ``ack`` for ``ack(mid, qos)``: lessons use it to "pull the plug" just
    before a PUBACK leaves, which is the moment at-least-once delivery is about."""
    setattr(paho_of(client), "ack", ack)  # noqa: B010 - a method swapped on one instance, on purpose


def close_socket(client: aiomqtt.Client) -> None:
    """Close the socket of a connection attempt that was cut off by a timeout.

    aiomqtt 2.5 leaves that socket registered with the event loop; when the broker later
    hangs up, the loop's callback fails with an "Exception in callback" log. paho's
    ``_sock_close`` is idempotent (a no-op when already closed).
    """
    paho_of(client)._sock_close()  # noqa: SLF001 - no public way to drop a half-open socket


def on_socket_open(client: aiomqtt.Client, callback: Any) -> None:
    """Run ``callback(paho, userdata, sock)`` when the socket opens, before any chained one."""
    paho = paho_of(client)
    previous = paho.on_socket_open

    def chained(c: Any, userdata: Any, sock: Any) -> None:
        callback(c, userdata, sock)
        if previous is not None:
            previous(c, userdata, sock)

    paho.on_socket_open = chained


def amqtt_port(broker: Any, listener: str = "default") -> int:
    """The TCP port an amqtt 0.12 broker bound (we ask for port 0, so the OS picks one).

    amqtt keeps its asyncio servers in ``Broker._servers[name].instance``.
    """
    server = broker._servers[listener].instance  # noqa: SLF001 - amqtt 0.12 does not report the port
    port: int = server.sockets[0].getsockname()[1]
    return port


def amqtt_connected(broker: Any, client_id: str) -> bool:
    """True while amqtt 0.12 still holds an open connection for ``client_id``.

    amqtt closes a connection asynchronously; its registry is ``Broker._sessions``
    (client id -> (Session, handler)) and a session's state machine says when it is done.
    """
    sessions = broker._sessions  # noqa: SLF001 - amqtt 0.12 has no public session registry
    return client_id in sessions and sessions[client_id][0].transitions.state != "disconnected"
