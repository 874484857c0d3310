"""Remote MCP against real MCP servers started here: one built with the ``mcp`` SDK
(``tests/tools/mcp_server.py``, on Streamable HTTP and on SSE) and the npm reference server
``@modelcontextprotocol/server-everything``; then the approval round trip through the Responses
API on the scripted mock engine."""

from __future__ import annotations

import asyncio
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
from typing import Any, cast

import openai
import pytest
from openai.types.responses.response_output_item import McpApprovalRequest, McpCall, McpListTools
from starlette.testclient import TestClient

from midtier.core.errors import InvalidRequest
from midtier.core.events import ItemDone, ItemProgress, ItemStart, StreamEvent
from midtier.core.messages import ToolCall
from midtier.engines.mock import MockEngine
from midtier.loop.turn import ServedModel
from midtier.server import create_app
from midtier.store import open_store
from midtier.store.base import Store
from midtier.tools import Toolbox, ToolContext, ToolError, ToolsConfig
from midtier.tools.base import NeedsApproval
from midtier.tools.mcp import McpTool, url_allowed

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
EVERYTHING_VERSION = "2026.8.31"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serving(command: list[str], port: int, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A server process, once its port accepts connections."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{command[:3]} exited: {proc.stderr.read().decode() if proc.stderr else ''}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"{command[:3]} did not start")
            time.sleep(0.2)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


def test_server(transport: str, *extra: str) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    port = free_port()
    test_server.port = port  # type: ignore[attr-defined]
    return serving([sys.executable, str(HERE / "mcp_server.py"), "--transport", transport, "--port", str(port),
                    *extra], port)


test_server.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


@pytest.fixture(scope="module")
def http_url() -> Iterator[str]:
    with test_server("streamable-http"):
        yield f"http://127.0.0.1:{test_server.port}/mcp"  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def sse_url() -> Iterator[str]:
    with test_server("sse"):
        yield f"http://127.0.0.1:{test_server.port}/sse"  # type: ignore[attr-defined]


def everything_bin() -> Path:
    """The npm reference server, installed once by scripts/install_mcp_everything.sh."""
    if shutil.which("npm") is None or shutil.which("node") is None:
        pytest.fail("node and npm are needed for the MCP reference server (Debian: apt-get install nodejs npm)")
    out = subprocess.run(["bash", str(ROOT / "scripts" / "install_mcp_everything.sh"), EVERYTHING_VERSION],
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        pytest.fail(f"installing @modelcontextprotocol/server-everything failed: {out.stderr}")
    return Path(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def everything() -> Iterator[dict[str, str]]:
    """server-everything on Streamable HTTP and on SSE: {"streamable_http": url, "sse": url}."""
    script = everything_bin()
    p1, p2 = free_port(), free_port()
    with serving(["node", str(script), "streamableHttp"], p1, {**os.environ, "PORT": str(p1)}), \
            serving(["node", str(script), "sse"], p2, {**os.environ, "PORT": str(p2)}):
        yield {"streamable_http": f"http://127.0.0.1:{p1}/mcp", "sse": f"http://127.0.0.1:{p2}/sse"}


def make_tool(tmp_path: Path, **settings: Any) -> McpTool:
    return McpTool(Toolbox(ToolsConfig(settings={"mcp": settings}), cast(Any, None), tmp_path))


def param(url: str, **more: Any) -> dict[str, Any]:
    return {"type": "mcp", "server_label": "test", "server_url": url, "require_approval": "never", **more}


class Recorder:
    def __init__(self) -> None:
        self.events: list[str] = []
        self.records: list[tuple[str, dict[str, Any]]] = []

    async def put_record(self, kind: str, record_id: str, data: dict[str, Any], owner: str | None = None) -> None:
        self.records.append((kind, data))


def context(tool: McpTool, p: dict[str, Any], rec: Recorder | None = None, history: list[dict[str, Any]] | None = None,
            timeout: float = 20.0) -> ToolContext:
    rec = rec or Recorder()
    return ToolContext("resp_1", p, cast(Any, rec), tool.toolbox, "scope", lambda t, f: rec.events.append(t),
                       frozenset(), timeout, extra={"history": history or []})


def prepare(tool: McpTool, ctx: ToolContext) -> list[StreamEvent]:
    async def go() -> list[StreamEvent]:
        return [e async for e in tool.prepare(ctx.param, ctx)]

    return asyncio.run(go())


def run_call(tool: McpTool, p: dict[str, Any], name: str, args: dict[str, Any],
             rec: Recorder | None = None) -> tuple[dict[str, Any], str]:
    call = ToolCall("call_1", name, json.dumps(args))
    item = tool.start(call, p)
    result = asyncio.run(tool.run(item, call, context(tool, p, rec)))
    return item, result.output


# -- the request entry ----------------------------------------------------------------------------
def test_check_accepts_openais_shapes_and_names_the_bad_field(tmp_path: Path) -> None:
    tool = make_tool(tmp_path)
    tool.check({"type": "mcp", "server_label": "a", "server_url": "https://x.test/mcp", "headers": {"k": "v"},
                "authorization": "tok", "allowed_tools": ["a"], "server_description": "d",
                "require_approval": {"never": {"tool_names": ["a"]}, "always": {"read_only": False}}}, "tools[0]")
    tool.check({"type": "mcp", "server_label": "a", "server_url": "http://x.test", "allowed_tools": {"read_only": True},
                "require_approval": "always"}, "tools[0]")
    bad = [({"server_url": "http://x.test"}, "tools[0].server_label"),
           ({"server_label": "a"}, "tools[0].server_url"),
           ({"server_label": "a", "server_url": "ftp://x.test"}, "tools[0].server_url"),
           ({"server_label": "a", "connector_id": "connector_gmail"}, "tools[0].connector_id"),
           ({"server_label": "a", "server_url": "http://x.test", "headers": {"k": 1}}, "tools[0].headers"),
           ({"server_label": "a", "server_url": "http://x.test", "allowed_tools": "add"}, "tools[0].allowed_tools"),
           ({"server_label": "a", "server_url": "http://x.test", "require_approval": "sometimes"},
            "tools[0].require_approval"),
           ({"server_label": "a", "server_url": "http://x.test", "require_approval": {"never": ["add"]}},
            "tools[0].require_approval.never")]
    for entry, where in bad:
        with pytest.raises(InvalidRequest) as info:
            tool.check({"type": "mcp", **entry}, "tools[0]")
        assert info.value.param == where, entry
    limited = make_tool(tmp_path, allowed_urls=["http://127.0.0.1:"])
    limited.check(param("http://127.0.0.1:9/mcp"), "tools[0]")
    with pytest.raises(InvalidRequest, match="may not connect"):
        limited.check(param("http://169.254.169.254/mcp"), "tools[0]")
    for allowed, url, ok in [("https://a.test", "https://a.test/mcp", True), ("https://a.test", "https://a.test.evil/mcp", False),
                             ("https://a.test/mcp", "https://a.test/mcp/sse", True), ("https://a.test/mcp", "https://a.test/mcpx", False),
                             ("https://a.test", "https://a.test:443/mcp", True), ("https://a.test", "https://a.test:8443/mcp", False),
                             ("https://a.test", "http://a.test/mcp", False), ("https://a.test", "https://u:p@a.test/mcp", False),
                             ("http://127.0.0.1:", "http://127.0.0.1:9/mcp", True)]:
        assert url_allowed(url, allowed) is ok, (allowed, url)
    one = make_tool(tmp_path, allowed_urls="https://a.test")  # one URL, not a list: not its letters
    with pytest.raises(InvalidRequest, match="may not connect"):
        one.check(param("https://h.test/mcp"), "tools[0]")


def test_approval_policy(tmp_path: Path) -> None:
    tool = make_tool(tmp_path)
    p = {"server_label": "a", "server_url": "u"}
    assert tool.needs_approval(p, "add")  # OpenAI's default: always
    assert tool.needs_approval({**p, "require_approval": "always"}, "add")
    assert not tool.needs_approval({**p, "require_approval": "never"}, "add")
    split = {**p, "require_approval": {"never": {"tool_names": ["add"]}}}
    assert not tool.needs_approval(split, "add") and tool.needs_approval(split, "wipe")
    both = {**p, "require_approval": {"never": {"tool_names": ["add"]}, "always": {"tool_names": ["add"]}}}
    assert tool.needs_approval(both, "add")


# -- listing ---------------------------------------------------------------------------------------
def test_prepare_lists_the_tools_as_an_item(tmp_path: Path, http_url: str) -> None:
    tool = make_tool(tmp_path)
    ctx = context(tool, param(http_url))
    events = prepare(tool, ctx)
    assert isinstance(events[0], ItemStart) and isinstance(events[-1], ItemDone)
    item = events[-1].item
    assert [(e.type, e.item_id) for e in events if isinstance(e, ItemProgress)] == [
        ("response.mcp_list_tools.in_progress", item["id"]), ("response.mcp_list_tools.completed", item["id"])]
    listing = McpListTools.model_validate(item)
    assert listing.server_label == "test" and listing.error is None
    assert [t.name for t in listing.tools] == ["add", "secret_code", "lookup", "wipe", "fail", "slow", "whoami"]
    add = item["tools"][0]
    assert add["description"] == "Add two integers and return the sum."
    assert add["input_schema"]["required"] == ["a", "b"]
    assert item["tools"][2]["annotations"] == {"readOnlyHint": True}
    specs = asyncio.run(tool.functions(ctx.param, ctx))
    assert [s.name for s in specs] == [t.name for t in listing.tools]
    assert specs[0].parameters["properties"]["a"]["type"] == "integer"


def test_allowed_tools_filter_the_listing(tmp_path: Path, http_url: str) -> None:
    tool = make_tool(tmp_path)
    for allowed, names in ((["add", "nope"], ["add"]), ({"read_only": True}, ["lookup"]),
                           ({"tool_names": ["add", "lookup"], "read_only": False}, ["add"])):
        ctx = context(tool, param(http_url, allowed_tools=allowed))
        item = cast(ItemDone, prepare(tool, ctx)[-1]).item
        assert [t["name"] for t in item["tools"]] == names, allowed
        assert [s.name for s in asyncio.run(tool.functions(ctx.param, ctx))] == names


def test_a_listing_of_the_chain_is_reused(tmp_path: Path, http_url: str) -> None:
    tool = make_tool(tmp_path)
    earlier = {"id": "mcpl_old", "type": "mcp_list_tools", "server_label": "test", "error": None,
               "tools": [{"name": "add", "input_schema": {"type": "object"}, "description": "Add."}]}
    other = {**earlier, "id": "mcpl_other", "server_label": "other"}
    ctx = context(tool, param(http_url), history=[earlier, other])
    assert prepare(tool, ctx) == []
    assert [s.name for s in asyncio.run(tool.functions(ctx.param, ctx))] == ["add"]
    failed = {**earlier, "error": "down", "tools": []}
    events = prepare(tool, context(tool, param(http_url), history=[failed]))
    assert len(cast(ItemDone, events[-1]).item["tools"]) == 7  # a failed listing is listed again


def test_a_server_that_cannot_be_reached_fails_the_listing_not_the_response(tmp_path: Path) -> None:
    tool = make_tool(tmp_path)
    ctx = context(tool, param(f"http://127.0.0.1:{free_port()}/mcp"))
    events = prepare(tool, ctx)
    progress = [e.type for e in events if isinstance(e, ItemProgress)]
    assert progress == ["response.mcp_list_tools.in_progress", "response.mcp_list_tools.failed"]
    item = cast(ItemDone, events[-1]).item
    assert McpListTools.model_validate(item).error and "could not talk to the MCP server" in item["error"]
    assert asyncio.run(tool.functions(ctx.param, ctx)) == []
    with pytest.raises(ToolError, match="could not talk"):
        run_call(tool, ctx.param, "add", {"a": 1, "b": 2})


# -- calls -----------------------------------------------------------------------------------------
def test_a_call_runs_with_openais_events(tmp_path: Path, http_url: str) -> None:
    tool = make_tool(tmp_path)
    rec = Recorder()
    item, output = run_call(tool, param(http_url), "add", {"a": 2, "b": 40}, rec)
    assert output == "42"
    call = McpCall.model_validate(item)
    assert (call.status, call.output, call.error, call.name, call.server_label) == ("completed", "42", None, "add", "test")
    assert json.loads(call.arguments) == {"a": 2, "b": 40} and call.id.startswith("mcp_")
    assert rec.events == ["response.mcp_call.in_progress", "response.mcp_call_arguments.delta",
                          "response.mcp_call_arguments.done", "response.mcp_call.completed"]


def test_headers_and_authorization_reach_the_server(tmp_path: Path, http_url: str, sse_url: str) -> None:
    tool = make_tool(tmp_path)
    for url in (http_url, sse_url):
        _, output = run_call(tool, param(url, headers={"X-Test": "yes"}, authorization="tok123"), "whoami", {})
        assert json.loads(output) == {"x-test": "yes", "authorization": "Bearer tok123"}


def test_tool_errors_and_protocol_errors_fail_the_item(tmp_path: Path, http_url: str) -> None:
    tool = make_tool(tmp_path)
    p = param(http_url)
    for name, args, kind in (("fail", {"message": "boom"}, "mcp_tool_execution_error"),
                             ("no_such_tool", {}, None), ("add", {"a": "x"}, None)):
        call = ToolCall("c", name, json.dumps(args))
        item = tool.start(call, p)
        rec = Recorder()
        with pytest.raises(ToolError) as info:
            asyncio.run(tool.run(item, call, context(tool, p, rec)))
        checked = McpCall.model_validate(item)
        assert checked.status == "failed" and checked.error is not None and checked.output is None
        assert kind is None or checked.error.type == kind
        assert rec.events[-1] == "response.mcp_call.failed"
        assert tool.as_output(item) == (item["id"], f"Error: {info.value.message}")
    call = ToolCall("c", "add", "[1, 2]")
    item = tool.start(call, p)
    with pytest.raises(ToolError, match="JSON object"):
        asyncio.run(tool.run(item, call, context(tool, p)))


def test_a_call_past_its_budget_is_cancelled_and_the_server_stays_usable(tmp_path: Path, http_url: str) -> None:
    tool = make_tool(tmp_path)
    p = param(http_url)
    call = ToolCall("c", "slow", json.dumps({"seconds": 30}))
    item = tool.start(call, p)

    async def go() -> None:
        await asyncio.wait_for(tool.run(item, call, context(tool, p)), 1.0)

    started = time.monotonic()
    with pytest.raises(TimeoutError):
        asyncio.run(go())
    assert time.monotonic() - started < 5
    assert run_call(tool, p, "add", {"a": 1, "b": 1})[1] == "2"


def test_sse_transport_by_url_and_by_fallback(tmp_path: Path, sse_url: str) -> None:
    tool = make_tool(tmp_path)
    assert run_call(tool, param(sse_url), "add", {"a": 3, "b": 4})[1] == "7"
    assert tool._transports(sse_url)[0] == "sse"
    with test_server("sse", "--sse-path", "/events"):
        url = f"http://127.0.0.1:{test_server.port}/events"  # type: ignore[attr-defined]
        assert tool._transports(url) == ("streamable_http", "sse")
        assert run_call(tool, param(url), "add", {"a": 5, "b": 5})[1] == "10"  # Streamable HTTP first, then SSE
        assert tool._transports(url)[0] == "sse"  # remembered
    forced = make_tool(tmp_path, transport="sse")
    assert forced._transports("http://x.test/mcp") == ("sse",)


# -- approvals ---------------------------------------------------------------------------------------
def test_approval_request_then_approved_call_runs_in_prepare(tmp_path: Path, http_url: str) -> None:
    tool = make_tool(tmp_path)
    p = param(http_url, require_approval="always")
    call = ToolCall("call_9", "secret_code", json.dumps({"project": "apollo"}))
    request = tool.start(call, p)
    McpApprovalRequest.model_validate(request)
    assert request["id"].startswith("mcpr_") and request["arguments"] == call.arguments
    with pytest.raises(NeedsApproval) as info:
        asyncio.run(tool.run(request, call, context(tool, p)))
    assert info.value.item is request
    assert tool.as_call(request) == ToolCall(request["id"], "secret_code", call.arguments)

    listing = {"id": "mcpl_1", "type": "mcp_list_tools", "server_label": "test", "tools": [], "error": None}
    answer = {"id": "mcpa_1", "type": "mcp_approval_response", "approval_request_id": request["id"], "approve": True}
    rec = Recorder()
    events = prepare(tool, context(tool, p, rec, history=[listing, request, answer]))
    done = cast(ItemDone, events[-1]).item
    item = McpCall.model_validate(done)
    assert (item.status, item.approval_request_id) == ("completed", request["id"])
    assert item.output == "The secret code of project apollo is 6673-ZETA."
    assert [e.type for e in events if isinstance(e, ItemProgress)] == [
        "response.mcp_call.in_progress", "response.mcp_call_arguments.delta", "response.mcp_call_arguments.done",
        "response.mcp_call.completed"]
    assert tool.as_call(done) is None and tool.as_output(done) == (request["id"], item.output)
    assert [(kind, data["outcome"], data["approval_request_id"]) for kind, data in rec.records] == [
        ("audit", "ok", request["id"])]
    # once it has run, a later request of the chain does not run it again
    assert prepare(tool, context(tool, p, history=[listing, request, answer, done])) == []


def test_a_denied_call_does_not_run_and_the_model_reads_why(tmp_path: Path, http_url: str) -> None:
    tool = make_tool(tmp_path)
    p = param(http_url, require_approval="always")
    request = tool.start(ToolCall("c", "wipe", "{}"), p)
    listing = {"id": "mcpl_1", "type": "mcp_list_tools", "server_label": "test", "tools": [], "error": None}
    answer = {"id": "mcpa_1", "type": "mcp_approval_response", "approval_request_id": request["id"], "approve": False,
              "reason": "too risky"}
    assert prepare(tool, context(tool, p, history=[listing, request, answer])) == []
    assert tool.as_output(answer) == (request["id"], "The user did not approve this call; it was not run. "
                                                     "Reason: too risky")
    approving = {**answer, "approve": True}
    assert tool.as_output(approving) is None
    orphan = {**approving, "approval_request_id": "mcpr_unknown"}
    assert prepare(tool, context(tool, p, history=[listing, orphan])) == []


# -- the npm reference server ------------------------------------------------------------------------
def test_server_everything_on_both_transports(tmp_path: Path, everything: dict[str, str]) -> None:
    tool = make_tool(tmp_path)
    for transport, url in everything.items():
        ctx = context(tool, param(url, server_label="everything"))
        item = cast(ItemDone, prepare(tool, ctx)[-1]).item
        names = [t["name"] for t in McpListTools.model_validate(item).model_dump()["tools"]]
        assert {"echo", "get-sum"} <= set(names), transport
        specs = {s.name: s for s in asyncio.run(tool.functions(ctx.param, ctx))}
        assert "$schema" not in specs["echo"].parameters and specs["echo"].parameters["required"] == ["message"]
        _, output = run_call(tool, ctx.param, "echo", {"message": f"hello over {transport}"})
        assert output == f"Echo: hello over {transport}"
        _, output = run_call(tool, ctx.param, "get-sum", {"a": 19, "b": 23})
        assert "42" in output


# -- through the Responses API, on the mock engine ---------------------------------------------------
def add_call(a: int, b: int) -> str:
    return "<tool_call>\n" + json.dumps({"name": "add", "arguments": {"a": a, "b": b}}) + "\n</tool_call>"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return open_store(path=tmp_path / "store.sqlite3")


@pytest.fixture
def http(served: ServedModel, store: Store, tmp_path: Path) -> Iterator[TestClient]:
    app = create_app([served], store=store, tools=ToolsConfig(tool_timeout=20.0), data_dir=tmp_path)
    with TestClient(app) as client:
        yield client


def test_approval_round_trip_through_the_responses_api(client: openai.OpenAI, engine: MockEngine, http_url: str) -> None:
    tools: Any = [{"type": "mcp", "server_label": "calc", "server_url": http_url, "allowed_tools": ["add"]}]
    engine.enqueue(add_call(20, 22))
    first = client.responses.create(model="mock", input="What is 20 + 22?", tools=tools)
    assert [o.type for o in first.output] == ["mcp_list_tools", "mcp_approval_request"]
    listing, request = first.output
    assert listing.type == "mcp_list_tools" and [t.name for t in listing.tools] == ["add"]
    assert request.type == "mcp_approval_request" and request.name == "add"
    assert json.loads(request.arguments) == {"a": 20, "b": 22}

    engine.enqueue("20 + 22 = 42.")
    with client.responses.stream(model="mock", previous_response_id=first.id, tools=tools, input=[
            {"type": "mcp_approval_response", "approval_request_id": request.id, "approve": True}]) as stream:
        events = [e.type for e in stream]
        second = stream.get_final_response()
    assert [o.type for o in second.output] == ["mcp_call", "message"]  # the listing is reused
    call = second.output[0]
    assert call.type == "mcp_call" and call.output == "42" and call.approval_request_id == request.id
    assert second.output_text == "20 + 22 = 42."
    assert "response.mcp_list_tools.in_progress" not in events
    start = events.index("response.output_item.added")
    assert events[start:start + 6] == [
        "response.output_item.added", "response.mcp_call.in_progress", "response.mcp_call_arguments.delta",
        "response.mcp_call_arguments.done", "response.mcp_call.completed", "response.output_item.done"]
    seen = engine.detokenize(engine.prompts[-1])
    assert seen.index('"a": 20') < seen.index("42")  # the model read the call, then its result

    engine.enqueue(add_call(1, 2), "I was not allowed to add them.")
    third = client.responses.create(model="mock", previous_response_id=second.id, tools=tools, input="And 1 + 2?")
    assert [o.type for o in third.output] == ["mcp_approval_request"]
    fourth = client.responses.create(model="mock", previous_response_id=third.id, tools=tools, input=[
        {"type": "mcp_approval_response", "approval_request_id": third.output[0].id, "approve": False}])
    assert [o.type for o in fourth.output] == ["message"]
    assert "did not approve this call" in engine.detokenize(engine.prompts[-1])

    # an answer to no request is refused, naming it
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="mock", previous_response_id=fourth.id, tools=tools, input=[
            {"type": "mcp_approval_response", "approval_request_id": "mcpr_unknown", "approve": True}])
    assert caught.value.body["param"] == "input[0].approval_request_id"  # type: ignore[index]


def test_never_requiring_approval_calls_in_one_response(client: openai.OpenAI, engine: MockEngine,
                                                        http_url: str) -> None:
    tools: Any = [{"type": "mcp", "server_label": "calc", "server_url": http_url, "require_approval": "never"}]
    engine.enqueue(add_call(2, 3), "It is 5.")
    r = client.responses.create(model="mock", input="2 + 3?", tools=tools)
    assert [o.type for o in r.output] == ["mcp_list_tools", "mcp_call", "message"]
    assert r.output[1].type == "mcp_call" and r.output[1].output == "5" and r.output[1].status == "completed"
    assert r.output_text == "It is 5."
