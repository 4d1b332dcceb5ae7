"""A shared classroom broker: learners cannot see each other, and the course's clients do not notice.

The roster checks run anywhere. The isolation tests start a real Mosquitto with exactly
the files ``python -m helpers classroom`` writes (mosquitto.conf, passwd, acl), log in as
two learners (ada, grace) and the instructor, and look at what each one receives.
Mosquitto delivers in the order it routes, so "nothing arrived" is proven with a
sentinel: a message published *after* the forbidden one, on a topic the learner may
read, arrives, and nothing came before it.
"""

from __future__ import annotations

import asyncio
import csv
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from helpers.core import internals, mosquitto
from helpers.core.broker import Broker, BrokerError, ConnectRefused, SubscriptionRefused, _CourseClient, parse_mqtt_url
from helpers.core.receive import collect
from helpers.tools import classroom
from helpers.tools.classroom import Learner, RosterError, read_roster, write_classroom

try:
    mosquitto.find_mosquitto()
    mosquitto.find_mosquitto_passwd()
    HAVE_MOSQUITTO = True
except FileNotFoundError:
    HAVE_MOSQUITTO = False

needs_mosquitto = pytest.mark.skipif(not HAVE_MOSQUITTO, reason=mosquitto.INSTALL_HINT)

SENTINEL = b"--sentinel--"


# --- the roster ------------------------------------------------------------------------------------


def roster(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "roster.csv"
    path.write_text(text)
    return path


def test_roster_reads_usernames_and_optional_passwords(tmp_path: Path) -> None:
    path = roster(tmp_path, "\ufeffUsername,Password,name\nada,,Ada L\n\n# a comment\ngrace,correct-horse,G H\n")
    assert read_roster(path) == [Learner("ada", None, 2), Learner("grace", "correct-horse", 5)]
    assert read_roster(roster(tmp_path, "username\nada\n")) == [Learner("ada", None, 2)], "the password column is optional"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "is empty"),
        ("\n\n", "is empty"),
        ("username,password\n", "has a header but no learners"),
        ("name,password\nada,x\n", "has no 'username' column"),
        ("username\nada\ngrace\nAda\n", "line 4: username 'Ada' repeats line 2"),
        ("username\nb/x\n", "line 2: username 'b/x' has '/'"),
        ("username\nada\nc d\n", "line 3: username 'c d' has ' '"),
        ("username\na+b\n", "'+'"),
        ("username\na#b\n", "'#'"),
        ("username\nbob:1\n", "':'"),
        ("username\nal%40ce\n", "'%'"),
        ("username\n" + "x" * 65 + "\n", "65 characters"),
        ("username,password\n,secret99\n", "line 2: the username is empty"),
        ("username,password\nada,short\n", "line 2: the password of 'ada' must have at least 8 characters"),
        ("username\ninstructor\n", "is the instructor's account"),
    ],
)
def test_bad_rosters_are_refused_naming_the_line(tmp_path: Path, text: str, says: str) -> None:
    with pytest.raises(RosterError) as info:
        read_roster(roster(tmp_path, text))
    assert says in str(info.value)
    assert str(tmp_path / "roster.csv") in str(info.value), "the error names the file"


def test_every_problem_is_reported_at_once_and_nothing_is_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = roster(tmp_path, "username\nada\nada\nb/x\n")
    assert classroom.main([str(path), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "2 problem(s), nothing written" in err
    assert "line 3" in err
    assert "line 4" in err
    assert not (tmp_path / "out").exists()
    assert classroom.main([str(tmp_path / "missing.csv")]) == 1
    assert "no such roster file" in capsys.readouterr().err


# --- what the tool writes ------------------------------------------------------------------------


@needs_mosquitto
def test_written_files_hash_passwords_and_hand_out_urls(tmp_path: Path) -> None:
    learners = [Learner("ada", None, 2), Learner("grace", "p:ss w/rd%", 3)]
    written = write_classroom(learners, tmp_path / "room", port=18883)
    room = tmp_path / "room"
    passwords = {a.username: a.password for a in written.accounts}
    assert passwords["grace"] == "p:ss w/rd%", "given passwords kept"
    assert len(passwords["ada"]) >= 16, "missing ones random"
    assert passwords["ada"] != write_classroom(learners, tmp_path / "other", port=18883).accounts[0].password
    for name in ("mosquitto.conf", "passwd", "acl"):
        text = (room / name).read_text()
        assert not any(p in text for p in passwords.values()), f"{name} holds a plaintext password"
    assert [line.split(":", 1)[0] for line in (room / "passwd").read_text().splitlines()] == ["ada", "grace", "instructor"]
    assert "pattern readwrite course/%u/#" in (room / "acl").read_text()
    conf = (room / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf, "no anonymous clients"
    assert "listener 18883 127.0.0.1" in conf, "loopback by default"
    for private in ("passwd", "handout.csv"):
        assert stat.S_IMODE((room / private).stat().st_mode) == 0o600, f"{private} must be private to its owner"
    with (room / "handout.csv").open() as fh:
        rows = {row["username"]: row for row in csv.DictReader(fh)}
    assert set(rows) == {"ada", "grace", "instructor"}
    assert rows["instructor"]["role"] == "instructor"
    grace = parse_mqtt_url(rows["grace"]["mqtt_url"])
    assert (grace.username, grace.password, grace.host, grace.port) == ("grace", "p:ss w/rd%", "127.0.0.1", 18883)


@needs_mosquitto
def test_an_existing_classroom_is_not_overwritten(tmp_path: Path) -> None:
    learners = [Learner("ada", None, 2)]
    first = write_classroom(learners, tmp_path, port=18883)
    with pytest.raises(RosterError, match="already holds a classroom"):
        write_classroom(learners, tmp_path, port=18883)
    assert tmp_path.joinpath("handout.csv").read_text().count(first.accounts[0].password) == 2, "the hand-out is intact"
    assert write_classroom(learners, tmp_path, port=18883, force=True).accounts[0].password != first.accounts[0].password


def test_listening_everywhere_needs_the_name_learners_use(tmp_path: Path) -> None:
    with pytest.raises(RosterError, match="--public-host"):
        write_classroom([Learner("ada", None, 2)], tmp_path, host="0.0.0.0")
    with pytest.raises(RosterError, match="both --tls-cert and --tls-key"):
        write_classroom([Learner("ada", None, 2)], tmp_path, tls_cert=tmp_path / "cert.pem")


# --- a running classroom broker ------------------------------------------------------------------


def _private_folder() -> Path:
    """A folder Mosquitto can read even when we are root (pytest's tmp_path is private to root)."""
    return Path(tempfile.mkdtemp(prefix="classroom-test-"))


@pytest.fixture(scope="module")
def room() -> Iterator[dict[str, str]]:
    """Mosquitto running the tool's files for ada, grace and the instructor: username -> MQTT_URL."""
    if not HAVE_MOSQUITTO:
        pytest.skip(mosquitto.INSTALL_HINT)
    folder = _private_folder()
    try:
        port = mosquitto.free_port()
        written = write_classroom([Learner("ada", None, 2), Learner("grace", None, 3)], folder, port=port)
        mosquitto.readable_by_broker(folder, ["passwd", "acl", "data"])
        with mosquitto.serving(folder / "mosquitto.conf", port):
            yield written.urls
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
async def ada(room: dict[str, str]) -> AsyncIterator[Broker]:
    async with Broker(room["ada"], name="ada") as broker:
        yield broker


@pytest.fixture
async def grace(room: dict[str, str]) -> AsyncIterator[Broker]:
    async with Broker(room["grace"], name="grace") as broker:
        yield broker


@pytest.fixture
async def instructor(room: dict[str, str]) -> AsyncIterator[Broker]:
    async with Broker(room["instructor"], name="instructor") as broker:
        yield broker


async def until_sentinel(client: aiomqtt.Client) -> list[aiomqtt.Message]:
    """Everything that arrives before the sentinel (which must arrive within 5 s)."""
    got: list[aiomqtt.Message] = []
    async with asyncio.timeout(5):
        async for message in client.messages:
            if message.payload == SENTINEL:
                return got
            got.append(message)
    raise AssertionError("the subscription ended before the sentinel arrived")


@pytest.mark.broker
async def test_prefixing_is_transparent_and_the_instructor_sees_the_real_topic(ada: Broker, instructor: Broker) -> None:
    seen_by_spy: list[str] = []
    async with (
        ada.client("shop") as shop,
        ada.client("fulfilment") as consumer,
        instructor.client("observer", topic_prefix="") as observer,
    ):
        internals.on_receive(consumer, lambda m: seen_by_spy.append(m.topic))
        await consumer.subscribe("orders/#", qos=1)
        await observer.subscribe("course/#", qos=1)
        await shop.publish("orders/placed", b"order 1", qos=1)
        [got] = await collect(consumer, expected=1, timeout=5)
        [observed] = await collect(observer, expected=1, timeout=5)
    assert str(got.topic) == "orders/placed"
    assert got.topic.matches("orders/#")
    assert got.payload == b"order 1"
    assert seen_by_spy == ["orders/placed"], "a spy on paho's on_message sees the topic the code used too"
    assert str(observed.topic) == "course/ada/orders/placed", "on the wire the topic is under the learner's prefix"
    assert isinstance(consumer, _CourseClient), "Broker.client gives the course's client, which knows its wire id"
    assert (consumer.identifier, consumer.wire_identifier) == ("fulfilment", "ada:fulfilment")


@pytest.mark.broker
async def test_a_learner_cannot_read_another_learners_topics(ada: Broker, grace: Broker) -> None:
    """Mosquitto 2.0's acl_file grants the SUBSCRIBE but checks read access on delivery: nothing arrives."""
    async with grace.client("snoop", topic_prefix="") as snoop, ada.client("shop") as shop:
        await snoop.subscribe("course/ada/#", qos=1)
        await snoop.subscribe("#", qos=1)
        await shop.publish("orders/placed", b"ada's secret", qos=1)  # PUBACK: routed before the sentinel
        async with grace.client("own") as own:
            await own.publish("sentinel", SENTINEL, qos=1)
        assert [m.payload for m in await until_sentinel(snoop)] == [], "grace received ada's message"


@pytest.mark.broker
async def test_a_learner_cannot_publish_into_another_learners_topics(ada: Broker, grace: Broker) -> None:
    async with ada.client("fulfilment") as consumer, grace.client("vandal", topic_prefix="") as vandal:
        await consumer.subscribe("orders/#", qos=1)
        await vandal.publish("course/ada/orders/placed", b"forged by grace", qos=1)  # dropped: MQTT 3.1.1 cannot say no
        async with ada.client("shop") as shop:
            await shop.publish("orders/sentinel", SENTINEL, qos=1)
        assert [m.payload for m in await until_sentinel(consumer)] == [], "ada received grace's forged message"


@pytest.mark.broker
async def test_topics_outside_the_prefix_are_refused_with_a_clear_error(grace: Broker) -> None:
    async with grace.client("curious") as client:
        with pytest.raises(SubscriptionRefused) as info:
            await client.subscribe("$SYS/#", qos=1)
        assert "you can use only topics under course/grace/" in str(info.value)
        with pytest.raises(BrokerError, match="refused to publish to '\\$SYS/x'"):
            await client.publish("$SYS/x", b"x", qos=1)


@pytest.mark.broker
async def test_a_failure_in_the_suback_becomes_a_clear_error(grace: Broker, monkeypatch: pytest.MonkeyPatch) -> None:
    """Brokers whose ACL refuses at SUBSCRIBE time (Mosquitto's dynamic security, EMQX) answer 0x80."""

    async def refused(self: aiomqtt.Client, topic: object, *args: object, **kwargs: object) -> list[ReasonCode]:
        return [ReasonCode(PacketTypes.SUBACK, identifier=0x80)]

    client = grace.client("refused")
    monkeypatch.setattr(aiomqtt.Client, "subscribe", refused)
    with pytest.raises(SubscriptionRefused) as info:
        await client.subscribe("orders/#", qos=1)
    message = str(info.value)
    assert "the broker refused the subscription to 'orders/#' (course/grace/orders/# on the broker)" in message
    assert "you can use only topics under course/grace/" in message


async def test_wrong_password_and_anonymous_clients_are_refused(room: dict[str, str]) -> None:
    endpoint = parse_mqtt_url(room["ada"])
    where = f"{endpoint.host}:{endpoint.port}"
    with pytest.raises(ConnectRefused, match="refused the login: check the user name and password"):
        async with Broker(f"mqtt://ada:wrong-password@{where}", name="wrong").client("x"):
            pass
    with pytest.raises(ConnectRefused, match="refuses anonymous clients"):
        async with Broker(f"mqtt://{where}", name="anonymous").client("x"):
            pass


@pytest.mark.broker
async def test_shared_subscriptions_work_under_the_prefix(ada: Broker, instructor: Broker) -> None:
    async with (
        ada.client("worker-1") as one,
        ada.client("worker-2") as two,
        ada.client("jobs") as jobs,
        instructor.client("observer", topic_prefix="") as observer,
    ):
        await one.subscribe("$share/workers/jobs/#", qos=1)
        await two.subscribe("$share/workers/jobs/#", qos=1)
        await observer.subscribe("course/ada/jobs/#", qos=1)
        for i in range(6):
            await jobs.publish(f"jobs/{i}", str(i).encode(), qos=1)
        assert len(await collect(observer, expected=6, timeout=5)) == 6
        a, b = await collect(one, idle=0.3, timeout=3), await collect(two, idle=0.3, timeout=3)
    assert sorted(str(m.topic) for m in a + b) == [f"jobs/{i}" for i in range(6)], "each job once, topic without prefix"
    assert a, "the group split the work: the first member got none"
    assert b, "the group split the work: the second member got none"


@pytest.mark.broker
async def test_will_and_unsubscribe_use_the_prefix(ada: Broker) -> None:
    async with ada.client("watcher") as watcher:
        await watcher.subscribe("status/#", qos=1)
        dying = ada.client("dying", will=aiomqtt.Will("status/dying", b"gone", qos=1))
        async with dying:
            sock = internals.paho_of(dying).socket()
            assert isinstance(sock, socket.socket)
            sock.shutdown(socket.SHUT_RDWR)  # no DISCONNECT: the broker sends the will
            with pytest.raises(aiomqtt.MqttError):
                await dying.messages.__anext__()
        [will] = await collect(watcher, expected=1, timeout=5)
        assert (str(will.topic), will.payload) == ("status/dying", b"gone")
        await watcher.unsubscribe("status/#")
        await watcher.subscribe("other", qos=1)
        async with ada.client("talker") as talker:
            await talker.publish("status/x", b"after unsubscribe", qos=1)
            await talker.publish("other", SENTINEL, qos=1)
        assert await until_sentinel(watcher) == []


@pytest.mark.broker
async def test_two_learners_can_use_the_same_client_name(ada: Broker, grace: Broker) -> None:
    """Client ids are global on a broker: without the user's prefix, grace's "consumer" would kick ada's out."""
    async with ada.client("consumer") as mine, grace.client("consumer") as theirs:
        for client, owner in ((mine, "ada"), (theirs, "grace")):
            await client.subscribe("ping", qos=1)
            await client.publish("ping", owner.encode(), qos=1)
            [message] = await collect(client, expected=1, timeout=5)
            assert message.payload == owner.encode(), f"{owner}'s client was disconnected or got the other's message"


def test_mosquitto_classroom_runs_a_command_as_a_learner(capsys: pytest.CaptureFixture[str]) -> None:
    if not HAVE_MOSQUITTO:
        pytest.skip(mosquitto.INSTALL_HINT)
    check = (
        "import os, sys; from helpers.core.broker import parse_mqtt_url\n"
        "e = parse_mqtt_url(os.environ['MQTT_URL']); urls = os.environ['MQTT_CLASSROOM_URLS']\n"
        "sys.exit(0 if e.username == 'ada' and e.password and 'grace=mqtt://grace:' in urls and 'instructor=' in urls else 1)"
    )
    env_path = os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])
    os.environ["PYTHONPATH"], saved = env_path, os.environ.get("PYTHONPATH")
    try:
        assert mosquitto.main(["--classroom", "--", sys.executable, "-c", check]) == 0
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved
    out = capsys.readouterr().out
    assert "[mosquitto] mqtt://ada:***@127.0.0.1:" in out
    assert "classroom: ada, grace, instructor" in out
    assert mosquitto.main(["--nope", "--", "true"]) == 2


# --- TLS -----------------------------------------------------------------------------------------


@pytest.fixture
def tls_room() -> Iterator[tuple[str, int, Path]]:
    """A classroom whose learners connect with mqtts:// to a self-signed certificate: (ada's URL, TLS port, cert)."""
    if not HAVE_MOSQUITTO or shutil.which("openssl") is None:
        pytest.skip("needs mosquitto and openssl")
    folder = _private_folder()
    try:
        cert, key = folder / "cert.pem", folder / "key.pem"
        made = subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        port, tls_port = mosquitto.free_port(), mosquitto.free_port()
        written = write_classroom(
            [Learner("ada", None, 2)], folder, port=port, tls_cert=cert, tls_key=key, tls_port=tls_port,
            learner_cafile=str(cert),
        )  # fmt: skip
        conf = (folder / "mosquitto.conf").read_text()
        assert f"listener {port} 127.0.0.1" in conf
        assert f"listener {tls_port} 127.0.0.1\ncertfile {cert}" in conf
        mosquitto.readable_by_broker(folder, ["passwd", "acl", "data", "key.pem", "cert.pem"])
        with mosquitto.serving(folder / "mosquitto.conf", port):
            yield written.urls["ada"], tls_port, cert
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.broker
async def test_learners_connect_with_mqtts_and_the_classroom_ca(tls_room: tuple[str, int, Path]) -> None:
    url, tls_port, cert = tls_room
    assert url.startswith("mqtts://ada:")
    assert url.endswith(f":{tls_port}?cafile={cert}")
    async with Broker(url, name="tls") as broker, broker.client("tls") as client:
        assert broker.url.startswith("mqtts://ada:***@127.0.0.1:")
        await client.subscribe("secure", qos=1)
        await client.publish("secure", b"over TLS", qos=1)
        [message] = await collect(client, expected=1, timeout=5)
        assert (str(message.topic), message.payload) == ("secure", b"over TLS")
    untrusted = f"mqtts://ada:x@127.0.0.1:{tls_port}"  # the system CAs do not know a self-signed certificate
    with pytest.raises(ConnectRefused, match="certificate verify failed"):
        async with Broker(untrusted, name="untrusted").client("x"):
            pass
