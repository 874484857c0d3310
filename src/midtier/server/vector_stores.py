"""The Vector Stores API: vector stores, their files and file batches, and search.

Thin routes over ``midtier.tools.vector_stores.VectorStores`` (the server's one instance, shared
with the file_search tool). A file still being indexed is answered with an
``openai-poll-after-ms`` header, so the SDK's ``*_and_poll`` helpers poll quickly.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from midtier.core.errors import InvalidRequest
from midtier.server.app import read_json, store_of, toolbox_of
from midtier.server.responses import _int_query, _order, _page
from midtier.tools.documents import chunking_strategy
from midtier.tools.vector_stores import (
    STATUSES,
    VectorStores,
    check_attributes,
    check_expires_after,
    check_filter,
    check_metadata,
    vector_stores,
)

POLL_AFTER_MS = "100"


def _service(request: Request) -> VectorStores:
    store_of(request)
    return vector_stores(toolbox_of(request))


async def _body(request: Request, allowed: set[str], required: tuple[str, ...] = ()) -> dict[str, Any]:
    body = await read_json(request) if (await request.body()).strip() else {}
    for key in body:
        if key not in allowed:
            raise InvalidRequest(f"Unrecognized request argument supplied: {key}", param=key, code="unknown_parameter")
    for key in required:
        if key not in body:
            raise InvalidRequest(f"Missing required parameter: '{key}'.", param=key, code="missing_required_parameter")
    return body


def _str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise InvalidRequest(f"Invalid type for '{key}': expected a string.", param=key, code="invalid_type")
    return value


def _ids(value: Any, param: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InvalidRequest(f"Invalid '{param}': expected a list of file ids.", param=param, code="invalid_value")
    if len(value) > 2000:
        raise InvalidRequest(f"Invalid '{param}': at most 2000 files at once.", param=param, code="invalid_value")
    return list(value)


def _listing(request: Request) -> dict[str, Any]:
    return {"after": request.query_params.get("after"), "before": request.query_params.get("before"),
            "limit": _int_query(request, "limit", 20), "order": _order(request)}


def _json(data: dict[str, Any], in_progress: bool = False) -> JSONResponse:
    return JSONResponse(data, headers={"openai-poll-after-ms": POLL_AFTER_MS} if in_progress else None)


# -- vector stores -------------------------------------------------------------------------------------

async def create_vector_store(request: Request) -> Response:
    body = await _body(request, {"name", "description", "metadata", "file_ids", "chunking_strategy", "expires_after"})
    vs = await _service(request).create(
        name=_str(body, "name"), description=_str(body, "description"), metadata=check_metadata(body.get("metadata")),
        expires_after=check_expires_after(body.get("expires_after")), file_ids=_ids(body.get("file_ids"), "file_ids"),
        chunking=chunking_strategy(body.get("chunking_strategy")))
    return _json(vs)


async def list_vector_stores(request: Request) -> Response:
    return JSONResponse(_page(await _service(request).list_stores(**_listing(request))))


async def retrieve_vector_store(request: Request) -> Response:
    vs = await _service(request).get(request.path_params["vector_store_id"])
    return _json(vs, vs["status"] == "in_progress")


async def update_vector_store(request: Request) -> Response:
    body = await _body(request, {"name", "metadata", "expires_after"})
    changes: dict[str, Any] = {}
    if "name" in body:
        changes["name"] = _str(body, "name") or ""
    if "metadata" in body:
        changes["metadata"] = check_metadata(body["metadata"]) or {}
    if "expires_after" in body:
        changes["expires_after"] = check_expires_after(body["expires_after"])
    return _json(await _service(request).update(request.path_params["vector_store_id"], changes))


async def delete_vector_store(request: Request) -> Response:
    vs_id = request.path_params["vector_store_id"]
    await _service(request).delete(vs_id)
    return JSONResponse({"id": vs_id, "object": "vector_store.deleted", "deleted": True})


async def search_vector_store(request: Request) -> Response:
    body = await _body(request, {"query", "filters", "max_num_results", "ranking_options", "rewrite_query"},
                       required=("query",))
    queries = parse_queries(body["query"])
    max_results = parse_max_results(body.get("max_num_results"))
    filters = check_filter(body["filters"]) if body.get("filters") is not None else None
    threshold, weights = parse_ranking_options(body.get("ranking_options"))
    if not isinstance(body.get("rewrite_query", False), bool):
        raise InvalidRequest("Invalid type for 'rewrite_query': expected a boolean.", param="rewrite_query",
                             code="invalid_type")
    results = await _service(request).search([request.path_params["vector_store_id"]], queries,
                                             max_num_results=max_results, filters=filters,
                                             score_threshold=threshold, weights=weights)
    return JSONResponse({"object": "vector_store.search_results.page", "search_query": queries, "data": results,
                         "has_more": False, "next_page": None})


def parse_queries(value: Any, param: str = "query") -> list[str]:
    queries = [value] if isinstance(value, str) else value
    if not isinstance(queries, list) or not queries or not all(isinstance(q, str) and q.strip() for q in queries):
        raise InvalidRequest(f"Invalid '{param}': expected a non-empty string or list of strings.", param=param,
                             code="invalid_value")
    return [q.strip() for q in queries]


def parse_max_results(value: Any, param: str = "max_num_results") -> int:
    if value is None:
        return 10
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 50:
        raise InvalidRequest(f"Invalid '{param}': must be an integer between 1 and 50.", param=param,
                             code="invalid_value")
    return value


def parse_ranking_options(value: Any, param: str = "ranking_options") -> tuple[float, tuple[float, float]]:
    """(score threshold, (text weight, embedding weight)) of a ``ranking_options``."""
    from midtier.tools.file_search import ranking_options

    return ranking_options(value, param)


# -- files of a vector store -----------------------------------------------------------------------

async def create_vector_store_file(request: Request) -> Response:
    body = await _body(request, {"file_id", "attributes", "chunking_strategy"}, required=("file_id",))
    file_id = _str(body, "file_id") or ""
    record = await _service(request).add_file(
        request.path_params["vector_store_id"], file_id, attributes=check_attributes(body.get("attributes")),
        chunking=chunking_strategy(body.get("chunking_strategy")))
    return _json(record, record["status"] == "in_progress")


async def list_vector_store_files(request: Request) -> Response:
    status = _status_filter(request)
    page = await _service(request).list_files(request.path_params["vector_store_id"], status=status,
                                              **_listing(request))
    return JSONResponse(_page(page))


def _status_filter(request: Request) -> str | None:
    status = request.query_params.get("filter")
    if status is not None and status not in STATUSES:
        raise InvalidRequest(f"Invalid value for 'filter': expected one of {', '.join(STATUSES)}.", param="filter",
                             code="invalid_value")
    return status


async def retrieve_vector_store_file(request: Request) -> Response:
    record = await _service(request).get_file(request.path_params["vector_store_id"], request.path_params["file_id"])
    return _json(record, record["status"] == "in_progress")


async def update_vector_store_file(request: Request) -> Response:
    body = await _body(request, {"attributes"}, required=("attributes",))
    record = await _service(request).update_file(request.path_params["vector_store_id"],
                                                 request.path_params["file_id"], check_attributes(body["attributes"]))
    return _json(record)


async def delete_vector_store_file(request: Request) -> Response:
    file_id = request.path_params["file_id"]
    await _service(request).delete_file(request.path_params["vector_store_id"], file_id)
    return JSONResponse({"id": file_id, "object": "vector_store.file.deleted", "deleted": True})


async def vector_store_file_content(request: Request) -> Response:
    data = await _service(request).file_content(request.path_params["vector_store_id"],
                                                request.path_params["file_id"])
    return JSONResponse({"object": "vector_store.file_content.page", "data": data, "has_more": False,
                         "next_page": None})


# -- file batches -------------------------------------------------------------------------------

async def create_file_batch(request: Request) -> Response:
    body = await _body(request, {"file_ids", "files", "attributes", "chunking_strategy"})
    if ("file_ids" in body) == ("files" in body):
        raise InvalidRequest("Give exactly one of 'file_ids' and 'files'.", param="file_ids",
                             code="invalid_value")
    entries: list[tuple[str, dict[str, Any] | None, dict[str, Any]]] = []
    if "file_ids" in body:
        attributes = check_attributes(body.get("attributes"))
        chunking = chunking_strategy(body.get("chunking_strategy"))
        entries = [(file_id, attributes, chunking) for file_id in _ids(body["file_ids"], "file_ids")]
    else:
        given = body["files"]
        if not isinstance(given, list) or not given or len(given) > 2000:
            raise InvalidRequest("Invalid 'files': expected a list of 1 to 2000 objects.", param="files",
                                 code="invalid_value")
        for i, entry in enumerate(given):
            if not isinstance(entry, dict) or not isinstance(entry.get("file_id"), str):
                raise InvalidRequest(f"Missing required parameter: 'files[{i}].file_id'.", param=f"files[{i}].file_id",
                                     code="missing_required_parameter")
            entries.append((entry["file_id"], check_attributes(entry.get("attributes"), f"files[{i}].attributes"),
                            chunking_strategy(entry.get("chunking_strategy"), f"files[{i}].chunking_strategy")))
    if not entries:
        raise InvalidRequest("Invalid 'file_ids': expected at least one file id.", param="file_ids",
                             code="invalid_value")
    batch = await _service(request).create_batch(request.path_params["vector_store_id"], entries)
    return _json(batch, batch["status"] == "in_progress")


async def retrieve_file_batch(request: Request) -> Response:
    batch = await _service(request).get_batch(request.path_params["vector_store_id"], request.path_params["batch_id"])
    return _json(batch, batch["status"] == "in_progress")


async def cancel_file_batch(request: Request) -> Response:
    return _json(await _service(request).cancel_batch(request.path_params["vector_store_id"],
                                                      request.path_params["batch_id"]))


async def list_file_batch_files(request: Request) -> Response:
    service = _service(request)
    vs_id, batch_id = request.path_params["vector_store_id"], request.path_params["batch_id"]
    await service.get_batch(vs_id, batch_id)
    page = await service.list_files(vs_id, status=_status_filter(request), batch_id=batch_id, **_listing(request))
    return JSONResponse(_page(page))


def routes() -> list[Route]:
    vs, f, b = "/v1/vector_stores/{vector_store_id}", "/files/{file_id}", "/file_batches/{batch_id}"
    return [
        Route("/v1/vector_stores", create_vector_store, methods=["POST"]),
        Route("/v1/vector_stores", list_vector_stores, methods=["GET"]),
        Route(vs, retrieve_vector_store, methods=["GET"]),
        Route(vs, update_vector_store, methods=["POST"]),
        Route(vs, delete_vector_store, methods=["DELETE"]),
        Route(vs + "/search", search_vector_store, methods=["POST"]),
        Route(vs + "/files", create_vector_store_file, methods=["POST"]),
        Route(vs + "/files", list_vector_store_files, methods=["GET"]),
        Route(vs + f, retrieve_vector_store_file, methods=["GET"]),
        Route(vs + f, update_vector_store_file, methods=["POST"]),
        Route(vs + f, delete_vector_store_file, methods=["DELETE"]),
        Route(vs + f + "/content", vector_store_file_content, methods=["GET"]),
        Route(vs + "/file_batches", create_file_batch, methods=["POST"]),
        Route(vs + b, retrieve_file_batch, methods=["GET"]),
        Route(vs + b + "/cancel", cancel_file_batch, methods=["POST"]),
        Route(vs + b + "/files", list_file_batch_files, methods=["GET"]),
    ]
