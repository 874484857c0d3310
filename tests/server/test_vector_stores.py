"""The Vector Stores API through the official SDK: stores, files, batches, search, errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types import VectorStore, VectorStoreSearchResponse
from openai.types.responses import ResponseFileSearchToolCall, ResponseOutputMessage
from openai.types.vector_stores import VectorStoreFile, VectorStoreFileBatch
from starlette.testclient import TestClient

from midtier.engines.mock import MockEngine
from midtier.loop.turn import ServedModel
from midtier.server import create_app
from midtier.store import open_store

DOCS = {
    "hr-policy.md": "# Leave policy\n\nEmployees get 27 days of paid vacation per year. Unused days expire in March.\n\n"
                    "Sick leave needs a doctor's note after three days.",
    "it-guide.txt": "To reset your password, open the self-service portal and choose 'Forgot password'. "
                    "The VPN client is called Tunnelblick. Printers are on the second floor.",
    "kitchen.html": "<html><head><style>p{}</style></head><body><h1>Kitchen rules</h1><p>The coffee machine is "
                    "descaled every Friday by the facilities team.</p><script>track()</script></body></html>",
}


@pytest.fixture
def http(served: ServedModel, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app([served], store=open_store(path=tmp_path / "db.sqlite3"),
                               data_dir=tmp_path)) as client:
        yield client


def upload(client: openai.OpenAI, name: str, text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return client.files.create(file=(name, data), purpose="assistants").id


@pytest.fixture
def docs(client: openai.OpenAI) -> dict[str, str]:
    """filename -> file id"""
    return {name: upload(client, name, text) for name, text in DOCS.items()}


def indexed(client: openai.OpenAI, vs_id: str, file_ids: list[str]) -> None:
    for file_id in file_ids:
        f = client.vector_stores.files.poll(file_id, vector_store_id=vs_id, poll_interval_ms=20)
        assert f.status == "completed", f.last_error


def error(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err: dict[str, Any] = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err


def test_create_index_and_search_finds_the_right_passage(client: openai.OpenAI, docs: dict[str, str]) -> None:
    vs = client.vector_stores.create(name="handbook", file_ids=list(docs.values()), metadata={"team": "ops"})
    assert isinstance(vs, VectorStore) and vs.id.startswith("vs_") and vs.name == "handbook"
    assert vs.metadata == {"team": "ops"} and vs.file_counts.total == 3
    indexed(client, vs.id, list(docs.values()))
    vs = client.vector_stores.retrieve(vs.id)
    assert vs.status == "completed" and vs.file_counts.completed == 3 and vs.usage_bytes > 0

    page = client.vector_stores.search(vs.id, query="How many vacation days do employees get?")
    results = list(page)
    assert results and isinstance(results[0], VectorStoreSearchResponse)
    assert results[0].filename == "hr-policy.md" and results[0].file_id == docs["hr-policy.md"]
    assert "27 days" in results[0].content[0].text and 0 < results[0].score <= 1
    assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)

    top = list(client.vector_stores.search(vs.id, query="who descales the coffee machine", max_num_results=1))
    assert len(top) == 1 and top[0].filename == "kitchen.html"
    assert "track()" not in top[0].content[0].text and "Friday" in top[0].content[0].text

    multi = list(client.vector_stores.search(vs.id, query=["VPN client name", "printer location"]))
    assert multi[0].filename == "it-guide.txt"


def test_search_page_shape(http: TestClient, client: openai.OpenAI, docs: dict[str, str]) -> None:
    vs = client.vector_stores.create(file_ids=[docs["it-guide.txt"]])
    indexed(client, vs.id, [docs["it-guide.txt"]])
    body = http.post(f"/v1/vector_stores/{vs.id}/search", json={"query": "password reset", "rewrite_query": True}).json()
    assert body["object"] == "vector_store.search_results.page" and body["search_query"] == ["password reset"]
    assert body["has_more"] is False and body["next_page"] is None
    assert set(body["data"][0]) == {"file_id", "filename", "score", "attributes", "content"}
    nothing = http.post(f"/v1/vector_stores/{vs.id}/search", json={"query": "zebra giraffe"}).json()
    assert nothing["data"] == []


def test_filters_and_score_threshold(client: openai.OpenAI, docs: dict[str, str]) -> None:
    vs = client.vector_stores.create()
    client.vector_stores.files.create(vs.id, file_id=docs["hr-policy.md"], attributes={"dept": "hr", "year": 2024})
    client.vector_stores.files.create(vs.id, file_id=docs["it-guide.txt"], attributes={"dept": "it", "year": 2025})
    indexed(client, vs.id, [docs["hr-policy.md"], docs["it-guide.txt"]])
    query = "days password"
    both = {r.filename for r in client.vector_stores.search(vs.id, query=query)}
    assert both == {"hr-policy.md", "it-guide.txt"}
    only_it = list(client.vector_stores.search(vs.id, query=query, filters={"type": "eq", "key": "dept", "value": "it"}))
    assert [r.filename for r in only_it] == ["it-guide.txt"] and only_it[0].attributes == {"dept": "it", "year": 2025}
    compound = {"type": "and", "filters": [{"type": "gte", "key": "year", "value": 2024},
                                           {"type": "nin", "key": "dept", "value": ["it"]}]}
    assert [r.filename for r in client.vector_stores.search(vs.id, query=query, filters=compound)] == ["hr-policy.md"]
    assert list(client.vector_stores.search(vs.id, query=query, ranking_options={"score_threshold": 0.99})) == []

    client.vector_stores.files.update(docs["hr-policy.md"], vector_store_id=vs.id, attributes={"dept": "it"})
    assert {r.filename for r in client.vector_stores.search(
        vs.id, query=query, filters={"type": "eq", "key": "dept", "value": "it"})} == {"hr-policy.md", "it-guide.txt"}


def test_vector_store_crud(client: openai.OpenAI) -> None:
    a = client.vector_stores.create(name="a", expires_after={"anchor": "last_active_at", "days": 7})
    b = client.vector_stores.create(name="b")
    assert a.expires_after is not None and a.expires_after.days == 7 and a.expires_at == a.last_active_at + 7 * 86400
    assert a.status == "completed" and a.file_counts.total == 0 and a.usage_bytes == 0
    assert [v.id for v in client.vector_stores.list()] == [b.id, a.id]
    assert [v.id for v in client.vector_stores.list(order="asc", limit=1).data] == [a.id]
    assert [v.id for v in client.vector_stores.list(after=b.id)] == [a.id]
    assert [v.id for v in client.vector_stores.list(before=a.id)] == [b.id]
    updated = client.vector_stores.update(a.id, name="renamed", metadata={"k": "v"}, expires_after=None)
    assert updated.name == "renamed" and updated.metadata == {"k": "v"} and updated.expires_at is None
    deleted = client.vector_stores.delete(a.id)
    assert deleted.deleted and deleted.id == a.id and deleted.object == "vector_store.deleted"
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.retrieve(a.id)


def test_vector_store_files(client: openai.OpenAI, docs: dict[str, str]) -> None:
    vs = client.vector_stores.create()
    f = client.vector_stores.files.create_and_poll(
        file_id=docs["hr-policy.md"], vector_store_id=vs.id, poll_interval_ms=20,
        chunking_strategy={"type": "static", "static": {"max_chunk_size_tokens": 100, "chunk_overlap_tokens": 0}})
    assert isinstance(f, VectorStoreFile) and f.id == docs["hr-policy.md"] and f.vector_store_id == vs.id
    assert f.status == "completed" and f.usage_bytes > 0 and f.last_error is None
    assert f.chunking_strategy is not None and f.chunking_strategy.type == "static"
    auto = client.vector_stores.files.create_and_poll(file_id=docs["it-guide.txt"], vector_store_id=vs.id,
                                                      poll_interval_ms=20)
    assert auto.chunking_strategy is not None and auto.chunking_strategy.type == "static"
    assert auto.chunking_strategy.static.max_chunk_size_tokens == 800  # type: ignore[union-attr]

    assert [x.id for x in client.vector_stores.files.list(vs.id)] == [docs["it-guide.txt"], docs["hr-policy.md"]]
    assert [x.id for x in client.vector_stores.files.list(vs.id, filter="failed")] == []
    content = list(client.vector_stores.files.content(docs["hr-policy.md"], vector_store_id=vs.id))
    assert content[0].type == "text" and "27 days of paid vacation" in (content[0].text or "")

    client.vector_stores.files.delete(docs["it-guide.txt"], vector_store_id=vs.id)
    assert [x.id for x in client.vector_stores.files.list(vs.id)] == [docs["hr-policy.md"]]
    assert all(r.filename != "it-guide.txt" for r in client.vector_stores.search(vs.id, query="password"))
    assert client.files.retrieve(docs["it-guide.txt"]).id  # the file itself stays


def test_upload_and_poll_and_failed_files(client: openai.OpenAI) -> None:
    vs = client.vector_stores.create()
    ok = client.vector_stores.files.upload_and_poll(vector_store_id=vs.id, file=("faq.md", b"Q: Parking? A: Level -2."),
                                                    poll_interval_ms=20)
    assert ok.status == "completed"
    binary = upload(client, "blob.bin", bytes(range(256)) * 4)
    bad = client.vector_stores.files.create_and_poll(file_id=binary, vector_store_id=vs.id, poll_interval_ms=20)
    assert bad.status == "failed" and bad.last_error is not None and bad.last_error.code == "unsupported_file"
    assert [x.id for x in client.vector_stores.files.list(vs.id, filter="failed")] == [binary]
    counts = client.vector_stores.retrieve(vs.id).file_counts
    assert (counts.completed, counts.failed, counts.total) == (1, 1, 2)


def test_file_batches(client: openai.OpenAI, docs: dict[str, str]) -> None:
    vs = client.vector_stores.create()
    batch = client.vector_stores.file_batches.create_and_poll(
        vector_store_id=vs.id, file_ids=[docs["hr-policy.md"], docs["kitchen.html"]], attributes={"src": "batch"},
        poll_interval_ms=20)
    assert isinstance(batch, VectorStoreFileBatch) and batch.status == "completed"
    assert batch.file_counts.completed == 2 and batch.file_counts.total == 2 and batch.vector_store_id == vs.id
    listed = list(client.vector_stores.file_batches.list_files(batch.id, vector_store_id=vs.id))
    assert {f.id for f in listed} == {docs["hr-policy.md"], docs["kitchen.html"]}
    assert all(f.attributes == {"src": "batch"} for f in listed)
    per_file = client.vector_stores.file_batches.create(
        vs.id, files=[{"file_id": docs["it-guide.txt"], "attributes": {"src": "single"}}])
    cancelled = client.vector_stores.file_batches.cancel(per_file.id, vector_store_id=vs.id)
    assert cancelled.status in ("cancelled", "completed")
    again = client.vector_stores.file_batches.retrieve(per_file.id, vector_store_id=vs.id)
    assert again.id == per_file.id and again.file_counts.total == 1


def test_errors(http: TestClient, client: openai.OpenAI, docs: dict[str, str]) -> None:
    vs = client.vector_stores.create()
    for method, path in (("GET", "/v1/vector_stores/vs_nope"), ("POST", "/v1/vector_stores/vs_nope/search"),
                         ("GET", f"/v1/vector_stores/{vs.id}/files/file-nope"),
                         ("GET", f"/v1/vector_stores/{vs.id}/file_batches/vsfb_nope"),
                         ("DELETE", "/v1/vector_stores/vs_nope")):
        error(http.request(method, path, json={"query": "x"} if method == "POST" else None), 404)
    assert error(http.post("/v1/vector_stores", json={"file_ids": ["file-nope"]}), 404)["param"] == "file_ids[0]"
    assert error(http.post(f"/v1/vector_stores/{vs.id}/files", json={"file_id": "file-nope"}), 404)["param"] == "file_id"
    bad: list[tuple[str, dict[str, Any], str]] = [
        ("/v1/vector_stores", {"nme": "x"}, "nme"),
        ("/v1/vector_stores", {"metadata": {"k": 1}}, "metadata.k"),
        ("/v1/vector_stores", {"expires_after": {"anchor": "created_at", "days": 1}}, "expires_after.anchor"),
        ("/v1/vector_stores", {"chunking_strategy": {"type": "static", "static": {"max_chunk_size_tokens": 50,
                                                                                    "chunk_overlap_tokens": 0}}},
         "chunking_strategy.static.max_chunk_size_tokens"),
        ("/v1/vector_stores", {"chunking_strategy": {"type": "static", "static": {"max_chunk_size_tokens": 200,
                                                                                    "chunk_overlap_tokens": 150}}},
         "chunking_strategy.static.chunk_overlap_tokens"),
        (f"/v1/vector_stores/{vs.id}/search", {}, "query"),
        (f"/v1/vector_stores/{vs.id}/search", {"query": ""}, "query"),
        (f"/v1/vector_stores/{vs.id}/search", {"query": "x", "max_num_results": 51}, "max_num_results"),
        (f"/v1/vector_stores/{vs.id}/search", {"query": "x", "filters": {"type": "like", "key": "a", "value": 1}},
         "filters.type"),
        (f"/v1/vector_stores/{vs.id}/search", {"query": "x", "filters": {"type": "or", "filters": [
            {"type": "in", "key": "a", "value": "notalist"}]}}, "filters.filters[0].value"),
        (f"/v1/vector_stores/{vs.id}/search", {"query": "x", "ranking_options": {"score_threshold": 2}},
         "ranking_options.score_threshold"),
        (f"/v1/vector_stores/{vs.id}/files", {"file_id": docs["hr-policy.md"], "attributes": {"k": [1]}},
         "attributes.k"),
        (f"/v1/vector_stores/{vs.id}/file_batches", {}, "file_ids"),
    ]
    for path, body, param in bad:
        assert error(http.post(path, json=body), 400)["param"] == param, (path, body)
    assert error(http.get(f"/v1/vector_stores/{vs.id}/files?filter=done"), 400)["param"] == "filter"
    assert error(http.get("/v1/vector_stores?limit=500"), 400)["param"] == "limit"
    assert error(http.post("/v1/vector_stores", content=b"{nope"), 400)["code"] == "invalid_json"


def test_deleting_a_vector_store_drops_its_files_and_chunks(http: TestClient, client: openai.OpenAI,
                                                          docs: dict[str, str]) -> None:
    vs = client.vector_stores.create(file_ids=[docs["hr-policy.md"]])
    indexed(client, vs.id, [docs["hr-policy.md"]])
    client.vector_stores.delete(vs.id)
    store = http.app.state.store  # type: ignore[attr-defined]
    portal = http.portal
    assert portal is not None
    assert portal.call(store.all_records, "vector_store_file", vs.id) == []
    assert portal.call(store.all_records, "vs_chunks", vs.id) == []


def fs_call(query: str) -> str:
    return f'<tool_call>\n{{"name": "file_search", "arguments": {{"query": "{query}"}}}}\n</tool_call>'


def test_responses_run_file_search_with_results_and_citations(client: openai.OpenAI, engine: MockEngine,
                                                              docs: dict[str, str]) -> None:
    vs = client.vector_stores.create(file_ids=list(docs.values()))
    indexed(client, vs.id, list(docs.values()))
    tools: Any = [{"type": "file_search", "vector_store_ids": [vs.id], "max_num_results": 2}]
    engine.enqueue(fs_call("vacation days per year"), "Employees get 27 days of paid vacation.")
    with client.responses.stream(model="mock", input="How many vacation days?", tools=tools,
                                 include=["file_search_call.results"]) as stream:
        events = [e.type for e in stream]
        r = stream.get_final_response()
    for name in ("in_progress", "searching", "completed"):
        assert f"response.file_search_call.{name}" in events
    call = r.output[0]
    assert isinstance(call, ResponseFileSearchToolCall) and call.status == "completed"
    assert call.queries == ["vacation days per year"] and call.results and len(call.results) <= 2
    assert call.results[0].filename == "hr-policy.md" and "27 days" in (call.results[0].text or "")
    assert "27 days" in engine.detokenize(engine.prompts[-1])  # the model read the passage
    message = r.output[-1]
    assert isinstance(message, ResponseOutputMessage) and r.output_text == "Employees get 27 days of paid vacation."
    cited = [a for part in message.content if part.type == "output_text" for a in part.annotations]
    assert [(a.type, getattr(a, "file_id", None)) for a in cited][:1] == [("file_citation", docs["hr-policy.md"])]
    # the stored response reads back the same, and without include the results stay out
    assert client.responses.retrieve(r.id).output[0].model_dump() == call.model_dump()
    engine.enqueue(fs_call("printers"), "Second floor.")
    plain = client.responses.create(model="mock", input="Where are printers?", tools=tools)
    assert plain.output[0].type == "file_search_call" and plain.output[0].results is None


def test_responses_with_an_unknown_vector_store_are_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="mock", input="hi",
                                tools=[{"type": "file_search", "vector_store_ids": ["vs_nope"]}])
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="mock", input="hi", tools=[{"type": "file_search", "vector_store_ids": []}])
