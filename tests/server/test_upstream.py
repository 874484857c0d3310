"""The server on an upstream-served model (the openai_chat engine) and a scripted upstream:
both APIs through the same code as a local model, upstream errors with their status, the
fault proxy's resets, stalls and malformed chunks as clear errors, and no hang."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from starlette.testclient import TestClient

from engines.fault_proxy import FakeUpstream, Fault, FaultProxy, Reply, call_delta, chunk, text_reply
from midtier.config import parse_config
from midtier.loop.upstream import UpstreamModel
from midtier.server import create_app
from midtier.store import open_store

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
USER = [{"role": "user", "content": "Weather in Paris and Rome?"}]


def upstream_model(url: str, name: str = "up", read_timeout: float = 5.0, **kw: Any) -> UpstreamModel:
    config = parse_config({"models": {name: {"engine": "openai_chat", "base_url": url, "upstream_model": "real-name",
                                             "read_timeout": read_timeout, "connect_timeout": 2,
                                             "retry_backoff": 0.01, **kw}}})
    model: UpstreamModel = config.build_models()[0]
    return model


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as up:
        yield up


@pytest.fixture
def http(upstream: FakeUpstream, tmp_path: Path) -> Iterator[TestClient]:
    app = create_app([upstream_model(upstream.url), upstream_model(upstream.url, "other")],
                     store=open_store(path=tmp_path / "store.sqlite3"))
    with TestClient(app) as client:
        yield client


@pytest.fixture
def client(http: TestClient) -> openai.OpenAI:
    return openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=http, max_retries=0)


def parallel_calls() -> Reply:
    return Reply([
        chunk({"role": "assistant", "content": None}),
        chunk({"reasoning_content": "Two cities."}),
        call_delta(0, id="call_p", name="get_weather", args='{"city": "Paris"}'),
        call_delta(1, id="call_r", name="get_weather", args='{"city": "Rome"}'),
        chunk(finish="tool_calls"),
        chunk(usage={"prompt_tokens": 20, "completion_tokens": 9}, choices=False)])


def test_models_lists_the_configured_names(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["up", "other"]
    assert client.models.retrieve("other").id == "other"


def test_chat_stream_keeps_indexes_and_reasoning(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.enqueue(parallel_calls(), parallel_calls())
    plain = client.chat.completions.create(model="up", messages=USER, tools=[WEATHER])  # type: ignore[list-item]
    with client.chat.completions.stream(model="up", messages=USER, tools=[WEATHER],  # type: ignore[list-item]
                                        stream_options={"include_usage": True}) as s:
        indexes = [c.index for e in s if e.type == "chunk" for ch in e.chunk.choices
                   for c in ch.delta.tool_calls or []]
        streamed = s.get_final_completion()
    assert sorted(set(indexes)) == [0, 1]
    for r in (plain, streamed):
        msg = r.choices[0].message
        assert [(c.id, c.function.arguments) for c in msg.tool_calls or []] == [
            ("call_p", '{"city": "Paris"}'), ("call_r", '{"city": "Rome"}')]
        assert msg.model_extra is not None and msg.model_extra["reasoning_content"] == "Two cities."
        assert r.choices[0].finish_reason == "tool_calls"
        assert r.usage is not None and (r.usage.prompt_tokens, r.usage.completion_tokens) == (20, 9)
    sent = upstream.requests[0].json()
    assert sent["model"] == "real-name" and sent["stream"] is True and sent["tools"] == [WEATHER]


def test_responses_function_call_round_trip(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    tool = {"type": "function", "name": "get_weather", "description": "Weather in a city",
            "parameters": WEATHER["function"]["parameters"]}  # type: ignore[index]
    upstream.enqueue(Reply([call_delta(0, id="call_1", name="get_weather", args='{"city": "Paris"}'),
                            chunk(finish="tool_calls")]),
                     text_reply("It is 21C in Paris."))
    first = client.responses.create(model="up", input="Weather in Paris?", tools=[tool])  # type: ignore[list-item]
    call = first.output[-1]
    assert call.type == "function_call" and call.name == "get_weather" and call.arguments == '{"city": "Paris"}'
    second = client.responses.create(model="up", previous_response_id=first.id, tools=[tool],  # type: ignore[list-item]
                                     input=[{"type": "function_call_output", "call_id": call.call_id, "output": "21C"}])
    assert second.output_text == "It is 21C in Paris."
    messages = upstream.requests[1].json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert messages[1]["tool_calls"][0]["id"] == call.call_id and messages[2]["tool_call_id"] == call.call_id


def test_responses_stream_through_an_upstream(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.enqueue(text_reply("Hel", "lo", usage={"prompt_tokens": 4, "completion_tokens": 2}))
    with client.responses.stream(model="up", input="Hi") as s:
        deltas = [e.delta for e in s if e.type == "response.output_text.delta"]
        final = s.get_final_response()
    assert deltas == ["Hel", "lo"] and final.output_text == "Hello"
    assert final.usage is not None and final.usage.input_tokens == 4


def test_truncation_auto_needs_a_context_length(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="up", input="Hi", truncation="auto")
    assert err.value.body["param"] == "truncation"  # type: ignore[index]


@pytest.mark.parametrize(("reply", "status", "fragment"), [
    (Reply(status=400, json={"error": {"message": "too many tokens", "type": "invalid_request_error",
                                       "code": "context_length_exceeded"}}), 400, "too many tokens"),
    (Reply(status=429, json={"error": {"message": "slow down"}}), 429, "slow down"),
    (Reply(status=401, json={"error": {"message": "bad key"}}), 502, "refused midtier's credentials"),
])
def test_upstream_errors_reach_the_client_with_their_status(http: TestClient, upstream: FakeUpstream, reply: Reply,
                                                            status: int, fragment: str) -> None:
    upstream.enqueue(*[reply] * 3)  # 429 is retried
    r = http.post("/v1/chat/completions", json={"model": "up", "messages": USER})
    assert r.status_code == status
    error = r.json()["error"]
    assert fragment in error["message"] and set(error) == {"message", "type", "param", "code"}


def test_an_error_after_streaming_began_is_sent_in_band(http: TestClient, upstream: FakeUpstream) -> None:
    upstream.enqueue(text_reply("a", "b", "c", reset_after=3))
    with http.stream("POST", "/v1/chat/completions", json={"model": "up", "messages": USER, "stream": True}) as r:
        assert r.status_code == 200
        data = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    assert [c["choices"][0]["delta"].get("content") for c in data if c.get("choices")][1:] == ["a", "b"]
    assert "connection to upstream up" in data[-1]["error"]["message"]


def test_a_client_that_leaves_closes_the_upstream_request(upstream: FakeUpstream) -> None:
    upstream.enqueue(text_reply(*["x"] * 200, delay=0.02))
    app = create_app([upstream_model(upstream.url)])
    raw = json.dumps({"model": "up", "messages": USER, "stream": True}).encode()
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await asyncio.sleep(0.3)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        pass

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions", "query_string": b"",
             "root_path": "", "headers": [(b"content-type", b"application/json")], "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 80)}

    async def main() -> None:
        await asyncio.wait_for(app(scope, receive, send), timeout=5)
        for _ in range(100):
            if upstream.disconnects:
                return
            await asyncio.sleep(0.02)

    t0 = time.monotonic()
    asyncio.run(main())
    assert upstream.disconnects == 1 and upstream.finished == 0
    assert time.monotonic() - t0 < 3


# -- the fault proxy between midtier and the upstream ---------------------------------------------
@pytest.fixture
def proxied(upstream: FakeUpstream, tmp_path: Path) -> Iterator[tuple[TestClient, FaultProxy]]:
    with FaultProxy(upstream.url) as proxy:
        app = create_app([upstream_model(proxy.url, read_timeout=0.5, max_retries=1)],
                         store=open_store(path=tmp_path / "store.sqlite3"))
        with TestClient(app) as client:
            yield client, proxy


def _ask(http: TestClient, stream: bool = False, api: str = "chat") -> tuple[int, Any, float]:
    t0 = time.monotonic()
    if api == "chat":
        body: dict[str, Any] = {"model": "up", "messages": USER, "stream": stream}
        path = "/v1/chat/completions"
    else:
        body = {"model": "up", "input": "Hi", "stream": stream}
        path = "/v1/responses"
    with http.stream("POST", path, json=body) as r:
        r.read()
        payload: Any = r.json() if not stream else [json.loads(line.split(": ", 1)[1]) for line in r.iter_lines()
                                                     if line.startswith("data: {")]
        return r.status_code, payload, time.monotonic() - t0


def test_proxy_passes_a_clean_exchange(proxied: tuple[TestClient, FaultProxy], upstream: FakeUpstream) -> None:
    http, proxy = proxied
    upstream.enqueue(text_reply("fine"))
    status, body, _ = _ask(http)
    assert status == 200 and body["choices"][0]["message"]["content"] == "fine"


def test_reset_before_any_byte_is_retried(proxied: tuple[TestClient, FaultProxy], upstream: FakeUpstream) -> None:
    http, proxy = proxied
    proxy.inject(Fault("reset"))
    upstream.enqueue(text_reply("after a retry"))
    status, body, _ = _ask(http)
    assert status == 200 and body["choices"][0]["message"]["content"] == "after a retry"


def test_resets_until_retries_run_out_are_a_502(proxied: tuple[TestClient, FaultProxy]) -> None:
    http, proxy = proxied
    proxy.inject(Fault("reset"), Fault("reset"))
    status, body, elapsed = _ask(http)
    assert status == 502 and "upstream up" in body["error"]["message"] and elapsed < 5


def test_reset_mid_stream_is_a_502(proxied: tuple[TestClient, FaultProxy], upstream: FakeUpstream) -> None:
    http, proxy = proxied
    proxy.inject(Fault("reset", after=3))
    upstream.enqueue(text_reply("a", "b", "c", "d"))
    status, body, _ = _ask(http)
    assert status == 502 and "broke" in body["error"]["message"]


def test_stall_is_a_504_without_hanging(proxied: tuple[TestClient, FaultProxy], upstream: FakeUpstream) -> None:
    http, proxy = proxied
    proxy.inject(Fault("stall", after=2))
    upstream.enqueue(text_reply("a", "b", "c"))
    status, body, elapsed = _ask(http)
    assert status == 504 and "read timeout" in body["error"]["message"]
    assert body["error"]["code"] == "upstream_timeout" and elapsed < 5


def test_stall_while_streaming_ends_the_stream_with_an_error(proxied: tuple[TestClient, FaultProxy],
                                                              upstream: FakeUpstream) -> None:
    http, proxy = proxied
    proxy.inject(Fault("stall", after=2))
    upstream.enqueue(text_reply("a", "b", "c"))
    status, events, elapsed = _ask(http, stream=True)
    assert status == 200 and "read timeout" in events[-1]["error"]["message"] and elapsed < 5


def test_malformed_chunk_is_a_502(proxied: tuple[TestClient, FaultProxy], upstream: FakeUpstream) -> None:
    http, proxy = proxied
    proxy.inject(Fault("malformed", after=1))
    upstream.enqueue(text_reply("a", "b"))
    status, body, _ = _ask(http)
    assert status == 502 and "malformed chunk" in body["error"]["message"]


def test_malformed_chunk_fails_a_streamed_response(proxied: tuple[TestClient, FaultProxy],
                                                   upstream: FakeUpstream) -> None:
    http, proxy = proxied
    proxy.inject(Fault("malformed", after=2))
    upstream.enqueue(text_reply("a", "b"))
    status, events, _ = _ask(http, stream=True, api="responses")
    assert status == 200
    assert events[-1]["type"] == "response.failed"
    assert "malformed chunk" in events[-1]["response"]["error"]["message"]


def test_nothing_listening_is_a_502(tmp_path: Path) -> None:
    with FakeUpstream() as gone:
        url = gone.url
    app = create_app([upstream_model(url, max_retries=1)])
    with TestClient(app) as http:
        r = http.post("/v1/chat/completions", json={"model": "up", "messages": USER})
    assert r.status_code == 502 and "could not connect" in r.json()["error"]["message"]


def test_the_sdk_sees_an_openai_error(proxied: tuple[TestClient, FaultProxy]) -> None:
    http, proxy = proxied
    proxy.inject(Fault("reset"), Fault("reset"), Fault("reset"), Fault("reset"))
    client = openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=http, max_retries=0)
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="up", messages=USER)  # type: ignore[arg-type]
    assert err.value.status_code == 502
    assert err.value.body == {"message": err.value.body["message"], "type": "server_error",  # type: ignore[index]
                              "param": None, "code": "upstream_connection"}
    with pytest.raises(openai.APIStatusError) as err:
        client.responses.create(model="up", input="Hi")
    assert err.value.status_code == 502 and "broke" in err.value.message
