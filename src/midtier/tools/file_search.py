"""file_search: the model searches the request's vector stores and reads the best passages.

The model sees one function, ``file_search(query)``. A call becomes a ``file_search_call`` item
(``fs_…``: status, queries, and the results when the request's ``include`` has
``file_search_call.results``), streamed with ``response.file_search_call.in_progress``,
``.searching`` and ``.completed``. The model reads the best passages (``settings["file_search"]
["model_results"]``, default 3), each cut to the sentences that match the query best; the
files they come from are the answer's ``file_citation`` annotations.

The tool's ``max_num_results`` (default 10), ``filters`` and ``ranking_options``
(``score_threshold``, ``hybrid_search`` weights) apply as in ``POST /v1/vector_stores/{id}/search``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, ClassVar

from midtier.core.errors import InvalidRequest, MidtierError
from midtier.core.messages import ToolCall, ToolSpec, new_id
from midtier.tools.base import ToolContext, ToolError, ToolResult
from midtier.tools.search_index import excerpt
from midtier.tools.vector_stores import check_filter, vector_stores

if TYPE_CHECKING:
    from midtier.tools import Toolbox

FUNCTION = "file_search"
INCLUDE_RESULTS = "file_search_call.results"
# Closing what the model reads, as web_search does: without it Qwen2.5-Coder-0.5B searched again
# with other words (six parallel searches, then more) or echoed the passages in a <tool_response> block.
ANSWER_NOW = "Now answer the question in one sentence, using these passages."
_PARAMS = {"type", "vector_store_ids", "filters", "max_num_results", "ranking_options"}


def ranking_options(value: Any, param: str = "ranking_options") -> tuple[float, tuple[float, float]]:
    """(score threshold, (text weight, embedding weight)) of a ``ranking_options`` (None: defaults)."""
    if value is None:
        return 0.0, (1.0, 1.0)
    if not isinstance(value, dict):
        raise InvalidRequest(f"Invalid '{param}': expected an object.", param=param, code="invalid_value")
    unknown = set(value) - {"ranker", "score_threshold", "hybrid_search"}
    if unknown:
        raise InvalidRequest(f"Unknown parameter: '{param}.{sorted(unknown)[0]}'.", param=f"{param}.{sorted(unknown)[0]}",
                             code="unknown_parameter")
    if value.get("ranker") not in (None, "none", "auto", "default-2024-11-15"):
        raise InvalidRequest(f"Invalid '{param}.ranker': expected 'auto', 'default-2024-11-15' or 'none'.",
                             param=f"{param}.ranker", code="invalid_value")
    threshold = value.get("score_threshold", 0.0)
    if not isinstance(threshold, int | float) or isinstance(threshold, bool) or not 0 <= threshold <= 1:
        raise InvalidRequest(f"Invalid '{param}.score_threshold': must be a number between 0 and 1.",
                             param=f"{param}.score_threshold", code="invalid_value")
    weights = (1.0, 1.0)
    hybrid = value.get("hybrid_search")
    if hybrid is not None:
        where = f"{param}.hybrid_search"
        if not isinstance(hybrid, dict):
            raise InvalidRequest(f"Invalid '{where}': expected an object.", param=where, code="invalid_value")
        pair = []
        for key in ("text_weight", "embedding_weight"):
            w = hybrid.get(key)
            if not isinstance(w, int | float) or isinstance(w, bool) or w < 0:
                raise InvalidRequest(f"Invalid '{where}.{key}': expected a number of at least 0.", param=f"{where}.{key}",
                                     code="invalid_value")
            pair.append(float(w))
        if not sum(pair):
            raise InvalidRequest(f"Invalid '{where}': the weights cannot both be 0.", param=where, code="invalid_value")
        weights = (pair[0], pair[1])
    return float(threshold), weights


def _queries(call: ToolCall) -> list[str]:
    """The queries of a call: ``{"query": str}`` (or a list, or ``queries``), or the raw text."""
    args = call.arguments_object()
    value = args.get("query", args.get("queries")) if isinstance(args, dict) else args
    values = value if isinstance(value, list) else [value]
    return [v.strip() for v in values if isinstance(v, str) and v.strip()]


class FileSearchTool:
    type: ClassVar[str] = "file_search"
    item_type: ClassVar[str] = "file_search_call"
    item_types: ClassVar[tuple[str, ...]] = ("file_search_call",)

    def __init__(self, toolbox: Toolbox) -> None:
        self.toolbox = toolbox
        settings = toolbox.settings("file_search")
        self.model_results = int(settings.get("model_results", 3))
        self.excerpt_chars = int(settings.get("excerpt_chars", 700))

    def runs_on_server(self, param: dict[str, Any]) -> bool:
        return True

    def check(self, param: dict[str, Any], where: str) -> None:
        unknown = set(param) - _PARAMS
        if unknown:
            key = sorted(unknown)[0]
            raise InvalidRequest(f"Unknown parameter: '{where}.{key}'.", param=f"{where}.{key}", code="unknown_parameter")
        ids = param.get("vector_store_ids")
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) and i for i in ids):
            raise InvalidRequest(f"Invalid '{where}.vector_store_ids': expected a non-empty list of vector store ids.",
                                 param=f"{where}.vector_store_ids", code="invalid_value")
        if param.get("filters") is not None:
            check_filter(param["filters"], f"{where}.filters")
        limit = param.get("max_num_results")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 50):
            raise InvalidRequest(f"Invalid '{where}.max_num_results': must be an integer between 1 and 50.",
                                 param=f"{where}.max_num_results", code="invalid_value")
        ranking_options(param.get("ranking_options"), f"{where}.ranking_options")

    async def functions(self, param: dict[str, Any], ctx: ToolContext) -> list[ToolSpec]:
        service = vector_stores(ctx.toolbox)
        for vs_id in param["vector_store_ids"]:
            await service.get(vs_id)  # NotFound (404) for an unknown vector store
        return [ToolSpec(
            name=FUNCTION,
            description="Search the user's uploaded files and documents. Call it to find facts in them before "
                        "answering; then answer from the passages it returns.",
            parameters={"type": "object", "properties": {
                "query": {"type": "string", "description": "What to look for, in a few keywords."}},
                "required": ["query"]},
            fan_out=False)]

    def start(self, call: ToolCall, param: dict[str, Any]) -> dict[str, Any]:
        return {"id": new_id("fs_"), "type": "file_search_call", "status": "in_progress",
                "queries": _queries(call), "results": None}

    async def run(self, item: dict[str, Any], call: ToolCall, ctx: ToolContext) -> ToolResult:
        ctx.emit("response.file_search_call.in_progress", {})
        queries = _queries(call)
        item["queries"] = queries
        if not queries:
            raise ToolError('file_search needs a query: call it with {"query": "what to look for"}.')
        param = ctx.param
        threshold, weights = ranking_options(param.get("ranking_options"))
        item["status"] = "searching"
        ctx.emit("response.file_search_call.searching", {})
        try:
            found = await vector_stores(ctx.toolbox).search(
                list(param["vector_store_ids"]), queries, max_num_results=int(param.get("max_num_results") or 10),
                filters=param.get("filters"), score_threshold=threshold, weights=weights)
        except MidtierError as exc:  # a vector store deleted or expired since the request began
            raise ToolError(exc.message) from exc
        results = [{"file_id": r["file_id"], "filename": r["filename"], "score": r["score"],
                    "text": r["content"][0]["text"], "attributes": r["attributes"]} for r in found]
        item["status"] = "completed"
        item["results"] = results if INCLUDE_RESULTS in ctx.include else None
        ctx.emit("response.file_search_call.completed", {})
        shown = results[: self.model_results]
        citations: list[dict[str, Any]] = []
        for r in shown:
            if all(c["file_id"] != r["file_id"] for c in citations):
                citations.append({"type": "file_citation", "file_id": r["file_id"], "filename": r["filename"]})
        return ToolResult(output=self.render(queries, shown), citations=citations)

    def render(self, queries: list[str], results: list[dict[str, Any]]) -> str:
        """What the model reads: the best passages, each from the part that matches best."""
        query = " ".join(queries)
        if not results:
            return f"No passage in the files matches {json.dumps(query, ensure_ascii=False)}."
        lines = [f"Passages from the files for {json.dumps(query, ensure_ascii=False)}:"]
        for i, r in enumerate(results, 1):
            lines.append(f"[{i}] {r['filename']}: {excerpt(r['text'], query, self.excerpt_chars)}")
        lines.append(ANSWER_NOW)
        return "\n".join(lines)

    def as_call(self, item: dict[str, Any]) -> ToolCall | None:
        if item.get("type") != self.item_type:
            return None
        queries = [q for q in item.get("queries") or [] if isinstance(q, str)]
        query: Any = queries[0] if len(queries) == 1 else " ".join(queries)
        return ToolCall(id=str(item.get("id")), name=FUNCTION, arguments=json.dumps({"query": query}, ensure_ascii=False))

    def as_output(self, item: dict[str, Any]) -> tuple[str, str] | None:
        if item.get("type") != self.item_type:
            return None
        queries = [q for q in item.get("queries") or [] if isinstance(q, str)]
        results = item.get("results")
        if item.get("status") != "completed":
            return str(item.get("id")), "The file search did not complete."
        if results is None:
            return str(item.get("id")), "The file search ran; its results were not kept."
        shown = [r for r in results if isinstance(r, dict) and isinstance(r.get("text"), str)][: self.model_results]
        return str(item.get("id")), self.render(queries, [{**r, "filename": r.get("filename") or ""} for r in shown])
