"""The capstone's storage service: round trips with ETags, and keys that can never leave the folder.

Hostile keys are tested twice: ``safe_key`` on its own (a pure function, so the literal
``/etc/passwd`` is safe to try), and over HTTP against a running service. The HTTP escapes
are aimed at a folder *inside the test's own tmp_path* ("outside" is a sibling of the
storage root): if a regression ever let one through, it would write a file the test
finds, never a real system file (the tests run as root on CI).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import yarl

from helpers.capstone import images
from helpers.capstone.storage import (
    MAX_KEY_LENGTH,
    MAX_OBJECT_BYTES,
    KeyRejected,
    StorageClient,
    StorageError,
    etag_of,
    safe_key,
    start_storage,
)
from helpers.core.http import Service, get_service
from helpers.core.problems import PROBLEM_BASE, PROBLEM_JSON

HOSTILE_KEYS = {
    "parent escape": "../../etc/passwd",
    "absolute path": "/etc/passwd",
    "escape after a folder": "a/../../b",
    "backslash": "a\\b",
    "windows escape": "..\\..\\windows\\win.ini",
    "NUL": "a\x00b",
    "fullwidth dots": "\uff0e\uff0e/x",
    "one dot leaders": "\u2024\u2024/x",
    "combining accent": "e\u0301.jpg",
    "combining long solidus over dots": ".\u0338./x",
    "right-to-left override": "photo\u202egpj.exe",
    "zero-width space": "a\u200b/b",
    "fullwidth solidus": "..\uff0fx",
    "percent-encoded dots (already decoded once)": "%2e%2e/x",
    "empty": "",
    "dot": ".",
    "dot dot": "..",
    "inner dot segment": "a/./b",
    "empty segment": "a//b",
    "trailing slash": "a/",
    "hidden name": ".meta/x.json",
    "trailing dot": "a./b",
    "too long": "a" * (MAX_KEY_LENGTH + 1),
    "too long once normalized": "\ufdfa" * 40,  # one character that NFKC turns into 18
    "a segment too long": "b" * 200,
    "too deep": "/".join(["d"] * 40),
    "home folder": "~/x",
    "windows device": "uploads/CON.jpg",
    "alternate data stream": "a:b",
    "newline": "a\nb",
}


@pytest.mark.parametrize("name", HOSTILE_KEYS)
def test_safe_key_refuses_every_trick(name: str) -> None:
    with pytest.raises(KeyRejected) as caught:
        safe_key(HOSTILE_KEYS[name])
    assert caught.value.status == 400
    assert caught.value.detail.startswith("The key ")
    assert caught.value.detail.endswith(".")
    assert len(caught.value.detail) < 300, "a very long key is shortened in the message"


@pytest.mark.parametrize(
    ("key", "normal"),
    [
        ("uploads/job-1/original.jpg", "uploads/job-1/original.jpg"),
        ("results/JOB_2/thumb-128.jpg", "results/JOB_2/thumb-128.jpg"),
        ("a..b", "a..b"),  # dots inside a name are fine
    ],
)
def test_safe_key_keeps_ordinary_keys(key: str, normal: str) -> None:
    assert safe_key(key) == normal


@pytest.mark.parametrize(
    ("key", "plain"),
    [("\uff55\uff50\uff4c\uff4f\uff41\uff44.png", "upload.png"), ("\ufb01le", "file")],  # fullwidth letters, the ligature fi
)
def test_a_look_alike_key_is_refused_with_its_plain_spelling(key: str, plain: str) -> None:
    # Folding it (as before) stored "\ufb01le" as "file": one object, two names (found by the outside probe).
    with pytest.raises(KeyRejected) as caught:
        safe_key(key)
    assert repr(plain) in caught.value.detail, caught.value.detail


def test_storage_allows_what_the_upload_service_allows() -> None:
    assert MAX_OBJECT_BYTES == images.MAX_UPLOAD_BYTES


@pytest.fixture
async def storage(tmp_path: Path) -> Service:
    return await start_storage(tmp_path / "root")


@pytest.fixture
async def client(storage: Service) -> AsyncIterator[StorageClient]:
    async with StorageClient(storage.url) as storage_client:
        yield storage_client


async def raw(method: str, url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    """(status, content type, body) of one request sent exactly as written (no dot-segment removal)."""
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, yarl.URL(url, encoded=True), data=data, headers=headers) as response,
    ):
        return response.status, response.content_type, await response.read()


def assert_problem(status: int, content_type: str, body: bytes, expected: int) -> dict[str, object]:
    assert (status, content_type) == (expected, PROBLEM_JSON), body[:200]
    fields = json.loads(body)
    assert fields["status"] == expected
    assert fields["title"]
    assert fields["detail"]
    return dict(fields)


def files_under(folder: Path) -> set[Path]:
    return {path for path in folder.rglob("*") if path.is_file()}


async def test_a_round_trip_keeps_the_bytes_the_content_type_and_the_sha256_etag(client: StorageClient) -> None:
    data = images.sample_photo()
    etag = await client.put("uploads/job-1/original.jpg", data, "image/jpeg")
    assert etag == f'"{hashlib.sha256(data).hexdigest()}"' == etag_of(data)
    assert await client.get("uploads/job-1/original.jpg") == (data, "image/jpeg", etag)
    assert await client.exists("uploads/job-1/original.jpg")
    assert not await client.exists("uploads/job-1/missing.jpg")


async def test_put_answers_201_then_200_with_key_etag_and_size(storage: Service) -> None:
    url = f"{storage.url}/objects/a/b.txt"
    first = await raw("PUT", url, b"hello", {"Content-Type": "text/plain; charset=utf-8"})
    again = await raw("PUT", url, b"hello", {"Content-Type": "text/plain; charset=utf-8"})
    assert (first[0], again[0]) == (201, 200)
    assert json.loads(first[2]) == {"key": "a/b.txt", "etag": etag_of(b"hello"), "size": 5}
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert response.headers["ETag"] == etag_of(b"hello")
        assert response.headers["X-Content-Type-Options"] == "nosniff"


async def test_a_new_version_replaces_the_old_one(client: StorageClient) -> None:
    await client.put("k", b"one", "text/plain")
    etag = await client.put("k", b"two", "application/octet-stream")
    assert await client.get("k") == (b"two", "application/octet-stream", etag)


async def test_get_with_the_current_etag_is_304(client: StorageClient, storage: Service) -> None:
    etag = await client.put("k", b"cached", "text/plain")
    status, _, body = await raw("GET", f"{storage.url}/objects/k", headers={"If-None-Match": etag})
    assert (status, body) == (304, b"")
    status, _, body = await raw("GET", f"{storage.url}/objects/k", headers={"If-None-Match": etag_of(b"old")})
    assert (status, body) == (200, b"cached")


async def test_head_sends_the_headers_and_no_body(client: StorageClient, storage: Service) -> None:
    await client.put("k", b"12345", "text/plain")
    async with aiohttp.ClientSession() as session, session.head(f"{storage.url}/objects/k") as response:
        assert response.status == 200
        assert (response.headers["Content-Length"], response.headers["ETag"]) == ("5", etag_of(b"12345"))
        assert await response.read() == b""


async def test_a_missing_object_is_a_404_problem(client: StorageClient, storage: Service) -> None:
    fields = assert_problem(*await raw("GET", f"{storage.url}/objects/nope"), expected=404)
    assert fields["type"] == PROBLEM_BASE + "no-such-object"
    with pytest.raises(StorageError) as caught:
        await client.get("nope")
    assert caught.value.status == 404


async def test_routes_and_methods_that_do_not_exist_are_problems_too(storage: Service) -> None:
    assert_problem(*await raw("GET", f"{storage.url}/elsewhere"), expected=404)
    assert_problem(*await raw("POST", f"{storage.url}/objects/k", b"x"), expected=405)


async def test_a_malformed_content_type_is_refused(storage: Service) -> None:
    fields = assert_problem(*await raw("PUT", f"{storage.url}/objects/k", b"x", {"Content-Type": "not a type"}), expected=400)
    assert fields["type"] == PROBLEM_BASE + "invalid-content-type"


async def test_bodies_up_to_the_limit_are_stored_and_bigger_ones_are_413(tmp_path: Path) -> None:
    small = await start_storage(tmp_path / "small", name="small-storage", max_bytes=1000)
    assert (await raw("PUT", f"{small.url}/objects/fits", bytes(1000)))[0] == 201
    assert_problem(*await raw("PUT", f"{small.url}/objects/too-big", bytes(1001)), expected=413)
    assert not (tmp_path / "small" / "too-big").exists()


async def test_the_default_limit_is_the_upload_limit_not_aiohttps_1_mib(client: StorageClient) -> None:
    data = bytes(MAX_OBJECT_BYTES)
    assert await client.put("big", data, "application/octet-stream") == etag_of(data)
    with pytest.raises(StorageError) as caught:
        await client.put("bigger", data + b"x", "application/octet-stream")
    assert caught.value.status == 413


async def test_a_key_cannot_be_both_an_object_and_a_folder(client: StorageClient) -> None:
    await client.put("a", b"file", "text/plain")
    with pytest.raises(StorageError) as caught:
        await client.put("a/b", b"below a file", "text/plain")
    assert caught.value.status == 409
    await client.put("c/d", b"file", "text/plain")
    with pytest.raises(StorageError) as caught:
        await client.put("c", b"over a folder", "text/plain")
    assert caught.value.status == 409


async def test_a_look_alike_key_is_refused_over_http_and_nothing_is_stored(client: StorageClient, storage: Service) -> None:
    status, _, body = await raw("PUT", client.url("\uff46\uff55\uff4c\uff4c.txt"), b"wide")
    assert status == 400
    assert "'full.txt'" in json.loads(body)["detail"]
    with pytest.raises(StorageError):
        await client.get("full.txt")


def escapes_into(outside: Path) -> dict[str, str]:
    """Hostile keys aimed at ``outside`` (a sibling of the root, inside tmp_path), plus the unicode tricks."""
    aimed_at_real_files = ("/", "../../", "..\\..\\")  # tried only on safe_key above
    tricks = {name: key for name, key in HOSTILE_KEYS.items() if not key.startswith(aimed_at_real_files)}
    return {
        **tricks,
        "into outside: parent escape": "../outside/victim",
        "into outside: escape after a folder": "a/../../outside/victim",
        "into outside: absolute path": f"{outside}/victim",
        "into outside: backslashes": "..\\outside\\victim",
        "into outside: fullwidth dots": "\uff0e\uff0e/outside/victim",
        "into outside: one dot leaders": "\u2024\u2024/outside/victim",
    }


@pytest.mark.parametrize("name", list(escapes_into(Path("/x"))))
async def test_a_hostile_key_over_http_is_a_400_problem_and_writes_nothing(name: str, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    storage = await start_storage(tmp_path / "root")
    client = StorageClient(storage.url)
    key = escapes_into(outside)[name]
    try:
        fields = assert_problem(*await raw("PUT", client.url(key), b"pwned", {"Content-Type": "text/plain"}), expected=400)
        assert fields["type"] == PROBLEM_BASE + "invalid-key"
        assert_problem(*await raw("GET", client.url(key)), expected=400)
        assert not await client.exists("victim")
    finally:
        await client.close()
    assert files_under(tmp_path) == set(), f"{key!r} wrote {files_under(tmp_path)}"


async def test_a_symlink_planted_in_the_folder_does_not_lead_outside(tmp_path: Path, client: StorageClient) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "root" / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(StorageError) as caught:
        await client.put("link/victim", b"pwned", "text/plain")
    assert caught.value.status == 400
    assert "outside the storage folder" in caught.value.detail
    assert files_under(outside) == set()


async def test_the_service_is_registered_by_name(storage: Service) -> None:
    assert get_service("storage") is storage
    assert storage.url.startswith("http://127.0.0.1:")


async def test_a_client_closes_only_the_session_it_made(storage: Service) -> None:
    async with aiohttp.ClientSession() as session:
        borrowed = StorageClient(storage.url, session)
        await borrowed.put("k", b"v", "text/plain")
        await borrowed.close()
        assert not session.closed
        assert (await StorageClient(storage.url, session).get("k"))[0] == b"v"
