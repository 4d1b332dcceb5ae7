"""What the Upload service takes in, before anything is stored: the body, the form, the decode lanes.

A learner's Upload (lab 07) and the reference one (lesson 07) read an upload the same way:
the raw bytes or the one file part of a ``multipart/form-data`` form, never past a byte
limit and never waiting on a stalled client (:func:`read_image_body`). Decoding to validate
is CPU-bound and costs up to hundreds of MB for a large image, so it runs in threads, a few
at a time, in two lanes: normal photos never wait behind large images, and a large image
that would only queue is answered ``503`` with ``Retry-After`` at once (:class:`DecodeSlots`).
"""

from __future__ import annotations

import asyncio

from aiohttp import BodyPartReader, hdrs, web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong

from helpers.capstone import images
from helpers.core.http import BodyClock, BodyRefused, BodyTooLarge, body_problem, content_codings, read_body, read_chunks
from helpers.core.jobkit.http import RETRY_AFTER_S
from helpers.core.problems import PROBLEM_BASE, problem

FORM_OVERHEAD = 64 * 1024
"""Room for a form's boundaries, part headers and small text fields on top of the image's byte limit."""
MAX_FORM_PARTS = 8
"""Parts a multipart form may have: the endpoint takes one file part, and skips a few text fields beside it (what
a browser form sends); a form with more is refused (400) before its other parts are parsed."""
LARGE_IMAGE_PIXELS = 4_000_000
"""An upload whose header declares more pixels than this (2000 x 2000) is a large one: decoding it takes a second
or more and hundreds of MB. Large and small uploads are decoded in separate lanes of
:data:`helpers.capstone.images.IMAGE_WORK_SLOTS` each, so a normal photo never waits behind a panorama."""
DECODE_QUEUE = 2
"""Large uploads that may wait for a decode slot of their lane; when its slots are busy and this many already
wait, the next large upload is answered ``503`` with ``Retry-After`` at once (load shedding), instead of waiting
seconds in a queue with no end."""


async def read_upload(request: web.Request, limit: int) -> bytes:
    """The uploaded bytes: the raw body, or the one file part of a ``multipart/form-data`` body (a browser form).

    Either way nothing is buffered past ``limit`` bytes and a stalled client is not waited
    for: :class:`helpers.core.http.BodyRefused` (413, 408 or 400) says what went wrong.
    """
    clock = BodyClock()
    if request.content_type == "multipart/form-data":
        if content_codings(request):  # a 415 for an unknown one, and a form is read as sent: no encoded forms
            raise _not_one_file("a form is sent without a Content-Encoding (its file part may be compressed itself)")
        return await _one_file_part(request, limit, clock)
    if request.content_type.startswith("multipart/"):
        raise _not_one_file(f"a {request.content_type} body is not a form")
    if request.content_type == "application/x-www-form-urlencoded":
        raise _not_one_file("a url-encoded form carries no file")
    return await read_body(request, limit, clock)


async def _one_file_part(request: web.Request, limit: int, clock: BodyClock) -> bytes:
    """The bytes of the form's only file part (a part with a file name, or any non-text part); text fields are skipped."""
    if request.content_length is not None and request.content_length > limit + FORM_OVERHEAD:
        raise BodyTooLarge(limit)
    files: list[bytes] = []
    seen = 0
    try:
        reader = await request.multipart()
        for parts in range(MAX_FORM_PARTS + 1):
            if (part := await clock.wait(reader.next())) is None:
                break
            if parts == MAX_FORM_PARTS:
                raise _not_one_file(f"it has more than {MAX_FORM_PARTS} parts; the image is all this endpoint takes")
            if not isinstance(part, BodyPartReader):
                raise _not_one_file("it has a nested multipart part")
            data = await read_chunks(part.read_chunk, limit - seen, clock)
            seen += len(data)
            if part.filename is not None or not part.headers.get(hdrs.CONTENT_TYPE, "text/plain").startswith("text/"):
                files.append(data)
            await asyncio.sleep(0)  # a part already received is parsed without waiting: let other requests run between
    except BadHttpMessage as exc:  # a part's header line over 8190 bytes (LineTooLong), too many headers in a part
        raise _bad_part_headers(exc) from None
    except (ValueError, RuntimeError, AssertionError) as exc:  # what aiohttp's multipart reader raises for a broken form
        raise _not_one_file(f"the form could not be read ({exc})") from None
    if len(files) != 1:
        raise _not_one_file(f"it has {len(files)} file parts")
    return files[0]


def _bad_part_headers(exc: BadHttpMessage) -> BodyRefused:
    """The 400 for a form part whose headers aiohttp's multipart reader refused; never echoes the (long) line."""
    if isinstance(exc, LineTooLong):
        why = f"a header line of a form part is longer than {exc.args[1]} bytes (a file name that long, or a big extra header)"
    else:
        why = f"the headers of a form part could not be read ({exc.message[:200]})"
    return BodyRefused(
        400,
        "Form part headers refused",
        f"The upload was refused: {why}. Send the file with a short name and only the usual part headers"
        " (Content-Disposition, Content-Type).",
        "bad-form-part",
    )


def _not_one_file(reason: str) -> BodyRefused:
    """The 400 for a body that is neither raw image bytes nor a form with exactly one file; says what to send."""
    return BodyRefused(
        400,
        "Send one image",
        f"The upload was refused: {reason}. Send the image's bytes as the body (any Content-Type), or a "
        "multipart/form-data form with exactly one file part, e.g. curl -F image=@photo.jpg.",
        "one-image-per-upload",
    )


async def read_image_body(request: web.Request, max_bytes: int) -> bytes | web.Response:
    """The uploaded bytes, or the problem+json answer that refuses them (413, 408, 400)."""
    try:
        return await read_upload(request, max_bytes)
    except BodyTooLarge:
        return problem(
            413,
            "Upload too large",
            f"the upload is larger than {max_bytes} bytes; send a smaller image",
            f"{PROBLEM_BASE}too-large",
        )
    except BodyRefused as exc:
        return body_problem(exc)


class Busy(Exception):
    """Every decode slot is busy and :data:`DECODE_QUEUE` uploads already wait for one."""


def _declared_pixels(data: bytes, max_bytes: int) -> int:
    """The pixels the upload's header declares (no pixel is decoded); 0 for what inspect_upload refuses at once."""
    if not data or len(data) > max_bytes:
        return 0
    try:
        img = images.open_header(data)  # the same guarded header parse inspect_upload starts with
    except images.ImageRejected:
        return 0  # inspect_upload refuses it from the header too, with its own order of checks and status
    with img:
        return img.width * img.height


class DecodeSlots:
    """Decoding in threads, a few at a time per lane (:data:`LARGE_IMAGE_PIXELS`), at most ``queue`` large ones waiting."""

    def __init__(self, slots: int, queue: int) -> None:
        self._small, self._large = asyncio.Semaphore(slots), asyncio.Semaphore(slots)
        self.queue = queue
        self.waiting = 0
        """Large uploads waiting for a slot now."""

    async def inspect(self, data: bytes, max_bytes: int) -> images.ImageInfo:
        """``images.inspect_upload`` in a thread; :class:`Busy` at once for a large upload when its lane is full."""
        if await asyncio.to_thread(_declared_pixels, data, max_bytes) <= LARGE_IMAGE_PIXELS:
            async with self._small:
                return await asyncio.to_thread(images.inspect_upload, data, max_bytes=max_bytes)
        if self._large.locked() and self.waiting >= self.queue:
            raise Busy
        self.waiting += 1
        try:
            await self._large.acquire()
        finally:
            self.waiting -= 1
        try:
            return await asyncio.to_thread(images.inspect_upload, data, max_bytes=max_bytes)
        finally:
            self._large.release()


def busy_answer() -> web.Response:
    """The 503 a large upload gets at once when its lane is full (load shedding), with ``Retry-After``."""
    response = problem(
        503,
        "Too many uploads at once",
        f"{images.IMAGE_WORK_SLOTS} large uploads are being checked and {DECODE_QUEUE} more wait; try again in"
        f" {RETRY_AFTER_S} s (with the same Idempotency-Key, if you sent one)",
        f"{PROBLEM_BASE}busy",
    )
    response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response
