"""The openai_chat engine: chunk translation, the request body, and the exchange with a real
(scripted) HTTP upstream: errors with the upstream's status, retries, timeouts, cancellation."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from midtier.core.errors import InvalidRequest, UpstreamError, UpstreamTimeout
from midtier.core.events import (
    Finish,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    ToolCallArgsDelta,
    ToolCallDone,
    ToolCallStart,
)
from midtier.core.messages import (
    Conversation,
    Message,
    ResponseFormat,
    Sampling,
    ToolCall,
    ToolChoice,
    ToolSpec,
)
from midtier.engines.openai_chat import ChunkTranslator, OpenAIChatEngine, Timeouts, request_body

from .fault_proxy import FakeUpstream, Reply, call_delta, chunk, text_reply

WEATHER = ToolSpec("get_weather", "Weather in a city", {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
TIME = ToolSpec("get_time", "Time in a city", {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as up:
        yield up


def collect(engine: OpenAIChatEngine, body: dict[str, Any]) -> list[StreamEvent]:
    async def go() -> list[StreamEvent]:
        try:
            return [e async for e in engine.stream(body)]
        finally:
            await engine.close()

    return asyncio.run(go())


def engine_for(up: FakeUpstream, read: float = 5.0) -> OpenAIChatEngine:
    return OpenAIChatEngine(up.url, name="up", api_key="sk-test", timeouts=Timeouts(connect=2, read=read))


BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}


# -- translation ---------------------------------------------------------------------------------
def feed_all(chunks: list[Any]) -> list[StreamEvent]:
    t = ChunkTranslator("up")
    out: list[StreamEvent] = []
    for c in chunks:
        out += t.feed(c)
    return out + t.end()


def test_text_reasoning_and_usage_pass_through() -> None:
    usage = {"prompt_tokens": 11, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 3}}
    events = feed_all([
        chunk({"role": "assistant", "content": None}),
        chunk({"reasoning_content": "Let me "}),
        chunk({"reasoning": "think."}),  # vLLM's newer key
        chunk({"content": "Hello"}), chunk({"content": " there"}),
        chunk(finish="stop"), chunk(usage=usage, choices=False),
    ])
    assert events[:4] == [ReasoningDelta("Let me "), ReasoningDelta("think."), TextDelta("Hello"), TextDelta(" there")]
    finish = events[-1]
    assert isinstance(finish, Finish) and finish.reason == "stop"
    assert (finish.usage.prompt_tokens, finish.usage.completion_tokens, finish.usage.cached_tokens) == (11, 5, 3)


def test_parallel_calls_keep_their_indexes_even_interleaved() -> None:
    events = feed_all([
        call_delta(0, id="call_a", name="get_weather", args=""),
        call_delta(1, id="call_b", name="get_time", args='{"ci'),
        call_delta(0, args='{"city": "Paris"}'),
        call_delta(1, args='ty": "Rome"}'),
        chunk(finish="tool_calls"),
    ])
    assert events[0] == ToolCallStart(0, "call_a", "get_weather")
    assert ToolCallStart(1, "call_b", "get_time") in events
    args = {i: "".join(e.delta for e in events if isinstance(e, ToolCallArgsDelta) and e.index == i) for i in (0, 1)}
    assert args == {0: '{"city": "Paris"}', 1: '{"city": "Rome"}'}
    done = [e for e in events if isinstance(e, ToolCallDone)]
    assert done == [ToolCallDone(0, '{"city": "Paris"}'), ToolCallDone(1, '{"city": "Rome"}')]
    assert isinstance(events[-1], Finish) and events[-1].reason == "tool_calls"


def test_a_call_whose_name_comes_late_starts_with_what_came_before() -> None:
    events = feed_all([call_delta(0, id="c1", args='{"city":'), call_delta(0, name="get_weather", args=' "Oslo"}'),
                       chunk(finish="tool_calls")])
    assert events[:3] == [ToolCallStart(0, "c1", "get_weather"), ToolCallArgsDelta(0, '{"city":'),
                          ToolCallArgsDelta(0, ' "Oslo"}')]


def test_llama_cpp_python_sends_function_call_beside_tool_calls_once() -> None:
    first = chunk({"role": "assistant", "content": None, "function_call": None, "tool_calls": None})
    both = chunk({"function_call": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                  "tool_calls": [{"index": 0, "id": "call__0_get_weather_x", "type": "function",
                                  "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]})
    events = feed_all([first, both, chunk(finish="tool_calls")])
    assert [e for e in events if isinstance(e, ToolCallDone)] == [ToolCallDone(0, '{"city": "Oslo"}')]


def test_legacy_function_call_alone_is_a_call() -> None:
    events = feed_all([chunk({"function_call": {"name": "get_weather", "arguments": "{}"}}),
                       chunk(finish="function_call")])
    assert isinstance(events[0], ToolCallStart) and events[0].name == "get_weather"
    assert isinstance(events[-1], Finish) and events[-1].reason == "tool_calls"


def test_an_error_in_the_stream_keeps_its_status() -> None:
    t = ChunkTranslator("up")
    with pytest.raises(UpstreamError) as err:
        t.feed({"error": {"message": "the context is full", "type": "invalid_request_error", "code": 400}})
    assert err.value.status == 400 and "the context is full" in err.value.message


@pytest.mark.parametrize("bad", ["[1, 2]", {"choices": "x"}, {"choices": [{"index": 0, "delta": "x"}]},
                                 {"choices": [{"index": 0, "delta": {"tool_calls": "x"}}]}])
def test_malformed_chunks_are_502(bad: Any) -> None:
    with pytest.raises(UpstreamError) as err:
        ChunkTranslator("up").feed(bad)
    assert err.value.status == 502 and err.value.code == "upstream_malformed"


def test_a_call_without_a_name_is_malformed() -> None:
    t = ChunkTranslator("up")
    t.feed(call_delta(0, id="c", args="{}"))
    with pytest.raises(UpstreamError, match="without a name"):
        t.end()


def test_no_usage_is_estimated() -> None:
    t = ChunkTranslator("up")
    t.feed(chunk({"content": "x" * 40}))
    finish = t.end(prompt_chars=400)[-1]
    assert isinstance(finish, Finish) and (finish.usage.prompt_tokens, finish.usage.completion_tokens) == (100, 10)


# -- the request ---------------------------------------------------------------------------------
def test_request_body() -> None:
    conv = Conversation(
        [Message("developer", "Be brief."), Message("user", "Weather?"),
         Message("assistant", None, [ToolCall("c1", "get_weather", '{"city": "Oslo"}'),
                                     ToolCall("c2", "patch", "*** raw ***", "custom")]),
         Message("tool", "12C", tool_call_id="c1"), Message("tool", "ok", tool_call_id="c2")],
        [WEATHER, TIME, ToolSpec("patch", "Apply a patch", kind="custom")],
        ToolChoice("required", ("get_weather",), parallel=False),
        ResponseFormat("json_schema", {"type": "object"}, True, "answer"),
        Sampling(temperature=0.2, max_tokens=64, stop=("END",), seed=7), {"enable_thinking": False})
    body = request_body(conv, "up-model", extra_body={"top_k": 20})
    assert body["model"] == "up-model" and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "tool", "tool"]
    assert body["messages"][2]["content"] == ""  # never null: some servers refuse it
    calls = body["messages"][2]["tool_calls"]
    assert calls[1]["function"]["arguments"] == json.dumps({"input": "*** raw ***"})
    assert [t["function"]["name"] for t in body["tools"]] == ["get_weather"]  # only the allowed one
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["parallel_tool_calls"] is False
    assert body["response_format"]["json_schema"] == {"name": "answer", "schema": {"type": "object"}, "strict": True}
    assert (body["max_tokens"], body["stop"], body["seed"], body["temperature"]) == (64, ["END"], 7, 0.2)
    assert body["chat_template_kwargs"] == {"enable_thinking": False} and body["top_k"] == 20


def test_request_body_refuses_max_tokens_below_one() -> None:
    with pytest.raises(InvalidRequest):
        request_body(Conversation([Message("user", "x")], sampling=Sampling(max_tokens=0)), "m")


# -- the exchange --------------------------------------------------------------------------------
def test_streams_over_http_with_the_api_key(upstream: FakeUpstream) -> None:
    upstream.enqueue(text_reply("Hel", "lo"))
    events = collect(engine_for(upstream), BODY)
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["Hel", "lo"]
    req = upstream.requests[0]
    assert req.path == "/v1/chat/completions" and req.headers["authorization"] == "Bearer sk-test"
    assert req.json()["messages"] == BODY["messages"]


def test_an_upstream_that_ignores_stream_answers_whole(upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(json={"id": "x", "object": "chat.completion", "choices": [{
        "index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4}}))
    events = collect(engine_for(upstream), BODY)
    assert events[0] == ToolCallStart(0, "c1", "get_weather")
    assert isinstance(events[-1], Finish) and events[-1].usage.completion_tokens == 4


@pytest.mark.parametrize(("status", "expect", "code"), [(400, 400, "context_length_exceeded"), (404, 404, None),
                                                        (429, 429, None), (500, 500, None), (401, 502, "upstream_auth")])
def test_upstream_errors_keep_their_status(upstream: FakeUpstream, status: int, expect: int, code: str | None) -> None:
    upstream.enqueue(Reply(status=status, json={"error": {"message": "nope", "type": "invalid_request_error",
                                                          "param": "messages", "code": code}}))
    with pytest.raises(UpstreamError) as err:
        collect(engine_for(upstream), BODY)
    assert err.value.status == expect and "nope" in err.value.message
    assert err.value.retryable == (status == 429)
    if code:
        assert err.value.code == code


def test_fastapi_validation_errors_are_readable(upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(status=422, json={"detail": [{"loc": ["body", "messages"], "msg": "bad role"}]}))
    with pytest.raises(UpstreamError) as err:
        collect(engine_for(upstream), BODY)
    assert err.value.status == 422 and "bad role" in err.value.message
    assert err.value.type == "invalid_request_error"


def test_a_reset_is_a_retryable_502(upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(reset_after=0))
    with pytest.raises(UpstreamError) as err:
        collect(engine_for(upstream), BODY)
    assert err.value.status == 502 and err.value.retryable and "broke" in err.value.message


def test_a_stream_that_ends_early_is_an_error(upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply([chunk({"content": "Hi"})], done=False))
    with pytest.raises(UpstreamError, match="before the response was finished"):
        collect(engine_for(upstream), BODY)


def test_a_stall_is_a_504_after_the_read_timeout(upstream: FakeUpstream) -> None:
    upstream.enqueue(text_reply("a", "b", stall_after=2))
    t0 = time.monotonic()
    with pytest.raises(UpstreamTimeout) as err:
        collect(engine_for(upstream, read=0.5), BODY)
    assert err.value.status == 504 and "read timeout" in err.value.message
    assert time.monotonic() - t0 < 5


def test_nobody_listening_is_a_retryable_502() -> None:
    with FakeUpstream() as up:
        url = up.url
    engine = OpenAIChatEngine(url, name="up", timeouts=Timeouts(connect=2))
    with pytest.raises(UpstreamError) as err:
        collect(engine, BODY)
    assert err.value.status == 502 and err.value.retryable and "could not connect" in err.value.message


def test_closing_the_stream_closes_the_upstream_request(upstream: FakeUpstream) -> None:
    upstream.enqueue(text_reply(*["tok"] * 100, delay=0.05))
    engine = engine_for(upstream)

    async def go() -> None:
        events = engine.stream(BODY)
        await anext(events)
        await anext(events)
        await events.aclose()
        for _ in range(100):
            if upstream.disconnects:
                break
            await asyncio.sleep(0.02)
        await engine.close()

    asyncio.run(go())
    assert upstream.disconnects == 1 and upstream.finished == 0


def test_one_pooled_connection_serves_request_after_request(upstream: FakeUpstream) -> None:
    upstream.enqueue(text_reply("a"), text_reply("b"), text_reply("c"))
    engine = engine_for(upstream)

    async def go() -> list[str]:
        out = []
        for _ in range(3):
            out += [e.text async for e in engine.stream(BODY) if isinstance(e, TextDelta)]
        await engine.close()
        return out

    assert asyncio.run(go()) == ["a", "b", "c"]
    assert upstream.connections == 1
