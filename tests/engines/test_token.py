"""The token engine: the request body per dialect, chunk translation (text decoded from token
ids, end-of-generation tokens dropped, logprobs, usage), the exchange's errors, retries and
cancellation over a scripted HTTP upstream, and a whole turn through a real midtier upstream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import httpx
import pytest

from midtier.config import ConfigError, parse_config
from midtier.core.errors import ContextLengthExceeded, EngineError, InvalidRequest, UpstreamError
from midtier.core.events import Finish, TextDelta, ToolCallDone, ToolCallStart
from midtier.core.messages import Conversation, Message, Sampling, ToolChoice, ToolSpec
from midtier.engines.base import GenChunk, GenerateOptions
from midtier.engines.mock import MockEngine
from midtier.engines.openai_chat import Timeouts
from midtier.engines.token import CompletionTranslator, TokenEngine, request_body
from midtier.loop.load import TokenSettings, serve_engine
from midtier.server import create_app
from midtier.types.completions import CompletionRequest

WEATHER = ToolSpec("get_weather", "Weather in a city", {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
VOCAB = MockEngine()
EOS = VOCAB.eos_id
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def sse(*chunks: Any, done: bool = True) -> bytes:
    out = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)
    return out + (b"data: [DONE]\n\n" if done else b"")


def piece(ids: list[int] | None = None, text: str | None = None, finish: str | None = None,
          logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "text": text if text is not None else "", "logprobs": logprobs,
                              "finish_reason": finish}
    if ids is not None:
        choice["token_ids"] = ids
    return {"id": "cmpl-1", "object": "text_completion", "created": 0, "model": "up", "choices": [choice]}


def usage(prompt: int, completion: int, cached: int = 0) -> dict[str, Any]:
    return {"id": "cmpl-1", "object": "text_completion", "created": 0, "model": "up", "choices": [],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion, "prompt_tokens_details": {"cached_tokens": cached}}}


class Upstream:
    """A scripted upstream: each request gets the next reply; requests are recorded."""

    def __init__(self, *replies: httpx.Response | Callable[[httpx.Request], httpx.Response] | Exception) -> None:
        self.replies = list(replies)
        self.requests: list[httpx.Request] = []

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests]

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply(request) if callable(reply) else reply

    def engine(self, **kwargs: Any) -> TokenEngine:
        kwargs.setdefault("timeouts", Timeouts(connect=2, read=5))
        kwargs.setdefault("retry_backoff", 0.0)
        return TokenEngine("http://up.test/v1", VOCAB, name="tok", upstream_model="up",
                           transport=httpx.MockTransport(self.handler), **kwargs)


def streamed(body: bytes, status: int = 200) -> httpx.Response:
    return httpx.Response(status, headers={"content-type": "text/event-stream"}, content=body)


def run(engine: TokenEngine, prompt: list[int], options: GenerateOptions) -> list[GenChunk]:
    async def go() -> list[GenChunk]:
        try:
            return [c async for c in engine.generate(prompt, options)]
        finally:
            await engine.close()

    return asyncio.run(go())


def ids(text: str) -> list[int]:
    return VOCAB.tokenize(text, special=True)


# -- the request ------------------------------------------------------------------------------

def test_vllm_body_carries_token_ids_grammar_sampling_and_stop_tokens() -> None:
    options = GenerateOptions(Sampling(temperature=0.0, top_p=0.9, seed=7, presence_penalty=0.5), 32,
                              grammar='start: "a"\n')
    body = request_body([1, 2, 3], options, model="up", stop_token_ids=[EOS], extra_body={"top_k": 20})
    assert body == {
        "model": "up", "prompt": [1, 2, 3], "max_tokens": 32, "temperature": 0.0, "top_p": 0.9, "seed": 7,
        "presence_penalty": 0.5, "stream": True, "stream_options": {"include_usage": True},
        "return_token_ids": True, "skip_special_tokens": False, "stop_token_ids": [EOS],
        "structured_outputs": {"grammar": 'start: "a"\n'}, "top_k": 20}


def test_sglang_body_sends_the_grammar_as_llguidance_ebnf() -> None:
    options = GenerateOptions(Sampling(), 8, grammar='start: "a"\n')
    body = request_body([5], options, model="up", dialect="sglang", stop_token_ids=[EOS])
    assert body["ebnf"] == '%llguidance {}\nstart: "a"\n'
    assert "structured_outputs" not in body and "return_token_ids" not in body
    assert body["stop_token_ids"] == [EOS] and body["skip_special_tokens"] is False


def test_midtier_body_is_a_valid_midtier_completion_request() -> None:
    options = GenerateOptions(Sampling(temperature=0.0, seed=1, frequency_penalty=0.2), 16, logprobs=2,
                              grammar='start: "a"\n')
    body = request_body([5, 6], options, model="up", dialect="midtier", stop_token_ids=[EOS])
    req = CompletionRequest.model_validate(body)  # extra keys are refused there
    assert req.prompt == [5, 6] and req.return_token_ids and req.return_tokens_as_token_ids
    assert req.structured_outputs is not None and req.structured_outputs.grammar == 'start: "a"\n'
    assert req.logprobs == 2 and req.seed == 1 and req.frequency_penalty == 0.2


def test_refused_before_any_request() -> None:
    up = Upstream()
    engine = up.engine(context_length=4)
    with pytest.raises(ContextLengthExceeded):
        run(engine, [1, 2, 3, 4], GenerateOptions(max_tokens=4))
    with pytest.raises(InvalidRequest) as exc:
        run(up.engine(), [1], GenerateOptions(max_tokens=4, logprobs=1, prompt_logprobs=True))
    assert exc.value.param == "echo"
    with pytest.raises(InvalidRequest) as exc:
        run(up.engine(), [1], GenerateOptions(max_tokens=4, grammar="start: <tool_call> @custom_run\n"))
    assert exc.value.code == "unsupported_tool_type"
    constraint = object()  # a local constraint without its source cannot be sent
    with pytest.raises(EngineError):
        run(up.engine(), [1], GenerateOptions(max_tokens=4, constraint=constraint))  # type: ignore[arg-type]
    assert up.requests == []


def test_max_tokens_zero_asks_nothing() -> None:
    up = Upstream()
    chunks = run(up.engine(), [1, 2], GenerateOptions(max_tokens=0))
    assert [(c.finish, c.prompt_tokens, c.completion_tokens) for c in chunks] == [("length", 2, 0)]
    assert up.requests == []


# -- the response -----------------------------------------------------------------------------

def test_text_is_decoded_from_token_ids_and_eos_is_dropped() -> None:
    out = ids("<tool_call>é!") + [EOS]
    # "é" is two bytes, split over two chunks; the upstream's text is ignored (it skipped the special token)
    up = Upstream(streamed(sse(piece(out[:2], "?"), piece(out[2:3]), piece(out[3:], "!", finish="stop"),
                               usage(3, 5, cached=2))))
    chunks = run(up.engine(), [1, 2, 3], GenerateOptions(max_tokens=16))
    assert [c.token_ids for c in chunks[:-1]] == [out[:2], out[2:3], out[3:4]]
    assert "".join(c.text for c in chunks) == "<tool_call>é!"
    assert [c.text for c in chunks[:-1]] == ["<tool_call>", "é", "!"]
    last = chunks[-1]
    assert (last.finish, last.prompt_tokens, last.completion_tokens, last.cached_tokens) == ("stop", 3, 5, 2)
    assert up.requests[0].url == "http://up.test/v1/completions"


def test_finish_length_and_counted_usage_without_the_upstreams() -> None:
    up = Upstream(streamed(sse(piece(ids("ab"), finish="length"))))
    chunks = run(up.engine(), [1, 2, 3], GenerateOptions(max_tokens=2))
    assert (chunks[-1].finish, chunks[-1].prompt_tokens, chunks[-1].completion_tokens) == ("length", 3, 2)


def test_text_only_upstream_is_tokenized_locally() -> None:
    up = Upstream(streamed(sse(piece(text="<tool_call>x"), piece(text="y<|im_end|>", finish="stop"))))
    chunks = run(up.engine(dialect="sglang"), [1], GenerateOptions(max_tokens=8))
    assert "".join(c.text for c in chunks) == "<tool_call>xy"
    assert [t for c in chunks for t in c.token_ids] == ids("<tool_call>xy")


def test_logprobs_by_token_id() -> None:
    a, b = ids("ab")
    lps = {"tokens": [f"token_id:{a}", f"token_id:{b}"], "token_logprobs": [-0.1, -0.2],
           "top_logprobs": [{f"token_id:{b}": -3.0, f"token_id:{a}": -0.1}, {f"token_id:{b}": -0.2}],
           "text_offset": [0, 1]}
    up = Upstream(streamed(sse(piece([a, b], logprobs=lps), piece([EOS], finish="stop"))))
    chunks = run(up.engine(), [1], GenerateOptions(max_tokens=8, logprobs=2))
    first = chunks[0].logprobs
    assert first is not None and [(lp.token, lp.logprob) for lp in first] == [(a, -0.1), (b, -0.2)]
    assert first[0].top == ((a, -0.1), (b, -3.0))
    assert chunks[-1].logprobs == []
    assert up.bodies()[0]["return_tokens_as_token_ids"] is True


def test_a_whole_non_streamed_answer_is_read() -> None:
    up = Upstream(httpx.Response(200, json=piece(ids("hi") + [EOS], "hi", finish="stop") | {
        "usage": {"prompt_tokens": 1, "completion_tokens": 3}}))
    chunks = run(up.engine(), [1], GenerateOptions(max_tokens=8))
    assert "".join(c.text for c in chunks) == "hi" and chunks[-1].completion_tokens == 3


def test_translator_refuses_malformed_chunks() -> None:
    t = CompletionTranslator(VOCAB.tokenizer_spec(), VOCAB.tokenize)
    for bad in ([], {"choices": "x"}, {"choices": [{"token_ids": ["a"]}]}, {"choices": [{"text": 3}]}):
        with pytest.raises(UpstreamError) as exc:
            t.feed(bad)
        assert exc.value.code == "upstream_malformed"


# -- errors, retries, cancellation ------------------------------------------------------------

def test_upstream_error_keeps_its_status_and_message() -> None:
    body = {"error": {"message": "bad grammar", "type": "invalid_request_error", "code": "invalid_grammar",
                      "param": "structured_outputs.grammar"}}
    up = Upstream(httpx.Response(400, json=body))
    with pytest.raises(UpstreamError) as exc:
        run(up.engine(), [1], GenerateOptions(max_tokens=4))
    assert exc.value.status == 400 and exc.value.code == "invalid_grammar" and "bad grammar" in exc.value.message
    assert len(up.requests) == 1  # a client error is not retried


def test_failures_before_the_first_chunk_are_retried() -> None:
    up = Upstream(httpx.Response(503, json={"error": {"message": "busy"}}),
                  httpx.ConnectError("refused"),
                  streamed(sse(piece(ids("ok"), finish="stop"))))
    chunks = run(up.engine(max_retries=2), [1], GenerateOptions(max_tokens=4))
    assert "".join(c.text for c in chunks) == "ok" and len(up.requests) == 3


def test_retries_run_out() -> None:
    up = Upstream(httpx.ConnectError("refused"), httpx.ConnectError("refused"))
    with pytest.raises(UpstreamError) as exc:
        run(up.engine(max_retries=1), [1], GenerateOptions(max_tokens=4))
    assert exc.value.code == "upstream_unavailable" and len(up.requests) == 2


def test_a_stream_cut_short_after_output_is_an_error_not_retried() -> None:
    up = Upstream(streamed(sse(piece(ids("ab")), done=False)))
    got: list[GenChunk] = []

    async def go() -> None:
        async for c in up.engine(max_retries=3).generate([1], GenerateOptions(max_tokens=8)):
            got.append(c)

    with pytest.raises(UpstreamError) as exc:
        asyncio.run(go())
    assert exc.value.code == "upstream_incomplete" and len(up.requests) == 1
    assert got[0].text == "ab"


class _Endless(httpx.AsyncByteStream):
    """A stream that sends a token every few milliseconds until it is closed."""

    def __init__(self) -> None:
        self.closed = False
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while not self.closed:
            self.sent += 1
            yield sse(piece(ids("a")), done=False)
            await asyncio.sleep(0.005)

    async def aclose(self) -> None:
        self.closed = True


def test_closing_the_generator_closes_the_upstream_response() -> None:
    stream = _Endless()
    up = Upstream(httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=stream))

    async def go() -> None:
        engine = up.engine()
        gen = engine.generate([1], GenerateOptions(max_tokens=1000))
        assert (await anext(gen)).text == "a"
        await gen.aclose()
        await engine.close()

    asyncio.run(go())
    assert stream.closed and stream.sent < 10


# -- a whole turn through a real midtier upstream ---------------------------------------------

def turn(served: Any, conv: Conversation) -> list[Any]:
    async def go() -> list[Any]:
        return [e async for e in served.stream(conv)]

    return asyncio.run(go())


def without_ids(events: list[Any]) -> list[Any]:
    """The events but ``Finish`` (usage differs), with call ids (random) left out."""
    return [replace(e, id="") if isinstance(e, ToolCallStart) else e for e in events if not isinstance(e, Finish)]


def test_a_turn_through_a_midtier_upstream_equals_the_local_turn() -> None:
    """The same scripted model answers locally and behind midtier's /v1/completions: the
    token path sends the turn's grammar and gives the same events."""
    conv = Conversation(messages=[Message("user", "Weather in Paris?")], tools=[WEATHER],
                        tool_choice=ToolChoice("required"), sampling=Sampling(temperature=0.0, max_tokens=64))
    local_engine = MockEngine()
    local = serve_engine("m", local_engine, format_key="hermes")
    upstream_engine = MockEngine()
    app = create_app([serve_engine("up", upstream_engine, format_key="hermes")])
    seen: list[dict[str, Any]] = []

    class Recording(httpx.ASGITransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            seen.append(json.loads(request.content))
            return await super().handle_async_request(request)

    remote = serve_engine("m", TokenEngine("http://up.test/v1", MockEngine(), name="m", upstream_model="up",
                                           dialect="midtier", transport=Recording(app=app)), format_key="hermes")
    # a stray word the grammar forbids, then the call: both models are cut the same way
    for engine in (local_engine, upstream_engine):
        engine.enqueue(CALL + " and more")
    want, got = turn(local, conv), turn(remote, conv)
    assert without_ids(got) == without_ids(want)
    calls = [e for e in got if isinstance(e, ToolCallStart)]
    assert [c.name for c in calls] == ["get_weather"]
    done = [e for e in got if isinstance(e, ToolCallDone)]
    assert json.loads(done[0].arguments) == {"city": "Paris"}
    assert got[-1].reason == want[-1].reason == "tool_calls"
    assert seen[0]["prompt"] == local_engine.prompts[0] == upstream_engine.prompts[0]
    assert seen[0]["structured_outputs"]["grammar"] == local.plan(conv).grammar
    assert seen[0]["temperature"] == 0.0 and seen[0]["return_token_ids"] is True


def test_plain_text_turn_through_a_midtier_upstream() -> None:
    conv = Conversation(messages=[Message("user", "Hi")], sampling=Sampling(temperature=0.0, max_tokens=64))
    upstream_engine = MockEngine()
    upstream_engine.enqueue("Hello there, é!")
    app = create_app([serve_engine("up", upstream_engine, format_key="hermes")])
    remote = serve_engine("m", TokenEngine("http://up.test/v1", MockEngine(), name="m", upstream_model="up",
                                           dialect="midtier", transport=httpx.ASGITransport(app=app)),
                          format_key="hermes")
    events = turn(remote, conv)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Hello there, é!"
    finish = events[-1]
    assert isinstance(finish, Finish) and finish.reason == "stop"
    assert finish.usage.completion_tokens == len(ids("Hello there, é!"))


# -- configuration ----------------------------------------------------------------------------

def test_config_table_validates() -> None:
    config = parse_config({"models": {"q": {"engine": "token", "base_url": "http://127.0.0.1:8000/v1",
                                            "tokenizer": "/models/q.gguf", "dialect": "sglang"}}}, "t.toml")
    settings = config.models["q"]
    assert isinstance(settings, TokenSettings) and settings.dialect == "sglang" and settings.max_retries == 2
    with pytest.raises(ConfigError, match="models.q.dialect"):
        parse_config({"models": {"q": {"engine": "token", "base_url": "http://x/v1", "tokenizer": "t",
                                       "dialect": "tgi"}}}, "t.toml")
    with pytest.raises(ConfigError, match="models.q.tokenizer"):
        parse_config({"models": {"q": {"engine": "token", "base_url": "http://x/v1"}}}, "t.toml")
    with pytest.raises(ConfigError, match="unknown key"):
        parse_config({"models": {"q": {"engine": "token", "base_url": "http://x/v1", "tokenizer": "t",
                                       "threads": 2}}}, "t.toml")


def test_config_build_refuses_a_bad_base_url() -> None:
    config = parse_config({"models": {"q": {"engine": "token", "base_url": "127.0.0.1:8000",
                                            "tokenizer": "/nowhere.gguf"}}}, "t.toml")
    with pytest.raises(ConfigError, match="base_url must start with http"):
        config.build_models()
