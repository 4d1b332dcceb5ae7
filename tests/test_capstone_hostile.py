"""Lesson 07's reference Upload and Storage under hostile input, started as the lesson starts them (one process).

Every case is either refused with a 4xx problem+json or processed; it is answered within
``ANSWER_S``; nothing answers 5xx; and the services are healthy after it (a normal upload
still gets 202 and is processed). The worst shapes that are accepted are measured: peak
growth of this process's memory (psutil) and how long the event loop stood still
(:class:`helpers.core.loop_lag.LoopLag`), with bounds wide enough for a busy 2-core machine.

Run on the embedded broker, or on Mosquitto with ``python -m helpers mosquitto -- pytest tests/test_capstone_hostile.py``.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import struct
import threading
import time
import zlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import psutil  # type: ignore[import-untyped]  # psutil ships no hints; types-psutil is not worth a pin
import pytest
from PIL import Image

from helpers.capstone import images, samples
from helpers.capstone.pipeline import ReferenceSystem, start_pipeline
from helpers.capstone.storage import StorageClient
from helpers.core import http
from helpers.core.broker import Broker
from helpers.core.loop_lag import LoopLag
from helpers.core.problems import PROBLEM_BASE, PROBLEM_JSON
from helpers.core.waiting import until

pytestmark = pytest.mark.broker

WORK = 0.1
"""About 0.2 s of Pillow work for a normal photo here."""
ANSWER_S = 2.0
"""Every hostile request is answered within this (a stalled body: the 1 s idle timeout, then the answer)."""


async def assert_healthy(pipeline: ReferenceSystem) -> None:
    """A normal upload after the case: 202 at once, processed, and no service or worker died."""
    answer = await pipeline.post(images.sample_photo(), "after")
    assert answer.status == 202, answer.body
    assert answer.seconds < ANSWER_S
    assert answer.job_id is not None
    assert await pipeline.wait_finished([answer.job_id], 30)
    assert pipeline.state(answer.job_id) == "succeeded"
    assert not pipeline.crashed()


def assert_problem(status: int, content_type: str | None, body: dict[str, object], expected: int, slug: str) -> None:
    assert status == expected, f"expected HTTP {expected}, got {status}: {body}"
    assert content_type is not None, content_type
    assert content_type.startswith(PROBLEM_JSON), content_type
    assert body["status"] == expected, body
    assert body["title"], body
    assert body["detail"], body
    assert body["type"] == PROBLEM_BASE + slug, body


# --- inputs -------------------------------------------------------------------------------------


def thin_png(width: int, height: int) -> bytes:
    """A valid 8-bit greyscale PNG of black rows, compressed a MiB at a time (1 x 39,999,999 is 78 KB)."""
    row = b"\x00" + bytes(width)
    per_block = max(1, (1 << 20) // len(row))
    squeeze = zlib.compressobj(6)
    pixels = bytearray()
    left = height
    while left:
        rows = min(per_block, left)
        pixels += squeeze.compress(row * rows)
        left -= rows
    pixels += squeeze.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = samples.png_chunk
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", bytes(pixels)) + chunk(b"IEND", b"")


def webp_declaring(width: int, height: int) -> bytes:
    """A 1x1 lossless WebP whose VP8L header is rewritten to declare ``width`` x ``height`` (34 bytes)."""
    out = io.BytesIO()
    Image.new("RGB", (1, 1)).save(out, "WEBP", lossless=True)
    data = bytearray(out.getvalue())
    at = data.index(b"VP8L") + 8
    assert data[at] == 0x2F, "a VP8L bitstream starts with its signature byte"
    bits = struct.unpack_from("<I", data, at + 1)[0] & ~((1 << 28) - 1)
    struct.pack_into("<I", data, at + 1, bits | (width - 1) | ((height - 1) << 14))
    return bytes(data)


def png_with_private_chunks(count: int) -> bytes:
    """A small valid PNG with ``count`` empty private chunks between its header and its image data."""
    plain = encoded((64, 48), "PNG")
    header_end = 8 + 12 + struct.unpack(">I", plain[8:12])[0]  # signature, then the IHDR chunk
    chunk = struct.pack(">I", 0) + b"prVt" + struct.pack(">I", zlib.crc32(b"prVt"))
    return plain[:header_end] + chunk * count + plain[header_end:]


def jpeg_with_scans(count: int) -> bytes:
    """A progressive JPEG whose last scan is repeated until it has ``count`` scans."""
    plain = encoded((256, 256), "JPEG", progressive=True)
    last_scan = plain.rindex(images.JPEG_START_OF_SCAN)
    extra = count - plain.count(images.JPEG_START_OF_SCAN)
    return plain[:-2] + plain[last_scan:-2] * extra + plain[-2:]


def encoded(size: tuple[int, int], fmt: str, mode: str = "RGB", **options: object) -> bytes:
    """A flat image of ``size`` in ``fmt``, fast to make (the cost is in decoding it)."""
    out = io.BytesIO()
    Image.new(mode, size, 90).save(out, fmt, **options)
    return out.getvalue()


# --- raw HTTP, for bodies no well-behaved client sends -----------------------------------------


@dataclass(frozen=True)
class RawAnswer:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float

    @property
    def problem(self) -> dict[str, object]:
        return dict(json.loads(self.body))


async def raw_http(base_url: str, head: str, parts: Sequence[bytes] = (), *, drip: bytes = b"", every: float = 0.3) -> RawAnswer:
    """Send ``head`` (request line and headers) and ``parts``, then stay connected and silent (or drip a byte
    every ``every`` s), and read the answer; the connection is closed only after the answer came (or 5 s)."""
    url = urlsplit(base_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    began = time.perf_counter()

    async def dripping() -> None:
        for byte in drip:
            await asyncio.sleep(every)
            writer.write(bytes([byte]))

    dripper = asyncio.create_task(dripping())
    try:
        writer.write(head.replace("\n", "\r\n").encode())
        for part in parts:
            writer.write(part)
        await writer.drain()
        status_and_headers = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
        lines = status_and_headers.decode("latin-1").split("\r\n")
        headers = {name.strip(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:] if line)}
        body = await asyncio.wait_for(reader.readexactly(int(headers.get("Content-Length", "0"))), 5.0)
        return RawAnswer(int(lines[0].split()[1]), headers, body, time.perf_counter() - began)
    finally:
        dripper.cancel()
        writer.close()


def upload_head(pipeline: ReferenceSystem, extra: str) -> str:
    return f"POST /images?user=mallory HTTP/1.1\nHost: 127.0.0.1\nContent-Type: image/jpeg\n{extra}\n"


def storage_head(pipeline: ReferenceSystem, extra: str) -> str:
    return f"PUT /objects/hostile/x HTTP/1.1\nHost: 127.0.0.1\nContent-Type: image/jpeg\n{extra}\n"


# --- measuring -----------------------------------------------------------------------------------


class PeakRss:
    """This process's peak resident memory above what it was at the start, sampled every 5 ms in a thread."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self.baseline = self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.baseline) / 2**20


# --- extreme shapes ------------------------------------------------------------------------------

REFUSED_SHAPES = {
    "1 x 39,999,999 PNG (inside the 40 MP budget)": (lambda: thin_png(1, 39_999_999), "image-shape"),
    "39,999,999 x 1 PNG": (lambda: thin_png(39_999_999, 1), "image-shape"),
    "a side one pixel over the cap, 2 rows": (lambda: images.decompression_bomb(images.MAX_SIDE + 1, 2), "image-shape"),
    "11:1, 2200 x 200": (lambda: images.decompression_bomb(2200, 200), "image-shape"),
    "16383 x 2441 WebP (40 MP, over WebP's budget)": (lambda: webp_declaring(16383, 2441), "too-many-pixels"),
}


@pytest.mark.parametrize("case", list(REFUSED_SHAPES))
async def test_an_extreme_shape_is_refused_from_its_header_at_once(pipeline: ReferenceSystem, case: str) -> None:
    make, slug = REFUSED_SHAPES[case]
    data = make()
    published = pipeline.upload_service.published
    with PeakRss() as rss:
        async with LoopLag() as lag:
            answers = await asyncio.gather(*(pipeline.post(data, f"mallory{i}") for i in range(4)))  # four at once
    for answer in answers:
        assert_problem(answer.status, answer.headers.get("Content-Type"), answer.body, 413, slug)
        assert answer.seconds < ANSWER_S, answer.seconds
    assert "refused before decoding" in str(answers[0].body["detail"])
    assert pipeline.upload_service.published == published, "a refused upload publishes nothing"
    assert rss.growth_mb < 150, f"refusing from the header costs no pixels, yet the process grew {rss.growth_mb:.0f} MB"
    assert lag.longest < 0.5, f"the event loop stood still for {lag.longest:.2f} s"
    await assert_healthy(pipeline)


COSTLY_TO_DECODE = {
    "a PNG of 100,000 empty private chunks (1.2 MB; 2.6 s to read)": lambda: png_with_private_chunks(100_000),
    "a PNG one chunk over the cap": lambda: png_with_private_chunks(images.MAX_PNG_CHUNKS - 1),
    "a progressive JPEG of 15,000 scans (~17 s to decode)": lambda: jpeg_with_scans(15_000),
    "a JPEG one scan over the cap": lambda: jpeg_with_scans(images.MAX_JPEG_SCANS + 1),
}
"""Small files whose structure costs seconds of decoding (an outside probe's finds); the byte and pixel limits
cannot see it, so the bytes are read for it before Pillow parses anything."""


@pytest.mark.parametrize("case", list(COSTLY_TO_DECODE))
async def test_a_structure_too_costly_to_decode_is_refused_at_once(pipeline: ReferenceSystem, case: str) -> None:
    data = COSTLY_TO_DECODE[case]()
    async with LoopLag() as lag:
        answers = await asyncio.gather(*(pipeline.post(data, f"mallory{i}") for i in range(4)))  # four at once
    for answer in answers:
        assert_problem(answer.status, answer.headers.get("Content-Type"), answer.body, 413, "costly-structure")
        assert answer.seconds < ANSWER_S, answer.seconds
    assert lag.longest < 0.5, f"the event loop stood still for {lag.longest:.2f} s"
    await assert_healthy(pipeline)


def test_the_structure_caps_leave_ordinary_images_alone() -> None:
    """At the caps, and a common progressive JPEG (about 10 scans): accepted."""
    assert images.inspect_upload(png_with_private_chunks(images.MAX_PNG_CHUNKS - 2)).format == "PNG"  # + IHDR, IEND
    progressive = encoded((640, 480), "JPEG", progressive=True)
    assert 5 <= progressive.count(images.JPEG_START_OF_SCAN) <= 20
    assert images.inspect_upload(progressive).format == "JPEG"
    assert images.inspect_upload(jpeg_with_scans(images.MAX_JPEG_SCANS)).format == "JPEG"


WORST_ACCEPTED = {
    "40 MP RGBA PNG (7740 x 5160)": ((7740, 5160), "PNG", "RGBA", {"compress_level": 1}),
    "40 MP JPEG (7740 x 5160)": ((7740, 5160), "JPEG", "RGB", {"quality": 10}),
    "16 MP WebP (4000 x 4000, WebP's budget)": ((4000, 4000), "WEBP", "RGB", {"quality": 1, "method": 0}),
    "10:1 at the side cap (10000 x 1000 PNG)": ((10_000, 1_000), "PNG", "L", {}),
}
"""The most expensive uploads the limits let through: the pixel budget, WebP's budget, the side and ratio caps."""
PEAK_GROWTH_LIMIT_MB = 1200
"""All four at once, two decoded by Upload and two processed at a time; measured +300-600 MB here (the old
code took +2.4-2.8 GB for one thin PNG alone). A few hundred MB per image, with room for a busy machine."""
ACCEPT_WORST_S = 8.0
"""Their 202s: each is decoded in full first (a 40 MP PNG: ~0.9 s on a quiet 2-core machine, ~3 s on a busy one),
two at a time, so the fourth waits for two others; the hostile cases above must answer within ``ANSWER_S``."""
LOOP_LAG_LIMIT_S = 1.0
"""Decoding and processing run in threads: the loop stands still only for GIL hand-overs (measured 0.05-0.3 s)."""


@pytest.fixture(scope="module")
def worst_accepted() -> dict[str, bytes]:
    return {name: encoded(size, fmt, mode, **options) for name, (size, fmt, mode, options) in WORST_ACCEPTED.items()}


async def test_the_worst_accepted_shapes_are_processed_in_bounded_memory_without_stopping_the_loop(
    pipeline: ReferenceSystem, worst_accepted: dict[str, bytes]
) -> None:
    with PeakRss() as rss:
        async with LoopLag() as lag:
            answers = await asyncio.gather(*(pipeline.post(data, "panorama") for data in worst_accepted.values()))
            for answer in answers:
                assert answer.status == 202, answer.body
                assert answer.seconds < ACCEPT_WORST_S, f"the 202 took {answer.seconds:.2f} s"
            job_ids = [answer.job_id for answer in answers if answer.job_id is not None]
            assert await pipeline.wait_finished(job_ids, 90)
    slowest = max(answer.seconds for answer in answers)
    print(f"\nworst accepted shapes, four at once: slowest 202 {slowest:.2f} s, ", end="")
    print(f"peak growth {rss.growth_mb:.0f} MB, loop lag {lag.longest:.3f} s")
    assert rss.growth_mb < PEAK_GROWTH_LIMIT_MB, f"the process grew {rss.growth_mb:.0f} MB"
    assert lag.longest < LOOP_LAG_LIMIT_S, f"the event loop stood still for {lag.longest:.2f} s"
    for (size, *_), job_id in zip(WORST_ACCEPTED.values(), job_ids, strict=True):
        status, body = await pipeline.status(job_id, follow=True)
        assert status == 200, body
        assert body["state"] == "succeeded", body
        assert f"{size[0]}x{size[1]}" in body["caption"], "the caption names the upload's size, not the working copy's"
    await assert_healthy(pipeline)


# --- bodies that do not decode, or never end ------------------------------------------------------


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_content_encoding_that_does_not_decode_is_400_on_upload_and_storage(
    pipeline: ReferenceSystem, encoding: str
) -> None:
    photo = images.sample_photo()
    extra = f"Content-Encoding: {encoding}\nContent-Length: {len(photo)}\n"
    for head in (upload_head(pipeline, extra), storage_head(pipeline, extra)):
        target = pipeline.url if head.startswith("POST") else pipeline.storage_url
        answer = await raw_http(target, head, [photo])
        assert_problem(answer.status, answer.headers.get("Content-Type"), answer.problem, 400, "undecodable-body")
        assert answer.seconds < ANSWER_S
        assert encoding in str(answer.problem["detail"])
    await assert_healthy(pipeline)


async def test_a_body_that_really_is_gzip_is_decoded_and_a_gzip_bomb_is_refused(pipeline: ReferenceSystem) -> None:
    async with aiohttp.ClientSession() as session:
        packed = gzip.compress(images.sample_photo())
        headers = {"Content-Encoding": "gzip", "Content-Type": "image/jpeg"}
        async with session.post(f"{pipeline.url}/images?user=zip", data=packed, headers=headers) as response:
            assert response.status == 202, await response.text()
        bomb = gzip.compress(bytes(images.MAX_UPLOAD_BYTES + 1))  # 8 KB that inflate past the byte limit
        async with session.post(f"{pipeline.url}/images?user=zip", data=bomb, headers=headers) as response:
            assert response.status in (400, 413), await response.text()
            assert response.content_type == PROBLEM_JSON
    await assert_healthy(pipeline)


async def test_a_chunked_body_that_grows_past_the_limit_is_413_on_upload_and_storage(pipeline: ReferenceSystem) -> None:
    async def endless() -> AsyncIterator[bytes]:  # no Content-Length: only counting while reading can stop it
        for _ in range(images.MAX_UPLOAD_BYTES // 65536 + 64):
            yield bytes(65536)

    async with aiohttp.ClientSession() as session:
        for method, url in (("POST", f"{pipeline.url}/images?user=chunky"), ("PUT", f"{pipeline.storage_url}/objects/big")):
            began = time.perf_counter()
            async with session.request(method, url, data=endless()) as response:
                body = await response.json(content_type=None)
                assert_problem(response.status, response.content_type, body, 413, "too-large")
            assert time.perf_counter() - began < ANSWER_S
    await assert_healthy(pipeline)


STALLED = {
    "a declared 1 MB body with 100 bytes sent": ("Content-Length: 1000000\n", [bytes(100)]),
    "a chunked body whose next chunk never comes": ("Transfer-Encoding: chunked\n", [b"64\r\n" + bytes(100) + b"\r\n"]),
}


@pytest.mark.parametrize("case", list(STALLED))
async def test_a_stalled_body_is_answered_408_within_the_idle_timeout(pipeline: ReferenceSystem, case: str) -> None:
    extra, parts = STALLED[case]
    for head, target in ((upload_head(pipeline, extra), pipeline.url), (storage_head(pipeline, extra), pipeline.storage_url)):
        answer = await raw_http(target, head, parts)
        assert_problem(answer.status, answer.headers.get("Content-Type"), answer.problem, 408, "body-timeout")
        assert http.BODY_IDLE_TIMEOUT_S * 0.9 <= answer.seconds < ANSWER_S, answer.seconds
        assert answer.headers.get("Connection", "").lower() == "close"
    await assert_healthy(pipeline)


async def test_a_body_dripped_a_byte_at_a_time_is_cut_off_at_the_total_timeout(
    pipeline: ReferenceSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http, "BODY_TOTAL_TIMEOUT_S", 1.2)  # the default is 10 s: the mechanism is the same
    answer = await raw_http(pipeline.url, upload_head(pipeline, "Content-Length: 1000\n"), drip=bytes(1000), every=0.2)
    assert_problem(answer.status, answer.headers.get("Content-Type"), answer.problem, 408, "body-timeout")
    assert "within 1.2 s" in str(answer.problem["detail"])
    assert 1.0 <= answer.seconds < 1.2 + ANSWER_S
    await assert_healthy(pipeline)


# --- multipart ------------------------------------------------------------------------------------


def form(*files: tuple[str, bytes], fields: dict[str, str] | None = None, multipart: bool = True) -> aiohttp.FormData:
    data = aiohttp.FormData(default_to_multipart=multipart)
    for name, value in (fields or {}).items():
        data.add_field(name, value)
    for filename, content in files:
        data.add_field("image", content, filename=filename, content_type="image/jpeg")
    return data


async def test_a_form_with_one_file_part_is_accepted_and_processed(pipeline: ReferenceSystem) -> None:
    photo = images.sample_photo()
    async with aiohttp.ClientSession() as session:
        sent = form(("photo.jpg", photo), fields={"comment": "from a browser form"})
        async with session.post(f"{pipeline.url}/images?user=browser", data=sent) as response:
            assert response.status == 202, await response.text()
            job_id = (await response.json())["job_id"]
    assert await pipeline.wait_finished([job_id], 30)
    assert pipeline.state(job_id) == "succeeded"


FORMS_REFUSED = {
    "a multipart form with no file": (0, True, "it has 0 file parts"),
    "a multipart form with two files": (2, True, "it has 2 file parts"),
    "a url-encoded form (no file can be in it)": (0, False, "a url-encoded form carries no file"),
}


@pytest.mark.parametrize("case", list(FORMS_REFUSED))
async def test_a_form_without_exactly_one_file_is_400_saying_what_to_send(pipeline: ReferenceSystem, case: str) -> None:
    files, multipart, reason = FORMS_REFUSED[case]
    photo = images.sample_photo()
    published = pipeline.upload_service.published
    async with aiohttp.ClientSession() as session:
        sent = form(*[(f"p{i}.jpg", photo) for i in range(files)], fields={"comment": "hi"}, multipart=multipart)
        async with session.post(f"{pipeline.url}/images?user=browser", data=sent) as response:
            body = await response.json(content_type=None)
            assert_problem(response.status, response.content_type, body, 400, "one-image-per-upload")
    assert reason in str(body["detail"])
    assert "exactly one file part" in str(body["detail"])
    assert "bytes as the body" in str(body["detail"])
    assert pipeline.upload_service.published == published
    await assert_healthy(pipeline)


# --- Storage keys whose metadata used to collide -------------------------------------------------


@pytest.mark.parametrize("order", [("x", "x.json/y"), ("x.json/y", "x")])
async def test_keys_whose_metadata_paths_collided_are_both_stored(pipeline: ReferenceSystem, order: tuple[str, str]) -> None:
    async with StorageClient(pipeline.storage_url) as storage:
        for key in order:
            await storage.put(key, key.encode(), "text/plain")
        for key in order:
            data, content_type, _ = await storage.get(key)
            assert (data, content_type) == (key.encode(), "text/plain")
    await assert_healthy(pipeline)


# --- a lost broker connection ----------------------------------------------------------------------


class CuttableLink:
    """A TCP proxy on 127.0.0.1 in front of the broker; ``cut()`` drops every connection through it at once."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port_behind = host, port
        self.links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self.accepted = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> CuttableLink:
        self._server = await asyncio.start_server(self._link, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.port_behind)
        except OSError:
            writer.close()
            return
        self.accepted += 1
        pair = (writer, up_writer)
        self.links.add(pair)
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True)
        finally:
            self.links.discard(pair)
            writer.close()
            up_writer.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.transport.abort()

    def cut(self) -> int:
        """Drop every connection (a reset, as when a broker or a network dies); returns how many."""
        pairs = list(self.links)
        for client_side, broker_side in pairs:
            client_side.transport.abort()
            broker_side.transport.abort()
        return len(pairs)


async def test_every_mqtt_client_reconnects_after_its_connection_is_cut(broker: Broker, tmp_path: Path) -> None:
    endpoint = broker.endpoint
    assert endpoint is not None
    if endpoint.tls:
        pytest.skip("the proxy forwards plain TCP; run this test against an mqtt:// broker")
    auth = f"{endpoint.username}:{endpoint.password}@" if endpoint.username else ""
    async with CuttableLink(endpoint.host, endpoint.port) as link:
        through = await Broker(f"mqtt://{auth}127.0.0.1:{link.port}", name=f"proxied-{link.port}").start()
        # shared=False on the embedded broker, as start_pipeline picks there: rumqttd strands a $share member's message
        pipeline = await start_pipeline(through, tmp_path, workers=2, work=WORK, shared=False if broker.embedded else None)
        try:
            first = await pipeline.post(images.sample_photo(), "before")
            assert first.job_id is not None
            assert await pipeline.wait_finished([first.job_id], 30)
            connected = len(link.links)
            assert connected >= 5, "Upload's publisher and listener, the processor, the notifier and the recorder"
            assert link.cut() == connected
            answer = await pipeline.post(images.sample_photo(), "after-cut")  # the publisher is reconnecting meanwhile
            assert answer.status == 202, answer.body
            assert answer.seconds < ANSWER_S
            job_id = answer.job_id
            assert job_id is not None
            assert await until(lambda: job_id in {note.job_id for note in pipeline.inbox.entries()}, 30, poll=0.02)
            assert await until(lambda: len(link.links) >= connected, 10, poll=0.02), "every client connected again"
            assert link.accepted >= 2 * connected
            assert pipeline.upload_service.publisher.connections == 2
            assert not pipeline.crashed()
            await assert_healthy(pipeline)
        finally:
            await pipeline.stop()
            await through.stop()
