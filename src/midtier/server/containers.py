"""The Containers API: containers and their files (``midtier.tools.containers`` holds the model)."""

from __future__ import annotations

import mimetypes
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from midtier.core.errors import InvalidRequest, NotFound
from midtier.server.app import read_json, toolbox_of
from midtier.server.responses import _int_query, _order, _page
from midtier.store.base import Page
from midtier.tools.code_interpreter import check_container
from midtier.tools.containers import DEFAULT_MINUTES, MAX_MINUTES, Containers, public


def _containers(request: Request) -> Containers:
    containers: Containers = toolbox_of(request).service("containers", Containers)
    return containers


def _public_page(page: Page) -> dict[str, Any]:
    return _page(Page([public(r) for r in page.data], page.has_more, page.first_id, page.last_id))


def _limit(request: Request) -> int:
    limit = _int_query(request, "limit", 20)
    if not 1 <= limit <= 100:
        raise InvalidRequest("limit must be between 1 and 100", param="limit", code="invalid_value")
    return limit


async def create_container(request: Request) -> Response:
    body = await read_json(request)
    name = body.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequest("Missing required parameter: 'name'.", param="name", code="missing_required_parameter")
    minutes: Any = DEFAULT_MINUTES
    expires = body.get("expires_after")
    if expires is not None:
        if not isinstance(expires, dict) or expires.get("anchor") != "last_active_at":
            raise InvalidRequest("expires_after.anchor must be 'last_active_at'", param="expires_after.anchor",
                                 code="invalid_value")
        minutes = expires.get("minutes")
        if not isinstance(minutes, int) or isinstance(minutes, bool) or not 1 <= minutes <= MAX_MINUTES:
            raise InvalidRequest(f"expires_after.minutes must be an integer from 1 to {MAX_MINUTES}",
                                 param="expires_after.minutes", code="invalid_value")
    # the same checks as a tool's auto container: file ids, memory limit, no network, no skills
    check_container({**{k: body.get(k) for k in ("file_ids", "memory_limit", "network_policy", "skills")},
                     "type": "auto"}, "")
    record = await _containers(request).create(name, minutes=minutes, memory_limit=body.get("memory_limit") or "1g",
                                               file_ids=body.get("file_ids") or [])
    return JSONResponse(public(record))


async def list_containers(request: Request) -> Response:
    page = await _containers(request).list_containers(after=request.query_params.get("after"), limit=_limit(request),
                                           order=_order(request), name=request.query_params.get("name"))
    return JSONResponse(_public_page(page))


async def retrieve_container(request: Request) -> Response:
    return JSONResponse(public(await _containers(request).require(request.path_params["container_id"])))


async def delete_container(request: Request) -> Response:
    containers = _containers(request)
    record = await containers.require(request.path_params["container_id"])
    await containers.delete(record["id"])
    return JSONResponse({"id": record["id"], "object": "container.deleted", "deleted": True})


async def create_container_file(request: Request) -> Response:
    containers = _containers(request)
    record = await containers.require(request.path_params["container_id"], running=True)
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        async with request.form(max_files=1, max_fields=8) as form:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise InvalidRequest("Missing required parameter: 'file'.", param="file",
                                     code="missing_required_parameter")
            data = await upload.read()
            made = await containers.add_file(record["id"], upload.filename or "upload", data)
    else:
        body = await read_json(request)
        file_id = body.get("file_id")
        if not isinstance(file_id, str) or not file_id:
            raise InvalidRequest("Send a multipart 'file' or a JSON 'file_id'.", param="file_id",
                                 code="missing_required_parameter")
        made = await containers.add_file_id(record["id"], file_id)
    await containers.touch(record)
    return JSONResponse(public(made))


async def list_container_files(request: Request) -> Response:
    containers = _containers(request)
    record = await containers.require(request.path_params["container_id"])
    page = await containers.list_files(record["id"], after=request.query_params.get("after"), limit=_limit(request),
                                       order=_order(request))
    return JSONResponse(_public_page(page))


async def _file(request: Request) -> tuple[Containers, dict[str, Any]]:
    containers = _containers(request)
    record = await containers.require(request.path_params["container_id"])
    file_id = request.path_params["file_id"]
    found = await containers.get_file(record["id"], file_id)
    if found is None:
        raise NotFound(f"Container file with id '{file_id}' not found.", param="file_id")
    return containers, found


async def retrieve_container_file(request: Request) -> Response:
    _, found = await _file(request)
    return JSONResponse(public(found))


async def container_file_content(request: Request) -> Response:
    containers, found = await _file(request)
    data = await containers.read_file(found["container_id"], found)
    if data is None:
        raise NotFound(f"The content of container file '{found['id']}' is gone.", param="file_id")
    media = mimetypes.guess_type(found["path"])[0] or "application/octet-stream"
    return Response(data, media_type=media)


async def delete_container_file(request: Request) -> Response:
    containers, found = await _file(request)
    await containers.delete_file(found["container_id"], found["id"])
    return JSONResponse({"id": found["id"], "object": "container.file.deleted", "deleted": True})


def routes() -> list[Route]:
    base = "/v1/containers/{container_id}"
    return [
        Route("/v1/containers", create_container, methods=["POST"]),
        Route("/v1/containers", list_containers, methods=["GET"]),
        Route(base, retrieve_container, methods=["GET"]),
        Route(base, delete_container, methods=["DELETE"]),
        Route(base + "/files", create_container_file, methods=["POST"]),
        Route(base + "/files", list_container_files, methods=["GET"]),
        Route(base + "/files/{file_id}", retrieve_container_file, methods=["GET"]),
        Route(base + "/files/{file_id}", delete_container_file, methods=["DELETE"]),
        Route(base + "/files/{file_id}/content", container_file_content, methods=["GET"]),
    ]
