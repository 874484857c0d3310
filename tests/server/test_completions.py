"""Legacy Completions, the token routes and chat render, on the scripted mock engine.

The mock's vocabulary is bytes (ids 0-255) plus four special tokens, so a text's token ids
are its UTF-8 bytes; its "model" is sure of each scripted token (see MockEngine._logits).
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import httpx
import openai
import pytest
from starlette.testclient import TestClient

from midtier.engines.mock import MockEngine
from midtier.loop.load import serve_engine
from midtier.loop.turn import ServedModel, TurnTrace
from midtier.server import create_app
from midtier.server.chat import conversation_from_request
from midtier.types.chat import ChatCompletionRequest

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Local time in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
USER = [{"role": "user", "content": "Weather in Paris?"}]


def ids(text: str) -> list[int]:
    return list(text.encode())


def post(http: TestClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = http.post(path, json={"model": "mock", **body})
    assert r.status_code == 200, r.text
    return dict(r.json())


def stream(http: TestClient, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The chunks of a streamed completion (checked to end with [DONE])."""
    with http.stream("POST", "/v1/completions", json={"model": "mock", **body, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def fold(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """What a client rebuilds from the chunks: each choice's text, logprobs and ids joined."""
    choices: dict[int, dict[str, Any]] = {}
    usage = None
    for chunk in chunks:
        usage = chunk.get("usage") or usage
        for c in chunk["choices"]:
            into = choices.setdefault(c["index"], {"index": c["index"], "text": "", "logprobs": None,
                                                   "finish_reason": None})
            into["text"] += c["text"]
            into["finish_reason"] = c["finish_reason"] or into["finish_reason"]
            if c["logprobs"] is not None:
                into["logprobs"] = into["logprobs"] or {k: [] for k in c["logprobs"]}
                for key, values in c["logprobs"].items():
                    into["logprobs"][key] += values
            if "prompt_token_ids" in c:
                into["prompt_token_ids"] = c["prompt_token_ids"]
            if "token_ids" in c:
                into["token_ids"] = into.get("token_ids", []) + c["token_ids"]
    return {"choices": [choices[i] for i in sorted(choices)], "usage": usage}


# -- prompts ----------------------------------------------------------------------------------

def test_a_string_prompt_through_the_sdk(client: openai.OpenAI, engine: MockEngine) -> None:
    engine.enqueue("Hello there")
    r = client.completions.create(model="mock", prompt="Say hi", max_tokens=50)
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    assert [(c.index, c.text, c.finish_reason, c.logprobs) for c in r.choices] == [(0, "Hello there", "stop", None)]
    assert engine.prompts == [ids("Say hi")]  # as written: nothing added, no template
    assert r.usage is not None
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (6, 11, 17)


@pytest.mark.parametrize(("prompt", "sent"), [
    ("ab", [ids("ab")]),
    (["ab", "cd"], [ids("ab"), ids("cd")]),
    (ids("ab"), [ids("ab")]),
    ([ids("ab"), [99]], [ids("ab"), [99]]),
])
def test_every_prompt_shape_gives_one_choice_per_prompt(client: openai.OpenAI, engine: MockEngine, prompt: Any,
                                                       sent: list[list[int]]) -> None:
    engine.enqueue("first", "second")
    r = client.completions.create(model="mock", prompt=prompt, max_tokens=50)
    assert engine.prompts == sent
    assert [(c.index, c.text) for c in r.choices] == list(enumerate(["first", "second"][:len(sent)]))
    assert r.usage is not None and r.usage.prompt_tokens == sum(map(len, sent))
    assert r.usage.completion_tokens == sum(len(t) for t in ["first", "second"][:len(sent)])


def test_special_tokens_written_in_a_text_prompt_are_tokens(client: openai.OpenAI, engine: MockEngine) -> None:
    engine.enqueue("ok")
    client.completions.create(model="mock", prompt="<|im_start|>user", max_tokens=5)
    assert engine.prompts == [[256, *ids("user")]]


def test_max_tokens_defaults_to_16(client: openai.OpenAI, engine: MockEngine) -> None:
    engine.enqueue("x" * 40)
    r = client.completions.create(model="mock", prompt="go")
    assert (r.choices[0].text, r.choices[0].finish_reason) == ("x" * 16, "length")
    assert r.usage is not None and r.usage.completion_tokens == 16


def test_max_tokens_is_capped_by_the_context(http: TestClient) -> None:
    engine = MockEngine(context_length=10)
    app = create_app([serve_engine("small", engine, format_key="hermes")])
    engine.enqueue("abcdefghijkl")
    with TestClient(app) as small:
        r = small.post("/v1/completions", json={"model": "small", "prompt": "1234567", "max_tokens": 100})
    assert (r.json()["choices"][0]["text"], r.json()["choices"][0]["finish_reason"]) == ("abc", "length")


# -- echo, logprobs, stop ---------------------------------------------------------------------

def test_echo_puts_the_prompt_first(client: openai.OpenAI, engine: MockEngine) -> None:
    engine.enqueue(" world", "!")
    r = client.completions.create(model="mock", prompt="Hello", echo=True, max_tokens=10)
    assert r.choices[0].text == "Hello world"
    r = client.completions.create(model="mock", prompt=ids("héllo"), echo=True, max_tokens=10)
    assert r.choices[0].text == "héllo!"  # a token prompt echoes as its text


def test_logprobs_describe_each_token(client: openai.OpenAI, engine: MockEngine) -> None:
    engine.enqueue("abc")
    r = client.completions.create(model="mock", prompt="x", logprobs=2, max_tokens=10)
    lp = r.choices[0].logprobs
    assert lp is not None and lp.tokens == ["a", "b", "c"]
    assert lp.text_offset == [0, 1, 2]
    assert lp.token_logprobs is not None and lp.top_logprobs is not None
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert logprob < 0
        assert list(top) == [token, chr(ord(token) + 1)]  # the mock's two likeliest, best first
        assert top[token] == logprob == max(top.values())


def test_logprobs_zero_gives_the_sampled_token_only(client: openai.OpenAI, engine: MockEngine) -> None:
    engine.enqueue("ab")
    lp = client.completions.create(model="mock", prompt="x", logprobs=0, max_tokens=10).choices[0].logprobs
    assert lp is not None and lp.top_logprobs is not None
    assert [list(t) for t in lp.top_logprobs] == [["a"], ["b"]]


def test_echo_with_logprobs_scores_the_prompt(client: openai.OpenAI, engine: MockEngine) -> None:
    engine.enqueue("cd")
    r = client.completions.create(model="mock", prompt="ab", echo=True, logprobs=1, max_tokens=10)
    lp = r.choices[0].logprobs
    assert r.choices[0].text == "abcd"
    assert lp is not None and lp.tokens == ["a", "b", "c", "d"] and lp.text_offset == [0, 1, 2, 3]
    assert lp.token_logprobs is not None and lp.token_logprobs[0] is None
    assert all(x is not None and x < 0 for x in lp.token_logprobs[1:])
    assert lp.top_logprobs is not None and lp.top_logprobs[0] is None and list(lp.top_logprobs[1]) == ["b"]


def test_max_tokens_0_with_echo_only_scores(client: openai.OpenAI, engine: MockEngine) -> None:
    engine.enqueue("never")
    r = client.completions.create(model="mock", prompt="abc", echo=True, logprobs=0, max_tokens=0)
    c = r.choices[0]
    assert (c.text, c.finish_reason) == ("abc", "length")
    assert c.logprobs is not None and c.logprobs.tokens == ["a", "b", "c"]
    assert r.usage is not None and (r.usage.prompt_tokens, r.usage.completion_tokens) == (3, 0)


def test_logprobs_of_a_character_split_over_tokens(client: openai.OpenAI, engine: MockEngine) -> None:
    engine.enqueue("aé")
    lp = client.completions.create(model="mock", prompt="x", logprobs=0, max_tokens=10).choices[0].logprobs
    assert lp is not None and lp.tokens is not None and len(lp.tokens) == 3  # é is two bytes
    assert lp.text_offset == [0, 1, 1]


def test_stop_cuts_the_text_and_its_tokens(client: openai.OpenAI, engine: MockEngine) -> None:
    engine.enqueue("one two three")
    r = client.completions.create(model="mock", prompt="x", stop=["tw", "zzz"], logprobs=0, max_tokens=50)
    c = r.choices[0]
    assert (c.text, c.finish_reason) == ("one ", "stop")
    assert c.logprobs is not None and c.logprobs.tokens == ["o", "n", "e", " "]
    assert r.usage is not None and r.usage.completion_tokens == len("one tw")  # generated, then cut


def test_stop_as_a_string(client: openai.OpenAI, engine: MockEngine) -> None:
    engine.enqueue("a.b.c")
    assert client.completions.create(model="mock", prompt="x", stop=".", max_tokens=50).choices[0].text == "a"


def test_penalties_seed_and_sampling_are_accepted(client: openai.OpenAI, engine: MockEngine) -> None:
    engine.enqueue("ok")
    r = client.completions.create(model="mock", prompt="x", temperature=0.5, top_p=0.9, seed=3,
                                  presence_penalty=0.1, frequency_penalty=0.1, user="u", n=1, best_of=1)
    assert r.choices[0].text == "ok"


def test_return_token_ids(http: TestClient, engine: MockEngine) -> None:
    engine.enqueue("hé")
    r = post(http, "/v1/completions", {"prompt": "ab", "return_token_ids": True, "echo": True})
    c = r["choices"][0]
    assert c["prompt_token_ids"] == ids("ab") and c["token_ids"] == ids("hé")
    assert c["text"] == "abhé"


def test_tokens_as_token_ids(http: TestClient, engine: MockEngine) -> None:
    engine.enqueue("a")
    r = post(http, "/v1/completions", {"prompt": "x", "logprobs": 1, "return_tokens_as_token_ids": True})
    lp = r["choices"][0]["logprobs"]
    assert lp["tokens"] == ["token_id:97"] and list(lp["top_logprobs"][0]) == ["token_id:97"]


# -- streaming --------------------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    {"prompt": "Hi", "max_tokens": 50},
    {"prompt": ["Hi", "there"], "echo": True, "logprobs": 2, "return_token_ids": True, "max_tokens": 50},
    {"prompt": [ids("ab"), ids("cé")], "stop": ["or"], "logprobs": 1, "echo": True, "max_tokens": 50},
    {"prompt": "x", "max_tokens": 4, "logprobs": 0},
])
def test_streaming_gives_what_not_streaming_gives(http: TestClient, engine: MockEngine, body: dict[str, Any]) -> None:
    outputs = ("Hello world, héllo", "Good morning")
    engine.enqueue(*outputs)
    whole = post(http, "/v1/completions", body)
    engine.outputs.clear()
    engine.enqueue(*outputs)
    chunks = stream(http, {**body, "stream_options": {"include_usage": True}})
    assert len(chunks) > 3
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}
    assert all(c["object"] == "text_completion" for c in chunks)
    assert fold(chunks) == {"choices": whole["choices"], "usage": whole["usage"]}


def test_stream_usage_only_when_asked(http: TestClient, engine: MockEngine) -> None:
    engine.enqueue("ab", "ab")
    chunks = stream(http, {"prompt": "x"})
    assert all("usage" not in c for c in chunks) and chunks[-1]["choices"][0]["finish_reason"] == "stop"
    chunks = stream(http, {"prompt": "x", "stream_options": {"include_usage": True}})
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 3
    assert all(c["usage"] is None for c in chunks[:-1])


def test_sdk_streaming(client: openai.OpenAI, engine: MockEngine) -> None:
    engine.enqueue("Hello")
    chunks = list(client.completions.create(model="mock", prompt="x", stream=True, max_tokens=10))
    assert "".join(c.choices[0].text for c in chunks) == "Hello"
    assert chunks[-1].choices[0].finish_reason == "stop"


# -- constraints ------------------------------------------------------------------------------

@pytest.mark.parametrize(("structured", "script", "matches"), [
    ({"regex": "[a-c]+[0-9]{2}"}, "abc123xyz", lambda t: re.fullmatch("[a-c]+[0-9]{2}", t)),
    ({"choice": ["yes", "no"]}, "yes indeed", lambda t: t in ("yes", "no")),
    ({"json": {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"],
               "additionalProperties": False}}, '{"a": 12} and more',
     lambda t: json.loads(t) == {"a": 12}),
    ({"json": '{"type": "array", "items": {"type": "integer"}, "maxItems": 2}'}, "[1, 2] and 3",
     lambda t: json.loads(t) == [1, 2]),
    ({"grammar": 'start: "(" NUM ("," NUM)* ")"\nNUM: /[0-9]+/\n'}, "(1,22)extra",
     lambda t: re.fullmatch(r"\([0-9]+(,[0-9]+)*\)", t)),
])
def test_structured_outputs_constrain_the_output(http: TestClient, engine: MockEngine, structured: dict[str, Any],
                                                 script: str, matches: Any) -> None:
    engine.enqueue(script)
    r = post(http, "/v1/completions", {"prompt": ids("go"), "structured_outputs": structured, "max_tokens": 50})
    text = r["choices"][0]["text"]
    assert text and matches(text), text
    assert r["choices"][0]["finish_reason"] == "stop"


def test_a_grammar_cuts_output_it_forbids(http: TestClient, engine: MockEngine) -> None:
    engine.enqueue("12ab")  # the mock stops where the constraint refuses its script
    r = post(http, "/v1/completions", {"prompt": "go", "structured_outputs": {"regex": "[a-z]+"}})
    assert r["choices"][0]["text"] == ""


def test_a_grammar_applies_to_every_prompt(http: TestClient, engine: MockEngine) -> None:
    engine.enqueue("no way", "yes sir")
    r = post(http, "/v1/completions", {"prompt": [[1], [2]], "structured_outputs": {"choice": ["yes", "no"]}})
    assert [c["text"] for c in r["choices"]] == ["no", "yes"]


# -- errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "param", "code"), [
    ({"prompt": ""}, "prompt", "empty_prompt"),
    ({"prompt": []}, "prompt", "empty_prompt"),
    ({"prompt": ["ok", ""]}, "prompt[1]", "empty_prompt"),
    ({"prompt": [[1], []]}, "prompt[1]", "empty_prompt"),
    ({"prompt": [97, 300]}, "prompt[1]", "invalid_token_id"),
    ({"prompt": [-1]}, "prompt[0]", "invalid_token_id"),
    ({"prompt": [[97], [98, 260]]}, "prompt[1][1]", "invalid_token_id"),
    ({"prompt": [97] * 5000}, "prompt", "context_length_exceeded"),
    ({"prompt": ["a", "b" * 5000]}, "prompt[1]", "context_length_exceeded"),
    ({"prompt": [1, "a"]}, "prompt", "invalid_value"),
    ({"prompt": {"text": "a"}}, "prompt", "invalid_value"),
    ({}, "prompt", "missing_required_parameter"),
    ({"prompt": "a", "n": 2}, "n", "unsupported_value"),
    ({"prompt": "a", "best_of": 3}, "best_of", "unsupported_value"),
    ({"prompt": "a", "logit_bias": {"97": 5}}, "logit_bias", "unsupported_parameter"),
    ({"prompt": "a", "suffix": "end"}, "suffix", "unsupported_parameter"),
    ({"prompt": "a", "stop": ["1", "2", "3", "4", "5"]}, "stop", "invalid_value"),
    ({"prompt": "a", "logprobs": 21}, "logprobs", "invalid_value"),
    ({"prompt": "a", "max_tokens": -1}, "max_tokens", "invalid_value"),
    ({"prompt": "a", "temperature": 3}, "temperature", "invalid_value"),
    ({"prompt": "a", "frobnicate": 1}, "frobnicate", "unknown_parameter"),
    ({"prompt": "a", "structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs", "invalid_value"),
    ({"prompt": "a", "structured_outputs": {}}, "structured_outputs", "invalid_value"),
    ({"prompt": "a", "structured_outputs": {"grammar": "start: nope"}}, "structured_outputs.grammar",
     "invalid_grammar"),
    ({"prompt": "a", "structured_outputs": {"regex": "(unclosed"}}, "structured_outputs.regex", "invalid_grammar"),
    ({"prompt": "a", "structured_outputs": {"json": "{not json"}}, "structured_outputs.json", "invalid_schema"),
    ({"prompt": "a", "structured_outputs": {"json": {"type": "nope"}}}, "structured_outputs.json",
     "invalid_schema"),
    ({"prompt": "a", "structured_outputs": {"choice": []}}, "structured_outputs.choice", "invalid_value"),
    ({"prompt": "a", "structured_outputs": {"structural_tag": "x"}}, "structured_outputs.structural_tag",
     "unknown_parameter"),
])
def test_bad_requests_are_400s_naming_the_param(http: TestClient, engine: MockEngine, body: dict[str, Any],
                                                param: str, code: str) -> None:
    for streamed in (False, True):
        r = http.post("/v1/completions", json={"model": "mock", **body, "stream": streamed})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["type"] == "invalid_request_error"
        assert (r.json()["error"]["param"], r.json()["error"]["code"]) == (param, code), r.json()
    assert engine.prompts == []


def test_unknown_model_is_a_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x")


def test_a_client_that_leaves_cancels_generation() -> None:
    for streamed in (False, True):
        engine = MockEngine(delay=0.02)
        app = create_app([serve_engine("mock", engine, format_key="hermes")])
        engine.enqueue("x" * 10_000)
        body = json.dumps({"model": "mock", "prompt": "go", "max_tokens": 5000, "stream": streamed}).encode()
        asyncio.run(_call_and_leave(app, body))
        assert engine.cancelled == 1


async def _call_and_leave(app: Any, body: bytes) -> None:
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(0.2)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        return None

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/v1/completions", "raw_path": b"/v1/completions", "query_string": b"",
             "root_path": "", "headers": [(b"content-type", b"application/json")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await asyncio.wait_for(app(scope, receive, send), timeout=5)
    assert loop.time() - t0 < 2, "generation went on after the client left"


# -- tokenize, detokenize ---------------------------------------------------------------------

@pytest.mark.parametrize("text", ["hello", "héllo wörld, 世界 🚀", "<|im_start|>user\nhi<|im_end|>"])
def test_tokenize_then_detokenize_round_trips(http: TestClient, text: str) -> None:
    tok = post(http, "/tokenize", {"prompt": text})
    assert tok["count"] == len(tok["tokens"]) and tok["max_model_len"] == 4096
    assert post(http, "/detokenize", {"tokens": tok["tokens"]}) == {"prompt": text}


def test_tokenize_with_token_strings(http: TestClient) -> None:
    tok = post(http, "/tokenize", {"prompt": "a<|im_end|>", "return_token_strs": True})
    assert tok["tokens"] == [97, 257] and tok["token_strs"] == ["a", "<|im_end|>"]


def test_tokenize_gives_a_completion_prompt_s_tokens(http: TestClient, engine: MockEngine) -> None:
    engine.enqueue("x")
    tok = post(http, "/tokenize", {"prompt": "héllo<|im_end|>"})
    post(http, "/v1/completions", {"prompt": "héllo<|im_end|>"})
    assert engine.prompts == [tok["tokens"]]


def test_tokenize_messages_gives_the_chat_prompt(http: TestClient, engine: MockEngine) -> None:
    engine.enqueue("fine")
    tok = post(http, "/tokenize", {"messages": USER, "tools": [WEATHER], "return_token_strs": True})
    post(http, "/v1/chat/completions", {"messages": USER, "tools": [WEATHER]})
    assert engine.prompts == [tok["tokens"]]
    assert "".join(tok["token_strs"]).startswith("<|im_start|>user\nWeather in Paris?")


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/tokenize", {"prompt": 5}, "prompt"),
    ("/tokenize", {}, "prompt"),
    ("/tokenize", {"messages": []}, "messages"),
    ("/tokenize", {"messages": USER, "tool_choice": "required"}, "tool_choice"),
    ("/detokenize", {"tokens": [97, 999]}, "tokens[1]"),
    ("/detokenize", {"tokens": "abc"}, "tokens"),
    ("/v1/chat/completions/render", {"messages": "hi"}, "messages"),
])
def test_token_route_errors(http: TestClient, path: str, body: dict[str, Any], param: str) -> None:
    r = http.post(path, json={"model": "mock", **body})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    assert http.post(path, json={**body, "model": "nope"}).status_code in (400, 404)


# -- render -----------------------------------------------------------------------------------

def _real_turn(served: ServedModel, engine: MockEngine, body: dict[str, Any], output: str) -> TurnTrace:
    conv = conversation_from_request(ChatCompletionRequest.model_validate({"model": "mock", **body}))
    trace = TurnTrace()
    engine.enqueue(output)

    async def run() -> None:
        async for _ in served.stream(conv, trace):
            pass

    asyncio.run(run())
    return trace


@pytest.mark.parametrize(("extra", "output"), [
    ({}, "Sunny."),
    ({"tools": [WEATHER, TIME]}, "Sunny."),
    ({"tools": [WEATHER, TIME], "tool_choice": "none"}, "Sunny."),
    ({"tools": [WEATHER, TIME], "tool_choice": "required"}, CALL),
    ({"tools": [WEATHER, TIME], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}, CALL),
    ({"tools": [WEATHER], "parallel_tool_calls": False}, CALL),
    ({"response_format": {"type": "json_object"}}, '{"a": 1}'),
])
def test_render_is_what_the_turn_renders(http: TestClient, served: ServedModel, engine: MockEngine,
                                         extra: dict[str, Any], output: str) -> None:
    body = {"messages": USER, **extra}
    rendered = post(http, "/v1/chat/completions/render", body)
    trace = _real_turn(served, engine, body, output)
    assert rendered["prompt"] == trace.prompt
    assert rendered["prompt_token_ids"] == engine.prompts[-1]
    assert rendered["count"] == trace.prompt_tokens
    assert rendered["grammar"] == trace.grammar
    assert (rendered["format"], rendered["format_reason"]) == ("hermes", "set by --format")
    assert rendered["draft_grammar"] is None  # hermes models are trained on tools: no draft
    # and the HTTP route sends the same prompt
    engine.enqueue(output)
    post(http, "/v1/chat/completions", body)
    assert engine.prompts[-1] == rendered["prompt_token_ids"]


def test_render_grammars_follow_tool_choice(http: TestClient) -> None:
    def grammar(**extra: Any) -> str | None:
        g = post(http, "/v1/chat/completions/render", {"messages": USER, "tools": [WEATHER, TIME], **extra})
        return g["grammar"]  # type: ignore[no-any-return]

    required = grammar(tool_choice="required")
    named = grammar(tool_choice={"type": "function", "function": {"name": "get_time"}})
    none = grammar(tool_choice="none")
    assert required is not None and named is not None and none is not None
    assert '"get_weather"' in required and '"get_time"' in required
    assert '"get_time"' in named and '"get_weather"' not in named
    assert "get_weather" not in none and "get_time" not in none  # text only, no call syntax
    plain = post(http, "/v1/chat/completions/render", {"messages": USER})["grammar"]
    assert "get_weather" not in plain and "<[258]>" not in plain  # 258: <tool_call>


def test_render_shows_the_draft_of_a_model_without_tool_training() -> None:
    engine = MockEngine()
    generic = serve_engine("g", engine, format_key="generic")
    assert not generic.format.native_tools
    with TestClient(create_app([generic])) as http:
        r = http.post("/v1/chat/completions/render", json={"model": "g", "messages": USER, "tools": [WEATHER]})
    body = r.json()
    assert body["format"] == "generic" and body["draft_grammar"] is not None
    assert body["draft_grammar"] != body["grammar"] and "get_weather" in body["draft_grammar"]


def test_render_does_not_generate(http: TestClient, engine: MockEngine) -> None:
    post(http, "/v1/chat/completions/render", {"messages": USER, "tools": [WEATHER]})
    assert engine.prompts == []


def test_a_render_too_long_for_the_context_still_renders() -> None:
    engine = MockEngine(context_length=20)
    with TestClient(create_app([serve_engine("s", engine, format_key="hermes")])) as http:
        r = http.post("/v1/chat/completions/render", json={"model": "s", "messages": USER})
        assert r.status_code == 200 and r.json()["count"] > 20
        chat = http.post("/v1/chat/completions", json={"model": "s", "messages": USER})
        assert chat.status_code == 400 and chat.json()["error"]["code"] == "context_length_exceeded"


def test_routes_refuse_get(http: TestClient) -> None:
    for path in ("/v1/completions", "/tokenize", "/detokenize", "/v1/chat/completions/render"):
        assert http.get(path).status_code == 405


def test_async_sdk(http: TestClient, engine: MockEngine) -> None:
    engine.enqueue("async ok")

    async def main() -> str:
        transport = httpx.ASGITransport(app=http.app)
        async with openai.AsyncOpenAI(base_url="http://t/v1", api_key="x", max_retries=0,
                                      http_client=httpx.AsyncClient(transport=transport)) as aclient:
            r = await aclient.completions.create(model="mock", prompt="x", max_tokens=20)
            return r.choices[0].text

    assert asyncio.run(main()) == "async ok"


class _Upstream:
    """A model midtier does not run itself (as an upstream server's): no tokenizer here."""

    name = "upstream"
    context_length = None


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/completions", {"prompt": "x"}),
    ("/tokenize", {"prompt": "x"}),
    ("/tokenize", {"messages": USER}),
    ("/detokenize", {"tokens": [1]}),
    ("/v1/chat/completions/render", {"messages": USER}),
])
def test_a_model_without_a_local_tokenizer_refuses_clearly(served: ServedModel, path: str,
                                                           body: dict[str, Any]) -> None:
    with TestClient(create_app([served, _Upstream()])) as http:  # type: ignore[list-item]
        r = http.post(path, json={"model": "upstream", **body})
    assert r.status_code == 400
    assert (r.json()["error"]["param"], r.json()["error"]["code"]) == ("model", "unsupported_model")
    assert "not supported for the model 'upstream'" in r.json()["error"]["message"]
