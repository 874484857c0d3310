"""An upstream OpenAI-compatible Chat Completions server as an engine.

Unlike a token engine, an upstream takes a whole conversation and does its own templating,
sampling and tool-call parsing; this module only speaks its wire protocol:

- ``request_body``: a ``Conversation`` as a Chat Completions request (always streamed);
- ``ChunkTranslator``: the upstream's chunks as midtier's internal events, losing nothing
  (text, ``reasoning_content``/``reasoning`` deltas, tool calls by their upstream index,
  the finish reason and usage);
- ``OpenAIChatEngine``: one pooled ``httpx.AsyncClient`` per upstream; every failure of the
  exchange is an ``UpstreamError`` with the upstream's status (502 when the exchange itself
  broke, 504 for a timeout), marked ``retryable`` when nothing was generated. Closing the
  event stream closes the upstream response, so the upstream stops generating.

Validating the calls against the tool schemas, retries and reordering live in
``midtier.loop.upstream``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

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


def estimate_tokens(chars: int) -> int:
    """About four characters a token: the count when an upstream reports no usage."""
    return (chars + 3) // 4


@dataclass(frozen=True)
class Timeouts:
    """Seconds. ``read`` is the longest silence allowed between two bytes of a response."""

    connect: float = 10.0
    read: float = 600.0
    write: float = 60.0
    pool: float = 60.0

    def httpx(self) -> httpx.Timeout:
        return httpx.Timeout(connect=self.connect, read=self.read, write=self.write, pool=self.pool)


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

    def end(self, prompt_chars: int = 0) -> list[StreamEvent]:
        """The last events: each call's ``ToolCallDone`` (by index), then ``Finish``."""
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
        usage = self.usage or Usage(estimate_tokens(prompt_chars), estimate_tokens(self.output_chars))
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


async def _drain(payloads: AsyncGenerator[tuple[str, str], None]) -> None:
    async for _ in payloads:
        pass


async def sse_payloads(lines: AsyncIterator[str]) -> AsyncGenerator[tuple[str, str], None]:
    """(event, data) of each server-sent event; comments and ids are skipped."""
    event = ""
    data: list[str] = []
    async for line in lines:
        if not line:
            if data:
                yield event or "message", "\n".join(data)
            event, data = "", []
        elif line.startswith(":"):
            continue
        else:
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if key == "data":
                data.append(value)
            elif key == "event":
                event = value
    if data:
        yield event or "message", "\n".join(data)


# -- the engine ----------------------------------------------------------------------------------
class OpenAIChatEngine:
    """One upstream Chat Completions server, through one pooled client."""

    def __init__(self, base_url: str, *, name: str = "upstream", api_key: str | None = None,
                 timeouts: Timeouts | None = None, headers: dict[str, str] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.name = name
        self.timeouts = timeouts or Timeouts()
        self.headers = {"accept": "text/event-stream", **(headers or {})}
        if api_key:
            self.headers["authorization"] = f"Bearer {api_key}"
        self._transport = transport
        self._http: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def client(self) -> httpx.AsyncClient:
        """The pooled client of the running event loop (a pool cannot outlive its loop)."""
        loop = asyncio.get_running_loop()
        if self._http is None or self._loop is not loop or self._http.is_closed:
            self._http = httpx.AsyncClient(base_url=self.base_url + "/", timeout=self.timeouts.httpx(),
                                           headers=self.headers, transport=self._transport)
            self._loop = loop
        return self._http

    async def close(self) -> None:
        if self._http is not None and self._loop is asyncio.get_running_loop():
            await self._http.aclose()
        self._http = None

    async def stream(self, body: dict[str, Any]) -> AsyncGenerator[StreamEvent, None]:
        """The events of one streamed request. Closing this generator closes the upstream response."""
        translator = ChunkTranslator(self.name)
        prompt_chars = len(json.dumps(body.get("messages", []))) + len(json.dumps(body.get("tools", [])))
        try:
            async with self.client().stream("POST", "chat/completions", json=body) as resp:
                if resp.status_code >= 400:
                    raise await self._error(resp)
                if "text/event-stream" not in resp.headers.get("content-type", ""):
                    # an upstream that ignores "stream": one whole completion
                    whole = await resp.aread()
                    try:
                        events = translator.feed(json.loads(whole))
                    except ValueError:
                        raise translator._malformed(whole.decode("utf-8", "replace")) from None
                    for event in events + translator.end(prompt_chars):
                        yield event
                    return
                done = False
                payloads = sse_payloads(resp.aiter_lines())
                async for kind, data in payloads:
                    if data.strip() == "[DONE]":
                        done = True
                        # read the body's end, so that the connection goes back to the pool
                        with contextlib.suppress(asyncio.TimeoutError, httpx.HTTPError):
                            await asyncio.wait_for(_drain(payloads), DRAIN_SECONDS)
                        break
                    try:
                        chunk = json.loads(data)
                    except ValueError:
                        raise translator._malformed(data) from None
                    if kind == "error" and isinstance(chunk, dict) and "error" not in chunk:
                        chunk = {"error": chunk}
                    for event in translator.feed(chunk):
                        yield event
                if not done and translator.finish_reason is None:
                    raise UpstreamError(f"upstream {self.name} closed its stream before the response was finished",
                                        code="upstream_incomplete", retryable=True)
            for event in translator.end(prompt_chars):
                yield event
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from exc

    async def _error(self, resp: httpx.Response) -> UpstreamError:
        raw = b""
        async for part in resp.aiter_bytes():
            raw += part
            if len(raw) >= MAX_ERROR_BODY:
                break
        text = raw.decode("utf-8", "replace")
        try:
            body: Any = json.loads(text)
        except ValueError:
            body = text
        return error_from_body(self.name, body, resp.status_code)

    def _transport_error(self, exc: httpx.HTTPError) -> UpstreamError:
        where = f"upstream {self.name} ({self.base_url})"
        if isinstance(exc, httpx.ConnectTimeout):
            return UpstreamTimeout(f"timed out connecting to {where} after {self.timeouts.connect:g} s",
                                   retryable=True)
        if isinstance(exc, httpx.ConnectError):
            return UpstreamError(f"could not connect to {where}: {_describe(exc)}",
                                 code="upstream_unavailable", retryable=True)
        if isinstance(exc, httpx.PoolTimeout):
            return UpstreamTimeout(f"no free connection to {where} within {self.timeouts.pool:g} s", retryable=True)
        if isinstance(exc, httpx.ReadTimeout):
            return UpstreamTimeout(f"{where} sent nothing for {self.timeouts.read:g} s (read timeout)")
        if isinstance(exc, httpx.TimeoutException):
            return UpstreamTimeout(f"timed out talking to {where} ({_describe(exc)})")
        # a reset, a connection closed mid-response, a broken chunked encoding
        return UpstreamError(f"the connection to {where} broke ({_describe(exc)})",
                             code="upstream_connection", retryable=True)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
