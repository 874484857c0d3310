"""The store contract every backend passes, run here on SQLite (PostgreSQL reuses ``StoreContract``).

A backend's test class subclasses ``StoreContract`` and provides the ``make_store`` fixture: a
callable that opens the backend on the same storage each time (initially empty), so closing
one store and calling ``make_store()`` again is a restart.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from midtier.core.errors import Conflict, InvalidRequest, NotFound
from midtier.store import REGISTRY, Store, StoredConversation, StoredResponse, default_data_dir, open_store
from midtier.store.sqlite import MIGRATIONS, SCHEMA_VERSION, SchemaTooNew, SqliteStore, connect

MakeStore = Callable[[], Store]


def msg(item_id: str, text: str = "hi", role: str = "user") -> dict[str, Any]:
    kind = "input_text" if role == "user" else "output_text"
    return {"id": item_id, "type": "message", "role": role, "content": [{"type": kind, "text": text}]}


def response(rid: str, previous: str | None = None, *, items: list[dict[str, Any]] | None = None,
             status: str = "completed", created_at: int = 1_700_000_000) -> StoredResponse:
    body = {"id": rid, "object": "response", "created_at": created_at, "status": status, "model": "m",
            "previous_response_id": previous,
            "output": [msg(f"msg_out_{rid}", f"answer of {rid}", "assistant")] if status == "completed" else []}
    return StoredResponse(rid, body, items if items is not None else [msg(f"msg_in_{rid}", f"question of {rid}")],
                          previous, None, created_at)


def ids(page_or_items: Any) -> list[str]:
    data = page_or_items.data if hasattr(page_or_items, "data") else page_or_items
    return [item["id"] for item in data]


@asynccontextmanager
async def opened(make_store: MakeStore) -> AsyncIterator[Store]:
    store = make_store()
    try:
        yield store
    finally:
        await store.close()


async def build_chain(store: Store, n: int, prefix: str = "resp") -> list[str]:
    names = [f"{prefix}_{i}" for i in range(n)]
    for i, rid in enumerate(names):
        await store.put_response(response(rid, names[i - 1] if i else None, created_at=1_700_000_000 + i))
    return names


class StoreContract:
    """What every ``Store`` backend does. Subclasses provide the ``make_store`` fixture."""

    # -- responses ------------------------------------------------------------------------------
    def test_put_get_response(self, make_store: MakeStore) -> None:
        async def scenario() -> None:
            async with opened(make_store) as store:
                stored = response("resp_1", items=[msg("msg_a", "first"), msg("msg_b", "second")])
                stored.conversation_id = "conv_1"
                await store.put_response(stored)
                assert await store.get_response("resp_1") == stored
                assert await store.get_response("resp_missing") is None

        asyncio.run(scenario())

    def test_replace_response(self, make_store: MakeStore) -> None:
        async def scenario() -> None:
            async with opened(make_store) as store:
                await store.put_response(response("resp_1", status="in_progress", items=[msg("msg_a")]))
                done = response("resp_1", items=[msg("msg_a"), msg("msg_b")])
                await store.put_response(done)
                got = await store.get_response("resp_1")
                assert got == done
                assert got is not None and got.response["status"] == "completed"
                assert ids(await store.list_input_items("resp_1", order="asc")) == ["msg_a", "msg_b"]

        asyncio.run(scenario())

    def test_delete_response_deletes_its_input_items(self, make_store: MakeStore) -> None:
        async def scenario() -> None:
            async with opened(make_store) as store:
                await store.put_response(response("resp_1", items=[msg("msg_a"), msg("msg_b")]))
                assert await store.delete_response("resp_1") is True
                assert await store.get_response("resp_1") is None
                assert await store.delete_response("resp_1") is False
                with pytest.raises(NotFound):
                    await store.list_input_items("resp_1")
                await store.put_response(response("resp_1", items=[]))  # the id again: no old items come back
                got = await store.get_response("resp_1")
                assert got is not None and got.input_items == []

        asyncio.run(scenario())

    def test_an_item_without_id_is_refused(self, make_store: MakeStore) -> None:
        async def scenario() -> None:
            async with opened(make_store) as store:
                with pytest.raises(InvalidRequest):
                    await store.put_response(response("resp_1", items=[{"type": "message", "role": "user",
                                                                        "content": "no id"}]))
                assert await store.get_response("resp_1") is None

        asyncio.run(scenario())

    # -- chains ---------------------------------------------------------------------------------
    def test_chain_oldest_first(self, make_store: MakeStore) -> None:
        async def scenario() -> None:
            async with opened(make_store) as store:
                names = await build_chain(store, 50)
                await build_chain(store, 3, prefix="other")  # an unrelated chain stays out
                chain = await store.chain(names[-1])
                assert [r.id for r in chain] == names
                assert [ids(r.input_items) for r in chain] == [[f"msg_in_{n}"] for n in names]
                assert [r.previous_response_id for r in chain] == [None, *names[:-1]]
                assert [r.id for r in await store.chain(names[9])] == names[:10]
                assert [r.id for r in await store.chain(names[0])] == names[:1]
                assert await store.chain("resp_missing") == []

        asyncio.run(scenario())

    def test_chain_stops_at_a_deleted_response(self, make_store: MakeStore) -> None:
        async def scenario() -> None:
            async with opened(make_store) as store:
                names = await build_chain(store, 5)
                await store.delete_response(names[1])
                assert [r.id for r in await store.chain(names[4])] == names[2:]

        asyncio.run(scenario())

    def test_chain_survives_restart(self, make_store: MakeStore) -> None:
        async def write() -> list[str]:
            async with opened(make_store) as store:
                return await build_chain(store, 20)

        async def read(names: list[str]) -> None:
            async with opened(make_store) as store:
                chain = await store.chain(names[-1])
                assert [r.id for r in chain] == names
                assert chain[-1] == response(names[-1], names[-2], created_at=1_700_000_000 + 19)

        names = asyncio.run(write())
        asyncio.run(read(names))  # a new event loop and a new store: a restart

    # -- input items ----------------------------------------------------------------------------
    def test_input_items_pagination(self, make_store: MakeStore) -> None:
        async def scenario() -> None:
            async with opened(make_store) as store:
                items = [msg(f"msg_{i}", f"item {i}") for i in range(7)]
                await store.put_response(response("resp_1", items=items))

                page = await store.list_input_items("resp_1", limit=3)  # desc by default
                assert (ids(page), page.has_more, page.first_id, page.last_id) == (
                    ["msg_6", "msg_5", "msg_4"], True, "msg_6", "msg_4")
                page = await store.list_input_items("resp_1", after=page.last_id, limit=3)
                assert (ids(page), page.has_more) == (["msg_3", "msg_2", "msg_1"], True)
                page = await store.list_input_items("resp_1", after=page.last_id, limit=3)
                assert (ids(page), page.has_more, page.first_id, page.last_id) == (["msg_0"], False, "msg_0", "msg_0")

                page = await store.list_input_items("resp_1", order="asc", limit=4)
                assert (ids(page), page.has_more) == (["msg_0", "msg_1", "msg_2", "msg_3"], True)
                page = await store.list_input_items("resp_1", order="asc", after="msg_3", limit=3)
                assert (ids(page), page.has_more) == (["msg_4", "msg_5", "msg_6"], False)  # exactly the rest
                page = await store.list_input_items("resp_1", order="asc", after="msg_6")
                assert (page.data, page.has_more, page.first_id, page.last_id) == ([], False, None, None)

                page = await store.list_input_items("resp_1", limit=100)
                assert page.data == items[::-1] and not page.has_more

        asyncio.run(scenario())

    def test_input_items_bad_arguments(self, make_store: MakeStore) -> None:
        async def scenario() -> None:
            async with opened(make_store) as store:
                await store.put_response(response("resp_1"))
                for limit in (0, 101):
                    with pytest.raises(InvalidRequest):
                        await store.list_input_items("resp_1", limit=limit)
                with pytest.raises(NotFound):
                    await store.list_input_items("resp_1", after="msg_unknown")
                with pytest.raises(NotFound):
                    await store.list_input_items("resp_missing")

        asyncio.run(scenario())

    # -- conversations --------------------------------------------------------------------------
    def test_conversation_crud(self, make_store: MakeStore) -> None:
        async def scenario() -> None:
            async with opened(make_store) as store:
                conv = StoredConversation("conv_1", 1_700_000_000, {"topic": "demo"})
                await store.create_conversation(conv, [msg("msg_a"), msg("msg_b")])
                assert await store.get_conversation("conv_1") == conv
                with pytest.raises(Conflict):
                    await store.create_conversation(conv, [])

                updated = await store.update_conversation("conv_1", {"topic": "changed", "owner": "me"})
                assert updated == StoredConversation("conv_1", 1_700_000_000, {"topic": "changed", "owner": "me"})
                assert await store.get_conversation("conv_1") == updated
                assert await store.update_conversation("conv_missing", {}) is None

                assert await store.delete_conversation("conv_1") is True
                assert await store.get_conversation("conv_1") is None
                assert await store.delete_conversation("conv_1") is False
                assert await store.all_items("conv_1") == []
                assert await store.get_item("conv_1", "msg_a") is None
                assert await store.get_conversation("conv_missing") is None

        asyncio.run(scenario())

    def test_conversation_items(self, make_store: MakeStore) -> None:
        async def scenario() -> None:
            async with opened(make_store) as store:
                await store.create_conversation(StoredConversation("conv_1", 1_700_000_000), [msg("msg_0")])
                await store.create_conversation(StoredConversation("conv_2", 1_700_000_000), [msg("msg_x")])
                await store.add_items("conv_1", [msg(f"msg_{i}", f"item {i}") for i in range(1, 4)])
                await store.add_items("conv_1", [msg("msg_4")])
                await store.add_items("conv_1", [])
                assert ids(await store.all_items("conv_1")) == ["msg_0", "msg_1", "msg_2", "msg_3", "msg_4"]
                assert ids(await store.all_items("conv_2")) == ["msg_x"]

                page = await store.list_items("conv_1", limit=2)  # asc by default
                assert (ids(page), page.has_more, page.first_id, page.last_id) == (
                    ["msg_0", "msg_1"], True, "msg_0", "msg_1")
                page = await store.list_items("conv_1", after="msg_1", limit=2)
                assert (ids(page), page.has_more) == (["msg_2", "msg_3"], True)
                page = await store.list_items("conv_1", after="msg_3", limit=2)
                assert (ids(page), page.has_more) == (["msg_4"], False)
                page = await store.list_items("conv_1", order="desc", after="msg_2")
                assert (ids(page), page.has_more) == (["msg_1", "msg_0"], False)

                assert await store.get_item("conv_1", "msg_2") == msg("msg_2", "item 2")
                assert await store.get_item("conv_2", "msg_2") is None
                assert await store.delete_item("conv_1", "msg_2") is True
                assert await store.delete_item("conv_1", "msg_2") is False
                assert await store.get_item("conv_1", "msg_2") is None
                await store.add_items("conv_1", [msg("msg_5")])  # appended after a gap, still last
                assert ids(await store.all_items("conv_1")) == ["msg_0", "msg_1", "msg_3", "msg_4", "msg_5"]
                page = await store.list_items("conv_1", order="desc", limit=3)
                assert (ids(page), page.has_more) == (["msg_5", "msg_4", "msg_3"], True)

                with pytest.raises(Conflict):  # an id is unique within its conversation
                    await store.add_items("conv_1", [msg("msg_new"), msg("msg_0")])
                assert await store.get_item("conv_1", "msg_new") is None  # the whole append was refused
                await store.add_items("conv_2", [msg("msg_0")])  # but may repeat in another one
                with pytest.raises(NotFound):
                    await store.add_items("conv_missing", [msg("msg_a")])
                with pytest.raises(NotFound):
                    await store.list_items("conv_missing")
                with pytest.raises(NotFound):
                    await store.list_items("conv_1", after="msg_2")  # deleted
                with pytest.raises(InvalidRequest):
                    await store.list_items("conv_1", limit=0)

        asyncio.run(scenario())

    # -- concurrency, content, restarts ---------------------------------------------------------
    def test_concurrent_writes_all_land(self, make_store: MakeStore) -> None:
        n = 200

        async def write() -> None:
            async with opened(make_store) as store:
                await store.create_conversation(StoredConversation("conv_1", 1_700_000_000), [])

                async def one(i: int) -> None:
                    await store.put_response(response(f"resp_{i}", f"resp_{i - 1}" if i else None))
                    await store.add_items("conv_1", [msg(f"msg_{i}")])

                await asyncio.gather(*(one(i) for i in range(n)))
                assert len(await store.all_items("conv_1")) == n

        async def read() -> None:
            async with opened(make_store) as store:
                assert sorted(ids(await store.all_items("conv_1"))) == sorted(f"msg_{i}" for i in range(n))
                assert [r.id for r in await store.chain(f"resp_{n - 1}")] == [f"resp_{i}" for i in range(n)]

        asyncio.run(write())
        asyncio.run(read())

    def test_unicode_and_large_json(self, make_store: MakeStore) -> None:
        text = "héllo wörld — 你好，世界 🙂🚀 \u0000 \u2028 \"quotes\" \\backslash\n" * 3
        big = "x" * 4_000_000 + "🙂"
        nested: dict[str, Any] = {"leaf": text}
        for depth in range(50):
            nested = {"level": depth, "child": nested, "list": [1, 2.5, None, True, "ü"]}

        async def scenario() -> None:
            async with opened(make_store) as store:
                stored = response("resp_ü🙂", items=[msg("msg_ü🙂", text), msg("msg_big", big)])
                stored.response["metadata"] = {"nested": nested, "emoji": "🙂"}
                await store.put_response(stored)
                assert await store.get_response("resp_ü🙂") == stored
                page = await store.list_input_items("resp_ü🙂", after="msg_big")
                assert page.data == [msg("msg_ü🙂", text)]
                await store.create_conversation(StoredConversation("conv_🙂", 1, {"名前": "値 🙂"}), [msg("msg_big", big)])
                assert await store.get_item("conv_🙂", "msg_big") == msg("msg_big", big)
                assert (await store.get_conversation("conv_🙂")) == StoredConversation("conv_🙂", 1, {"名前": "値 🙂"})

        asyncio.run(scenario())

    # -- records and blobs ------------------------------------------------------------------------
    def test_records_crud_and_owners(self, make_store: MakeStore) -> None:
        async def scenario() -> None:
            async with opened(make_store) as store:
                await store.put_record("file", "file_1", {"id": "file_1", "bytes": 3})
                await store.put_record("file", "file_2", {"id": "file_2"})
                await store.put_record("vs_file", "file_1", {"id": "file_1", "vs": "vs_a"}, owner="vs_a")
                await store.put_record("vs_file", "file_2", {"id": "file_2", "vs": "vs_b"}, owner="vs_b")
                assert await store.get_record("file", "file_1") == {"id": "file_1", "bytes": 3}
                assert await store.get_record("file", "file_3") is None
                assert await store.get_record("vector_store", "file_1") is None  # kinds are apart
                # a replaced record keeps its place
                await store.put_record("file", "file_1", {"id": "file_1", "bytes": 4})
                assert ids(await store.list_records("file")) == ["file_2", "file_1"]
                assert ids(await store.list_records("file", order="asc")) == ["file_1", "file_2"]
                assert ids(await store.all_records("vs_file", "vs_a")) == ["file_1"]
                assert ids(await store.list_records("vs_file", owner="vs_b")) == ["file_2"]
                assert await store.delete_owned("vs_file", "vs_a") == 1
                assert await store.all_records("vs_file", "vs_a") == []
                assert await store.delete_record("file", "file_1") is True
                assert await store.delete_record("file", "file_1") is False
                assert ids(await store.list_records("file")) == ["file_2"]

        asyncio.run(scenario())

    def test_records_pagination(self, make_store: MakeStore) -> None:
        async def scenario() -> None:
            async with opened(make_store) as store:
                for i in range(5):
                    await store.put_record("thing", f"t{i}", {"id": f"t{i}"})
                page = await store.list_records("thing", limit=2, order="asc")
                assert (ids(page), page.has_more, page.first_id, page.last_id) == (["t0", "t1"], True, "t0", "t1")
                page = await store.list_records("thing", limit=2, order="asc", after="t3")
                assert (ids(page), page.has_more) == (["t4"], False)
                page = await store.list_records("thing", limit=3, after="t3")
                assert (ids(page), page.has_more) == (["t2", "t1", "t0"], False)
                with pytest.raises(NotFound):
                    await store.list_records("thing", after="nope")
                with pytest.raises(InvalidRequest):
                    await store.list_records("thing", limit=0)

        asyncio.run(scenario())

    def test_blobs_survive_restart(self, make_store: MakeStore) -> None:
        data = bytes(range(256)) * 1000

        async def scenario() -> None:
            async with opened(make_store) as store:
                await store.put_blob("file_1", data)
                await store.put_record("file", "file_1", {"id": "file_1"})
            async with opened(make_store) as store:
                assert await store.get_blob("file_1") == data
                assert await store.get_record("file", "file_1") == {"id": "file_1"}
                assert await store.get_blob("file_2") is None
                assert await store.delete_blob("file_1") is True
                assert await store.get_blob("file_1") is None

        asyncio.run(scenario())

    def test_close_is_idempotent(self, make_store: MakeStore) -> None:
        async def scenario() -> None:
            store = make_store()
            await store.put_response(response("resp_1"))
            await store.close()
            await store.close()

        asyncio.run(scenario())


class TestSqliteStore(StoreContract):
    @pytest.fixture
    def db_path(self, tmp_path: Path) -> Path:
        return tmp_path / "data" / "midtier.sqlite3"  # the data folder does not exist yet

    @pytest.fixture
    def make_store(self, db_path: Path) -> MakeStore:
        return lambda: SqliteStore(db_path)

    def test_pragmas_and_worker_thread(self, make_store: MakeStore) -> None:
        async def scenario() -> None:
            async with opened(make_store) as store:
                assert isinstance(store, SqliteStore)

                def probe(db: sqlite3.Connection) -> tuple[Any, ...]:
                    pragma = [db.execute(f"PRAGMA {p}").fetchone()[0]
                              for p in ("journal_mode", "synchronous", "foreign_keys", "user_version")]
                    return (*pragma, threading.current_thread() is threading.main_thread())

                assert await store._run(probe) == ("wal", 2, 1, SCHEMA_VERSION, False)  # 2 = FULL

        asyncio.run(scenario())

    def test_deletes_cascade_to_item_rows(self, make_store: MakeStore, db_path: Path) -> None:
        async def scenario() -> None:
            async with opened(make_store) as store:
                await store.put_response(response("resp_1", items=[msg("msg_a"), msg("msg_b")]))
                await store.create_conversation(StoredConversation("conv_1", 1), [msg("msg_a"), msg("msg_b")])
                await store.delete_response("resp_1")
                await store.delete_conversation("conv_1")

        asyncio.run(scenario())
        db = sqlite3.connect(db_path)
        try:
            counts = [db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                      for t in ("responses", "response_items", "conversations", "conversation_items")]
        finally:
            db.close()
        assert counts == [0, 0, 0, 0]

    def test_migrates_an_older_schema(self, make_store: MakeStore, db_path: Path) -> None:
        db_path.parent.mkdir(parents=True)
        db = connect(db_path)  # a database as the first schema version left it, holding data
        try:
            db.execute("BEGIN")
            MIGRATIONS[0](db)
            db.execute("PRAGMA user_version = 1")
            db.execute("INSERT INTO responses VALUES ('resp_old', 1, NULL, 'conv_old', '{\"id\": \"resp_old\"}')")
            db.execute("INSERT INTO response_items VALUES ('resp_old', 0, 'msg_old', '{\"id\": \"msg_old\"}')")
            db.execute("COMMIT")
        finally:
            db.close()
        assert SCHEMA_VERSION > 1

        async def scenario() -> None:
            async with opened(make_store) as store:
                got = await store.get_response("resp_old")
                assert got == StoredResponse("resp_old", {"id": "resp_old"}, [{"id": "msg_old"}], None, "conv_old", 1)
                assert ids(await store.list_input_items("resp_old", after="msg_old", order="desc")) == []
                await store.put_response(response("resp_new", "resp_old"))
                assert [r.id for r in await store.chain("resp_new")] == ["resp_old", "resp_new"]

        asyncio.run(scenario())
        db = sqlite3.connect(db_path)
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            indexes = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        finally:
            db.close()
        assert version == SCHEMA_VERSION
        assert {"response_items_by_id", "responses_by_conversation"} <= indexes

    def test_refuses_a_newer_schema(self, make_store: MakeStore, db_path: Path) -> None:
        db_path.parent.mkdir(parents=True)
        db = sqlite3.connect(db_path)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        db.close()

        async def scenario() -> None:
            async with opened(make_store) as store:
                with pytest.raises(SchemaTooNew):
                    await store.get_response("resp_1")

        asyncio.run(scenario())

    def test_acknowledged_write_survives_a_killed_process(self, make_store: MakeStore, db_path: Path) -> None:
        """The writer exits at once after the write returns, without closing anything."""
        code = ("import asyncio, os, sys\n"
                "from midtier.store import StoredResponse\n"
                "from midtier.store.sqlite import SqliteStore\n"
                "async def main():\n"
                "    store = SqliteStore(sys.argv[1])\n"
                "    await store.put_response(StoredResponse('resp_1', {'id': 'resp_1'}, [{'id': 'msg_1'}]))\n"
                "    os._exit(0)\n"
                "asyncio.run(main())\n")
        subprocess.run([sys.executable, "-c", code, str(db_path)], check=True, timeout=60)

        async def scenario() -> None:
            async with opened(make_store) as store:
                got = await store.get_response("resp_1")
                assert got is not None and got.input_items == [{"id": "msg_1"}]

        asyncio.run(scenario())

    def test_two_stores_on_one_file(self, make_store: MakeStore) -> None:
        """Two processes (here two stores) writing the same file wait for each other, never fail."""
        async def scenario() -> None:
            async with opened(make_store) as a, opened(make_store) as b:
                await a.create_conversation(StoredConversation("conv_1", 1), [])
                await asyncio.gather(*(s.add_items("conv_1", [msg(f"msg_{i}")])
                                       for i, s in enumerate([a, b] * 50)))
                assert len(await a.all_items("conv_1")) == len(await b.all_items("conv_1")) == 100

        asyncio.run(scenario())


def test_registry_and_default_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIDTIER_DATA", str(tmp_path / "data"))
    assert default_data_dir() == tmp_path / "data"
    assert set(REGISTRY) == {"sqlite", "postgres"}

    async def scenario() -> None:
        store = open_store()
        try:
            assert isinstance(store, SqliteStore) and store.path == tmp_path / "data" / "midtier.sqlite3"
            await store.put_response(response("resp_1"))
        finally:
            await store.close()
        assert store.path.exists()

    asyncio.run(scenario())
    with pytest.raises(KeyError, match="unknown store"):
        open_store("nosuch")
    monkeypatch.delenv("MIDTIER_DATA")
    assert default_data_dir() == Path.home() / ".local" / "share" / "midtier"
