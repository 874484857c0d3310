"""Remote MCP: the tools of a Model Context Protocol server, called by the model inside a response.

A request names a server with ``{"type": "mcp", "server_label", "server_url", "headers",
"authorization", "allowed_tools", "require_approval", "server_description"}``. midtier connects
with the official ``mcp`` SDK for each operation (list, call): Streamable HTTP, or the older
HTTP+SSE transport. The transport is picked from the URL (a path ending in ``/sse``: SSE first)
and the other one is tried when the server answers the first handshake with an MCP error; the
one that worked is remembered per URL. ``settings["mcp"]["transport"]`` (``"streamable_http"``
or ``"sse"``) forces one; ``settings["mcp"]["allowed_urls"]`` (URL prefixes) limits which servers
a request may name. ``authorization`` is sent as ``Authorization: Bearer ...``.

Items (shapes of the ``openai`` package's ``McpListTools``, ``McpCall``, ``McpApprovalRequest``):

- ``mcp_list_tools`` (``mcpl_...``): the server's tools (``allowed_tools`` applied), listed before
  the first model turn with ``response.mcp_list_tools.in_progress``/``.completed``/``.failed``;
  on failure its ``error`` says why and the model gets no tools from that server. A response of
  a ``previous_response_id`` chain (or conversation) whose history already holds a listing of
  the same ``server_label`` reuses it and lists nothing.
- ``mcp_call`` (``mcp_...``): one call, with ``response.mcp_call.in_progress``,
  ``response.mcp_call_arguments.delta``/``.done`` and ``response.mcp_call.completed``/``.failed``;
  ``output`` is the tool's text, ``error`` an ``mcp_protocol_error``, ``mcp_tool_execution_error``
  or ``http_error``.
- ``mcp_approval_request`` (``mcpr_...``): sent instead of a call that ``require_approval`` holds
  back (``"always"`` by default, as OpenAI; ``"never"``; or ``{"always": filter, "never": filter}``
  where a filter is ``{"tool_names": [...], "read_only": bool}`` and a tool no filter matches
  needs approval). The response ends there; the client answers in its next request (with
  ``previous_response_id``) with ``{"type": "mcp_approval_response", "approval_request_id",
  "approve", "reason"}``: approved, the call runs before the model's first turn and its
  ``mcp_call`` carries ``approval_request_id``; denied, the model reads that it was denied.

The model sees each MCP tool as a function of the same name with the server's input schema.
Two servers of one request offering the same tool name: the first one's is kept.

Loop contract (``midtier.loop.agent``, beyond ``BuiltinTool``):

1. ``prepare(param, ctx)`` runs before the first turn, with ``ctx.extra["history"]`` = the
   context's and the input's items. It yields the events of the items it makes: the listing
   (``ItemStart``, ``ItemProgress``..., ``ItemDone``), then each call approved in the input and
   not run yet (run now; its ``as_output`` is what the model reads). It writes an ``audit``
   record for each such call, as the loop does for the calls it runs.
2. ``functions(param, ctx)`` (same response) gives the listed tools; it reads the listing
   ``prepare`` made (or the history's); without either it lists on its own, without an item.
3. ``start(call, param)`` returns an ``mcp_approval_request`` item when the call needs approval;
   ``run`` then raises ``NeedsApproval`` with that same item (same id as the item started).
4. History: ``as_call`` reads an ``mcp_approval_request`` and an ``mcp_call`` made without
   approval as the call; ``as_output`` reads an ``mcp_call`` (under its request's id when it was
   approved) and a denying ``mcp_approval_response`` as its result.

State: none stored besides the items (and audit records); the tool keeps in memory the listings
of responses being prepared, which tools are read-only per server, and the transport per URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar
from urllib.parse import urlsplit

from midtier.core.errors import InvalidRequest
from midtier.core.events import ItemDone, ItemProgress, ItemStart, StreamEvent
from midtier.core.messages import ToolCall, ToolSpec, new_id
from midtier.tools.base import NeedsApproval, ToolContext, ToolError, ToolResult

if TYPE_CHECKING:
    from mcp import Client

    from midtier.tools import Toolbox

log = logging.getLogger(__name__)

T = TypeVar("T")

TRANSPORTS = ("streamable_http", "sse")
MAX_MODEL_OUTPUT = 6000  # characters of a call's output the model reads
_REMEMBERED = 256


class McpFailure(Exception):
    """An operation on an MCP server failed; ``error`` is the ``McpToolCallError`` shape."""

    def __init__(self, message: str, error: dict[str, Any]) -> None:
        super().__init__(message)
        self.message = message
        self.error = error


def _leaf(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups."""
    while isinstance(getattr(exc, "exceptions", None), tuple) and exc.exceptions:  # type: ignore[attr-defined]
        exc = exc.exceptions[0]  # type: ignore[attr-defined]
    return exc


def _failure(exc: BaseException, server: str) -> McpFailure:
    from mcp import MCPError

    leaf = _leaf(exc)
    if isinstance(leaf, McpFailure):
        return leaf
    if isinstance(leaf, MCPError):
        return McpFailure(f"the MCP server {server} answered with an error: {leaf.message}",
                          {"type": "mcp_protocol_error", "code": leaf.code, "message": leaf.message})
    response = getattr(leaf, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(status, int):
        return McpFailure(f"the MCP server {server} answered HTTP {status}",
                          {"type": "http_error", "code": status, "message": f"HTTP {status}"})
    if isinstance(leaf, TimeoutError):
        return McpFailure(f"the MCP server {server} did not answer in time",
                          {"type": "mcp_protocol_error", "code": -32001, "message": "timed out"})
    message = f"could not talk to the MCP server {server} ({type(leaf).__name__}: {leaf})"
    return McpFailure(message, {"type": "mcp_protocol_error", "code": -32000, "message": message})


def _block_text(block: Any) -> str:
    """One content block of a tool result as text."""
    kind = getattr(block, "type", None)
    if kind == "text":
        return str(block.text)
    if kind in ("image", "audio"):
        return f"[{kind}: {getattr(block, 'mime_type', '')}]"
    if kind == "resource":
        resource = block.resource
        text = getattr(resource, "text", None)
        return str(text) if text is not None else f"[resource {resource.uri} ({getattr(resource, 'mime_type', '')})]"
    if kind == "resource_link":
        return f"[resource link {block.uri}{' ' + block.name if getattr(block, 'name', None) else ''}]"
    return json.dumps(block.model_dump(mode="json", by_alias=True, exclude_none=True))


def _result_text(result: Any) -> str:
    texts = [_block_text(b) for b in result.content or []]
    if not texts and result.structured_content is not None:
        return json.dumps(result.structured_content, ensure_ascii=False)
    return "\n".join(texts)


def _clean_schema(schema: Any) -> dict[str, Any]:
    out = {k: v for k, v in schema.items() if k != "$schema"} if isinstance(schema, dict) else {}
    out.setdefault("type", "object")
    if out.get("type") == "object":
        out.setdefault("properties", {})
    return out


def _filter_matches(spec: Any, name: str, read_only: bool | None) -> bool:
    """A ``{"tool_names", "read_only"}`` filter (or a list of names) matches the tool."""
    if isinstance(spec, list):
        return name in spec
    if not isinstance(spec, dict):
        return False
    names, wanted = spec.get("tool_names"), spec.get("read_only")
    if names is None and wanted is None:
        return False
    if names is not None and name not in names:
        return False
    return wanted is None or bool(read_only) == bool(wanted)


def _check_filter(spec: Any, where: str, lists: bool) -> None:
    if spec is None or (lists and isinstance(spec, list) and all(isinstance(n, str) for n in spec)):
        return
    if isinstance(spec, dict) and set(spec) <= {"tool_names", "read_only"}:
        names, read_only = spec.get("tool_names"), spec.get("read_only")
        if (names is None or (isinstance(names, list) and all(isinstance(n, str) for n in names))) and (
                read_only is None or isinstance(read_only, bool)):
            return
    shape = "a list of tool names or " if lists else ""
    raise InvalidRequest(f"expected {shape}an object with tool_names (a list of strings) and read_only (a boolean)",
                         param=where, code="invalid_value")


class McpTool:
    """The ``mcp`` built-in tool."""

    type: ClassVar[str] = "mcp"
    item_type: ClassVar[str] = "mcp_call"
    item_types: ClassVar[tuple[str, ...]] = ("mcp_call", "mcp_list_tools", "mcp_approval_request",
                                             "mcp_approval_response")

    def __init__(self, toolbox: Toolbox) -> None:
        self.toolbox = toolbox
        self._listings: OrderedDict[tuple[str, str], list[dict[str, Any]]] = OrderedDict()
        self._read_only: OrderedDict[tuple[str, str], frozenset[str]] = OrderedDict()
        self._transport: OrderedDict[str, str] = OrderedDict()

    @staticmethod
    def _keep(table: OrderedDict[Any, Any], key: Any, value: Any) -> None:
        table[key] = value
        table.move_to_end(key)
        while len(table) > _REMEMBERED:
            table.popitem(last=False)

    # -- the request ---------------------------------------------------------------------------
    def runs_on_server(self, param: dict[str, Any]) -> bool:
        return True

    def check(self, param: dict[str, Any], where: str) -> None:
        label = param.get("server_label")
        if not isinstance(label, str) or not label.strip():
            raise InvalidRequest("an mcp tool needs a server_label", param=f"{where}.server_label",
                                 code="missing_required_parameter")
        for unsupported in ("connector_id", "tunnel_id"):
            if param.get(unsupported) is not None:
                raise InvalidRequest(f"{unsupported} is not supported by this server: give a server_url",
                                     param=f"{where}.{unsupported}", code="invalid_value")
        url = param.get("server_url")
        if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
            raise InvalidRequest("an mcp tool needs a server_url (an http or https URL)", param=f"{where}.server_url",
                                 code="invalid_value")
        allowed = self.toolbox.settings("mcp").get("allowed_urls")
        if allowed is not None and not any(url_allowed(url, prefix) for prefix in _url_list(allowed)):
            raise InvalidRequest(f"this server may not connect to the MCP server {url}", param=f"{where}.server_url",
                                 code="invalid_value")
        headers = param.get("headers")
        if headers is not None and not (isinstance(headers, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in headers.items())):
            raise InvalidRequest("headers must map header names to strings", param=f"{where}.headers",
                                 code="invalid_value")
        if param.get("authorization") is not None and not isinstance(param["authorization"], str):
            raise InvalidRequest("authorization must be a string", param=f"{where}.authorization", code="invalid_value")
        _check_filter(param.get("allowed_tools"), f"{where}.allowed_tools", lists=True)
        policy = param.get("require_approval")
        if isinstance(policy, dict):
            if not set(policy) <= {"always", "never"}:
                raise InvalidRequest("require_approval takes always and never", param=f"{where}.require_approval",
                                     code="invalid_value")
            for key in ("always", "never"):
                _check_filter(policy.get(key), f"{where}.require_approval.{key}", lists=False)
        elif policy not in (None, "always", "never"):
            raise InvalidRequest("require_approval must be 'always', 'never' or an object with always and never",
                                 param=f"{where}.require_approval", code="invalid_value")

    def needs_approval(self, param: dict[str, Any], name: str) -> bool:
        policy = param.get("require_approval")
        if policy is None or policy == "always":
            return True
        if policy == "never":
            return False
        read_only = name in self._read_only.get((param["server_url"], param["server_label"]), frozenset())
        if _filter_matches(policy.get("always"), name, read_only):
            return True  # named in both: asking is the safe side
        return not _filter_matches(policy.get("never"), name, read_only)

    # -- connections ---------------------------------------------------------------------------
    def _headers(self, param: dict[str, Any]) -> dict[str, str]:
        headers = dict(param.get("headers") or {})
        if param.get("authorization"):
            headers["Authorization"] = f"Bearer {param['authorization']}"
        return headers

    def _transports(self, url: str) -> tuple[str, ...]:
        forced = self.toolbox.settings("mcp").get("transport")
        if forced in TRANSPORTS:
            return (forced,)
        known = self._transport.get(url)
        first = known or ("sse" if urlsplit(url).path.rstrip("/").endswith("/sse") else "streamable_http")
        return (first, *(t for t in TRANSPORTS if t != first))

    @contextlib.asynccontextmanager
    async def _client(self, kind: str, url: str, headers: dict[str, str], timeout: float) -> AsyncIterator[Client]:
        import httpx2
        from mcp import Client
        from mcp.client.sse import sse_client
        from mcp.client.streamable_http import streamable_http_client
        from mcp.shared._httpx_utils import create_mcp_http_client

        limits = httpx2.Timeout(min(timeout, 30.0), read=timeout)
        if kind == "sse":
            async with Client(sse_client(url, headers=headers, timeout=min(timeout, 30.0), sse_read_timeout=timeout),
                              read_timeout_seconds=timeout) as client:
                yield client
        else:
            async with create_mcp_http_client(headers=headers, timeout=limits) as http, \
                    Client(streamable_http_client(url, http_client=http), read_timeout_seconds=timeout) as client:
                yield client

    async def _session(self, param: dict[str, Any], work: Callable[[Client], Awaitable[T]], timeout: float) -> T:
        """Connect (trying the transports in turn), ``work`` on the session, disconnect."""
        url, headers = param["server_url"], self._headers(param)
        server = repr(param.get("server_label", url))
        kinds = self._transports(url)
        for n, kind in enumerate(kinds):
            connected = False
            try:
                async with self._client(kind, url, headers, timeout) as client:
                    connected = True
                    self._keep(self._transport, url, kind)
                    return await work(client)
            except Exception as exc:
                failure = _failure(exc, server)
                # the server answered, but not as this transport expects: try the other one
                answered = failure.error["type"] == "http_error" or failure.error.get("code") not in (-32000, -32001)
                if not connected and answered and n + 1 < len(kinds):
                    log.info("MCP server %s: %s did not work (%s); trying %s", url, kind, failure.message, kinds[n + 1])
                    continue
                raise failure from None
        raise AssertionError("unreachable")

    async def fetch_tools(self, param: dict[str, Any], timeout: float) -> list[dict[str, Any]]:
        """The server's tools as ``mcp_list_tools`` lists them, ``allowed_tools`` applied."""

        async def listing(client: Client) -> list[Any]:
            tools: list[Any] = []
            cursor: str | None = None
            for _ in range(100):
                page = await client.list_tools(cursor=cursor)
                tools += page.tools
                cursor = page.next_cursor
                if not cursor:
                    break
            return tools

        found = await self._session(param, listing, timeout)
        allowed = param.get("allowed_tools")
        out: list[dict[str, Any]] = []
        read_only: set[str] = set()
        for tool in found:
            annotations = tool.annotations.model_dump(mode="json", by_alias=True, exclude_none=True) \
                if tool.annotations is not None else None
            is_read_only = bool(annotations and annotations.get("readOnlyHint"))
            if allowed is not None and not _filter_matches(allowed, tool.name, is_read_only):
                continue
            if is_read_only:
                read_only.add(tool.name)
            out.append({"name": tool.name, "input_schema": tool.input_schema,
                        "description": tool.description or getattr(tool, "title", None) or "",
                        "annotations": annotations})
        self._keep(self._read_only, (param["server_url"], param["server_label"]), frozenset(read_only))
        return out

    async def invoke(self, param: dict[str, Any], name: str, arguments: dict[str, Any], timeout: float) -> Any:
        """Call one tool; the SDK's ``CallToolResult``."""
        return await self._session(param, lambda client: client.call_tool(name, arguments), timeout)

    # -- before the first turn -----------------------------------------------------------------
    @staticmethod
    def reused_listing(param: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The newest ``mcp_list_tools`` item of the history for this server (not a failed one)."""
        for item in reversed(history):
            if (item.get("type") == "mcp_list_tools" and item.get("server_label") == param["server_label"]
                    and not item.get("error")):
                return item
        return None

    @staticmethod
    def approved_calls(param: dict[str, Any], history: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The approval requests of this server that the history approves and that have not run."""
        requests = {i.get("id"): i for i in history if i.get("type") == "mcp_approval_request"}
        ran = {i.get("approval_request_id") for i in history if i.get("type") == "mcp_call"}
        out = []
        for answer in history:
            if answer.get("type") != "mcp_approval_response" or not answer.get("approve"):
                continue
            request = requests.get(answer.get("approval_request_id"))
            if request is None:
                log.warning("an mcp_approval_response answers no approval request: %s", answer.get("approval_request_id"))
                continue
            if request.get("server_label") == param["server_label"] and request["id"] not in ran:
                ran.add(request["id"])
                out.append(request)
        return out

    async def prepare(self, param: dict[str, Any], ctx: ToolContext) -> AsyncIterator[StreamEvent]:
        history: list[dict[str, Any]] = list(ctx.extra.get("history") or [])
        label = param["server_label"]
        reused = self.reused_listing(param, history)
        if reused is not None:
            tools = list(reused.get("tools") or [])
        else:
            item: dict[str, Any] = {"id": new_id("mcpl_"), "type": "mcp_list_tools", "server_label": label,
                                    "tools": [], "error": None}
            yield ItemStart(dict(item))
            yield ItemProgress(item["id"], "response.mcp_list_tools.in_progress", {})
            try:
                tools = await asyncio.wait_for(self.fetch_tools(param, ctx.timeout), ctx.timeout)
            except (McpFailure, TimeoutError) as exc:
                message = exc.message if isinstance(exc, McpFailure) else "the server did not answer in time"
                log.warning("listing the tools of MCP server %r failed: %s", label, message)
                item["error"] = message
                tools = []
                yield ItemProgress(item["id"], "response.mcp_list_tools.failed", {})
            else:
                item["tools"] = tools
                yield ItemProgress(item["id"], "response.mcp_list_tools.completed", {})
            yield ItemDone(item)
        self._keep(self._listings, (ctx.response_id, label), tools)
        for request in self.approved_calls(param, history):
            async for event in self._run_approved(request, param, ctx):
                yield event

    async def _run_approved(self, request: dict[str, Any], param: dict[str, Any],
                            ctx: ToolContext) -> AsyncIterator[StreamEvent]:
        call = ToolCall(request["id"], request["name"], request.get("arguments") or "{}")
        item = self._call_item(call, param, approval_request_id=request["id"])
        events: list[tuple[str, dict[str, Any]]] = []
        started, outcome, error = time.time(), "ok", None
        yield ItemStart(dict(item))
        self._announce(item, lambda t, f: events.append((t, f)))
        for type_, fields in events:
            yield ItemProgress(item["id"], type_, fields)
        events.clear()
        try:
            await asyncio.wait_for(self._execute(item, call, param, lambda t, f: events.append((t, f)), ctx.timeout),
                                   ctx.timeout)
        except ToolError as exc:
            outcome, error = "error", exc.message
        except TimeoutError:
            outcome, error = "timeout", f"stopped after {ctx.timeout:g} s"
            item.update(status="incomplete", error={"type": "mcp_protocol_error", "code": -32001, "message": error})
            events.append(("response.mcp_call.failed", {}))
        for type_, fields in events:
            yield ItemProgress(item["id"], type_, fields)
        yield ItemDone(item)
        entry = {"id": new_id("audit_"), "response_id": ctx.response_id, "tool": self.type, "item_id": item["id"],
                 "name": call.name, "arguments": call.arguments, "started_at": started,
                 "duration_ms": round((time.time() - started) * 1000, 1), "outcome": outcome, "error": error,
                 "approval_request_id": request["id"]}
        try:
            await ctx.store.put_record("audit", entry["id"], entry, owner=ctx.response_id)
        except Exception:
            log.exception("writing the audit log of %s failed", item["id"])

    # -- the model's side ----------------------------------------------------------------------
    async def functions(self, param: dict[str, Any], ctx: ToolContext) -> list[ToolSpec]:
        label = param["server_label"]
        tools = self._listings.pop((ctx.response_id, label), None)
        if tools is None:
            reused = self.reused_listing(param, list(ctx.extra.get("history") or []))
            if reused is not None:
                tools = list(reused.get("tools") or [])
            else:
                try:
                    tools = await asyncio.wait_for(self.fetch_tools(param, ctx.timeout), ctx.timeout)
                except (McpFailure, TimeoutError) as exc:
                    log.warning("listing the tools of MCP server %r failed: %s", label, exc)
                    tools = []
        allowed = param.get("allowed_tools")
        specs = []
        for tool in tools:
            read_only = bool((tool.get("annotations") or {}).get("readOnlyHint"))
            if allowed is not None and not _filter_matches(allowed, tool["name"], read_only):
                continue  # a reused listing made under other allowed_tools
            description = tool.get("description") or tool["name"]
            specs.append(ToolSpec(tool["name"], description, _clean_schema(tool.get("input_schema"))))
        return specs

    def _call_item(self, call: ToolCall, param: dict[str, Any], approval_request_id: str | None = None) -> dict[str, Any]:
        return {"id": new_id("mcp_"), "type": "mcp_call", "status": "in_progress", "server_label": param["server_label"],
                "name": call.name, "arguments": call.arguments, "output": None, "error": None,
                "approval_request_id": approval_request_id}

    def start(self, call: ToolCall, param: dict[str, Any]) -> dict[str, Any]:
        if self.needs_approval(param, call.name):
            return {"id": new_id("mcpr_"), "type": "mcp_approval_request", "server_label": param["server_label"],
                    "name": call.name, "arguments": call.arguments}
        return self._call_item(call, param)

    async def run(self, item: dict[str, Any], call: ToolCall, ctx: ToolContext) -> ToolResult:
        if item["type"] == "mcp_approval_request":
            raise NeedsApproval(item)
        self._announce(item, ctx.emit)
        output = await self._execute(item, call, ctx.param, ctx.emit, ctx.timeout)
        return ToolResult(output)

    @staticmethod
    def _announce(item: dict[str, Any], emit: Callable[[str, dict[str, Any]], None]) -> None:
        emit("response.mcp_call.in_progress", {})
        emit("response.mcp_call_arguments.delta", {"delta": item["arguments"]})
        emit("response.mcp_call_arguments.done", {"arguments": item["arguments"]})

    async def _execute(self, item: dict[str, Any], call: ToolCall, param: dict[str, Any],
                       emit: Callable[[str, dict[str, Any]], None], timeout: float) -> str:
        """Call the tool; fill ``item``; the text the model reads (``ToolError`` on failure)."""
        arguments = call.arguments_object() if call.arguments.strip() else {}
        if not isinstance(arguments, dict):
            item.update(status="failed", error={"type": "mcp_protocol_error", "code": -32602,
                                                "message": "the arguments are not a JSON object"})
            emit("response.mcp_call.failed", {})
            raise ToolError("the arguments must be a JSON object")
        try:
            result = await self.invoke(param, call.name, arguments, timeout)
        except McpFailure as exc:
            item.update(status="failed", error=exc.error)
            emit("response.mcp_call.failed", {})
            raise ToolError(exc.message) from None
        text = _result_text(result)
        if result.is_error:
            content = [b.model_dump(mode="json", by_alias=True, exclude_none=True) for b in result.content or []]
            item.update(status="failed", error={"type": "mcp_tool_execution_error", "content": content})
            emit("response.mcp_call.failed", {})
            raise ToolError(f"the tool {call.name} failed: {text or 'no details'}")
        item.update(status="completed", output=text)
        emit("response.mcp_call.completed", {})
        return text[:MAX_MODEL_OUTPUT]

    # -- history -------------------------------------------------------------------------------
    def as_call(self, item: dict[str, Any]) -> ToolCall | None:
        kind = item.get("type")
        if kind == "mcp_approval_request" or (kind == "mcp_call" and not item.get("approval_request_id")):
            return ToolCall(str(item.get("id")), str(item.get("name")), str(item.get("arguments") or "{}"))
        return None

    def as_output(self, item: dict[str, Any]) -> tuple[str, str] | None:
        kind = item.get("type")
        if kind == "mcp_call":
            call_id = str(item.get("approval_request_id") or item.get("id"))
            error = item.get("error")
            if error:
                detail = error.get("message") if isinstance(error, dict) else None
                if detail is None and isinstance(error, dict):
                    detail = " ".join(str(c.get("text", "")) for c in error.get("content") or [] if isinstance(c, dict))
                return call_id, f"Error: the tool {item.get('name')} failed: {(detail or str(error)).strip()}"
            if item.get("status") not in (None, "completed"):
                return call_id, f"Error: the call did not complete ({item.get('status')})."
            return call_id, str(item.get("output") or "")[:MAX_MODEL_OUTPUT]
        if kind == "mcp_approval_response" and not item.get("approve"):
            reason = f" Reason: {item['reason']}" if item.get("reason") else ""
            return str(item.get("approval_request_id")), f"The user did not approve this call; it was not run.{reason}"
        return None


_PORTS = {"http": 80, "https": 443}


def _url_list(allowed: Any) -> list[str]:
    """``allowed_urls`` as a list (one URL alone is a list of one, never its letters)."""
    return [allowed] if isinstance(allowed, str) else [u for u in allowed if isinstance(u, str)]


def url_allowed(url: str, allowed: str) -> bool:
    """Whether ``url`` is under ``allowed``: the same scheme, host and port, and a path that is
    the allowed one or below it (``https://a.com`` does not allow ``https://a.com.evil``, nor
    ``https://a.com/mcp`` allow ``https://a.com/mcpevil``). A host ending in ``:`` allows every port."""
    u, a = urlsplit(url), urlsplit(allowed)
    any_port = a.netloc.endswith(":")  # "http://127.0.0.1:" allows every port of the host
    if (u.scheme.lower(), u.hostname) != (a.scheme.lower(), a.hostname) or u.username or u.password:
        return False
    if not any_port and (u.port or _PORTS.get(u.scheme.lower())) != (a.port or _PORTS.get(a.scheme.lower())):
        return False
    base = a.path.rstrip("/")
    return not base or u.path == base or u.path.startswith(base + "/")
