"""The default store: one SQLite file, WAL mode, ``synchronous=FULL``.

Every ``sqlite3`` call runs on one dedicated worker thread that owns the only connection, so
the event loop never blocks on the disk and the connection is never shared between threads.
Calls reach the thread in the order they are made. A write commits (and so reaches the disk)
before its coroutine returns: an acknowledged write survives a crash or a restart.

The schema is versioned by ``PRAGMA user_version``: ``MIGRATIONS[i]`` takes a database from
version ``i`` to ``i + 1``, and opening a store applies, each in its own transaction, those
its file has not seen yet. A file written by a newer midtier is refused, never downgraded.
Objects are kept as compact JSON text, exactly as the API returned them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from midtier.core.errors import Conflict, InvalidRequest, MidtierError, NotFound
from midtier.store import default_db_path
from midtier.store.base import Order, Page, StoredConversation, StoredResponse

log = logging.getLogger(__name__)

T = TypeVar("T")
Migration = Callable[[sqlite3.Connection], None]
MAX_CHAIN = 100_000  # a guard against a previous_response_id cycle, far beyond any real chain


def _v1_tables(db: sqlite3.Connection) -> None:
    """Responses with their input items, conversations with their items."""
    db.execute("""CREATE TABLE responses (
        id TEXT PRIMARY KEY,
        created_at INTEGER NOT NULL,
        previous_response_id TEXT,
        conversation_id TEXT,
        response TEXT NOT NULL)""")
    db.execute("""CREATE TABLE response_items (
        response_id TEXT NOT NULL REFERENCES responses(id) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        item_id TEXT NOT NULL,
        item TEXT NOT NULL,
        PRIMARY KEY (response_id, position)) WITHOUT ROWID""")
    db.execute("""CREATE TABLE conversations (
        id TEXT PRIMARY KEY,
        created_at INTEGER NOT NULL,
        metadata TEXT NOT NULL DEFAULT '{}')""")
    db.execute("""CREATE TABLE conversation_items (
        conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        item_id TEXT NOT NULL,
        item TEXT NOT NULL,
        PRIMARY KEY (conversation_id, position),
        UNIQUE (conversation_id, item_id)) WITHOUT ROWID""")


def _v2_indexes(db: sqlite3.Connection) -> None:
    """Look-ups by item id (pagination's ``after``) and responses by conversation."""
    db.execute("CREATE INDEX response_items_by_id ON response_items(response_id, item_id)")
    db.execute("CREATE INDEX responses_by_conversation ON responses(conversation_id, created_at)")


def _v3_records(db: sqlite3.Connection) -> None:
    """Records (JSON objects by kind and id, optionally owned) and blobs (bytes by id)."""
    db.execute("""CREATE TABLE records (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        id TEXT NOT NULL,
        owner TEXT,
        created_at INTEGER NOT NULL,
        data TEXT NOT NULL,
        UNIQUE (kind, id))""")
    db.execute("CREATE INDEX records_by_owner ON records(kind, owner, seq)")
    db.execute("CREATE TABLE blobs (id TEXT PRIMARY KEY, data BLOB NOT NULL)")


MIGRATIONS: list[Migration] = [_v1_tables, _v2_indexes, _v3_records]
SCHEMA_VERSION = len(MIGRATIONS)


class SchemaTooNew(MidtierError):
    """The database was written by a newer midtier (a higher schema version than this one knows)."""


def migrate(db: sqlite3.Connection, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Apply the migrations ``db`` has not seen, each with its version bump in one transaction.

    The version is read under the write lock, so two processes opening one file migrate it once."""
    while True:
        db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > len(migrations):
                raise SchemaTooNew(f"the store's schema is version {version}; this midtier knows up to {len(migrations)}")
            if version < len(migrations):
                migrations[version](db)
                db.execute(f"PRAGMA user_version = {version + 1}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        if version == len(migrations):
            return version
        log.info("store migrated to schema version %d", version + 1)


def _set_wal(db: sqlite3.Connection, attempts: int = 50) -> str:
    """Switch to WAL; two processes opening a new file at once may find it locked for a moment
    (the switch takes an exclusive lock the busy handler does not wait for): retry briefly."""
    for attempt in range(attempts):
        try:
            return str(db.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.02 * (attempt + 1))
    raise AssertionError("unreachable")


def connect(path: str | Path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit) with the store's pragmas."""
    db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=True)
    db.execute("PRAGMA busy_timeout = 30000")  # another process writing the same file waits, not fails
    mode = _set_wal(db)
    if str(mode).lower() != "wal" and str(path) != ":memory:":
        log.warning("SQLite refused WAL mode for %s (journal_mode=%s)", path, mode)
    db.execute("PRAGMA synchronous = FULL")
    db.execute("PRAGMA foreign_keys = ON")
    return db


def _dump(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _item_ids(items: list[dict[str, Any]], param: str) -> list[str]:
    ids = []
    for i, item in enumerate(items):
        item_id = item.get("id") if isinstance(item, dict) else None
        if not isinstance(item_id, str) or not item_id:
            raise InvalidRequest(f"item {i} has no id", param=param)
        ids.append(item_id)
    return ids


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= 100:
        raise InvalidRequest(f"limit must be between 1 and 100, got {limit}", param="limit")


class SqliteStore:
    """``Store`` on one SQLite file, ``default_db_path()`` unless given. The constructor returns at
    once; the file is opened (and migrated) on the worker thread before any other call reaches it."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path).expanduser() if path is not None else default_db_path()
        self._db: sqlite3.Connection | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="midtier-sqlite")
        self._opened: Future[None] = self._pool.submit(self._open)
        self._closed = False

    # -- the worker thread ------------------------------------------------------------------------
    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = connect(self.path)
        try:
            migrate(db)
        except BaseException:
            db.close()
            raise
        self._db = db

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise RuntimeError("the store is closed")
        if not self._opened.done():
            await asyncio.wrap_future(self._opened)
        self._opened.result()  # re-raises an error from opening the file

        def call() -> T:
            assert self._db is not None
            return fn(self._db)

        return await asyncio.wrap_future(self._pool.submit(call))

    @staticmethod
    def _write(db: sqlite3.Connection, body: Callable[[], T]) -> T:
        """``body`` in one write transaction; committed (durably) before this returns."""
        db.execute("BEGIN IMMEDIATE")
        try:
            result = body()
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result

    @staticmethod
    def _read(db: sqlite3.Connection, body: Callable[[], T]) -> T:
        """``body`` on one snapshot, for reads that take more than one statement."""
        db.execute("BEGIN")
        try:
            return body()
        finally:
            db.execute("COMMIT")

    # -- responses --------------------------------------------------------------------------------
    async def put_response(self, stored: StoredResponse) -> None:
        ids = _item_ids(stored.input_items, "input")
        created_at = stored.created_at or int(stored.response.get("created_at") or time.time())
        row = (stored.id, created_at, stored.previous_response_id, stored.conversation_id, _dump(stored.response))
        items = [(stored.id, i, item_id, _dump(item)) for i, (item_id, item) in enumerate(zip(ids, stored.input_items, strict=True))]

        def body(db: sqlite3.Connection) -> None:
            def write() -> None:
                db.execute(
                    "INSERT INTO responses (id, created_at, previous_response_id, conversation_id, response)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET created_at = excluded.created_at,"
                    " previous_response_id = excluded.previous_response_id,"
                    " conversation_id = excluded.conversation_id, response = excluded.response", row)
                db.execute("DELETE FROM response_items WHERE response_id = ?", (stored.id,))
                db.executemany("INSERT INTO response_items (response_id, position, item_id, item) VALUES (?, ?, ?, ?)",
                               items)

            self._write(db, write)

        await self._run(body)

    async def get_response(self, response_id: str) -> StoredResponse | None:
        def body(db: sqlite3.Connection) -> StoredResponse | None:
            def read() -> StoredResponse | None:
                row = db.execute("SELECT id, created_at, previous_response_id, conversation_id, response"
                                 " FROM responses WHERE id = ?", (response_id,)).fetchone()
                if row is None:
                    return None
                items = db.execute("SELECT item FROM response_items WHERE response_id = ? ORDER BY position",
                                   (response_id,)).fetchall()
                return _response(row, [json.loads(i) for (i,) in items])

            return self._read(db, read)

        return await self._run(body)

    async def delete_response(self, response_id: str) -> bool:
        def body(db: sqlite3.Connection) -> bool:
            return self._write(db, lambda: db.execute("DELETE FROM responses WHERE id = ?",
                                                      (response_id,)).rowcount > 0)

        return await self._run(body)

    async def chain(self, response_id: str) -> list[StoredResponse]:
        # one recursive walk along previous_response_id; depth 0 is the response asked for
        walk = ("WITH RECURSIVE walk(id, depth) AS (SELECT id, 0 FROM responses WHERE id = ?"
                " UNION ALL SELECT r.previous_response_id, walk.depth + 1 FROM responses r JOIN walk ON r.id = walk.id"
                f" WHERE r.previous_response_id IS NOT NULL AND walk.depth < {MAX_CHAIN})")

        def body(db: sqlite3.Connection) -> list[StoredResponse]:
            def read() -> list[StoredResponse]:
                rows = db.execute(walk + " SELECT r.id, r.created_at, r.previous_response_id, r.conversation_id,"
                                  " r.response FROM walk JOIN responses r ON r.id = walk.id ORDER BY walk.depth DESC",
                                  (response_id,)).fetchall()
                found: dict[str, tuple[Any, ...]] = {}
                for row in rows:  # a cycle would repeat ids: keep each response once
                    found.setdefault(row[0], row)
                items: dict[str, list[dict[str, Any]]] = {rid: [] for rid in found}
                if found:
                    for rid, item in db.execute(
                            walk + " SELECT i.response_id, i.item FROM (SELECT DISTINCT id FROM walk) w"
                            " JOIN response_items i ON i.response_id = w.id ORDER BY i.response_id, i.position",
                            (response_id,)):
                        items[rid].append(json.loads(item))
                return [_response(row, items[rid]) for rid, row in found.items()]

            return self._read(db, read)

        return await self._run(body)

    async def list_input_items(self, response_id: str, *, after: str | None = None, limit: int = 20,
                               order: Order = "desc") -> Page:
        _check_limit(limit)

        def body(db: sqlite3.Connection) -> Page:
            def read() -> Page:
                if db.execute("SELECT 1 FROM responses WHERE id = ?", (response_id,)).fetchone() is None:
                    raise NotFound(f"no response with id {response_id!r}", param="response_id")
                return _page(db, "response_items", "response_id", response_id, after, limit, order)

            return self._read(db, read)

        return await self._run(body)

    # -- conversations ----------------------------------------------------------------------------
    async def create_conversation(self, conversation: StoredConversation, items: list[dict[str, Any]]) -> None:
        ids = _item_ids(items, "items")
        row = (conversation.id, conversation.created_at or int(time.time()), _dump(conversation.metadata))

        def body(db: sqlite3.Connection) -> None:
            def write() -> None:
                try:
                    db.execute("INSERT INTO conversations (id, created_at, metadata) VALUES (?, ?, ?)", row)
                except sqlite3.IntegrityError:
                    raise Conflict(f"a conversation with id {conversation.id!r} exists") from None
                _append(db, conversation.id, ids, items, start=0)

            self._write(db, write)

        await self._run(body)

    async def get_conversation(self, conversation_id: str) -> StoredConversation | None:
        def body(db: sqlite3.Connection) -> StoredConversation | None:
            row = db.execute("SELECT id, created_at, metadata FROM conversations WHERE id = ?",
                             (conversation_id,)).fetchone()
            return StoredConversation(row[0], row[1], json.loads(row[2])) if row else None

        return await self._run(body)

    async def update_conversation(self, conversation_id: str, metadata: dict[str, str]) -> StoredConversation | None:
        def body(db: sqlite3.Connection) -> StoredConversation | None:
            def write() -> StoredConversation | None:
                rows = db.execute("UPDATE conversations SET metadata = ? WHERE id = ? RETURNING id, created_at, metadata",
                                  (_dump(metadata), conversation_id)).fetchall()
                return StoredConversation(rows[0][0], rows[0][1], json.loads(rows[0][2])) if rows else None

            return self._write(db, write)

        return await self._run(body)

    async def delete_conversation(self, conversation_id: str) -> bool:
        def body(db: sqlite3.Connection) -> bool:
            return self._write(db, lambda: db.execute("DELETE FROM conversations WHERE id = ?",
                                                      (conversation_id,)).rowcount > 0)

        return await self._run(body)

    async def add_items(self, conversation_id: str, items: list[dict[str, Any]]) -> None:
        ids = _item_ids(items, "items")

        def body(db: sqlite3.Connection) -> None:
            def write() -> None:
                if db.execute("SELECT 1 FROM conversations WHERE id = ?", (conversation_id,)).fetchone() is None:
                    raise NotFound(f"no conversation with id {conversation_id!r}", param="conversation_id")
                (last,) = db.execute("SELECT MAX(position) FROM conversation_items WHERE conversation_id = ?",
                                     (conversation_id,)).fetchone()
                _append(db, conversation_id, ids, items, start=0 if last is None else last + 1)

            self._write(db, write)

        await self._run(body)

    async def list_items(self, conversation_id: str, *, after: str | None = None, limit: int = 20,
                         order: Order = "asc") -> Page:
        _check_limit(limit)

        def body(db: sqlite3.Connection) -> Page:
            def read() -> Page:
                if db.execute("SELECT 1 FROM conversations WHERE id = ?", (conversation_id,)).fetchone() is None:
                    raise NotFound(f"no conversation with id {conversation_id!r}", param="conversation_id")
                return _page(db, "conversation_items", "conversation_id", conversation_id, after, limit, order)

            return self._read(db, read)

        return await self._run(body)

    async def get_item(self, conversation_id: str, item_id: str) -> dict[str, Any] | None:
        def body(db: sqlite3.Connection) -> dict[str, Any] | None:
            row = db.execute("SELECT item FROM conversation_items WHERE conversation_id = ? AND item_id = ?",
                             (conversation_id, item_id)).fetchone()
            return json.loads(row[0]) if row else None

        return await self._run(body)

    async def delete_item(self, conversation_id: str, item_id: str) -> bool:
        def body(db: sqlite3.Connection) -> bool:
            return self._write(db, lambda: db.execute(
                "DELETE FROM conversation_items WHERE conversation_id = ? AND item_id = ?",
                (conversation_id, item_id)).rowcount > 0)

        return await self._run(body)

    async def all_items(self, conversation_id: str) -> list[dict[str, Any]]:
        def body(db: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = db.execute("SELECT item FROM conversation_items WHERE conversation_id = ? ORDER BY position",
                              (conversation_id,)).fetchall()
            return [json.loads(item) for (item,) in rows]

        return await self._run(body)

    # -- records and blobs ------------------------------------------------------------------------
    async def put_record(self, kind: str, record_id: str, data: dict[str, Any], *, owner: str | None = None,
                         created_at: int = 0) -> None:
        row = (kind, record_id, owner, created_at or int(time.time()), _dump(data))

        def body(db: sqlite3.Connection) -> None:
            self._write(db, lambda: db.execute(
                "INSERT INTO records (kind, id, owner, created_at, data) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (kind, id) DO UPDATE SET owner = excluded.owner, data = excluded.data", row))

        await self._run(body)

    async def get_record(self, kind: str, record_id: str) -> dict[str, Any] | None:
        def body(db: sqlite3.Connection) -> dict[str, Any] | None:
            row = db.execute("SELECT data FROM records WHERE kind = ? AND id = ?", (kind, record_id)).fetchone()
            return json.loads(row[0]) if row else None

        return await self._run(body)

    async def delete_record(self, kind: str, record_id: str) -> bool:
        def body(db: sqlite3.Connection) -> bool:
            return self._write(db, lambda: db.execute("DELETE FROM records WHERE kind = ? AND id = ?",
                                                      (kind, record_id)).rowcount > 0)

        return await self._run(body)

    async def list_records(self, kind: str, *, owner: str | None = None, after: str | None = None, limit: int = 20,
                           order: Order = "desc") -> Page:
        _check_limit(limit)
        if order not in ("asc", "desc"):
            raise InvalidRequest(f"order must be 'asc' or 'desc', got {order!r}", param="order")

        def body(db: sqlite3.Connection) -> Page:
            def read() -> Page:
                where, args = "kind = ?", [kind]
                if owner is not None:
                    where += " AND owner = ?"
                    args.append(owner)
                if after is not None:
                    row = db.execute("SELECT seq FROM records WHERE kind = ? AND id = ?", (kind, after)).fetchone()
                    if row is None:
                        raise NotFound(f"no object with id {after!r}", param="after")
                    where += " AND seq > ?" if order == "asc" else " AND seq < ?"
                    args.append(row[0])
                direction = "ASC" if order == "asc" else "DESC"
                rows = db.execute(f"SELECT id, data FROM records WHERE {where} ORDER BY seq {direction} LIMIT ?",
                                  (*args, limit + 1)).fetchall()
                data = [json.loads(d) for _, d in rows[:limit]]
                ids = [i for i, _ in rows[:limit]]
                return Page(data, len(rows) > limit, ids[0] if ids else None, ids[-1] if ids else None)

            return self._read(db, read)

        return await self._run(body)

    async def all_records(self, kind: str, owner: str) -> list[dict[str, Any]]:
        def body(db: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = db.execute("SELECT data FROM records WHERE kind = ? AND owner = ? ORDER BY seq",
                              (kind, owner)).fetchall()
            return [json.loads(d) for (d,) in rows]

        return await self._run(body)

    async def delete_owned(self, kind: str, owner: str) -> int:
        def body(db: sqlite3.Connection) -> int:
            return self._write(db, lambda: db.execute("DELETE FROM records WHERE kind = ? AND owner = ?",
                                                      (kind, owner)).rowcount)

        return await self._run(body)

    async def put_blob(self, blob_id: str, data: bytes) -> None:
        def body(db: sqlite3.Connection) -> None:
            self._write(db, lambda: db.execute(
                "INSERT INTO blobs (id, data) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET data = excluded.data",
                (blob_id, data)))

        await self._run(body)

    async def get_blob(self, blob_id: str) -> bytes | None:
        def body(db: sqlite3.Connection) -> bytes | None:
            row = db.execute("SELECT data FROM blobs WHERE id = ?", (blob_id,)).fetchone()
            return bytes(row[0]) if row else None

        return await self._run(body)

    async def delete_blob(self, blob_id: str) -> bool:
        def body(db: sqlite3.Connection) -> bool:
            return self._write(db, lambda: db.execute("DELETE FROM blobs WHERE id = ?", (blob_id,)).rowcount > 0)

        return await self._run(body)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True

        def shut() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await asyncio.wrap_future(self._pool.submit(shut))
        self._pool.shutdown(wait=False)


def _response(row: tuple[Any, ...], items: list[dict[str, Any]]) -> StoredResponse:
    rid, created_at, previous, conversation, response = row
    return StoredResponse(rid, json.loads(response), items, previous, conversation, created_at)


def _append(db: sqlite3.Connection, conversation_id: str, ids: list[str], items: list[dict[str, Any]],
            start: int) -> None:
    rows = [(conversation_id, start + i, item_id, _dump(item)) for i, (item_id, item) in enumerate(zip(ids, items, strict=True))]
    try:
        db.executemany("INSERT INTO conversation_items (conversation_id, position, item_id, item) VALUES (?, ?, ?, ?)",
                       rows)
    except sqlite3.IntegrityError:
        raise Conflict(f"an item id is already in conversation {conversation_id!r}", param="items") from None


def _page(db: sqlite3.Connection, table: str, owner_column: str, owner: str, after: str | None, limit: int,
          order: Order) -> Page:
    """One page of ``table``'s items of ``owner`` (OpenAI semantics: ``after`` is an item id, exclusive)."""
    if order not in ("asc", "desc"):
        raise InvalidRequest(f"order must be 'asc' or 'desc', got {order!r}", param="order")
    where, args = f"{owner_column} = ?", [owner]
    if after is not None:
        row = db.execute(f"SELECT MIN(position) FROM {table} WHERE {owner_column} = ? AND item_id = ?",
                         (owner, after)).fetchone()
        if row[0] is None:
            raise NotFound(f"no item with id {after!r}", param="after")
        where += " AND position > ?" if order == "asc" else " AND position < ?"
        args.append(row[0])
    direction = "ASC" if order == "asc" else "DESC"
    rows = db.execute(f"SELECT item_id, item FROM {table} WHERE {where} ORDER BY position {direction} LIMIT ?",
                      (*args, limit + 1)).fetchall()
    data = [json.loads(item) for _, item in rows[:limit]]
    ids = [item_id for item_id, _ in rows[:limit]]
    return Page(data, len(rows) > limit, ids[0] if ids else None, ids[-1] if ids else None)
