"""PostgreSQL: one database that several midtier replicas share (``kind = "postgres"``).

The semantics are SQLite's (``store/sqlite.py`` is the reference): the same pagination, order,
conflicts and cascades, and every write is committed before its coroutine returns (PostgreSQL
answers a commit once its WAL is flushed, under the default ``synchronous_commit = on``).
Objects are kept as the same compact JSON text in ``TEXT`` columns, never ``JSONB``, which
would reorder keys: an object reads back byte for byte as the API returned it. Blobs are
``BYTEA``; records keep their insertion order in an identity column.

The driver is asyncpg with a connection pool, opened on the first call (in the event loop
that makes it) so the constructor needs no loop. Opening applies the schema migrations the
database has not seen, each with its version bump in one transaction, under an advisory lock:
replicas that start together migrate once, and a database written by a newer midtier is
refused. The version is in the one-row table ``schema_version``.

When PostgreSQL cannot be reached, a call raises ``StoreUnavailable`` (503) and the next one
tries again; nothing is retried behind the caller's back, as a write may have landed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

try:
    import asyncpg
except ImportError as exc:  # an optional dependency: pip install 'midtier[postgres]'
    raise ImportError("the PostgreSQL store needs asyncpg: pip install 'midtier[postgres]'") from exc

from midtier.core.errors import Conflict, InvalidRequest, MidtierError, NotFound
from midtier.store.base import Order, Page, StoredConversation, StoredResponse
from midtier.store.sqlite import MAX_CHAIN, SchemaTooNew, _check_limit, _dump, _item_ids

log = logging.getLogger(__name__)

T = TypeVar("T")
Connection = Any  # asyncpg.Connection (a pool hands out a proxy of it)

MIGRATION_LOCK = int.from_bytes(b"midtier\x01", "big")  # the advisory lock key that serialises migrations

_V1 = """
CREATE TABLE responses (
    id TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL,
    previous_response_id TEXT,
    conversation_id TEXT,
    response TEXT NOT NULL);
CREATE INDEX responses_by_conversation ON responses (conversation_id, created_at);
CREATE TABLE response_items (
    response_id TEXT NOT NULL REFERENCES responses (id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    item_id TEXT NOT NULL,
    item TEXT NOT NULL,
    PRIMARY KEY (response_id, position));
CREATE INDEX response_items_by_id ON response_items (response_id, item_id);
CREATE TABLE conversations (
    id TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}');
CREATE TABLE conversation_items (
    conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    item_id TEXT NOT NULL,
    item TEXT NOT NULL,
    PRIMARY KEY (conversation_id, position),
    UNIQUE (conversation_id, item_id));
CREATE TABLE records (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    owner TEXT,
    created_at BIGINT NOT NULL,
    data TEXT NOT NULL,
    UNIQUE (kind, id));
CREATE INDEX records_by_owner ON records (kind, owner, seq);
CREATE TABLE blobs (id TEXT PRIMARY KEY, data BYTEA NOT NULL);
"""

# MIGRATIONS[i] is the SQL that takes a database from version i to i + 1; append, never edit.
MIGRATIONS: list[str] = [_V1]
SCHEMA_VERSION = len(MIGRATIONS)

# PostgreSQL is down, restarting, out of connections or unreachable: the store is unavailable
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError)
# a configuration the server refuses (no such database, bad password): also only seen when connecting
_REFUSED: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.InvalidAuthorizationSpecificationError, asyncpg.exceptions.InvalidCatalogNameError)


class StoreUnavailable(MidtierError):
    """The store's database cannot be reached right now; the request may be tried again."""

    status = 503
    code = "store_unavailable"


async def migrate(conn: Connection, migrations: Sequence[str] = MIGRATIONS) -> int:
    """Apply the migrations the database has not seen, each with its version bump in one
    transaction, under an advisory lock so concurrent replicas migrate once; the version."""
    while True:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await conn.execute("CREATE TABLE IF NOT EXISTS schema_version ("
                               " one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one), version INTEGER NOT NULL)")
            await conn.execute("INSERT INTO schema_version (version) VALUES (0) ON CONFLICT DO NOTHING")
            version: int = await conn.fetchval("SELECT version FROM schema_version")
            if version > len(migrations):
                raise SchemaTooNew(f"the store's schema is version {version}; this midtier knows up to {len(migrations)}")
            if version < len(migrations):
                await conn.execute(migrations[version])
                await conn.execute("UPDATE schema_version SET version = $1", version + 1)
        if version == len(migrations):
            return version
        log.info("store migrated to schema version %d", version + 1)


def _count(status: str) -> int:
    """The row count of a command status such as ``DELETE 3``."""
    return int(status.rsplit(" ", 1)[-1])


class PostgresStore:
    """``Store`` on a PostgreSQL database. ``dsn`` is a libpq URI or key/value string
    (``postgresql://midtier@db:5432/midtier``); without one, libpq's ``PG*`` environment
    variables say where. The pool holds ``min_size`` to ``max_size`` connections;
    ``statement_cache_size=0`` is for a transaction-pooling PgBouncer in front."""

    def __init__(self, dsn: str | None = None, *, min_size: int = 1, max_size: int = 10,
                 connect_timeout: float = 10.0, acquire_timeout: float = 30.0,
                 statement_cache_size: int = 100) -> None:
        if not 0 <= min_size <= max_size or max_size < 1:
            raise ValueError(f"need 0 <= min_size <= max_size and max_size >= 1, got {min_size}, {max_size}")
        self.dsn = dsn
        self.min_size, self.max_size = min_size, max_size
        self.connect_timeout, self.acquire_timeout = connect_timeout, acquire_timeout
        self.statement_cache_size = statement_cache_size
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()
        self._closed = False

    # -- the pool ---------------------------------------------------------------------------------
    async def _ready(self) -> asyncpg.Pool:
        if self._closed:
            raise RuntimeError("the store is closed")
        if self._pool is not None:
            return self._pool
        async with self._opening:
            if self._pool is None and not self._closed:
                self._pool = await self._open()
        if self._pool is None:
            raise RuntimeError("the store is closed")
        return self._pool

    async def _open(self) -> asyncpg.Pool:
        try:
            pool = await asyncpg.create_pool(
                self.dsn, min_size=self.min_size, max_size=self.max_size, timeout=self.connect_timeout,
                statement_cache_size=self.statement_cache_size, server_settings={"application_name": "midtier"})
        except (*_UNAVAILABLE, *_REFUSED) as exc:
            log.error("cannot open the PostgreSQL store: %s: %s", type(exc).__name__, exc)
            raise StoreUnavailable("the store (PostgreSQL) is unavailable; try again later") from exc
        try:
            async with pool.acquire(timeout=self.acquire_timeout) as conn:
                version = await migrate(conn)
        except BaseException as exc:
            pool.terminate()
            if isinstance(exc, _UNAVAILABLE):
                log.error("cannot migrate the PostgreSQL store: %s: %s", type(exc).__name__, exc)
                raise StoreUnavailable("the store (PostgreSQL) is unavailable; try again later") from exc
            raise
        log.info("PostgreSQL store open (schema version %d)", version)
        return pool

    @asynccontextmanager
    async def _acquire(self) -> AsyncIterator[Connection]:
        pool = await self._ready()
        try:
            async with pool.acquire(timeout=self.acquire_timeout) as conn:
                yield conn
        except _UNAVAILABLE as exc:
            log.error("PostgreSQL store call failed: %s: %s", type(exc).__name__, exc)
            raise StoreUnavailable("the store (PostgreSQL) is unavailable; try again later") from exc
        except (asyncpg.exceptions.CharacterNotInRepertoireError,
                asyncpg.exceptions.UntranslatableCharacterError) as exc:
            raise InvalidRequest(f"a string cannot be stored: {exc}") from exc  # a NUL in an id

    async def _run(self, body: Callable[[Connection], Awaitable[T]]) -> T:
        """``body`` on one connection, each statement committed on its own (one-statement calls)."""
        async with self._acquire() as conn:
            return await body(conn)

    async def _write(self, body: Callable[[Connection], Awaitable[T]]) -> T:
        """``body`` in one transaction, committed (durably) before this returns."""
        async with self._acquire() as conn, conn.transaction():
            return await body(conn)

    async def _read(self, body: Callable[[Connection], Awaitable[T]]) -> T:
        """``body`` on one snapshot, for reads that take more than one statement."""
        async with self._acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            return await body(conn)

    # -- responses --------------------------------------------------------------------------------
    async def put_response(self, stored: StoredResponse) -> None:
        ids = _item_ids(stored.input_items, "input")
        created_at = stored.created_at or int(stored.response.get("created_at") or time.time())
        items = [(stored.id, i, item_id, _dump(item)) for i, (item_id, item) in enumerate(zip(ids, stored.input_items, strict=True))]

        async def write(db: Connection) -> None:
            await db.execute(
                "INSERT INTO responses (id, created_at, previous_response_id, conversation_id, response)"
                " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO UPDATE SET created_at = excluded.created_at,"
                " previous_response_id = excluded.previous_response_id,"
                " conversation_id = excluded.conversation_id, response = excluded.response",
                stored.id, created_at, stored.previous_response_id, stored.conversation_id, _dump(stored.response))
            await db.execute("DELETE FROM response_items WHERE response_id = $1", stored.id)
            if items:
                await db.executemany("INSERT INTO response_items (response_id, position, item_id, item)"
                                     " VALUES ($1, $2, $3, $4)", items)

        await self._write(write)

    async def get_response(self, response_id: str) -> StoredResponse | None:
        async def read(db: Connection) -> StoredResponse | None:
            row = await db.fetchrow("SELECT id, created_at, previous_response_id, conversation_id, response"
                                    " FROM responses WHERE id = $1", response_id)
            if row is None:
                return None
            items = await db.fetch("SELECT item FROM response_items WHERE response_id = $1 ORDER BY position",
                                   response_id)
            return _response(row, [json.loads(i["item"]) for i in items])

        return await self._read(read)

    async def delete_response(self, response_id: str) -> bool:
        async def write(db: Connection) -> bool:
            return _count(await db.execute("DELETE FROM responses WHERE id = $1", response_id)) > 0

        return await self._run(write)

    async def chain(self, response_id: str) -> list[StoredResponse]:
        # one recursive walk along previous_response_id; depth 0 is the response asked for
        walk = ("WITH RECURSIVE walk(id, depth) AS (SELECT id, 0 FROM responses WHERE id = $1"
                " UNION ALL SELECT r.previous_response_id, walk.depth + 1 FROM responses r JOIN walk ON r.id = walk.id"
                f" WHERE r.previous_response_id IS NOT NULL AND walk.depth < {MAX_CHAIN})")

        async def read(db: Connection) -> list[StoredResponse]:
            rows = await db.fetch(walk + " SELECT r.id, r.created_at, r.previous_response_id, r.conversation_id,"
                                  " r.response FROM walk JOIN responses r ON r.id = walk.id ORDER BY walk.depth DESC",
                                  response_id)
            found: dict[str, Any] = {}
            for row in rows:  # a cycle would repeat ids: keep each response once
                found.setdefault(row["id"], row)
            items: dict[str, list[dict[str, Any]]] = {rid: [] for rid in found}
            if found:
                for rid, item in await db.fetch(
                        walk + " SELECT i.response_id, i.item FROM (SELECT DISTINCT id FROM walk) w"
                        " JOIN response_items i ON i.response_id = w.id ORDER BY i.response_id, i.position",
                        response_id):
                    items[rid].append(json.loads(item))
            return [_response(row, items[rid]) for rid, row in found.items()]

        return await self._read(read)

    async def list_input_items(self, response_id: str, *, after: str | None = None, limit: int = 20,
                               order: Order = "desc") -> Page:
        _check_limit(limit)

        async def read(db: Connection) -> Page:
            if await db.fetchval("SELECT 1 FROM responses WHERE id = $1", response_id) is None:
                raise NotFound(f"no response with id {response_id!r}", param="response_id")
            return await _page(db, "response_items", "response_id", response_id, after, limit, order)

        return await self._read(read)

    # -- conversations ----------------------------------------------------------------------------
    async def create_conversation(self, conversation: StoredConversation, items: list[dict[str, Any]]) -> None:
        ids = _item_ids(items, "items")
        created_at = conversation.created_at or int(time.time())

        async def write(db: Connection) -> None:
            status = await db.execute("INSERT INTO conversations (id, created_at, metadata) VALUES ($1, $2, $3)"
                                      " ON CONFLICT (id) DO NOTHING",
                                      conversation.id, created_at, _dump(conversation.metadata))
            if _count(status) == 0:
                raise Conflict(f"a conversation with id {conversation.id!r} exists")
            await _append(db, conversation.id, ids, items, start=0)

        await self._write(write)

    async def get_conversation(self, conversation_id: str) -> StoredConversation | None:
        async def read(db: Connection) -> StoredConversation | None:
            row = await db.fetchrow("SELECT id, created_at, metadata FROM conversations WHERE id = $1", conversation_id)
            return _conversation(row) if row else None

        return await self._run(read)

    async def update_conversation(self, conversation_id: str, metadata: dict[str, str]) -> StoredConversation | None:
        async def write(db: Connection) -> StoredConversation | None:
            row = await db.fetchrow("UPDATE conversations SET metadata = $1 WHERE id = $2"
                                    " RETURNING id, created_at, metadata", _dump(metadata), conversation_id)
            return _conversation(row) if row else None

        return await self._run(write)

    async def delete_conversation(self, conversation_id: str) -> bool:
        async def write(db: Connection) -> bool:
            return _count(await db.execute("DELETE FROM conversations WHERE id = $1", conversation_id)) > 0

        return await self._run(write)

    async def add_items(self, conversation_id: str, items: list[dict[str, Any]]) -> None:
        ids = _item_ids(items, "items")

        async def write(db: Connection) -> None:
            # the row lock makes appends to one conversation take turns, across replicas too
            if await db.fetchval("SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE", conversation_id) is None:
                raise NotFound(f"no conversation with id {conversation_id!r}", param="conversation_id")
            last = await db.fetchval("SELECT MAX(position) FROM conversation_items WHERE conversation_id = $1",
                                     conversation_id)
            await _append(db, conversation_id, ids, items, start=0 if last is None else last + 1)

        await self._write(write)

    async def list_items(self, conversation_id: str, *, after: str | None = None, limit: int = 20,
                         order: Order = "asc") -> Page:
        _check_limit(limit)

        async def read(db: Connection) -> Page:
            if await db.fetchval("SELECT 1 FROM conversations WHERE id = $1", conversation_id) is None:
                raise NotFound(f"no conversation with id {conversation_id!r}", param="conversation_id")
            return await _page(db, "conversation_items", "conversation_id", conversation_id, after, limit, order)

        return await self._read(read)

    async def get_item(self, conversation_id: str, item_id: str) -> dict[str, Any] | None:
        async def read(db: Connection) -> dict[str, Any] | None:
            item = await db.fetchval("SELECT item FROM conversation_items WHERE conversation_id = $1 AND item_id = $2",
                                     conversation_id, item_id)
            return json.loads(item) if item is not None else None

        return await self._run(read)

    async def delete_item(self, conversation_id: str, item_id: str) -> bool:
        async def write(db: Connection) -> bool:
            return _count(await db.execute("DELETE FROM conversation_items WHERE conversation_id = $1"
                                           " AND item_id = $2", conversation_id, item_id)) > 0

        return await self._run(write)

    async def all_items(self, conversation_id: str) -> list[dict[str, Any]]:
        async def read(db: Connection) -> list[dict[str, Any]]:
            rows = await db.fetch("SELECT item FROM conversation_items WHERE conversation_id = $1 ORDER BY position",
                                  conversation_id)
            return [json.loads(row["item"]) for row in rows]

        return await self._run(read)

    # -- records and blobs ------------------------------------------------------------------------
    async def put_record(self, kind: str, record_id: str, data: dict[str, Any], *, owner: str | None = None,
                         created_at: int = 0) -> None:
        async def write(db: Connection) -> None:
            await db.execute("INSERT INTO records (kind, id, owner, created_at, data) VALUES ($1, $2, $3, $4, $5)"
                             " ON CONFLICT (kind, id) DO UPDATE SET owner = excluded.owner, data = excluded.data",
                             kind, record_id, owner, created_at or int(time.time()), _dump(data))

        await self._run(write)

    async def get_record(self, kind: str, record_id: str) -> dict[str, Any] | None:
        async def read(db: Connection) -> dict[str, Any] | None:
            data = await db.fetchval("SELECT data FROM records WHERE kind = $1 AND id = $2", kind, record_id)
            return json.loads(data) if data is not None else None

        return await self._run(read)

    async def delete_record(self, kind: str, record_id: str) -> bool:
        async def write(db: Connection) -> bool:
            return _count(await db.execute("DELETE FROM records WHERE kind = $1 AND id = $2", kind, record_id)) > 0

        return await self._run(write)

    async def list_records(self, kind: str, *, owner: str | None = None, after: str | None = None, limit: int = 20,
                           order: Order = "desc") -> Page:
        _check_limit(limit)
        if order not in ("asc", "desc"):
            raise InvalidRequest(f"order must be 'asc' or 'desc', got {order!r}", param="order")

        async def read(db: Connection) -> Page:
            where, args = "kind = $1", list[Any]([kind])
            if owner is not None:
                args.append(owner)
                where += f" AND owner = ${len(args)}"
            if after is not None:
                seq = await db.fetchval("SELECT seq FROM records WHERE kind = $1 AND id = $2", kind, after)
                if seq is None:
                    raise NotFound(f"no object with id {after!r}", param="after")
                args.append(seq)
                where += f" AND seq {'>' if order == 'asc' else '<'} ${len(args)}"
            direction = "ASC" if order == "asc" else "DESC"
            args.append(limit + 1)
            rows = await db.fetch(f"SELECT id, data FROM records WHERE {where} ORDER BY seq {direction}"
                                  f" LIMIT ${len(args)}", *args)
            return _page_of([(row["id"], row["data"]) for row in rows], limit)

        return await self._read(read)

    async def all_records(self, kind: str, owner: str) -> list[dict[str, Any]]:
        async def read(db: Connection) -> list[dict[str, Any]]:
            rows = await db.fetch("SELECT data FROM records WHERE kind = $1 AND owner = $2 ORDER BY seq", kind, owner)
            return [json.loads(row["data"]) for row in rows]

        return await self._run(read)

    async def delete_owned(self, kind: str, owner: str) -> int:
        async def write(db: Connection) -> int:
            return _count(await db.execute("DELETE FROM records WHERE kind = $1 AND owner = $2", kind, owner))

        return await self._run(write)

    async def put_blob(self, blob_id: str, data: bytes) -> None:
        async def write(db: Connection) -> None:
            await db.execute("INSERT INTO blobs (id, data) VALUES ($1, $2)"
                             " ON CONFLICT (id) DO UPDATE SET data = excluded.data", blob_id, bytes(data))

        await self._run(write)

    async def get_blob(self, blob_id: str) -> bytes | None:
        async def read(db: Connection) -> bytes | None:
            data = await db.fetchval("SELECT data FROM blobs WHERE id = $1", blob_id)
            return bytes(data) if data is not None else None

        return await self._run(read)

    async def delete_blob(self, blob_id: str) -> bool:
        async def write(db: Connection) -> bool:
            return _count(await db.execute("DELETE FROM blobs WHERE id = $1", blob_id)) > 0

        return await self._run(write)

    async def close(self) -> None:
        """Close the pool (waiting up to 10 s for calls in flight); later calls raise ``RuntimeError``."""
        if self._closed:
            return
        self._closed = True
        async with self._opening:  # an opening in progress finishes first
            pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), timeout=10)
            except TimeoutError:
                log.warning("PostgreSQL store: calls still running at close; their connections are cut")
                pool.terminate()


def _response(row: Any, items: list[dict[str, Any]]) -> StoredResponse:
    return StoredResponse(row["id"], json.loads(row["response"]), items, row["previous_response_id"],
                          row["conversation_id"], row["created_at"])


def _conversation(row: Any) -> StoredConversation:
    return StoredConversation(row["id"], row["created_at"], json.loads(row["metadata"]))


async def _append(db: Connection, conversation_id: str, ids: list[str], items: list[dict[str, Any]],
                  start: int) -> None:
    if not items:
        return
    rows = [(conversation_id, start + i, item_id, _dump(item)) for i, (item_id, item) in enumerate(zip(ids, items, strict=True))]
    try:
        await db.executemany("INSERT INTO conversation_items (conversation_id, position, item_id, item)"
                             " VALUES ($1, $2, $3, $4)", rows)
    except asyncpg.UniqueViolationError:
        raise Conflict(f"an item id is already in conversation {conversation_id!r}", param="items") from None


async def _page(db: Connection, table: str, owner_column: str, owner: str, after: str | None, limit: int,
                order: Order) -> Page:
    """One page of ``table``'s items of ``owner`` (OpenAI semantics: ``after`` is an item id, exclusive)."""
    if order not in ("asc", "desc"):
        raise InvalidRequest(f"order must be 'asc' or 'desc', got {order!r}", param="order")
    where, args = f"{owner_column} = $1", list[Any]([owner])
    if after is not None:
        position = await db.fetchval(f"SELECT MIN(position) FROM {table} WHERE {owner_column} = $1 AND item_id = $2",
                                     owner, after)
        if position is None:
            raise NotFound(f"no item with id {after!r}", param="after")
        args.append(position)
        where += f" AND position {'>' if order == 'asc' else '<'} $2"
    direction = "ASC" if order == "asc" else "DESC"
    args.append(limit + 1)
    rows = await db.fetch(f"SELECT item_id, item FROM {table} WHERE {where} ORDER BY position {direction}"
                          f" LIMIT ${len(args)}", *args)
    return _page_of([(row["item_id"], row["item"]) for row in rows], limit)


def _page_of(rows: list[tuple[str, str]], limit: int) -> Page:
    """A page from up to ``limit + 1`` (id, JSON) rows: the extra one only says there is more."""
    data = [json.loads(text) for _, text in rows[:limit]]
    ids = [row_id for row_id, _ in rows[:limit]]
    return Page(data, len(rows) > limit, ids[0] if ids else None, ids[-1] if ids else None)
