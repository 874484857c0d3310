"""Uploaded files, kept in the store: what the Files API serves and the built-in tools read.

Use these helpers rather than reading the records by hand (their shape may grow):

- record kind ``"file"``, id = the file id (``file-…``), no owner; the data is the API's
  ``FileObject`` exactly (``id, object, bytes, created_at, filename, purpose, status,
  expires_at, status_details``);
- blob id = the file id: the bytes as uploaded.

A file whose ``expires_at`` has passed reads as missing (and is deleted when found so).

    meta = await create_file(store, b"...", "notes.md", "assistants")   # a FileObject dict
    data = await get_file_bytes(store, meta["id"])                       # None when unknown
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from midtier.core.errors import InvalidRequest, NotFound
from midtier.core.messages import new_id
from midtier.store.base import Order, Page, Store

FILE_KIND = "file"

#: purposes a client may upload with (the SDK's ``FilePurpose``)
PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
#: purposes the server gives the files it makes itself (a container's outputs)
SERVER_PURPOSES = ("assistants_output", "batch_output", "fine-tune-results")

MIN_EXPIRY, MAX_EXPIRY = 3600, 2_592_000  # seconds, OpenAI's bounds for ``expires_after``


def _expired(meta: dict[str, Any], now: float | None = None) -> bool:
    expires_at = meta.get("expires_at")
    return isinstance(expires_at, int) and expires_at <= (time.time() if now is None else now)


async def create_file(store: Store, data: bytes, filename: str, purpose: str, *,
                      expires_after_seconds: int | None = None, file_id: str | None = None) -> dict[str, Any]:
    """Store ``data`` as a new file; returns its ``FileObject`` dict. ``purpose`` is not checked
    here (the route checks what clients send; the server may use ``SERVER_PURPOSES``)."""
    now = int(time.time())
    meta: dict[str, Any] = {
        "id": file_id or new_id("file-", 12),
        "object": "file",
        "bytes": len(data),
        "created_at": now,
        "filename": filename,
        "purpose": purpose,
        "status": "processed",
        "expires_at": now + expires_after_seconds if expires_after_seconds is not None else None,
        "status_details": None,
    }
    await store.put_blob(meta["id"], data)  # bytes first: a listed file always has its bytes
    await store.put_record(FILE_KIND, meta["id"], meta, created_at=now)
    return meta


async def get_file(store: Store, file_id: str) -> dict[str, Any] | None:
    """The ``FileObject`` dict of ``file_id``; None when unknown or expired."""
    meta = await store.get_record(FILE_KIND, file_id)
    if meta is None:
        return None
    if _expired(meta):
        await delete_file(store, file_id)
        return None
    return meta


async def require_file(store: Store, file_id: str, param: str = "file_id") -> dict[str, Any]:
    """``get_file``, or ``NotFound`` naming ``param``."""
    meta = await get_file(store, file_id)
    if meta is None:
        raise NotFound(f"No such File object: {file_id}", param=param)
    return meta


async def get_file_bytes(store: Store, file_id: str) -> bytes | None:
    """The bytes of ``file_id``; None when unknown or expired."""
    if await get_file(store, file_id) is None:
        return None
    return await store.get_blob(file_id)


async def delete_file(store: Store, file_id: str) -> bool:
    """Delete the file's record and bytes; False when there was no such file."""
    found = await store.delete_record(FILE_KIND, file_id)
    await store.delete_blob(file_id)
    return found


async def list_files(store: Store, *, purpose: str | None = None, after: str | None = None, limit: int = 10_000,
                     order: Order = "desc") -> Page:
    """A page of files (of ``purpose`` when given), newest first by default; expired files are
    left out."""
    now = time.time()
    return await filtered_page(store, FILE_KIND, None, after=after, limit=limit, order=order,
                               keep=lambda f: not _expired(f, now) and (purpose is None or f.get("purpose") == purpose))


async def filtered_page(store: Store, kind: str, owner: str | None, *, after: str | None, limit: int, order: Order,
                        keep: Callable[[dict[str, Any]], bool], id_of: Callable[[dict[str, Any]], str] | None = None,
                        ) -> Page:
    """A page of up to ``limit`` records of ``kind`` that ``keep`` accepts, read from the store 100
    at a time (its page size). ``id_of`` gives a record's store id from its data (default: ``id``);
    the page's ``first_id``/``last_id`` are the data's ``id``s, and ``after`` is one of them."""
    store_id = id_of or (lambda d: str(d["id"]))
    cursor = after
    if after is not None and id_of is not None:
        cursor = id_of({"id": after})
    found: list[dict[str, Any]] = []
    while len(found) <= limit:
        page = await store.list_records(kind, owner=owner, after=cursor, limit=100, order=order)
        found.extend(d for d in page.data if keep(d))
        if not page.has_more or not page.data:
            break
        cursor = store_id(page.data[-1])
    data = found[:limit]
    return Page(data, len(found) > limit, data[0]["id"] if data else None, data[-1]["id"] if data else None)


def check_expires_after(anchor: Any, seconds: Any, param: str = "expires_after") -> int:
    """The seconds of a file's ``expires_after``, checked."""
    if anchor != "created_at":
        raise InvalidRequest(f"Invalid value for '{param}.anchor': expected 'created_at'.", param=f"{param}.anchor",
                             code="invalid_value")
    try:
        value = int(seconds)
    except (TypeError, ValueError):
        raise InvalidRequest(f"Invalid value for '{param}.seconds': expected an integer.", param=f"{param}.seconds",
                             code="invalid_value") from None
    if not MIN_EXPIRY <= value <= MAX_EXPIRY:
        raise InvalidRequest(f"Invalid value for '{param}.seconds': must be between {MIN_EXPIRY} and {MAX_EXPIRY}.",
                             param=f"{param}.seconds", code="invalid_value")
    return value


__all__ = ["FILE_KIND", "PURPOSES", "SERVER_PURPOSES", "check_expires_after", "create_file", "delete_file",
           "filtered_page", "get_file", "get_file_bytes", "list_files", "require_file"]
