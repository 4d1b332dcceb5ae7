"""Every place the course touches a third-party library's private names, in one module.

The course needs a few things that aiomqtt and paho-mqtt do not expose publicly.
Each is a small function here, with why we need it and the version it was checked
against, so an upgrade breaks one file, in one obvious place, and nothing else in
``helpers`` reaches past a leading underscore. A test (tests/test_internals.py) runs
every function here against the pinned versions.

Checked against: aiomqtt 2.5.1 (``Client._client`` is its paho client), paho-mqtt 2.2.0.
"""

from __future__ import annotations

import socket
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


def on_receive(client: aiomqtt.Client, callback: Any) -> None:
    """Run ``callback(paho_message)`` for every PUBLISH the client receives, before aiomqtt queues it.

    paho's ``on_message`` is public; aiomqtt sets it to its own queueing callback, so we chain.
    """
    paho = paho_of(client)
    queue_it = paho.on_message

    def chained(c: Any, userdata: Any, message: Any) -> None:
        callback(message)
        if queue_it is not None:
            queue_it(c, userdata, message)

    paho.on_message = chained


def on_puback(client: aiomqtt.Client, callback: Any) -> None:
    """Run ``callback(mid)`` just before the client sends a PUBACK.

    Both paths go through paho's private ``_send_puback``: the automatic ack on receipt
    (the default) and :func:`send_ack` (manual acks). Lab checks use it to see whether a
    message was acknowledged before its work was done, on any broker.
    """
    paho = paho_of(client)
    send = paho._send_puback  # noqa: SLF001 - the one place every PUBACK passes through

    def spied(mid: int) -> Any:
        callback(mid)
        return send(mid)

    setattr(paho, "_send_puback", spied)  # noqa: B010 - swapped on this one client only


def quick_acks(client: aiomqtt.Client) -> None:
    """Acknowledge received TCP segments at once (Linux ``TCP_QUICKACK``), re-armed after every read.

    A broker that leaves Nagle's algorithm on (rumqttd; Mosquitto without
    ``set_tcp_nodelay``) holds its second small packet to a client until the client's TCP
    acknowledges the first, and Linux delays that acknowledgement by ~40 ms. A request and
    its reply over MQTT then took 44 ms instead of 0.5 ms (measured). The kernel clears
    ``TCP_QUICKACK`` after a while, so it is set again after each read of paho's socket,
    through paho's private ``_sock_recv``. A no-op where the option does not exist (macOS).
    """
    option = getattr(socket, "TCP_QUICKACK", None)
    if option is None:
        return
    paho = paho_of(client)
    recv = paho._sock_recv  # noqa: SLF001 - every read of the broker's bytes passes here

    def recv_and_ack(bufsize: int) -> bytes:
        data: bytes = recv(bufsize)
        sock = paho.socket()
        if isinstance(sock, socket.socket):  # not a websocket or TLS wrapper without the option
            try:
                sock.setsockopt(socket.IPPROTO_TCP, option, 1)
            except OSError:  # closed meanwhile
                pass
        return data

    setattr(paho, "_sock_recv", recv_and_ack)  # noqa: B010 - swapped on this one client only


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
