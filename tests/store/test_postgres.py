"""The store contract on a real PostgreSQL server (tests/store/conftest.py starts it), and what
only a shared database adds: replicas that see each other's writes, one migration when they
start together, data that outlives a killed process."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import asyncpg
import pytest

from midtier.core.errors import InvalidRequest
from midtier.store import REGISTRY, StoredConversation, StoredResponse, open_store
from midtier.store.postgres import MIGRATIONS, SCHEMA_VERSION, PostgresStore, StoreUnavailable, migrate
from midtier.store.sqlite import SchemaTooNew

from .test_store import MakeStore, StoreContract, ids, msg, opened, response


async def query(dsn: str, sql: str, *args: Any) -> list[Any]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


class TestPostgresStore(StoreContract):
    @pytest.fixture
    def make_store(self, postgres_dsn: str) -> MakeStore:
        return lambda: PostgresStore(postgres_dsn, max_size=4)

    def test_replicas_see_each_others_writes(self, make_store: MakeStore) -> None:
        """Two stores on one database are two replicas behind a load balancer."""
        async def scenario() -> None:
            async with opened(make_store) as a, opened(make_store) as b:
                await a.put_response(response("resp_1"))
                await b.put_response(response("resp_2", "resp_1"))
                assert [r.id for r in await a.chain("resp_2")] == ["resp_1", "resp_2"]
                await b.put_response(response("resp_1", status="in_progress"))  # b replaces what a wrote
                got = await a.get_response("resp_1")
                assert got is not None and got.response["status"] == "in_progress"

                await a.create_conversation(StoredConversation("conv_1", 1), [])
                await asyncio.gather(*(s.add_items("conv_1", [msg(f"msg_{i}a"), msg(f"msg_{i}b")])
                                       for i, s in enumerate([a, b] * 50)))
                items = ids(await b.all_items("conv_1"))
                assert len(items) == len(set(items)) == 200
                for i in range(100):  # each append kept its two items together and in order
                    assert items.index(f"msg_{i}b") == items.index(f"msg_{i}a") + 1
                assert ids(await a.list_items("conv_1", limit=100)) == items[:100]

                await a.put_record("file", "file_1", {"id": "file_1"})
                await b.put_blob("file_1", b"\x00\xff")
                assert await b.get_record("file", "file_1") == {"id": "file_1"}
                assert await a.get_blob("file_1") == b"\x00\xff"
                assert await b.delete_record("file", "file_1") is True
                assert await a.get_record("file", "file_1") is None

        asyncio.run(scenario())

    def test_replicas_starting_together_migrate_once(self, make_store: MakeStore, postgres_dsn: str) -> None:
        async def scenario() -> None:
            stores = [make_store() for _ in range(6)]
            try:
                await asyncio.gather(*(s.put_record("thing", f"t{i}", {"id": f"t{i}"}) for i, s in enumerate(stores)))
                assert len((await stores[0].list_records("thing", limit=10)).data) == 6
            finally:
                await asyncio.gather(*(s.close() for s in stores))
            assert await query(postgres_dsn, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]

        asyncio.run(scenario())

    def test_concurrent_migrations_take_turns(self, postgres_dsn: str) -> None:
        """Without the advisory lock, two connections would both run the slow first step."""
        steps = ["CREATE TABLE steps (n INTEGER); SELECT pg_sleep(0.3); INSERT INTO steps VALUES (1)",
                 "INSERT INTO steps VALUES (2)"]

        async def one() -> int:
            conn = await asyncpg.connect(postgres_dsn, timeout=10)
            try:
                return await migrate(conn, steps)
            finally:
                await conn.close()

        async def scenario() -> None:
            assert await asyncio.gather(*(one() for _ in range(4))) == [2, 2, 2, 2]
            assert await query(postgres_dsn, "SELECT n FROM steps ORDER BY n") == [(1,), (2,)]

        asyncio.run(scenario())

    def test_migrates_an_older_schema(self, make_store: MakeStore, postgres_dsn: str) -> None:
        """A database at version 1 (with data) is brought up to date when a store opens it."""
        extra = "CREATE TABLE later_table (x INTEGER)"

        async def scenario() -> None:
            conn = await asyncpg.connect(postgres_dsn, timeout=10)
            try:
                assert await migrate(conn, MIGRATIONS[:1]) == 1
                await conn.execute("INSERT INTO responses VALUES ('resp_old', 1, NULL, NULL, '{\"id\":\"resp_old\"}')")
                assert await migrate(conn, [*MIGRATIONS, extra]) == SCHEMA_VERSION + 1
            finally:
                await conn.close()
            async with opened(make_store) as store:  # a newer schema than this midtier knows
                with pytest.raises(SchemaTooNew):
                    await store.get_response("resp_old")
            await query(postgres_dsn, "UPDATE schema_version SET version = $1", SCHEMA_VERSION)
            async with opened(make_store) as store:
                got = await store.get_response("resp_old")
                assert got == StoredResponse("resp_old", {"id": "resp_old"}, [], None, None, 1)

        asyncio.run(scenario())

    def test_json_reads_back_exactly(self, make_store: MakeStore, postgres_dsn: str) -> None:
        """Key order is part of what a client compares: TEXT keeps it (JSONB would sort keys)."""
        body = {"zeta": 1, "id": "resp_1", "alpha": {"y": [3, {"b": 1, "a": 2}], "x": None}, "object": "response"}

        async def scenario() -> None:
            async with opened(make_store) as store:
                await store.put_response(StoredResponse("resp_1", body, [{"type": "message", "id": "msg_1"}]))
                got = await store.get_response("resp_1")
                assert got is not None
                assert json.dumps(got.response) == json.dumps(body)
                assert list(got.input_items[0]) == ["type", "id"]
                await store.put_record("file", "f", {"z": 1, "a": 2})
                assert list(await store.get_record("file", "f") or {}) == ["z", "a"]
            [(text,)] = await query(postgres_dsn, "SELECT response FROM responses")
            assert text == json.dumps(body, separators=(",", ":"))

        asyncio.run(scenario())

    def test_deletes_cascade_to_item_rows(self, make_store: MakeStore, postgres_dsn: str) -> None:
        async def scenario() -> None:
            async with opened(make_store) as store:
                await store.put_response(response("resp_1", items=[msg("msg_a"), msg("msg_b")]))
                await store.create_conversation(StoredConversation("conv_1", 1), [msg("msg_a"), msg("msg_b")])
                await store.delete_response("resp_1")
                await store.delete_conversation("conv_1")
            counts = [(await query(postgres_dsn, f"SELECT COUNT(*) FROM {t}"))[0][0]
                      for t in ("responses", "response_items", "conversations", "conversation_items")]
            assert counts == [0, 0, 0, 0]

        asyncio.run(scenario())

    def test_acknowledged_write_survives_a_killed_process(self, make_store: MakeStore, postgres_dsn: str) -> None:
        """The writer exits at once after the write returns, without closing anything."""
        code = ("import asyncio, os, sys\n"
                "from midtier.store import StoredResponse\n"
                "from midtier.store.postgres import PostgresStore\n"
                "async def main():\n"
                "    store = PostgresStore(sys.argv[1])\n"
                "    await store.put_response(StoredResponse('resp_1', {'id': 'resp_1'}, [{'id': 'msg_1'}]))\n"
                "    await store.put_blob('blob_1', b'kept')\n"
                "    os._exit(0)\n"
                "asyncio.run(main())\n")
        subprocess.run([sys.executable, "-c", code, postgres_dsn], check=True, timeout=60)

        async def scenario() -> None:
            async with opened(make_store) as store:
                got = await store.get_response("resp_1")
                assert got is not None and got.input_items == [{"id": "msg_1"}]
                assert await store.get_blob("blob_1") == b"kept"

        asyncio.run(scenario())

    def test_a_nul_character_is_a_bad_request(self, make_store: MakeStore) -> None:
        """PostgreSQL text cannot hold NUL; inside JSON it is escaped and kept (the contract checks that)."""
        async def scenario() -> None:
            async with opened(make_store) as store:
                with pytest.raises(InvalidRequest):
                    await store.put_record("file", "file\x00", {"id": "file\x00"})
                await store.put_record("file", "file_1", {"text": "a\x00b"})
                assert await store.get_record("file", "file_1") == {"text": "a\x00b"}

        asyncio.run(scenario())

    def test_closed_store_refuses_calls(self, make_store: MakeStore) -> None:
        async def scenario() -> None:
            store = make_store()
            await store.close()  # never opened: nothing to wait for
            with pytest.raises(RuntimeError, match="closed"):
                await store.get_response("resp_1")

        asyncio.run(scenario())


def test_unreachable_server_is_unavailable_then_recovers(postgres_dsn: str, tmp_path: Any) -> None:
    """No server behind the DSN: a 503 error, quickly; the same store works once it can connect."""
    async def scenario() -> None:
        store = PostgresStore(f"postgresql://postgres@/postgres?host={tmp_path}&port=5432", connect_timeout=2)
        try:
            with pytest.raises(StoreUnavailable) as caught:
                await store.get_response("resp_1")
            assert caught.value.status == 503 and caught.value.to_dict()["error"]["code"] == "store_unavailable"
            store.dsn = postgres_dsn  # the database comes up (here: the DSN is mended)
            assert await store.get_response("resp_1") is None
        finally:
            await store.close()

    asyncio.run(scenario())


def test_registry_opens_postgres(postgres_dsn: str) -> None:
    assert REGISTRY["postgres"] == "midtier.store.postgres:PostgresStore"

    async def scenario() -> None:
        store = open_store("postgres", dsn=postgres_dsn, max_size=2)
        try:
            assert isinstance(store, PostgresStore)
            await store.create_conversation(StoredConversation("conv_1", 1), [msg("msg_1")])
            assert await store.get_item("conv_1", "msg_1") == msg("msg_1")
        finally:
            await store.close()

    asyncio.run(scenario())
    with pytest.raises(ValueError):
        open_store("postgres", dsn=postgres_dsn, min_size=5, max_size=2)
