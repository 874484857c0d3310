"""Raw token access on the real embedded model: legacy completions, tokenize, render."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import openai
import pytest

pytestmark = pytest.mark.e2e

WEATHER: Any = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def post(server: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(server + path, json=body, timeout=600)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_text_and_token_prompts_complete_alike(client: openai.OpenAI, server: str, model: str) -> None:
    text = "def fibonacci(n):\n"
    tokens = post(server, "/tokenize", {"model": model, "prompt": text})["tokens"]
    by_text = client.completions.create(model=model, prompt=text, max_tokens=8, temperature=0)
    by_ids = client.completions.create(model=model, prompt=tokens, max_tokens=8, temperature=0,
                                       extra_body={"return_token_ids": True})
    assert by_text.choices[0].text and by_text.choices[0].text == by_ids.choices[0].text
    out = by_ids.model_dump()["choices"][0]
    assert out["prompt_token_ids"] == tokens
    assert post(server, "/detokenize", {"model": model, "tokens": out["token_ids"]})["prompt"] == out["text"]
    assert by_text.usage is not None and by_text.usage.prompt_tokens == len(tokens)


def test_tokenize_round_trips(server: str, model: str) -> None:
    text = "héllo wörld — naïve café, 世界 🚀 <|im_start|>"
    tok = post(server, "/tokenize", {"model": model, "prompt": text})
    assert tok["count"] == len(tok["tokens"]) > 5 and tok["max_model_len"] > 1000
    assert post(server, "/detokenize", {"model": model, "tokens": tok["tokens"]})["prompt"] == text


def test_logprobs_of_the_prompt_and_of_the_output_agree(client: openai.OpenAI, server: str, model: str) -> None:
    ids = post(server, "/tokenize", {"model": model, "prompt": "The capital of France is Paris"})["tokens"]
    scored = client.completions.create(model=model, prompt=ids, echo=True, logprobs=1, max_tokens=0)
    lp = scored.choices[0].logprobs
    assert lp is not None and lp.token_logprobs is not None and len(lp.token_logprobs) == len(ids)
    assert lp.token_logprobs[0] is None and all(x <= 0 for x in lp.token_logprobs[1:])
    nxt = client.completions.create(model=model, prompt=ids[:-1], logprobs=5, max_tokens=3, temperature=0,
                                    extra_body={"return_tokens_as_token_ids": True})
    top = nxt.choices[0].logprobs
    assert top is not None and top.top_logprobs is not None and top.token_logprobs is not None
    # the last prompt token as scored equals its logprob as the next token to generate
    assert top.top_logprobs[0][f"token_id:{ids[-1]}"] == pytest.approx(lp.token_logprobs[-1], abs=0.02)
    # greedy picks the likeliest token
    for logprob, best in zip(top.token_logprobs, top.top_logprobs, strict=True):
        assert logprob == pytest.approx(max(best.values()), abs=1e-6)


def test_a_regex_constrains_the_completion(client: openai.OpenAI, model: str) -> None:
    r = client.completions.create(model=model, prompt="Three random digits: ", max_tokens=8, temperature=0,
                                  extra_body={"structured_outputs": {"regex": "[0-9]{3}"}})
    assert re.fullmatch("[0-9]{3}", r.choices[0].text), r.choices[0].text


def test_render_is_what_the_chat_turn_generates_from(client: openai.OpenAI, server: str, model: str) -> None:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "Weather in Oslo?"}],
                            "tools": [WEATHER], "tool_choice": "required"}
    rendered = post(server, "/v1/chat/completions/render", body)
    assert rendered["format"] and rendered["format_reason"]
    assert rendered["prompt_token_ids"] == post(server, "/tokenize", body)["tokens"]
    assert post(server, "/detokenize", {"model": model, "tokens": rendered["prompt_token_ids"]})["prompt"] \
        == rendered["prompt"]
    assert '"get_weather"' in rendered["grammar"]
    chat = client.chat.completions.create(**body, temperature=0, max_tokens=40)
    assert chat.usage is not None and chat.usage.prompt_tokens == rendered["count"]
    call = (chat.choices[0].message.tool_calls or [])[0]
    # the same prompt and grammar through raw completions give the same call
    raw = client.completions.create(model=model, prompt=rendered["prompt_token_ids"], temperature=0, max_tokens=40,
                                    extra_body={"structured_outputs": {"grammar": rendered["grammar"]}})
    found = re.search(r"\{.*\}", raw.choices[0].text, re.S)
    assert found is not None, raw.choices[0].text
    assert json.loads(found.group()) == {"name": call.function.name, "arguments": json.loads(call.function.arguments)}
