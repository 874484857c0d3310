"""The Files API through the official SDK: upload, list, retrieve, content, delete, errors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types import FileObject
from starlette.testclient import TestClient

from midtier.loop.turn import ServedModel
from midtier.server import create_app
from midtier.store import open_store
from midtier.tools import Toolbox, ToolsConfig, files


@pytest.fixture
def http(served: ServedModel, tmp_path: Path) -> Iterator[TestClient]:
    tools = ToolsConfig(settings={"files": {"max_bytes": 1000}})
    with TestClient(create_app([served], store=open_store(path=tmp_path / "db.sqlite3"), tools=tools,
                               data_dir=tmp_path)) as client:
        yield client


def error(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err: dict[str, Any] = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err


def test_upload_list_content_delete_round_trip(client: openai.OpenAI) -> None:
    a = client.files.create(file=("notes.md", b"# Notes\nThe code is 42.\n"), purpose="assistants")
    b = client.files.create(file=("data.jsonl", b'{"x": 1}\n'), purpose="batch")
    assert isinstance(a, FileObject)
    assert a.id.startswith("file-") and a.filename == "notes.md" and a.bytes == 24 and a.purpose == "assistants"
    assert a.object == "file" and a.status == "processed" and a.expires_at is None
    assert abs(a.created_at - time.time()) < 60

    assert client.files.retrieve(a.id) == a
    assert client.files.content(a.id).content == b"# Notes\nThe code is 42.\n"
    assert [f.id for f in client.files.list()] == [b.id, a.id]  # newest first
    assert [f.id for f in client.files.list(order="asc")] == [a.id, b.id]
    assert [f.id for f in client.files.list(purpose="batch")] == [b.id]
    page = client.files.list(limit=1, order="asc")
    assert [f.id for f in page.data] == [a.id] and page.has_more
    assert [f.id for f in client.files.list(after=a.id, order="asc")] == [b.id]

    deleted = client.files.delete(a.id)
    assert deleted.id == a.id and deleted.deleted and deleted.object == "file"
    assert [f.id for f in client.files.list()] == [b.id]
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(a.id)


def test_expires_after_sets_expires_at(client: openai.OpenAI) -> None:
    f = client.files.create(file=("a.txt", b"x"), purpose="user_data",
                            expires_after={"anchor": "created_at", "seconds": 3600})
    assert f.expires_at == f.created_at + 3600


def test_content_type_follows_the_filename(http: TestClient, client: openai.OpenAI) -> None:
    f = client.files.create(file=("page.html", b"<p>hi</p>"), purpose="assistants")
    r = http.get(f"/v1/files/{f.id}/content")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html") and r.content == b"<p>hi</p>"


def test_unknown_file_is_404(http: TestClient) -> None:
    for method, path in (("GET", "/v1/files/file-nope"), ("GET", "/v1/files/file-nope/content"),
                         ("DELETE", "/v1/files/file-nope")):
        err = error(http.request(method, path), 404)
        assert err["type"] == "invalid_request_error" and "file-nope" in err["message"]


def test_bad_uploads_are_400(http: TestClient) -> None:
    err = error(http.post("/v1/files", files={"file": ("a.txt", b"x")}, data={"purpose": "nonsense"}), 400)
    assert err["param"] == "purpose"
    err = error(http.post("/v1/files", data={"purpose": "assistants"}), 400)
    assert err["param"] == "file"
    err = error(http.post("/v1/files", files={"file": ("a.txt", b"x")}), 400)
    assert err["param"] == "purpose" and err["code"] == "missing_required_parameter"
    err = error(http.post("/v1/files", json={"purpose": "assistants"}), 400)
    assert err["param"] == "file"
    err = error(http.post("/v1/files", files={"file": ("a.txt", b"x")},
                          data={"purpose": "assistants", "expires_after[anchor]": "created_at",
                                "expires_after[seconds]": "10"}), 400)
    assert err["param"] == "expires_after.seconds"
    err = error(http.get("/v1/files?order=sideways"), 400)
    assert err["param"] == "order"


def test_too_large_upload_is_413(http: TestClient) -> None:
    err = error(http.post("/v1/files", files={"file": ("big.bin", b"x" * 2000)}, data={"purpose": "assistants"}), 413)
    assert err["code"] == "file_too_large" and "1000" in err["message"]
    assert http.get("/v1/files").json()["data"] == []


def test_helpers_other_tools_use(tmp_path: Path) -> None:
    asyncio.run(_helpers(tmp_path))


async def _helpers(tmp_path: Path) -> None:
    store = open_store(path=tmp_path / "db.sqlite3")
    try:
        meta = await files.create_file(store, b"out", "plot.png", "assistants_output")
        assert await files.get_file_bytes(store, meta["id"]) == b"out"
        assert (await files.get_file(store, meta["id"])) == meta
        FileObject.model_validate(meta)
        expired = await files.create_file(store, b"old", "old.txt", "user_data", expires_after_seconds=-1)
        assert await files.get_file(store, expired["id"]) is None  # expired reads as missing, and is deleted
        assert await store.get_blob(expired["id"]) is None
        assert await files.delete_file(store, meta["id"]) and await files.get_file_bytes(store, meta["id"]) is None
        assert Toolbox(ToolsConfig(), store, tmp_path).settings("files") == {}
    finally:
        await store.close()
