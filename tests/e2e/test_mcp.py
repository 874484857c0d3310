"""Remote MCP on the real embedded model, through the official SDK: MCP servers started here (one
built with the ``mcp`` SDK, and the npm reference server ``@modelcontextprotocol/server-everything``)
are listed and called inside a response, and an approval round trip runs the approved call."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from .conftest import free_port

pytestmark = pytest.mark.e2e

TESTS = Path(__file__).parents[1]
EVERYTHING_VERSION = "2026.8.31"


@contextlib.contextmanager
def serving(command: list[str], port: int, env: dict[str, str] | None = None) -> Iterator[None]:
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{command[:3]} exited with {proc.returncode}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"{command[:3]} did not start")
            time.sleep(0.2)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def sdk_server() -> Iterator[str]:
    port = free_port()
    with serving([sys.executable, str(TESTS / "tools" / "mcp_server.py"), "--port", str(port)], port):
        yield f"http://127.0.0.1:{port}/mcp"


@pytest.fixture(scope="module")
def everything_server() -> Iterator[str]:
    if shutil.which("npm") is None or shutil.which("node") is None:
        pytest.fail("node and npm are needed for the MCP reference server (Debian: apt-get install nodejs npm)")
    out = subprocess.run(["bash", str(TESTS.parent / "scripts" / "install_mcp_everything.sh"), EVERYTHING_VERSION],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    port = free_port()
    with serving(["node", out.stdout.strip().splitlines()[-1], "streamableHttp"], port, {**os.environ, "PORT": str(port)}):
        yield f"http://127.0.0.1:{port}/mcp"


def types(response: Any) -> list[str]:
    return [o.type for o in response.output]


def test_approval_round_trip_on_an_sdk_server(client: openai.OpenAI, model: str, sdk_server: str) -> None:
    tools: Any = [{"type": "mcp", "server_label": "projects", "server_url": sdk_server,
                   "allowed_tools": ["secret_code", "add"], "require_approval": "always"}]
    first = client.responses.create(model=model, input="What is the secret code of project apollo?", tools=tools,
                                    tool_choice="required", parallel_tool_calls=False, temperature=0,
                                max_output_tokens=80)
    assert first.status == "completed"
    assert types(first) == ["mcp_list_tools", "mcp_approval_request"], first.output
    listing, request = first.output
    assert listing.type == "mcp_list_tools" and sorted(t.name for t in listing.tools) == ["add", "secret_code"]
    assert request.type == "mcp_approval_request" and request.name == "secret_code", request
    assert "apollo" in json.loads(request.arguments).get("project", "").lower()

    second = client.responses.create(model=model, previous_response_id=first.id, tools=tools, temperature=0,
                                     max_output_tokens=80, input=[
                                         {"type": "mcp_approval_response", "approval_request_id": request.id,
                                          "approve": True}])
    assert second.status == "completed"
    assert types(second)[0] == "mcp_call" and types(second)[-1] == "message", second.output
    call = second.output[0]
    assert call.type == "mcp_call" and call.status == "completed" and call.approval_request_id == request.id
    assert call.output is not None and "6673-ZETA" in call.output
    assert "6673" in second.output_text, second.output_text


def test_server_everything_is_listed_and_called(client: openai.OpenAI, model: str, everything_server: str) -> None:
    tools: Any = [{"type": "mcp", "server_label": "everything", "server_url": everything_server,
                   "allowed_tools": ["echo"], "require_approval": "never"}]
    r = client.responses.create(model=model, input="Echo the message: midtier says hello", tools=tools,
                                tool_choice="required", parallel_tool_calls=False, temperature=0,
                                max_output_tokens=80)
    assert r.status == "completed"
    assert types(r)[:2] == ["mcp_list_tools", "mcp_call"] and types(r)[-1] == "message", r.output
    listing, call = r.output[0], r.output[1]
    assert listing.type == "mcp_list_tools" and [t.name for t in listing.tools] == ["echo"]
    assert call.type == "mcp_call" and call.name == "echo" and call.status == "completed"
    assert call.output is not None and call.output.startswith("Echo: ") and "hello" in call.output.lower()
