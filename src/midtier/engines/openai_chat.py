"""An upstream OpenAI-compatible Chat Completions server as an engine.

Unlike a token engine, an upstream takes a whole conversation and does its own templating,
sampling and tool-call parsing; this module only speaks its wire protocol:

- ``request_body``: a ``Conversation`` as a Chat Completions request (always streamed);
- ``ChunkTranslator``: the upstream's chunks as midtier's internal events, losing nothing
  (text, ``reasoning_content``/``reasoning`` deltas, tool calls by their upstream index,
  the finish reason and usage);
- ``OpenAIChatEngine``: one pooled ``aiohttp.ClientSession`` per upstream (aiohttp rather
  than httpx: its pool does not check every idle connection's socket on each request, which
  cost about half of midtier's CPU on this hop); every failure of the exchange is an
  ``UpstreamError`` with the upstream's status (502 when the exchange itself broke, 504 for
  a timeout), marked ``retryable`` when nothing was generated. Closing the event stream
  closes the upstream connection, so the upstream stops generating.
- ``SSEParser``, ``error_from_body``, ``Timeouts``: shared with the token engine.

Validating the calls against the tool schemas, retries and reordering live in
``midtier.loop.upstream``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import urllib.parse
import urllib.request
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from midtier.core.errors import InvalidRequest, UpstreamError, UpstreamTimeout
from midtier.core.events import (
    Finish,
    FinishReason,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    ToolCallArgsDelta,
    ToolCallDone,
    ToolCallStart,
)
from midtier.core.messages import Conversation, Message, Usage, new_id

log = logging.getLogger(__name__)

MAX_ERROR_BODY = 64 * 1024  # bytes of an upstream's error response that are read
DRAIN_SECONDS = 2.0  # how long the end of a body is awaited after [DONE]
RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
_FINISH: dict[str, FinishReason] = {"stop": "stop", "length": "length", "tool_calls": "tool_calls",
                                    "function_call": "tool_calls", "content_filter": "content_filter"}


def loads(text: str | bytes) -> Any:
    """JSON by orjson (a few times json's speed: every streamed chunk is one), or by json
    where orjson is stricter (NaN, integers beyond 64 bits)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def estimate_tokens(chars: int) -> int:
    """About four characters a token: the count when an upstream reports no usage."""
    return (chars + 3) // 4


def request_chars(body: dict[str, Any]) -> int:
    """The characters of a request's messages and tools, as JSON (non-ASCII escaped, so that
    a character outside ASCII counts about as many tokens as it usually takes)."""
    return len(json.dumps(body.get("messages", []))) + len(json.dumps(body.get("tools", [])))


@dataclass(frozen=True)
class Timeouts:
    """Seconds. ``read`` is the longest silence allowed between two bytes of a response;
    ``pool`` the longest wait for a free pooled connection; ``write`` (httpx clients only)
    the longest a request's body may take to send."""

    connect: float = 10.0
    read: float = 600.0
    write: float = 60.0
    pool: float = 60.0

    def aiohttp(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=None, connect=self.pool + self.connect, sock_connect=self.connect,
                                     sock_read=self.read)


# -- the request ---------------------------------------------------------------------------------
def _message(m: Message) -> dict[str, Any]:
    # "developer" is OpenAI's newer name for "system"; most open servers know only the latter.
    # Content is never null: llama-cpp-python's server (among others) refuses a null content
    out: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": m.content or ""}
    if m.role == "assistant" and m.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {
                "name": c.name,
                # a custom tool is a function of one string for an upstream (ToolSpec.to_openai)
                "arguments": json.dumps({"input": c.arguments}) if c.type == "custom" else c.arguments}}
            for c in m.tool_calls]
    if m.role == "tool":
        out["tool_call_id"] = m.tool_call_id
    if m.name:
        out["name"] = m.name
    return out


def request_body(conv: Conversation, model: str, *, stream_usage: bool = True,
                 extra_body: dict[str, Any] | None = None) -> dict[str, Any]:
    """The streamed Chat Completions request for one turn of ``conv``."""
    s = conv.sampling
    if s.max_tokens is not None and s.max_tokens < 1:
        raise InvalidRequest("max_tokens must be at least 1", param="max_tokens", code="invalid_value")
    body: dict[str, Any] = {"model": model, "messages": [_message(m) for m in conv.messages], "stream": True,
                            "temperature": s.temperature, "top_p": s.top_p}
    if stream_usage:
        body["stream_options"] = {"include_usage": True}
    if s.max_tokens is not None:
        body["max_tokens"] = s.max_tokens
    if s.stop:
        body["stop"] = list(s.stop)
    if s.seed is not None:
        body["seed"] = s.seed
    if s.presence_penalty:
        body["presence_penalty"] = s.presence_penalty
    if s.frequency_penalty:
        body["frequency_penalty"] = s.frequency_penalty
    choice = conv.tool_choice
    # tools not allowed are left out: open servers rarely know the "allowed_tools" choice
    tools = conv.tools if choice.allowed is None else [t for t in conv.tools if t.name in choice.allowed]
    if tools:
        body["tools"] = [t.to_openai() for t in tools]
        if choice.mode == "required" and choice.allowed is not None and len(choice.allowed) == 1:
            body["tool_choice"] = {"type": "function", "function": {"name": choice.allowed[0]}}
        else:
            body["tool_choice"] = choice.mode
        if not choice.parallel:
            body["parallel_tool_calls"] = False
    rf = conv.response_format
    if rf.type == "json_object":
        body["response_format"] = {"type": "json_object"}
    elif rf.type == "json_schema":
        body["response_format"] = {"type": "json_schema", "json_schema": {
            "name": rf.name or "response", "schema": rf.schema or {}, "strict": rf.strict}}
    if conv.template_kwargs:
        body["chat_template_kwargs"] = dict(conv.template_kwargs)
    body.update(extra_body or {})
    return body


# -- the response --------------------------------------------------------------------------------
@dataclass
class _Call:
    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""
    started: bool = False


@dataclass
class ChunkTranslator:
    """Chat Completions chunks -> internal events.

    A call starts (``ToolCallStart``) as soon as its name is known, keeps the upstream's
    index, and its argument deltas follow as they come; upstreams that interleave calls
    produce interleaved events (``loop.upstream`` puts them in order). Every call ends with a
    ``ToolCallDone`` when the stream ends, then ``Finish``.
    """

    name: str = "upstream"
    calls: dict[int, _Call] = field(default_factory=dict)
    finish_reason: str | None = None
    usage: Usage | None = None
    output_chars: int = 0
    _legacy: bool = False  # the upstream speaks the old "function_call" delta only

    def feed(self, chunk: Any) -> list[StreamEvent]:
        if not isinstance(chunk, dict):
            raise self._malformed(chunk)
        if chunk.get("error") is not None:
            raise error_from_body(self.name, chunk, None)
        if isinstance(chunk.get("usage"), dict):
            self.usage = _usage(chunk["usage"])
        choices = chunk.get("choices")
        if choices is None:
            choices = []
        if not isinstance(choices, list):
            raise self._malformed(chunk)
        out: list[StreamEvent] = []
        for choice in choices:
            if not isinstance(choice, dict):
                raise self._malformed(chunk)
            if choice.get("index", 0) != 0:
                continue  # midtier asks for one choice
            delta = choice.get("delta") if "delta" in choice else choice.get("message")
            if delta is not None:
                if not isinstance(delta, dict):
                    raise self._malformed(chunk)
                out += self._delta(delta, chunk)
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
        return out

    def _delta(self, delta: dict[str, Any], chunk: Any) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            self.output_chars += len(reasoning)
            out.append(ReasoningDelta(reasoning))
        for key in ("content", "refusal"):
            text = delta.get(key)
            if isinstance(text, str) and text:
                self.output_chars += len(text)
                out.append(TextDelta(text))
        calls = delta.get("tool_calls")
        if calls:
            if not isinstance(calls, list):
                raise self._malformed(chunk)
            for entry in calls:
                if not isinstance(entry, dict) or not isinstance(entry.get("function", {}), dict):
                    raise self._malformed(chunk)
                index = entry.get("index")
                if not isinstance(index, int):  # not OpenAI's wire, but seen: a new id is a new call
                    known = {c.id: c.index for c in self.calls.values()}
                    new = entry.get("id") and entry["id"] not in known
                    index = len(self.calls) if new or not self.calls else max(self.calls)
                fn = entry.get("function") or {}
                out += self._call(index, entry.get("id"), fn.get("name"), fn.get("arguments"))
        elif isinstance(delta.get("function_call"), dict) and (self._legacy or not self.calls):
            self._legacy = True
            fn = delta["function_call"]
            out += self._call(0, None, fn.get("name"), fn.get("arguments"))
        return out

    def _call(self, index: int, call_id: Any, name: Any, arguments: Any) -> list[StreamEvent]:
        call = self.calls.setdefault(index, _Call(index))
        if isinstance(call_id, str) and call_id and call.id is None:
            call.id = call_id
        if isinstance(name, str) and name and call.name is None:
            call.name = name
        out: list[StreamEvent] = []
        if not call.started and call.name is not None:
            call.started = True
            call.id = call.id or new_id("call_")
            out.append(ToolCallStart(index, call.id, call.name))
            if call.arguments:
                out.append(ToolCallArgsDelta(index, call.arguments))
        if isinstance(arguments, str) and arguments:
            call.arguments += arguments
            self.output_chars += len(arguments)
            if call.started:
                out.append(ToolCallArgsDelta(index, arguments))
        return out

    def end(self, prompt_chars: int | Callable[[], int] = 0) -> list[StreamEvent]:
        """The last events: each call's ``ToolCallDone`` (by index), then ``Finish``. When the
        upstream sent no usage, it is estimated from ``prompt_chars`` (called only then)."""
        out: list[StreamEvent] = []
        for index in sorted(self.calls):
            call = self.calls[index]
            if not call.started:
                raise UpstreamError(f"upstream {self.name} sent a tool call (index {index}) without a name",
                                    code="upstream_malformed")
            out.append(ToolCallDone(index, call.arguments))
        reason = _FINISH.get(self.finish_reason or "stop", "stop")
        if reason != "length" and self.calls:
            reason = "tool_calls"
        usage = self.usage
        if usage is None:
            chars = prompt_chars() if callable(prompt_chars) else prompt_chars
            usage = Usage(estimate_tokens(chars), estimate_tokens(self.output_chars))
        out.append(Finish(reason, usage))
        return out

    def _malformed(self, chunk: Any) -> UpstreamError:
        text = chunk if isinstance(chunk, str) else json.dumps(chunk)[:200]
        return UpstreamError(f"upstream {self.name} sent a malformed chunk: {text[:200]!r}",
                             code="upstream_malformed")


def _usage(raw: dict[str, Any]) -> Usage:
    details = raw.get("prompt_tokens_details") or {}
    return Usage(int(raw.get("prompt_tokens") or 0), int(raw.get("completion_tokens") or 0),
                 int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0)


def error_from_body(name: str, body: Any, status: int | None) -> UpstreamError:
    """An upstream's error (an OpenAI envelope, FastAPI's ``detail``, or any text) as ours.

    The upstream's status is kept, except that its refusing midtier's own credentials (401,
    403) is a 502: the client's request was not at fault."""
    err = body.get("error") if isinstance(body, dict) else None
    message, error_type, code, param = None, None, None, None
    if isinstance(err, dict):
        message, error_type, param = err.get("message"), err.get("type"), err.get("param")
        code = err.get("code")
    elif isinstance(err, str):
        message = err
    elif isinstance(body, dict) and body.get("detail") is not None:
        message = json.dumps(body["detail"]) if not isinstance(body["detail"], str) else body["detail"]
    elif isinstance(body, dict) and isinstance(body.get("message"), str):
        message = body["message"]
    elif isinstance(body, str) and body.strip():
        message = body.strip()[:500]
    if status is None:  # an error inside a stream: its code may be the status it would have had
        status = code if isinstance(code, int) and 400 <= code < 600 else 502
    if status in (401, 403):
        return UpstreamError(f"upstream {name} refused midtier's credentials ({status}): {message or 'no message'}",
                             code="upstream_auth")
    text = f"upstream {name} answered {status}: {message or 'no message'}"
    return UpstreamError(text, status=status if 400 <= status < 600 else 502,
                         error_type=error_type if isinstance(error_type, str) else None,
                         param=param if isinstance(param, str) else None,
                         code=code if isinstance(code, str) else None,
                         retryable=status in RETRYABLE_STATUS)


async def sse_payloads(lines: AsyncIterator[str]) -> AsyncGenerator[tuple[str, str], None]:
    """(event, data) of each server-sent event read as lines; comments and ids are skipped."""
    parser = SSEParser()
    async for line in lines:
        for item in parser.line(line):
            yield item
    for item in parser.close():
        yield item


class SSEParser:
    """Server-sent events as they arrive: ``feed`` takes bytes cut anywhere (lines may end in
    ``\\n``, ``\\r\\n`` or ``\\r``) and returns the (event, data) of each event they complete;
    comments and ids are skipped. ``close`` returns the last event of a stream that ends
    without a blank line."""

    __slots__ = ("_buf", "_data", "_event", "_skip_lf")

    def __init__(self) -> None:
        self._buf = b""
        self._event = ""
        self._data: list[str] = []
        self._skip_lf = False  # the last read ended in \r: a \n first in the next one is its pair

    def feed(self, chunk: bytes) -> list[tuple[str, str]]:
        if self._skip_lf and chunk[:1] == b"\n":
            chunk = chunk[1:]
        self._skip_lf = False
        buf = self._buf + chunk if self._buf else chunk
        if b"\r" in buf:
            self._skip_lf = buf[-1:] == b"\r"
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        end = buf.rfind(b"\n")
        if end < 0:
            self._buf = buf
            return []
        self._buf = buf[end + 1:]
        out: list[tuple[str, str]] = []
        for line in buf[:end].decode("utf-8", "replace").split("\n"):
            out += self.line(line)
        return out

    def line(self, line: str) -> list[tuple[str, str]]:
        """The event that one whole line (without its end) completes, if any."""
        if not line:
            if not self._data:
                self._event = ""
                return []
            out = [(self._event or "message", "\n".join(self._data))]
            self._event, self._data = "", []
            return out
        if line[0] != ":":
            key, _, value = line.partition(":")
            if key == "data":
                self._data.append(value[1:] if value[:1] == " " else value)
            elif key == "event":
                self._event = value[1:] if value[:1] == " " else value
        return []

    def close(self) -> list[tuple[str, str]]:
        out = self.feed(b"\n") if self._buf else []
        if self._data:
            out.append((self._event or "message", "\n".join(self._data)))
            self._event, self._data = "", []
        return out


def proxy_from_env(url: str) -> str | None:
    """The proxy the environment names for ``url`` (``HTTPS_PROXY``, ``HTTP_PROXY``,
    ``ALL_PROXY``, minus ``NO_PROXY``), read once: the upstream's address does not change."""
    parts = urllib.parse.urlsplit(url)
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    if urllib.parse.urlsplit(proxy).scheme not in ("http", "https"):
        log.warning("the proxy %s named by the environment is not an HTTP proxy: %s is reached directly",
                    proxy, url)
        return None
    return proxy


# -- the engine ----------------------------------------------------------------------------------
class OpenAIChatEngine:
    """One upstream Chat Completions server, through one pooled aiohttp session.

    Connections are kept alive and reused (at most ``max_connections`` at once; a request
    waits up to ``timeouts.pool`` for one). No cookies are kept: the session serves every
    client of midtier. A proxy named by the environment is used, as by httpx."""

    def __init__(self, base_url: str, *, name: str = "upstream", api_key: str | None = None,
                 timeouts: Timeouts | None = None, headers: dict[str, str] | None = None,
                 max_connections: int = 100) -> None:
        self.base_url = base_url.rstrip("/")
        self.name = name
        self.timeouts = timeouts or Timeouts()
        self.max_connections = max_connections
        self.headers = {"accept": "text/event-stream", "content-type": "application/json", **(headers or {})}
        if api_key:
            self.headers["authorization"] = f"Bearer {api_key}"
        self.proxy = proxy_from_env(self.base_url)
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def session(self) -> aiohttp.ClientSession:
        """The pooled session of the running event loop (a pool cannot outlive its loop)."""
        loop = asyncio.get_running_loop()
        if self._session is None or self._loop is not loop or self._session.closed:
            if self._session is not None and self._loop is not None:
                _forget(self._session, self._loop)  # a session of another loop cannot serve this one
            connector = aiohttp.TCPConnector(limit=self.max_connections)
            self._session = aiohttp.ClientSession(
                connector=connector, headers=self.headers, timeout=self.timeouts.aiohttp(),
                cookie_jar=aiohttp.DummyCookieJar(), raise_for_status=False)
            self._loop = loop
            weakref.finalize(self, _forget, self._session, loop)
        return self._session

    async def close(self) -> None:
        if self._session is not None and self._loop is asyncio.get_running_loop():
            await self._session.close()
        self._session = None

    async def stream(self, body: dict[str, Any]) -> AsyncGenerator[StreamEvent, None]:
        """The events of one streamed request. Closing this generator closes the upstream response."""
        translator = ChunkTranslator(self.name)
        try:
            resp = await self.session().post(self.base_url + "/chat/completions", data=json.dumps(body).encode(),
                                             proxy=self.proxy)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise self._transport_error(exc) from exc
        whole = False  # the response was read to its end: its connection may serve another
        try:
            if resp.status >= 400:
                error = await self._error(resp)
                whole = resp.content.at_eof()
                raise error
            if "text/event-stream" not in resp.headers.get("content-type", ""):
                # an upstream that ignores "stream": one whole completion
                raw = await resp.read()
                whole = True
                try:
                    events = translator.feed(json.loads(raw))
                except ValueError:
                    raise translator._malformed(raw.decode("utf-8", "replace")) from None
                for event in events + translator.end(lambda: request_chars(body)):
                    yield event
                return
            done = False
            parser = SSEParser()
            content = resp.content
            while not done:
                data = await content.readany()
                if not data:
                    break
                for kind, payload in parser.feed(data):
                    if payload.strip() == "[DONE]":
                        done = True
                        break
                    for event in self._events(translator, kind, payload):
                        yield event
            if not done:
                for kind, payload in parser.close():
                    if payload.strip() == "[DONE]":
                        done = True
                        break
                    for event in self._events(translator, kind, payload):
                        yield event
                whole = True
            elif content.at_eof():
                whole = True
            else:  # read the body's end, so that the connection goes back to the pool
                with contextlib.suppress(asyncio.TimeoutError, aiohttp.ClientError):
                    await asyncio.wait_for(_read_to_end(content), DRAIN_SECONDS)
                    whole = True
            if not done and translator.finish_reason is None:
                raise UpstreamError(f"upstream {self.name} closed its stream before the response was finished",
                                    code="upstream_incomplete", retryable=True)
            for event in translator.end(lambda: request_chars(body)):
                yield event
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise self._transport_error(exc) from exc
        finally:
            if whole:
                resp.release()
            else:  # closing the connection is how the upstream learns to stop
                resp.close()

    def _events(self, translator: ChunkTranslator, kind: str, payload: str) -> list[StreamEvent]:
        try:
            chunk = loads(payload)
        except ValueError:
            raise translator._malformed(payload) from None
        if kind == "error" and isinstance(chunk, dict) and "error" not in chunk:
            chunk = {"error": chunk}
        return translator.feed(chunk)

    async def _error(self, resp: aiohttp.ClientResponse) -> UpstreamError:
        raw = b""
        while len(raw) < MAX_ERROR_BODY:
            part = await resp.content.readany()
            if not part:
                break
            raw += part
        text = raw.decode("utf-8", "replace")
        try:
            body: Any = json.loads(text)
        except ValueError:
            body = text
        return error_from_body(self.name, body, resp.status)

    def _transport_error(self, exc: BaseException) -> UpstreamError:
        where = f"upstream {self.name} ({self.base_url})"
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return UpstreamTimeout(f"timed out connecting to {where}: no connection within "
                                   f"{self.timeouts.connect:g} s, or none free within {self.timeouts.pool:g} s",
                                   retryable=True)
        if isinstance(exc, aiohttp.ClientConnectorError):
            return UpstreamError(f"could not connect to {where}: {_describe(exc)}",
                                 code="upstream_unavailable", retryable=True)
        if isinstance(exc, aiohttp.SocketTimeoutError):
            return UpstreamTimeout(f"{where} sent nothing for {self.timeouts.read:g} s (read timeout)")
        if isinstance(exc, asyncio.TimeoutError):
            return UpstreamTimeout(f"timed out talking to {where} ({_describe(exc)})")
        # a reset, a connection closed mid-response, a broken chunked encoding
        return UpstreamError(f"the connection to {where} broke ({_describe(exc)})",
                             code="upstream_connection", retryable=True)


def _forget(session: aiohttp.ClientSession, loop: asyncio.AbstractEventLoop) -> None:
    """Drop the session of an engine that was never closed (a server stopped without its
    shutdown) quietly, as httpx would: its connections close on their loop, or went with it."""
    if session.closed:
        return
    connector = session.connector
    session.detach()
    if connector is None:
        return
    with contextlib.suppress(RuntimeError):  # the loop may close meanwhile
        if not loop.is_closed():
            loop.call_soon_threadsafe(lambda: asyncio.ensure_future(connector.close(), loop=loop))
            return
    connector._close()  # the loop is closed: only marks the connector closed (no await is possible)


async def _read_to_end(content: aiohttp.StreamReader) -> None:
    while await content.readany():
        pass


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
