"""The app factory and its routes. Handlers are thin: parse, hand over, render."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from midtier.core.errors import InvalidRequest, MidtierError, ModelNotFound
from midtier.loop.served import Served
from midtier.server.chat import conversation_from_request
from midtier.server.errors import (
    handle_http_exception,
    handle_midtier_error,
    handle_unexpected,
    validation_error,
)
from midtier.server.sse import EventStreamResponse, run_unless_disconnected, sse_data
from midtier.store import default_data_dir
from midtier.store.base import Store
from midtier.streaming.chat import ChatStream
from midtier.tools import Toolbox, ToolsConfig
from midtier.types.chat import ChatCompletionRequest

log = logging.getLogger(__name__)


class Models:
    """The models this server serves, by name."""

    def __init__(self, models: list[Served]) -> None:
        self.by_name = {m.name: m for m in models}
        self.created = int(time.time())

    def get(self, name: str) -> Served:
        try:
            return self.by_name[name]
        except KeyError:
            raise ModelNotFound(f"The model '{name}' does not exist. Served: {', '.join(self.by_name)}",
                                param="model") from None

    async def close(self) -> None:
        for model in self.by_name.values():
            close = getattr(model, "close", None)  # an upstream's pooled connections
            if close is not None:
                await close()

    def card(self, name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": self.created, "owned_by": "midtier"}


async def read_json(request: Request) -> dict[str, Any]:
    body = await request.body()
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("We could not parse the JSON body of your request. (HINT: This likely means you "
                             "aren't using your HTTP library correctly.)", code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    return data


def parse(model: type[Any], data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


async def health(request: Request) -> Response:
    models: Models = request.app.state.models
    return JSONResponse({"status": "ok", "models": list(models.by_name)})


async def list_models(request: Request) -> Response:
    models: Models = request.app.state.models
    return JSONResponse({"object": "list", "data": [models.card(n) for n in models.by_name]})


async def get_model(request: Request) -> Response:
    models: Models = request.app.state.models
    name = request.path_params["model"]
    models.get(name)
    return JSONResponse(models.card(name))


async def chat_completions(request: Request) -> Response | EventStreamResponse:
    req: ChatCompletionRequest = parse(ChatCompletionRequest, await read_json(request))
    model = request.app.state.models.get(req.model)
    conv = conversation_from_request(req)
    include_usage = bool(req.stream and req.stream_options and req.stream_options.include_usage)
    state = ChatStream(model=req.model, include_usage=include_usage)
    events = model.stream(conv)
    if req.stream:
        # errors found before the first event (context length, template) are still plain HTTP errors
        finished, first = await run_unless_disconnected(request.receive, anext(events))
        if not finished:
            await events.aclose()
            return Response(status_code=499)
        return EventStreamResponse(_chat_sse(state, first, events), on_error=_sse_error)

    async def fold() -> dict[str, Any]:
        async for event in events:
            state.feed(event)
        return state.completion()

    finished, completion = await run_unless_disconnected(request.receive, fold())
    if not finished:
        return Response(status_code=499)
    return JSONResponse(completion)


async def _chat_sse(state: ChatStream, first: Any, events: AsyncGenerator[Any, None]) -> AsyncIterator[bytes]:
    try:
        for chunk in state.feed(first):
            yield sse_data(chunk)
        async for event in events:
            for chunk in state.feed(event):
                yield sse_data(chunk)
        yield b"data: [DONE]\n\n"
    finally:
        await events.aclose()


def _sse_error(exc: BaseException) -> bytes:
    if isinstance(exc, MidtierError):
        return sse_data(exc.to_dict())
    return sse_data({"error": {"message": "The server had an error while processing your request.",
                               "type": "server_error", "param": None, "code": None}})


def store_of(request: Request) -> Store:
    """The app's store; the default one (SQLite in the data folder) is opened on first use."""
    app = request.app
    if app.state.store is None:
        from midtier.store import open_store

        app.state.store = open_store()
        app.state.toolbox.store = app.state.store
    store: Store = app.state.store
    return store


def toolbox_of(request: Request) -> Toolbox:
    store_of(request)  # the toolbox shares the app's store
    toolbox: Toolbox = request.app.state.toolbox
    return toolbox


def create_app(models: list[Served], store: Store | None = None, tools: ToolsConfig | None = None,
               data_dir: Path | None = None) -> Starlette:
    """``store`` keeps responses and conversations (the app closes it at shutdown); without one,
    the default store is opened when a request first needs it. ``tools`` says which built-in
    tools run (all by default); their files (containers, indexes) live under ``data_dir``
    (default: the store's data folder)."""
    from midtier.server import (  # they import this module's helpers
        completions,
        containers,
        files,
        responses,
        vector_stores,
    )

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", get_model, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        *responses.routes(),
        *completions.routes(),
        *files.routes(), *vector_stores.routes(),
        *containers.routes(),
    ]
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with responses.lifespan(app):
            yield
        await app.state.models.close()

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={
        MidtierError: handle_midtier_error,
        HTTPException: handle_http_exception,
        Exception: handle_unexpected,
    })
    app.state.models = Models(models)
    app.state.toolbox = Toolbox(tools or ToolsConfig(), store, data_dir or default_data_dir())
    responses.attach(app, store)
    return app
