"""The token engine end to end: a second midtier, configured with ``engine = "token"``, drives
the session's server (a midtier on the real model, whose ``/v1/completions`` takes token ids
and vLLM's ``structured_outputs``) and gives the same answers as that server's local path."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from midtier.models import catalog

from .conftest import free_port

pytestmark = pytest.mark.e2e

WEATHER: Any = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city"]}}}
TIME: Any = {"type": "function", "function": {
    "name": "get_time", "description": "Get the current local time in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TOKEN_MODEL = "via-tokens"


@contextlib.contextmanager
def config_server(config: Path, log: Path, data: Path) -> Iterator[str]:
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "midtier.cli.main", "serve", "--port", str(port),
                                 "--config", str(config), "--data-dir", str(data), "--log-level", "info"],
                                stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"token server exited: {log.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"token server did not start: {log.read_text()}")
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def token_client(server: str, model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    folder = tmp_path_factory.mktemp("token")
    try:
        n_ctx = catalog.get(model).n_ctx
    except catalog.UnknownModel:
        n_ctx = None
    lines = [f"[models.{TOKEN_MODEL}]", 'engine = "token"', f"base_url = {json.dumps(server + '/v1')}",
             f"tokenizer = {json.dumps(model)}", f"upstream_model = {json.dumps(model)}", 'dialect = "midtier"',
             "read_timeout = 300"]
    if n_ctx:
        lines.append(f"context_length = {n_ctx}")  # the upstream's window, not the GGUF's trained one
    config = folder / "token.toml"
    config.write_text("\n".join(lines) + "\n")
    with config_server(config, folder / "server.log", folder / "data") as base:
        yield openai.OpenAI(base_url=base + "/v1", api_key="none", timeout=600, max_retries=0)


def ask(client: openai.OpenAI, model: str, content: str, **kwargs: Any) -> Any:
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}],
                                          temperature=0, max_tokens=40, **kwargs)


def answer(response: Any) -> tuple[str | None, list[tuple[str, dict[str, Any]]], str]:
    message = response.choices[0].message
    calls = [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []]
    return message.content, calls, response.choices[0].finish_reason


@pytest.mark.parametrize("content, choice", [
    ("Hello! How are you today?", "required"),
    ("What's the weather like in Paris right now?", "auto"),
])
def test_token_path_makes_the_same_calls(client: openai.OpenAI, token_client: openai.OpenAI, model: str,
                                         content: str, choice: str) -> None:
    local = ask(client, model, content, tools=[WEATHER, TIME], tool_choice=choice)
    remote = ask(token_client, TOKEN_MODEL, content, tools=[WEATHER, TIME], tool_choice=choice)
    want = answer(local)
    assert want[1], "the local path made no call"
    assert answer(remote) == want
    assert remote.usage is not None and local.usage is not None
    assert remote.usage.prompt_tokens == local.usage.prompt_tokens


def test_token_path_streams_the_same_text(client: openai.OpenAI, token_client: openai.OpenAI, model: str) -> None:
    content = "Write a Python function that returns the square of a number."
    want = ask(client, model, content, tools=[WEATHER]).choices[0].message.content
    stream = token_client.chat.completions.create(
        model=TOKEN_MODEL, messages=[{"role": "user", "content": content}], tools=[WEATHER], temperature=0,
        max_tokens=40, stream=True)
    got = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert want and got == want
