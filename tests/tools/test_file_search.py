"""The file_search tool, run directly: check, functions, start, run, history."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from openai.types.responses import ResponseFileSearchToolCall

from midtier.core.errors import InvalidRequest, NotFound
from midtier.core.messages import ToolCall
from midtier.store import open_store
from midtier.tools import Toolbox, ToolContext, ToolError, ToolsConfig, files
from midtier.tools.file_search import ANSWER_NOW, FileSearchTool
from midtier.tools.vector_stores import vector_stores

DOCS = {
    "menu.md": "# Canteen\n\nLunch is served from 11:30 to 14:30. On Thursdays the chef cooks paella.",
    "parking.txt": "Visitor parking is on level -2 of the garage. The gate code for visitors is 7391.",
    "history.md": "The company was founded in 1998 in Porto by two engineers, and moved to Lisbon in 2006.",
}


def scenario(tmp_path: Path, body: Callable[[Toolbox, FileSearchTool, list[str]], Awaitable[None]],
             attributes: dict[str, dict[str, Any]] | None = None) -> None:
    """Runs ``body(toolbox, tool, [vector store id])`` with DOCS indexed in one vector store."""

    async def run() -> None:
        store = open_store(path=tmp_path / "db.sqlite3")
        toolbox = Toolbox(ToolsConfig(), store, tmp_path)
        try:
            service = vector_stores(toolbox)
            vs = await service.create(name="docs")
            for name, text in DOCS.items():
                meta = await files.create_file(store, text.encode(), name, "assistants")
                await service.add_file(vs["id"], meta["id"], attributes=(attributes or {}).get(name))
            await service.wait_idle()
            tool = toolbox.tool("file_search")
            assert isinstance(tool, FileSearchTool)
            await body(toolbox, tool, [vs["id"]])
        finally:
            await toolbox.close()
            await store.close()

    asyncio.run(run())


def context(toolbox: Toolbox, param: dict[str, Any], include: frozenset[str] = frozenset()
            ) -> tuple[ToolContext, list[tuple[str, dict[str, Any]]]]:
    events: list[tuple[str, dict[str, Any]]] = []
    ctx = ToolContext(response_id="resp_1", param=param, store=toolbox.store, toolbox=toolbox, scope="resp_1",
                      emit=lambda t, f: events.append((t, f)), include=include)
    return ctx, events


def call(query: Any) -> ToolCall:
    return ToolCall(id="call_1", name="file_search", arguments=json.dumps({"query": query}))


def test_run_finds_the_passage_and_fills_the_item(tmp_path: Path) -> None:
    async def body(toolbox: Toolbox, tool: FileSearchTool, ids: list[str]) -> None:
        param = {"type": "file_search", "vector_store_ids": ids}
        tool.check(param, "tools[0]")
        specs = await tool.functions(param, context(toolbox, param)[0])
        assert [s.name for s in specs] == ["file_search"] and specs[0].parameters["required"] == ["query"]

        c = call("visitor gate code")
        item = tool.start(c, param)
        assert item["id"].startswith("fs_") and item["status"] == "in_progress" and item["queries"] == ["visitor gate code"]
        ResponseFileSearchToolCall.model_validate(item)
        ctx, events = context(toolbox, param, frozenset({"file_search_call.results"}))
        result = await tool.run(item, c, ctx)

        assert [t for t, _ in events] == ["response.file_search_call.in_progress", "response.file_search_call.searching",
                                          "response.file_search_call.completed"]
        parsed = ResponseFileSearchToolCall.model_validate(item)
        assert parsed.status == "completed" and parsed.results
        assert parsed.results[0].filename == "parking.txt" and "7391" in (parsed.results[0].text or "")
        assert 0 < (parsed.results[0].score or 0) <= 1
        assert "7391" in result.output and "parking.txt" in result.output
        assert result.output.endswith(ANSWER_NOW)  # what makes a small model answer, not search again
        assert result.citations[0] == {"type": "file_citation", "file_id": parsed.results[0].file_id,
                                       "filename": "parking.txt"}

    scenario(tmp_path, body)


def test_results_only_when_included(tmp_path: Path) -> None:
    async def body(toolbox: Toolbox, tool: FileSearchTool, ids: list[str]) -> None:
        param = {"type": "file_search", "vector_store_ids": ids, "max_num_results": 1}
        c = call("when was the company founded")
        item = tool.start(c, param)
        result = await tool.run(item, c, context(toolbox, param)[0])
        assert item["status"] == "completed" and item["results"] is None
        assert "1998" in result.output and result.output.count("\n[") == 1  # max_num_results: one passage

    scenario(tmp_path, body)


def test_filters_and_threshold_from_the_param(tmp_path: Path) -> None:
    attributes = {"menu.md": {"kind": "food"}, "parking.txt": {"kind": "building"}, "history.md": {"kind": "about"}}

    async def body(toolbox: Toolbox, tool: FileSearchTool, ids: list[str]) -> None:
        param = {"type": "file_search", "vector_store_ids": ids,
                 "filters": {"type": "eq", "key": "kind", "value": "food"}}
        c = call("visitor parking gate code")
        item = tool.start(c, param)
        result = await tool.run(item, c, context(toolbox, param, frozenset({"file_search_call.results"}))[0])
        assert all(r["filename"] == "menu.md" for r in item["results"])
        assert "7391" not in result.output
        strict = {"type": "file_search", "vector_store_ids": ids, "ranking_options": {"score_threshold": 0.999}}
        item = tool.start(c, strict)
        result = await tool.run(item, c, context(toolbox, strict)[0])
        assert result.output.startswith("No passage") and result.citations == []

    scenario(tmp_path, body, attributes)


def test_a_call_without_a_query_is_a_tool_error(tmp_path: Path) -> None:
    async def body(toolbox: Toolbox, tool: FileSearchTool, ids: list[str]) -> None:
        param = {"type": "file_search", "vector_store_ids": ids}
        c = ToolCall(id="call_1", name="file_search", arguments="{}")
        item = tool.start(c, param)
        with pytest.raises(ToolError, match="needs a query"):
            await tool.run(item, c, context(toolbox, param)[0])

    scenario(tmp_path, body)


def test_unknown_vector_store_is_404_before_the_model_runs(tmp_path: Path) -> None:
    async def body(toolbox: Toolbox, tool: FileSearchTool, ids: list[str]) -> None:
        param = {"type": "file_search", "vector_store_ids": [*ids, "vs_nope"]}
        with pytest.raises(NotFound):
            await tool.functions(param, context(toolbox, param)[0])

    scenario(tmp_path, body)


@pytest.mark.parametrize(("param", "where"), [
    ({"type": "file_search"}, "tools[0].vector_store_ids"),
    ({"type": "file_search", "vector_store_ids": []}, "tools[0].vector_store_ids"),
    ({"type": "file_search", "vector_store_ids": ["vs_1"], "max_num_results": 0}, "tools[0].max_num_results"),
    ({"type": "file_search", "vector_store_ids": ["vs_1"], "filters": {"type": "eq", "value": 1}},
     "tools[0].filters.key"),
    ({"type": "file_search", "vector_store_ids": ["vs_1"], "ranking_options": {"ranker": "best"}},
     "tools[0].ranking_options.ranker"),
    ({"type": "file_search", "vector_store_ids": ["vs_1"], "ranking_options": {
        "hybrid_search": {"text_weight": 1}}}, "tools[0].ranking_options.hybrid_search.embedding_weight"),
    ({"type": "file_search", "vector_store_ids": ["vs_1"], "extra": 1}, "tools[0].extra"),
])
def test_check_names_the_bad_param(tmp_path: Path, param: dict[str, Any], where: str) -> None:
    tool = Toolbox(ToolsConfig(), None, tmp_path).tool("file_search")
    with pytest.raises(InvalidRequest) as err:
        tool.check(param, "tools[0]")
    assert err.value.param == where


def test_history_round_trip(tmp_path: Path) -> None:
    tool = Toolbox(ToolsConfig(), None, tmp_path).tool("file_search")
    item = {"id": "fs_1", "type": "file_search_call", "status": "completed", "queries": ["gate code"],
            "results": [{"file_id": "file-1", "filename": "parking.txt", "score": 0.8, "text": "The code is 7391.",
                         "attributes": {}}]}
    again = tool.as_call(item)
    assert again is not None and again.id == "fs_1" and json.loads(again.arguments) == {"query": "gate code"}
    out = tool.as_output(item)
    assert out is not None and out[0] == "fs_1" and "7391" in out[1]
    assert "not kept" in (tool.as_output({**item, "results": None}) or ("", ""))[1]
    assert tool.as_call({"type": "message"}) is None


class Letters:
    """A stand-in embedder: letter counts (close for shared spelling)."""

    name = "letters"

    def embed(self, texts: Sequence[str], *, query: bool = False) -> np.ndarray:
        out = np.zeros((len(texts), 256), dtype=np.float32)
        for i, text in enumerate(texts):
            for ch in text.lower().encode():
                out[i, ch] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def test_vector_stores_keep_window_vectors_when_embeddings_are_on(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import midtier.tools.embeddings

    monkeypatch.setattr(midtier.tools.embeddings, "load_embedder", lambda choice: Letters())

    async def run() -> None:
        store = open_store(path=tmp_path / "db.sqlite3")
        toolbox = Toolbox(ToolsConfig(settings={"file_search": {"embeddings": "trigrams"}}), store, tmp_path)
        try:
            service = vector_stores(toolbox)
            vs = await service.create()
            meta = await files.create_file(store, DOCS["parking.txt"].encode(), "parking.txt", "assistants")
            await service.add_file(vs["id"], meta["id"])
            await service.wait_idle()
            chunks = await store.get_record("vs_chunks", f"{vs['id']}:{meta['id']}")
            assert chunks is not None and chunks["embedder"] == "letters" and chunks["windows"] == [1]
            blob = await store.get_blob(f"vs_vectors:{vs['id']}:{meta['id']}")
            assert blob is not None and len(blob) == 256 * 4
            found = await service.search([vs["id"]], ["visitor parkng gate"], weights=(0.0, 1.0))
            assert found and found[0]["filename"] == "parking.txt"
        finally:
            await toolbox.close()
            await store.close()

    asyncio.run(run())


def test_a_vector_store_deleted_meanwhile_is_a_tool_error(tmp_path: Path) -> None:
    async def body(toolbox: Toolbox, tool: FileSearchTool, ids: list[str]) -> None:
        param = {"type": "file_search", "vector_store_ids": ids}
        await vector_stores(toolbox).delete(ids[0])
        c = call("gate code")
        with pytest.raises(ToolError, match="No vector store"):
            await tool.run(tool.start(c, param), c, context(toolbox, param)[0])

    scenario(tmp_path, body)


def test_a_file_left_in_progress_by_a_stopped_server_is_indexed_when_read(tmp_path: Path) -> None:
    async def run() -> None:
        store = open_store(path=tmp_path / "db.sqlite3")
        try:
            first = Toolbox(ToolsConfig(), store, tmp_path)
            service = vector_stores(first)
            vs = await service.create()
            meta = await files.create_file(store, DOCS["history.md"].encode(), "history.md", "assistants")
            await service.add_file(vs["id"], meta["id"])
            await first.close()  # the server stops before indexing ends: the task is cancelled
            record = await store.get_record("vector_store_file", f"{vs['id']}:{meta['id']}")
            assert record is not None and record["status"] == "in_progress"

            second = Toolbox(ToolsConfig(), store, tmp_path)
            again = vector_stores(second)
            assert (await again.get_file(vs["id"], meta["id"]))["status"] == "in_progress"
            await again.wait_idle()
            assert (await again.get_file(vs["id"], meta["id"]))["status"] == "completed"
            found = await again.search([vs["id"]], ["founded"])
            assert found and "1998" in found[0]["content"][0]["text"]
            await second.close()
        finally:
            await store.close()

    asyncio.run(run())
