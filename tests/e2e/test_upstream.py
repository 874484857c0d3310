"""End-to-end: midtier serving models of real upstream peers through the openai_chat engine.

Peers, each a process: llama-cpp-python's own OpenAI server on the default GGUF, and a second
midtier (the session's ``server``). The midtier under test runs from a ``--config`` file
naming a model per peer, and one behind a fault-injecting proxy in front of llama-cpp-python.
"""

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

from e2e.conftest import free_port
from engines.fault_proxy import Fault, FaultProxy
from midtier.models import resolve

pytestmark = pytest.mark.e2e

WEATHER = {"type": "function", "name": "get_weather", "description": "Get the current weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
PROXY_READ_TIMEOUT = 20.0  # far above the peer's time to a first chunk, far below a hang


def _wait_up(proc: subprocess.Popen[bytes], url: str, log: Path, what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited: {log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not start: {log.read_text()[-3000:]}")
        time.sleep(0.5)


@contextlib.contextmanager
def _process(cmd: list[str], log: Path, health: str, what: str) -> Iterator[None]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_up(proc, health, log, what)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def llama_server(model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``python -m llama_cpp.server`` on the default model's GGUF; yields its base URL."""
    port = free_port()
    base = f"http://127.0.0.1:{port}/v1"
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(resolve(model)), "--n_ctx", "4096",
           "--host", "127.0.0.1", "--port", str(port), "--verbose", "False"]
    with _process(cmd, tmp_path_factory.mktemp("llama") / "llama.log", base + "/models", "llama_cpp.server"):
        yield base


@pytest.fixture(scope="module")
def proxy(llama_server: str) -> Iterator[FaultProxy]:
    with FaultProxy(llama_server) as p:
        yield p


@pytest.fixture(scope="module")
def front(llama_server: str, server: str, model: str, proxy: FaultProxy,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    """The midtier under test, serving the peers' models from a config file."""
    folder = tmp_path_factory.mktemp("front")
    config = folder / "midtier.toml"
    config.write_text(f"""
[models.via-llama]
engine = "openai_chat"
base_url = "{llama_server}"
read_timeout = 300

[models.via-midtier]
engine = "openai_chat"
base_url = "{server}/v1"
upstream_model = "{model}"
api_key = "not-checked"
read_timeout = 300

[models.via-proxy]
engine = "openai_chat"
base_url = "{proxy.url}"
read_timeout = {PROXY_READ_TIMEOUT}
max_retries = 1
retry_backoff = 0.1

[store]
kind = "sqlite"
path = "{folder / 'store.sqlite3'}"
""")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "midtier.cli.main", "serve", "--config", str(config), "--port", str(port),
           "--log-level", "info"]
    with _process(cmd, folder / "front.log", base + "/health", "midtier --config"):
        yield openai.OpenAI(base_url=base + "/v1", api_key="none", timeout=600, max_retries=0)


def test_models_lists_the_config(front: openai.OpenAI) -> None:
    assert [m.id for m in front.models.list()] == ["via-llama", "via-midtier", "via-proxy"]


def _round_trip(front: openai.OpenAI, model: str, **first: Any) -> tuple[Any, Any]:
    """A function call, then its output sent back through previous_response_id."""
    one = front.responses.create(model=model, input="What is the weather in Paris?", tools=[WEATHER],  # type: ignore[list-item]
                                 max_output_tokens=60, temperature=0, **first)
    calls = [item for item in one.output if item.type == "function_call"]
    assert len(calls) == 1, one.output
    call = calls[0]
    assert call.name == "get_weather" and json.loads(call.arguments)["city"].casefold().startswith("paris")
    two = front.responses.create(model=model, previous_response_id=one.id, max_output_tokens=60, temperature=0,
                                 input=[{"type": "function_call_output", "call_id": call.call_id,
                                         "output": "22 degrees Celsius and sunny"}])
    assert two.status == "completed" and two.previous_response_id == one.id
    return one, two


def test_responses_round_trip_through_llama_cpp_python(front: openai.OpenAI) -> None:
    # llama-cpp-python's server makes tool calls only for a named tool_choice
    one, two = _round_trip(front, "via-llama", tool_choice={"type": "function", "name": "get_weather"})
    assert two.output_text.strip()
    items = front.responses.input_items.list(two.id)
    assert [i.type for i in items.data] == ["function_call_output"]


def test_responses_round_trip_through_a_second_midtier(front: openai.OpenAI) -> None:
    one, two = _round_trip(front, "via-midtier")
    assert "22" in two.output_text


def test_chat_stream_through_a_second_midtier(front: openai.OpenAI) -> None:
    tool = {"type": "function", "function": {k: WEATHER[k] for k in ("name", "description", "parameters")}}
    with front.chat.completions.stream(model="via-midtier", tools=[tool], temperature=0,  # type: ignore[list-item]
                                       messages=[{"role": "user", "content": "What is the weather in Berlin?"}],
                                       stream_options={"include_usage": True}) as s:
        for _ in s:
            pass
        done = s.get_final_completion()
    calls = done.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather"] and done.choices[0].finish_reason == "tool_calls"
    assert json.loads(calls[0].function.arguments)["city"] == "Berlin"
    assert done.usage is not None and done.usage.prompt_tokens > 20  # the second midtier's own count


def _ask(front: openai.OpenAI) -> tuple[int, dict[str, Any], float]:
    t0 = time.monotonic()
    http = httpx.post(str(front.base_url) + "chat/completions", timeout=300, json={
        "model": "via-proxy", "max_tokens": 8, "messages": [{"role": "user", "content": "Say hi."}]})
    return http.status_code, http.json(), time.monotonic() - t0


def test_faults_between_midtier_and_llama_cpp_python_are_clear_errors(front: openai.OpenAI,
                                                                        proxy: FaultProxy) -> None:
    proxy.inject(Fault("reset"), Fault("reset"))  # the retry meets the second reset
    status, body, _ = _ask(front)
    assert status == 502 and "broke" in body["error"]["message"] and body["error"]["code"] == "upstream_connection"

    proxy.inject(Fault("stall", after=1))
    status, body, elapsed = _ask(front)
    assert status == 504 and "read timeout" in body["error"]["message"]
    assert PROXY_READ_TIMEOUT <= elapsed < PROXY_READ_TIMEOUT + 60

    proxy.inject(Fault("malformed", after=1))
    status, body, _ = _ask(front)
    assert status == 502 and "malformed chunk" in body["error"]["message"]

    status, body, _ = _ask(front)  # and the path is whole again
    assert status == 200 and body["choices"][0]["message"]["content"]
