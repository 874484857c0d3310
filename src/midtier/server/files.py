"""The Files API: upload (multipart), list, retrieve, content, delete.

Files live in the store (``midtier.tools.files`` holds the record shape and the helpers every
other part uses). The upload cap is ``settings["files"]["max_bytes"]`` of the tools config
(default 512 MB, OpenAI's); a larger upload is refused with 413 before it is read.
"""

from __future__ import annotations

import json
import mimetypes
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from midtier.core.errors import InvalidRequest
from midtier.server.app import store_of, toolbox_of
from midtier.server.responses import _int_query, _order, _page
from midtier.tools import files

DEFAULT_MAX_BYTES = 512 * 1024 * 1024


class FileTooLarge(InvalidRequest):
    status = 413
    code = "file_too_large"


def max_bytes(request: Request) -> int:
    return int(toolbox_of(request).settings("files").get("max_bytes", DEFAULT_MAX_BYTES))


def _too_large(cap: int) -> FileTooLarge:
    return FileTooLarge(f"The file is too large: the maximum size is {cap} bytes.", param="file")


async def create_file(request: Request) -> Response:
    cap = max_bytes(request)
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > cap + 64 * 1024:  # room for the form fields
        raise _too_large(cap)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidRequest("The request must be multipart/form-data with a 'file' and a 'purpose'.",
                             param="file", code="invalid_value")
    # a malformed form is a 400 (Starlette raises HTTPException, rendered in OpenAI's envelope)
    async with request.form(max_files=1, max_fields=16) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidRequest("Missing required parameter: 'file'.", param="file", code="missing_required_parameter")
        purpose = form.get("purpose")
        if not isinstance(purpose, str) or not purpose:
            raise InvalidRequest("Missing required parameter: 'purpose'.", param="purpose",
                                 code="missing_required_parameter")
        if purpose not in files.PURPOSES:
            raise InvalidRequest(f"Invalid value for 'purpose': '{purpose}'. Supported values are: "
                                 + ", ".join(f"'{p}'" for p in files.PURPOSES) + ".", param="purpose",
                                 code="invalid_value")
        seconds = _expires_after(form)
        if upload.size is not None and upload.size > cap:
            raise _too_large(cap)
        data = await upload.read(cap + 1)
        if len(data) > cap:
            raise _too_large(cap)
        filename = (upload.filename or "upload").replace("\\", "/").rsplit("/", 1)[-1] or "upload"
    meta = await files.create_file(store_of(request), data, filename, purpose, expires_after_seconds=seconds)
    return JSONResponse(meta)


def _expires_after(form: Any) -> int | None:
    """``expires_after[anchor]`` and ``expires_after[seconds]`` (how the SDK sends the object), or
    the object as one JSON field."""
    anchor, seconds = form.get("expires_after[anchor]"), form.get("expires_after[seconds]")
    whole = form.get("expires_after")
    if isinstance(whole, str):
        try:
            value = json.loads(whole)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise InvalidRequest("Invalid value for 'expires_after': expected an object with 'anchor' and 'seconds'.",
                                 param="expires_after", code="invalid_value")
        anchor, seconds = value.get("anchor"), value.get("seconds")
    if anchor is None and seconds is None:
        return None
    return files.check_expires_after(anchor, seconds)


async def list_files(request: Request) -> Response:
    limit = _int_query(request, "limit", 10_000)
    if not 1 <= limit <= 10_000:
        raise InvalidRequest("limit must be between 1 and 10000", param="limit", code="invalid_value")
    page = await files.list_files(store_of(request), purpose=request.query_params.get("purpose"),
                                  after=request.query_params.get("after"), limit=limit, order=_order(request))
    return JSONResponse(_page(page))


async def retrieve_file(request: Request) -> Response:
    return JSONResponse(await files.require_file(store_of(request), request.path_params["file_id"]))


async def file_content(request: Request) -> Response:
    store = store_of(request)
    meta = await files.require_file(store, request.path_params["file_id"])
    data = await store.get_blob(meta["id"]) or b""
    media_type = mimetypes.guess_type(meta["filename"])[0] or "application/octet-stream"
    return Response(data, media_type=media_type)


async def delete_file(request: Request) -> Response:
    store = store_of(request)
    meta = await files.require_file(store, request.path_params["file_id"])
    await files.delete_file(store, meta["id"])
    return JSONResponse({"id": meta["id"], "object": "file", "deleted": True})


def routes() -> list[Route]:
    return [
        Route("/v1/files", create_file, methods=["POST"]),
        Route("/v1/files", list_files, methods=["GET"]),
        Route("/v1/files/{file_id}", retrieve_file, methods=["GET"]),
        Route("/v1/files/{file_id}", delete_file, methods=["DELETE"]),
        Route("/v1/files/{file_id}/content", file_content, methods=["GET"]),
    ]
