"""A model served by an upstream OpenAI-compatible server (the ``openai_chat`` engine).

The upstream templates, samples and parses; midtier adds what it adds for every model: the
Responses API, stored state, the built-in tool loop, and the checking of every call:

- ``CallGate`` holds each call until its arguments are whole, validates them against the
  tool's JSON schema (a custom tool's input against its grammar; the name against
  ``tool_choice``), and passes the calls on in index order, each with its whole argument
  deltas. Text and reasoning pass at once (text is held when ``tool_choice`` is
  ``required``: a turn of text alone is invalid there).
- An invalid call, or no call where ``tool_choice`` required one, sends the request again
  (``invalid_call_retries`` times) while nothing of the turn has been passed on; after that
  it is reported: an ``UpstreamError`` (502, code ``invalid_tool_call``), or with
  ``on_invalid_call = "text"`` a note in the text in place of the call. Never passed on as is.
- A failure of the exchange that generated nothing (connect errors, a reset before the
  first event, 429/502/503/504) is retried ``max_retries`` times with exponential backoff;
  once anything was passed on, errors end the turn.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import jsonschema
from pydantic import BaseModel, ConfigDict, Field

from midtier.constrain import Constrainer
from midtier.core.errors import UpstreamError
from midtier.core.events import (
    Finish,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    ToolCallArgsDelta,
    ToolCallDone,
    ToolCallStart,
)
from midtier.core.messages import Conversation, ToolSpec
from midtier.engines.base import TokenizerSpec
from midtier.engines.openai_chat import (
    OpenAIChatEngine,
    Timeouts,
    estimate_tokens,
    request_body,
    request_chars,
)
from midtier.formats.base import custom_grammar_name
from midtier.loop.turn import TurnTrace

log = logging.getLogger(__name__)

InvalidCallPolicy = Literal["error", "text"]


class InvalidCall(Exception):
    def __init__(self, name: str, arguments: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name, self.arguments, self.reason = name, arguments, reason


@functools.cache
def _byte_constrainer() -> Constrainer:
    """Custom tools' grammars checked on bytes (an upstream's tokenizer is not at hand)."""
    tokens = [bytes([i]) for i in range(256)] + [b"\xff<eos>"]
    return Constrainer(TokenizerSpec(tokens=tokens, special_ids=[256], eos_ids=[256], bos_id=None,
                                     encode=lambda b: list(b), n_vocab=257))


def _complete_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


@dataclass
class _Held:
    start: ToolCallStart
    arguments: str = ""
    done: bool = False
    passed: bool = False


@dataclass
class CallGate:
    """One attempt's events, with each call held until it is whole and checked (see the module)."""

    conv: Conversation
    may_retry: Callable[[], bool] = lambda: False
    on_invalid: InvalidCallPolicy = "error"
    upstream: str = "upstream"
    held: dict[int, _Held] = field(default_factory=dict)
    passed: int = 0  # calls passed on; the next one gets this index
    written: list[str] = field(default_factory=list)  # what the model wrote, for the trace (see raw)
    text: list[StreamEvent] = field(default_factory=list)  # held text (tool_choice required)

    def __post_init__(self) -> None:
        self.tools = {t.name: t for t in self.conv.tools}
        self.callable = {t.name for t in self.conv.tool_choice.callable_tools(self.conv.tools)}

    @property
    def raw(self) -> str:
        """What the model wrote (joined when asked: adding to one string is quadratic)."""
        if len(self.written) > 1:
            self.written[:] = ["".join(self.written)]
        return self.written[0] if self.written else ""

    def feed(self, event: StreamEvent) -> list[StreamEvent]:
        if isinstance(event, ReasoningDelta):
            return [event]
        if isinstance(event, TextDelta):
            self.written.append(event.text)
            if self.conv.tool_choice.mode == "required":  # text alone would be invalid: hold it
                self.text.append(event)
                return []
            return [event]
        if isinstance(event, ToolCallStart):
            self.held[event.index] = _Held(event)
            return self._flush()
        if isinstance(event, ToolCallArgsDelta):
            call = self.held[event.index]
            if call.passed:
                if event.delta.strip():
                    raise UpstreamError(f"upstream {self.upstream} went on with the arguments of call "
                                        f"{event.index} after they were whole", code="upstream_malformed")
                return []
            call.arguments += event.delta
            return self._flush()
        if isinstance(event, ToolCallDone):  # the stream's end follows: Finish settles the call
            self.held[event.index].arguments = event.arguments
            return []
        assert isinstance(event, Finish)
        for call in self.held.values():
            call.done = True
        out = self._flush(truncated=event.reason == "length")
        reason = event.reason
        if self.passed and reason != "length":
            reason = "tool_calls"
        elif not self.passed and reason == "tool_calls":
            reason = "stop"
        if self.conv.tool_choice.mode == "required" and not self.passed and reason != "length":
            out += self._invalid(InvalidCall("", "", "the model made no tool call, though tool_choice required one"))
        return [*out, *self.text, Finish(reason, event.usage)]

    def _flush(self, truncated: bool = False) -> list[StreamEvent]:
        """Pass on, in index order, each held call that is known to be whole."""
        out: list[StreamEvent] = []
        pending = sorted(i for i, c in self.held.items() if not c.passed)
        for n, index in enumerate(pending):
            call = self.held[index]
            later = n + 1 < len(pending) or any(i > index for i in self.held)
            if not (call.done or (later and _complete_json(call.arguments))):
                break
            call.passed = True
            try:
                out += self._pass(call, truncated)
            except InvalidCall as bad:
                out += self._invalid(bad)
        return out

    def _pass(self, call: _Held, truncated: bool) -> list[StreamEvent]:
        name, arguments = call.start.name, call.arguments or "{}"
        tool = self.tools.get(name)
        self.written.append(json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False))
        kind: Literal["function", "custom"] = "function"
        if not (truncated and not _complete_json(arguments)):  # a call cut by max_tokens shows as is
            arguments = self._check(name, arguments, tool)
            kind = tool.kind if tool is not None else "function"
        index, self.passed = self.passed, self.passed + 1
        return [ToolCallStart(index, call.start.id, name, kind), ToolCallArgsDelta(index, arguments),
                ToolCallDone(index, arguments)]

    def _check(self, name: str, arguments: str, tool: ToolSpec | None) -> str:
        """The call's arguments as passed on (a custom tool's: its raw input); InvalidCall if wrong."""
        if tool is None:
            raise InvalidCall(name, arguments, f"there is no tool named {name!r}")
        if name not in self.callable:
            raise InvalidCall(name, arguments, f"tool_choice does not allow calling {name!r} here")
        try:
            value = json.loads(arguments)
        except ValueError as exc:
            raise InvalidCall(name, arguments, f"its arguments are not JSON ({exc})") from None
        if tool.kind == "custom":
            text = value.get("input") if isinstance(value, dict) else value
            if not isinstance(text, str):
                raise InvalidCall(name, arguments, "a custom tool's arguments must be {\"input\": string}")
            if tool.grammar is not None and not _byte_constrainer().accepts(
                    f"start: @{custom_grammar_name(tool)}\n", list(text.encode()), [tool]):
                raise InvalidCall(name, arguments, f"its input does not match the tool's {tool.grammar[0]} grammar")
            return text
        if not isinstance(value, dict):
            raise InvalidCall(name, arguments, "its arguments must be a JSON object")
        error = jsonschema.exceptions.best_match(_validator(json.dumps(tool.parameters, sort_keys=True))
                                                 .iter_errors(value))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path)
            raise InvalidCall(name, arguments, f"{where + ': ' if where else ''}{error.message}")
        return arguments

    def _invalid(self, bad: InvalidCall) -> list[StreamEvent]:
        if self.may_retry():
            raise bad
        what = f"call to {bad.name!r}" if bad.name else "turn"
        if self.on_invalid == "text":
            log.warning("upstream %s: invalid %s reported as text: %s", self.upstream, what, bad.reason)
            note = f"[midtier: the model's {what} was invalid and was not made: {bad.reason}"
            return [TextDelta(note + (f"; its arguments were {bad.arguments}]" if bad.name else "]"))]
        raise UpstreamError(f"upstream {self.upstream}: the model's {what} was invalid: {bad.reason}"
                            + (f" (arguments: {bad.arguments[:500]})" if bad.name else ""),
                            code="invalid_tool_call")


@functools.lru_cache(maxsize=256)
def _validator(schema: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads(schema))


class UpstreamModel:
    """A model served by an upstream Chat Completions server; satisfies ``loop.served.Served``."""

    def __init__(self, name: str, upstream: OpenAIChatEngine, *, upstream_model: str | None = None,
                 context_length: int | None = None, max_retries: int = 2, retry_backoff: float = 0.5,
                 invalid_call_retries: int = 1, on_invalid_call: InvalidCallPolicy = "error",
                 stream_usage: bool = True, extra_body: dict[str, Any] | None = None) -> None:
        self.name = name
        self.upstream = upstream
        self.upstream_model = upstream_model or name
        self._context_length = context_length
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self.invalid_call_retries = invalid_call_retries
        self.on_invalid_call = on_invalid_call
        self.stream_usage = stream_usage
        self.extra_body = dict(extra_body or {})

    @property
    def context_length(self) -> int | None:
        return self._context_length

    @property
    def builtin_namespaces(self) -> frozenset[str]:
        return frozenset()  # an upstream's prompt is its own: the built-ins stay functions

    def count_tokens(self, text: str) -> int:
        return estimate_tokens(len(text))

    def body(self, conv: Conversation) -> dict[str, Any]:
        return request_body(conv, self.upstream_model, stream_usage=self.stream_usage, extra_body=self.extra_body)

    def prompt_tokens(self, conv: Conversation) -> int:
        return estimate_tokens(request_chars(self.body(conv)))

    def validate_custom(self, tool: ToolSpec, param: str | None = None) -> None:
        _byte_constrainer().validate_custom(tool, param=param)

    async def close(self) -> None:
        await self.upstream.close()

    async def stream(self, conv: Conversation, trace: TurnTrace | None = None) -> AsyncGenerator[StreamEvent, None]:
        trace = trace if trace is not None else TurnTrace()
        body = self.body(conv)
        trace.prompt = json.dumps(body["messages"], ensure_ascii=False)
        trace.prompt_tokens = estimate_tokens(request_chars(body))
        invalid = failed = 0
        emitted = False

        def may_retry() -> bool:
            return not emitted and invalid < self.invalid_call_retries

        while True:
            gate = CallGate(conv, may_retry, self.on_invalid_call, self.name)
            events = self.upstream.stream(body)
            try:
                async for event in events:
                    for out in gate.feed(event):
                        if isinstance(out, Finish):
                            trace.prompt_tokens = out.usage.prompt_tokens or trace.prompt_tokens
                        if not isinstance(out, TextDelta):  # current where a reader stops; and at the end
                            trace.raw_output = gate.raw
                        emitted = True
                        yield out
                trace.extra["upstream_attempts"] = invalid + failed + 1
                return
            except InvalidCall as bad:
                invalid += 1
                log.warning("upstream %s: invalid call (%s); asking again (%d of %d)", self.name, bad,
                            invalid, self.invalid_call_retries)
            except UpstreamError as exc:
                if not exc.retryable or emitted or failed >= self.max_retries:
                    raise
                failed += 1
                delay = self.retry_backoff * 2 ** (failed - 1)
                log.warning("upstream %s: %s; retrying in %.2g s (%d of %d)", self.name, exc.message, delay,
                            failed, self.max_retries)
                await asyncio.sleep(delay)
            finally:
                if emitted:
                    trace.raw_output = gate.raw
                await events.aclose()


class OpenAIChatSettings(BaseModel):
    """A ``[models.NAME]`` table with ``engine = "openai_chat"`` (see docs/config.md)."""

    model_config = ConfigDict(extra="forbid")

    engine: Literal["openai_chat"] = "openai_chat"
    base_url: str = Field(description="the upstream's OpenAI base URL, e.g. http://127.0.0.1:8080/v1")
    upstream_model: str | None = Field(None, description="the model name the upstream knows (default: NAME)")
    api_key: str | None = None
    api_key_env: str | None = Field(None, description="the environment variable holding the API key")
    headers: dict[str, str] = Field(default_factory=dict)
    connect_timeout: float = Field(10.0, gt=0)
    read_timeout: float = Field(600.0, gt=0, description="longest silence between two bytes of a response")
    max_retries: int = Field(2, ge=0, description="retries of failures that generated nothing")
    retry_backoff: float = Field(0.5, ge=0, description="seconds before the first retry; doubles each time")
    invalid_call_retries: int = Field(1, ge=0)
    on_invalid_call: InvalidCallPolicy = "error"
    context_length: int | None = Field(None, gt=0, description="needed for truncation: auto")
    stream_usage: bool = Field(True, description="send stream_options.include_usage")
    extra_body: dict[str, Any] = Field(default_factory=dict, description="merged into every request body")

    def api_key_value(self) -> str | None:
        if self.api_key is not None and self.api_key_env is not None:
            raise ValueError("set api_key or api_key_env, not both")
        if self.api_key_env is None:
            return self.api_key
        value = os.environ.get(self.api_key_env)
        if not value:
            raise ValueError(f"api_key_env: the environment variable {self.api_key_env} is not set")
        return value

    def build(self, name: str) -> UpstreamModel:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        engine = OpenAIChatEngine(self.base_url, name=name, api_key=self.api_key_value(), headers=self.headers,
                                  timeouts=Timeouts(connect=self.connect_timeout, read=self.read_timeout))
        return UpstreamModel(name, engine, upstream_model=self.upstream_model, context_length=self.context_length,
                             max_retries=self.max_retries, retry_backoff=self.retry_backoff,
                             invalid_call_retries=self.invalid_call_retries, on_invalid_call=self.on_invalid_call,
                             stream_usage=self.stream_usage, extra_body=self.extra_body)
