"""The capstone's object store: an HTTP service that keeps bytes under keys, in one folder.

Other services hand each other *keys* (a claim check), never image bytes, so this is the
one place that touches the disk, and the one place where a hostile key could turn into a
path. The defence has two layers:

1. ``safe_key`` allows only a small alphabet: ASCII letters, digits,
   ``.``, ``_`` and ``-`` in segments separated by ``/``; no segment may be empty or start or
   end with a dot (so no ``.``, ``..`` or hidden names); NUL, control, format (e.g. the
   right-to-left override) and other invisible characters are refused, and so are look-alikes
   that NFKC would fold (fullwidth letters, ligatures), with the plain spelling in the message.
2. Whatever survives is joined to the root, resolved (symlinks followed) and checked again
   to be inside the root, so even a symlink planted in the folder cannot lead outside.

Routes (every error is ``application/problem+json``, RFC 9457)::

    PUT  /objects/{key}   body = bytes, Content-Type kept  -> 201 {"key", "etag", "size"} (200 if it existed)
    GET  /objects/{key}   -> the bytes, the stored Content-Type, ETag "sha256-hex"; 304 for If-None-Match
    HEAD /objects/{key}   -> the same headers, no body

A PUT body is read with :func:`helpers.core.http.read_body`: over the limit 413, stalled 408,
an undecodable Content-Encoding 400. Files are written to a temporary name and renamed, so a
reader never sees half an object; each object's metadata lives under ``.meta/{key}/`` (see
``META_FILE``), where no two keys can collide.
Keys are case-sensitive; on a case-insensitive disk (macOS, Windows) ``A`` and ``a`` share a file.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import tempfile
import unicodedata
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import aiohttp
import yarl
from aiohttp import web

from helpers.core.http import DECODES_ITSELF, BodyRefused, Handler, Service, body_problem, read_body, start_service
from helpers.core.problems import PROBLEM_BASE, PROBLEM_JSON, expect_continue, problem, problem_for

MAX_OBJECT_BYTES = 8 * 1024 * 1024
"""The largest object; the same as ``images.MAX_UPLOAD_BYTES`` (a test keeps them equal) without importing Pillow here."""
MAX_KEY_LENGTH = 512
MAX_SEGMENT_LENGTH = 128
MAX_SEGMENTS = 16
MAX_CONTENT_TYPE_LENGTH = 200
DEFAULT_CONTENT_TYPE = "application/octet-stream"
META_FOLDER = ".meta"
"""Where each object's content type and ETag live, beside the data; no key can reach it (segments never start with '.')."""
META_FILE = ".object.json"
"""Key ``a/b``'s metadata is ``.meta/a/b/.object.json``. In that tree every name a key can make is a folder and the
only files are named like no key segment can be (they start with '.'), so no two keys' metadata can collide; with
``.meta/a/b.json``, key ``x.json/y`` needed a folder where key ``x`` kept its metadata file."""

_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_CONTENT_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+(\s*;[\x20-\x7e]*)?")
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul"} | {f"{port}{n}" for port in ("com", "lpt") for n in range(1, 10)}


class KeyRejected(ValueError):
    """A key that is not allowed, with the problem+json fields of the 400 answer."""

    status = 400
    title = "Invalid object key"
    type = PROBLEM_BASE + "invalid-key"

    def __init__(self, key: object, reason: str) -> None:
        shown = repr(key) if len(repr(key)) <= 60 else repr(key)[:57] + "..."
        self.detail = f"The key {shown} was refused: {reason}."
        super().__init__(self.detail)


class KeyConflict(ValueError):
    """A key that needs a folder where a file is, or the other way round ("a" and "a/b")."""

    status = 409
    title = "Key conflicts with another key"
    type = PROBLEM_BASE + "key-conflict"

    def __init__(self, key: str) -> None:
        self.detail = f"The key {key!r} cannot be stored: a key before it uses one of its segments as an object or a folder."
        super().__init__(self.detail)


class BadContentType(ValueError):
    """A Content-Type that is not ``type/subtype[; parameters]`` in printable ASCII."""

    status = 400
    title = "Invalid Content-Type"
    type = PROBLEM_BASE + "invalid-content-type"

    def __init__(self, value: str) -> None:
        shown = repr(value) if len(value) <= 60 else repr(value[:57]) + "..."
        self.detail = (
            f"The Content-Type {shown} is not a media type like image/jpeg (at most {MAX_CONTENT_TYPE_LENGTH} characters)."
        )
        super().__init__(self.detail)


# --- keys -----------------------------------------------------------------------------------


def _refuse_invisible(key: str) -> None:
    """Refuse NUL, control, format (bidi overrides, zero-width), surrogate, private and unassigned characters."""
    for char in key:
        if unicodedata.category(char).startswith("C"):
            raise KeyRejected(key, f"it contains the invisible or control character U+{ord(char):04X}")


def _check_segment(key: str, segment: str) -> None:
    """One ``/``-separated part: non-empty, no leading or trailing dot, the allowed alphabet, a sane length."""
    if not segment:
        raise KeyRejected(key, "it has an empty segment (a leading '/', '//' or a trailing '/')")
    if segment.startswith(".") or segment.endswith("."):
        raise KeyRejected(key, "a segment starts or ends with '.' ('.', '..' and hidden names are not keys)")
    if len(segment) > MAX_SEGMENT_LENGTH:
        raise KeyRejected(key, f"a segment is longer than {MAX_SEGMENT_LENGTH} characters")
    if not _SEGMENT.fullmatch(segment):
        raise KeyRejected(key, "only ASCII letters, digits, '.', '_' and '-' are allowed, with '/' between segments")
    if segment.split(".")[0].lower() in _WINDOWS_RESERVED:
        raise KeyRejected(key, f"{segment!r} is a reserved device name on Windows")


def safe_key(key: str) -> str:
    """The key, or ``KeyRejected`` (400) if it could name anything outside a plain folder tree.

    A look-alike is refused with the spelling it looks like (fullwidth "．．" reads as "..",
    the ligature "ﬁ" as "fi"): folding it quietly would give one object two names, and a
    client that listed or compared keys would see them differ.
    """
    if not isinstance(key, str):
        raise KeyRejected(key, "a key is a string")
    if not key:
        raise KeyRejected(key, "the key is empty")
    if len(key) > MAX_KEY_LENGTH:  # before normalizing: NFKC can make a string up to 18x longer
        raise KeyRejected(key, f"it is longer than {MAX_KEY_LENGTH} characters")
    _refuse_invisible(key)
    normal = unicodedata.normalize("NFKC", key)
    if len(normal) > MAX_KEY_LENGTH:
        raise KeyRejected(key, f"it is longer than {MAX_KEY_LENGTH} characters once normalized")
    if normal != key:
        plain = normal if len(normal) <= 60 else normal[:60] + "..."
        raise KeyRejected(key, f"it has look-alike characters; write it {plain!r}, in plain ASCII")
    if key.startswith("/"):
        raise KeyRejected(key, "it is an absolute path; keys are relative, like 'uploads/job-1/original'")
    segments = key.split("/")
    if len(segments) > MAX_SEGMENTS:
        raise KeyRejected(key, f"it has more than {MAX_SEGMENTS} segments")
    for segment in segments:
        _check_segment(key, segment)
    return key


def inside(root: Path, relative: str) -> Path:
    """``root / relative``, resolved, and refused unless it is still inside ``root`` (which must be resolved)."""
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise KeyRejected(relative, "it resolves to a place outside the storage folder")
    return path


def etag_of(data: bytes) -> str:
    """The strong ETag of some bytes: their sha256 in hex, in double quotes (RFC 9110)."""
    return f'"{hashlib.sha256(data).hexdigest()}"'


def checked_content_type(value: str | None) -> str:
    """The Content-Type to store: the client's, if it is a well-formed media type, else ``BadContentType``."""
    if not value:
        return DEFAULT_CONTENT_TYPE
    if len(value) > MAX_CONTENT_TYPE_LENGTH or not _CONTENT_TYPE.fullmatch(value):
        raise BadContentType(value)
    return value


# --- the folder -----------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredObject:
    """What is known about a stored object besides its bytes."""

    key: str
    etag: str
    size: int
    content_type: str


def _write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename over ``path``: readers see old or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class ObjectStore:
    """The folder behind the service. Blocking file I/O: the handlers call it through ``asyncio.to_thread``."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root.resolve()

    def _paths(self, key: str) -> tuple[Path, Path]:
        """(data file, metadata file) for a key already passed through ``safe_key``."""
        return inside(self.root, key), inside(self.root, f"{META_FOLDER}/{key}/{META_FILE}")

    def head(self, key: str) -> StoredObject | None:
        """The object's metadata, or None if there is no such object."""
        data_path, meta_path = self._paths(key)
        if not data_path.is_file() or not meta_path.is_file():
            return None
        return StoredObject(**json.loads(meta_path.read_text()))

    def get(self, key: str) -> tuple[StoredObject, bytes] | None:
        """The object's metadata and bytes, or None."""
        meta = self.head(key)
        return None if meta is None else (meta, self._paths(key)[0].read_bytes())

    def put(self, key: str, data: bytes, content_type: str) -> tuple[StoredObject, bool]:
        """Store the bytes; returns the metadata and whether the key is new. "a" beside "a/b" is a ``KeyConflict``."""
        data_path, meta_path = self._paths(key)
        created = not data_path.is_file()
        meta = StoredObject(key, etag_of(data), len(data), content_type)
        try:
            _write_atomically(data_path, data)
            _write_atomically(meta_path, json.dumps(asdict(meta)).encode())
        except (FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
            raise KeyConflict(key) from exc
        return meta, created


# --- the service ----------------------------------------------------------------------------

STORE = web.AppKey("store", ObjectStore)
LOCKS = web.AppKey("locks", weakref.WeakValueDictionary[str, asyncio.Lock])
"""One lock per key: a PUT writes two files, and a GET of the same key must not see one new and one old.
Weak values: a key's lock disappears once no request holds it, so the table does not grow forever."""


def _key_lock(request: web.Request, key: str) -> asyncio.Lock:
    return request.app[LOCKS].setdefault(key, asyncio.Lock())


def _object_headers(meta: StoredObject) -> dict[str, str]:
    """The headers GET and HEAD share; nosniff because the stored Content-Type came from a client."""
    return {"Content-Type": meta.content_type, "ETag": meta.etag, "X-Content-Type-Options": "nosniff"}


def _not_found(key: str) -> web.Response:
    return problem(404, "No such object", f"Nothing is stored under the key {key!r}.", PROBLEM_BASE + "no-such-object")


async def _put(request: web.Request) -> web.Response:
    key = safe_key(request.match_info["key"])
    content_type = checked_content_type(request.headers.get("Content-Type"))
    data = await read_body(request, request.client_max_size)  # 413 / 408 / 400 as BodyRefused, see _problems
    async with _key_lock(request, key):
        meta, created = await asyncio.to_thread(request.app[STORE].put, key, data, content_type)
    body = {"key": meta.key, "etag": meta.etag, "size": meta.size}
    return web.json_response(body, status=201 if created else 200, headers={"ETag": meta.etag})


async def _get(request: web.Request) -> web.Response:
    key = safe_key(request.match_info["key"])
    async with _key_lock(request, key):
        found = await asyncio.to_thread(request.app[STORE].get, key)
    if found is None:
        return _not_found(key)
    meta, data = found
    if_none_match = request.headers.get("If-None-Match", "")
    if if_none_match.strip() == "*" or meta.etag in if_none_match:
        return web.Response(status=304, headers={"ETag": meta.etag})
    return web.Response(body=data, headers=_object_headers(meta))


async def _head(request: web.Request) -> web.Response:
    key = safe_key(request.match_info["key"])
    async with _key_lock(request, key):
        meta = await asyncio.to_thread(request.app[STORE].head, key)
    if meta is None:
        return web.Response(status=404, content_type=PROBLEM_JSON)
    # aiohttp sends no body for HEAD but keeps a Content-Length given as a header: the size GET would send
    return web.Response(headers={**_object_headers(meta), "Content-Length": str(meta.size)})


def _http_error_detail(error: web.HTTPException, request: web.Request) -> str:
    """One sentence for an error aiohttp raised itself (unknown route, wrong method, body too large)."""
    if isinstance(error, web.HTTPRequestEntityTooLarge):
        return f"The body is larger than the limit of {request.client_max_size:,} bytes."
    if isinstance(error, web.HTTPNotFound):
        return f"There is no route {request.path!r}; objects live under /objects/{{key}}."
    if isinstance(error, web.HTTPMethodNotAllowed):
        return f"{request.method} is not allowed here; use {', '.join(sorted(error.allowed_methods))}."
    return f"{error.reason} for {request.method} {request.path!r}."


@web.middleware
async def _problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as problem+json: the service's own refusals and aiohttp's (404, 405, 413)."""
    try:
        return await handler(request)
    except (KeyRejected, KeyConflict, BadContentType) as error:
        return problem_for(error)
    except BodyRefused as error:
        return body_problem(error)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        return problem(error.status, error.reason, _http_error_detail(error, request))


def storage_app(root: str | Path, *, max_bytes: int = MAX_OBJECT_BYTES) -> web.Application:
    """The storage service as a fresh aiohttp app (a started app cannot be started again)."""
    # DECODES_ITSELF: read_body decodes gzip/deflate under the limit and answers br, zstd, ... 415 problem+json
    app = web.Application(client_max_size=max_bytes, middlewares=[_problems], handler_args=DECODES_ITSELF)
    app[STORE] = ObjectStore(Path(root))
    app[LOCKS] = weakref.WeakValueDictionary()
    route = r"/objects/{key:[\s\S]*}"  # any key, even empty or with a newline, reaches safe_key and its 400
    app.router.add_put(route, _put, expect_handler=expect_continue)  # a 417 as problem+json too
    app.router.add_get(route, _get, allow_head=False)
    app.router.add_route("HEAD", route, _head)
    return app


async def start_storage(root: str | Path, name: str = "storage", *, max_bytes: int = MAX_OBJECT_BYTES) -> Service:
    """Start the storage service on 127.0.0.1 (free port), keeping its objects under ``root``.

    ``max_bytes`` is the largest body a PUT may send (aiohttp's own default is 1 MiB).
    """
    return await start_service(name, storage_app(root, max_bytes=max_bytes))


# --- the client -----------------------------------------------------------------------------


class StorageError(Exception):
    """The storage service refused a request; carries the problem+json fields it sent."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(f"storage answered {status} {title}: {detail}")
        self.status = status
        self.title = title
        self.detail = detail


async def _storage_error(response: aiohttp.ClientResponse) -> StorageError:
    """A StorageError from an error response: problem+json if it is one, else the start of the body."""
    text = await response.text()
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict) and response.content_type == PROBLEM_JSON:
        return StorageError(response.status, str(body.get("title", "")), str(body.get("detail", "")))
    return StorageError(response.status, response.reason or "", text[:200])


class StorageClient:
    """Talks to the storage service; keys are sent exactly as given (the server decides what is allowed).

    Network errors and timeouts surface as aiohttp's exceptions (``aiohttp.ClientError``,
    ``TimeoutError``); a refusal from the service is a ``StorageError`` with its status.
    """

    def __init__(self, base_url: str, session: aiohttp.ClientSession | None = None, *, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._session = session
        self._owns_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    def url(self, key: str) -> str:
        """The object's URL, percent-encoded (``/`` kept); requests send it as is, without dot-segment removal."""
        return f"{self.base_url}/objects/{quote(key, safe='/')}"

    def _session_now(self) -> aiohttp.ClientSession:
        """The caller's session, or one of our own made on first use (inside the running loop, as aiohttp wants)."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    def _target(self, key: str) -> yarl.URL:
        """``url(key)`` as sent: encoded=True, or yarl would turn "a/../b" into "b" before the server could refuse it."""
        return yarl.URL(self.url(key), encoded=True)

    async def put(self, key: str, data: bytes, content_type: str) -> str:
        """Store ``data`` under ``key``; returns its ETag."""
        headers = {"Content-Type": content_type}
        async with self._session_now().put(self._target(key), data=data, headers=headers, timeout=self._timeout) as response:
            if response.status not in (200, 201):
                raise await _storage_error(response)
            return str((await response.json())["etag"])

    async def get(self, key: str) -> tuple[bytes, str, str]:
        """(bytes, content type, ETag) of the object; ``StorageError`` with status 404 if there is none."""
        async with self._session_now().get(self._target(key), timeout=self._timeout) as response:
            if response.status != 200:
                raise await _storage_error(response)
            content_type = response.headers.get("Content-Type", DEFAULT_CONTENT_TYPE)
            return await response.read(), content_type, response.headers.get("ETag", "")

    async def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key`` (a HEAD request: no body moves)."""
        async with self._session_now().head(self._target(key), timeout=self._timeout) as response:
            if response.status == 404:
                return False
            if response.status != 200:
                raise StorageError(response.status, response.reason or "", f"HEAD {key!r} failed")
            return True

    async def close(self) -> None:
        """Close the session if this client made it (a session passed in belongs to the caller)."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> StorageClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.close()
