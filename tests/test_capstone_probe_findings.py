"""The defects an independent hostile probe found in lesson 07's reference services, each pinned by a test.

The services are started as the lesson starts them (:func:`helpers.capstone.pipeline.start_pipeline`, one
process), as in tests/test_capstone_hostile.py: every hostile request is answered with a 4xx problem+json (or a
fast 503 with ``Retry-After``) within ``ANSWER_S``, and a normal upload still works afterwards.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import logging
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest
from PIL import Image

from helpers.capstone import images, upload
from helpers.capstone.pipeline import ReferenceSystem
from helpers.capstone.wire import UploadAnswer
from helpers.core.loop_lag import LoopLag
from helpers.core.problems import PROBLEM_BASE, PROBLEM_JSON
from helpers.core.waiting import until

pytestmark = pytest.mark.broker

WORK = 0.1
ANSWER_S = 2.0
"""Every hostile request is answered within this, and so is a normal photo while large uploads are in flight."""


async def assert_healthy(pipeline: ReferenceSystem) -> None:
    answer = await pipeline.post(images.sample_photo(), "after")
    assert answer.status == 202, answer.body
    assert answer.job_id is not None
    assert await pipeline.wait_finished([answer.job_id], 30)
    assert pipeline.state(answer.job_id) == "succeeded"
    assert not pipeline.crashed()


def assert_problem(status: int, content_type: str | None, body: dict[str, object], expected: int, slug: str) -> None:
    assert status == expected, f"expected HTTP {expected}, got {status}: {body}"
    assert content_type is not None
    assert content_type.startswith(PROBLEM_JSON), content_type
    assert body["status"] == expected, body
    assert body["title"], body
    assert body["detail"], body
    assert body["type"] == PROBLEM_BASE + slug, body


@dataclass(frozen=True)
class RawAnswer:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float

    @property
    def problem(self) -> dict[str, object]:
        return dict(json.loads(self.body))

    def assert_problem(self, expected: int, slug: str) -> None:
        assert_problem(self.status, self.headers.get("Content-Type"), self.problem, expected, slug)
        assert self.seconds < ANSWER_S, f"answered after {self.seconds:.2f} s"


async def raw_http(base_url: str, head: str, body: bytes = b"", *, wait_s: float = 10.0) -> RawAnswer:
    """Send ``head`` (CRLF line ends added) with a Content-Length for ``body``, then the body; read the answer."""
    url = urlsplit(base_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    began = time.perf_counter()
    try:
        writer.write(head.replace("\n", "\r\n").encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        await writer.drain()
        status_and_headers = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), wait_s)
        lines = status_and_headers.decode("latin-1").split("\r\n")
        headers = {name.strip(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:] if line)}
        answer = await asyncio.wait_for(reader.readexactly(int(headers.get("Content-Length", "0"))), wait_s)
        return RawAnswer(int(lines[0].split()[1]), headers, answer, time.perf_counter() - began)
    finally:
        writer.close()


def form_post(parts: Sequence[bytes]) -> tuple[str, bytes]:
    """A POST /images head and a multipart body of ``parts`` (each: part headers, blank line, content)."""
    body = b"".join(b"--B\r\n" + part + b"\r\n" for part in parts) + b"--B--\r\n"
    return "POST /images?user=mallory HTTP/1.1\nHost: 127.0.0.1\nContent-Type: multipart/form-data; boundary=B\n", body


def file_part(filename: str, data: bytes, extra: str = "") -> bytes:
    head = f'Content-Disposition: form-data; name="image"; filename="{filename}"\r\nContent-Type: image/jpeg\r\n{extra}\r\n'
    return head.encode() + data


# --- 1. a form part header line longer than aiohttp's 8190 bytes ------------------------------------

PART_HEADERS = {
    "a file name of 8,190 characters": (file_part("a" * 8190 + ".jpg", images.sample_photo()), "longer than 8190 bytes"),
    "a 20 KB extra part header": (file_part("a.jpg", images.sample_photo(), f"X-Pad: {'p' * 20_000}\r\n"), "8190"),
    "200 headers in one part": (file_part("a.jpg", images.sample_photo(), "X-Pad: p\r\n" * 200), "headers of a form part"),
}


@pytest.mark.parametrize("case", list(PART_HEADERS))
async def test_a_form_part_whose_headers_aiohttp_refuses_is_400_problem_json(pipeline: ReferenceSystem, case: str) -> None:
    part, says = PART_HEADERS[case]
    head, body = form_post([part])
    answer = await raw_http(pipeline.url, head, body)
    answer.assert_problem(400, "bad-form-part")  # was: 500 text/plain "Server got itself in trouble"
    detail = str(answer.problem["detail"])
    assert says in detail
    assert "short name" in detail
    assert len(detail) < 500, "the refused header line is not echoed back"
    assert pipeline.upload_service.published == 0
    await assert_healthy(pipeline)


async def test_a_long_file_name_under_the_line_limit_is_still_accepted(pipeline: ReferenceSystem) -> None:
    head, body = form_post([file_part("a" * 8000 + ".jpg", images.sample_photo())])
    answer = await raw_http(pipeline.url, head, body)
    assert answer.status == 202, answer.body


# --- 2. a form with thousands of parts --------------------------------------------------------------


async def test_a_form_with_thousands_of_fields_is_refused_at_once_without_stopping_the_loop(pipeline: ReferenceSystem) -> None:
    fields = [b'Content-Disposition: form-data; name="f"\r\n\r\n'] * 20_000
    head, body = form_post([*fields, file_part("a.jpg", images.sample_photo())])  # 1.2 MB: 6-13 s and a 408 before
    async with LoopLag() as lag:
        answer = await raw_http(pipeline.url, head, body)
    answer.assert_problem(400, "one-image-per-upload")
    assert f"more than {upload.MAX_FORM_PARTS} parts" in str(answer.problem["detail"])
    assert lag.longest < 0.5, f"the event loop stood still for {lag.longest:.2f} s"
    await assert_healthy(pipeline)


async def test_a_form_with_a_few_fields_beside_its_file_is_accepted(pipeline: ReferenceSystem) -> None:
    fields = [f'Content-Disposition: form-data; name="f{i}"\r\n\r\nvalue'.encode() for i in range(upload.MAX_FORM_PARTS - 1)]
    head, body = form_post([*fields, file_part("a.jpg", images.sample_photo())])
    answer = await raw_http(pipeline.url, head, body)
    assert answer.status == 202, answer.body


# --- 3. Content-Encodings the services do not decode ------------------------------------------------


def targets(pipeline: ReferenceSystem, extra: str) -> list[tuple[str, str]]:
    return [
        (pipeline.url, f"POST /images?user=mallory HTTP/1.1\nHost: 127.0.0.1\nContent-Type: image/jpeg\n{extra}"),
        (pipeline.storage_url, f"PUT /objects/ce/x HTTP/1.1\nHost: 127.0.0.1\nContent-Type: image/jpeg\n{extra}"),
    ]


@pytest.mark.parametrize("encoding", ["br", "zstd", "compress", "gzip, br"])
async def test_an_unsupported_content_encoding_is_415_naming_the_accepted_ones(pipeline: ReferenceSystem, encoding: str) -> None:
    for url, head in targets(pipeline, f"Content-Encoding: {encoding}\n"):
        answer = await raw_http(url, head, images.sample_photo())
        answer.assert_problem(415, "unsupported-encoding")  # was: 400 text/plain "Please install `Brotli`"
        detail = str(answer.problem["detail"])
        assert "gzip, deflate, identity" in detail
        assert encoding.rsplit(" ", 1)[-1] in detail
        assert answer.headers.get("Accept-Encoding") == "gzip, deflate, identity"
    await assert_healthy(pipeline)


ENCODED = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": zlib.compress,  # zlib-wrapped, as RFC 9110 means it
    "deflate, raw": lambda data: zlib.compress(data, wbits=-zlib.MAX_WBITS),  # what some clients send
    "gzip, gzip": lambda data: gzip.compress(gzip.compress(data)),
    "identity": lambda data: data,
}


@pytest.mark.parametrize("encoding", list(ENCODED))
async def test_the_accepted_encodings_are_decoded_by_upload_and_storage(pipeline: ReferenceSystem, encoding: str) -> None:
    photo = images.sample_photo()
    header = encoding.replace(", raw", "")
    for url, head in targets(pipeline, f"Content-Encoding: {header}\n"):
        answer = await raw_http(url, head, ENCODED[encoding](photo))
        assert answer.status in (200, 201, 202), answer.body
    assert pipeline.storage.read("ce/x") == photo


async def test_a_gzip_bomb_is_413_and_a_gzip_body_cut_short_is_400(pipeline: ReferenceSystem) -> None:
    bomb = gzip.compress(bytes(images.MAX_UPLOAD_BYTES + 1))
    cut = gzip.compress(images.sample_photo())[:-100]
    for url, head in targets(pipeline, "Content-Encoding: gzip\n"):
        (await raw_http(url, head, bomb)).assert_problem(413, "too-large")
        (await raw_http(url, head, cut)).assert_problem(400, "undecodable-body")
    await assert_healthy(pipeline)


# --- 4. concurrent retries with one Idempotency-Key ----------------------------------------------


def stored_originals(tmp_path: Path) -> list[Path]:
    return [path for path in tmp_path.rglob("originals/*") if path.is_file()]


@pytest.fixture(scope="module")
def large_png() -> bytes:
    """A 40 MP RGBA PNG in a few hundred KB: decoding it takes about a second (more on a busy machine)."""
    out = io.BytesIO()
    Image.new("RGBA", (7740, 5160), (90, 90, 90, 255)).save(out, "PNG", compress_level=1)
    return out.getvalue()


async def test_retries_racing_the_first_request_get_409_and_store_nothing(
    pipeline: ReferenceSystem, tmp_path: Path, large_png: bytes
) -> None:
    answers = await asyncio.gather(*(pipeline.post(large_png, "retrier", idempotency_key="key-1") for _ in range(6)))
    assert {answer.status for answer in answers} == {202, 409}, [(a.status, a.body) for a in answers]
    assert len({answer.job_id for answer in answers if answer.status == 202}) == 1, "one job, the others replay it"
    for answer in answers:
        if answer.status == 409:
            assert_problem(answer.status, answer.headers.get("Content-Type"), answer.body, 409, "key-in-flight")
            assert answer.headers.get("Retry-After") == str(upload.RETRY_AFTER_S)
            assert answer.seconds < ANSWER_S, "a retry is told at once, without decoding the image again"
    assert len(pipeline.upload_service.store) == 1
    assert len(stored_originals(tmp_path)) == 1, "a losing retry left no orphaned original"
    replay = await pipeline.post(large_png, "retrier", idempotency_key="key-1")
    assert replay.status == 202
    assert replay.headers.get("Idempotent-Replayed") == "true"
    assert replay.job_id == next(a.job_id for a in answers if a.status == 202)
    assert len(stored_originals(tmp_path)) == 1


async def test_a_key_whose_first_request_failed_is_free_again(pipeline: ReferenceSystem) -> None:
    photo = images.sample_photo()
    pipeline.storage.faults.down = True  # the original cannot be stored: 503, and no job
    failed = await pipeline.post(photo, "retrier", idempotency_key="key-2")
    assert_problem(failed.status, failed.headers.get("Content-Type"), failed.body, 503, "not-stored")
    pipeline.storage.faults.down = False
    retried = await pipeline.post(photo, "retrier", idempotency_key="key-2")
    assert retried.status == 202, retried.body
    refused = await pipeline.post(images.not_an_image(), "retrier", idempotency_key="key-3")
    assert refused.status == 415
    fixed = await pipeline.post(photo, "retrier", idempotency_key="key-3")  # a refused upload keeps nothing: the key is free
    assert fixed.status == 202, fixed.body


# --- 5. several large uploads at once ------------------------------------------------------------


async def test_large_uploads_past_the_queue_get_a_fast_503_and_a_normal_photo_is_not_held_up(
    pipeline: ReferenceSystem, large_png: bytes
) -> None:
    async def later_photo() -> UploadAnswer:
        await asyncio.sleep(0.05)  # after the large ones arrived (an ordering, not a timing bound)
        return await pipeline.post(images.sample_photo(), "normal")

    large = [pipeline.post(large_png, f"panorama{i}", timeout=60) for i in range(8)]
    *answers, photo = await asyncio.gather(*large, later_photo())
    assert photo.status == 202, photo.body
    assert photo.seconds < ANSWER_S, f"a normal photo waited {photo.seconds:.2f} s behind large uploads"
    shed = [answer for answer in answers if answer.status == 503]
    assert shed, "eight 40 MP uploads at once: more than the slots and the queue hold"
    assert sum(answer.status == 202 for answer in answers) >= images.IMAGE_WORK_SLOTS
    assert all(answer.status in (202, 503) for answer in answers), [(a.status, a.body) for a in answers]
    for answer in shed:
        assert_problem(answer.status, answer.headers.get("Content-Type"), answer.body, 503, "busy")
        assert answer.headers.get("Retry-After") == str(upload.RETRY_AFTER_S)
        assert answer.seconds < ANSWER_S, f"a shed upload waited {answer.seconds:.2f} s for its 503"
    await assert_healthy(pipeline)


# --- 6. an Expect header other than 100-continue ---------------------------------------------------


async def test_an_unknown_expect_is_417_problem_json_and_100_continue_still_works(pipeline: ReferenceSystem) -> None:
    for url, head in targets(pipeline, "Expect: weird\n"):
        answer = await raw_http(url, head, images.sample_photo())
        answer.assert_problem(417, "expectation-failed")  # was: 417 text/plain
        assert "100-continue" in str(answer.problem["detail"])
        assert answer.headers.get("Connection", "").lower() == "close"
    photo = images.sample_photo()
    async with aiohttp.ClientSession() as session:
        upload_url = f"{pipeline.url}/images?user=polite"
        async with session.post(upload_url, data=photo, expect100=True, headers={"Content-Type": "image/jpeg"}) as response:
            assert response.status == 202, await response.text()
        storage_url = f"{pipeline.storage_url}/objects/polite/x"
        async with session.put(storage_url, data=photo, expect100=True, headers={"Content-Type": "image/jpeg"}) as response:
            assert response.status == 201, await response.text()


# --- 7. a client that hangs up in the middle of its body --------------------------------------------


async def hang_up_mid_body(base_url: str, head: str) -> None:
    url = urlsplit(base_url)
    _, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write(head.replace("\n", "\r\n").encode() + b"Content-Length: 100000\r\n\r\n" + bytes(1000))
    await writer.drain()
    writer.close()
    await writer.wait_closed()


async def test_a_client_that_hangs_up_mid_body_is_no_server_error(
    pipeline: ReferenceSystem, caplog: pytest.LogCaptureFixture
) -> None:
    form_head, _ = form_post([])
    cases = [*targets(pipeline, ""), (pipeline.url, form_head)]
    to_upload = sum(url == pipeline.url for url, _ in cases)
    upload_stats = pipeline.upload_service.service.stats  # counts a request when it arrives, in_flight until it is answered
    before = upload_stats.requests
    stored_before = len(pipeline.storage.requests("client"))  # a Storage call is recorded once it was answered
    with caplog.at_level(logging.ERROR, logger="aiohttp.server"):
        for url, head in cases:
            await hang_up_mid_body(url, head)

        def handled() -> bool:
            storage_done = len(pipeline.storage.requests("client")) == stored_before + len(cases) - to_upload
            return upload_stats.requests == before + to_upload and not upload_stats.in_flight and storage_done

        assert await until(handled, 10, poll=0.01)
    errors = [record.getMessage() for record in caplog.records if record.name == "aiohttp.server"]
    assert not errors, f"a hang-up was logged as a server error (a traceback each): {errors}"  # was: 600 tracebacks
    await assert_healthy(pipeline)
