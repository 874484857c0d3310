"""shell: hosted in the container sandbox (the same container as code_interpreter's), its items
and events checked with the SDK's types; the local variants go to the client and read back."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from openai.types.responses import (
    ResponseFunctionShellToolCall,
    ResponseFunctionShellToolCallOutput,
    ResponseShellCallCommandAddedEvent,
    ResponseShellCallCommandDeltaEvent,
    ResponseShellCallCommandDoneEvent,
    ResponseShellCallOutputContentDeltaEvent,
    ResponseShellCallOutputContentDoneEvent,
)
from openai.types.responses.response_output_item import LocalShellCall

from midtier.core.errors import InvalidRequest
from midtier.core.messages import ToolCall
from midtier.store import open_store
from midtier.tools import Toolbox, ToolContext, ToolResult, ToolsConfig
from midtier.tools.containers import Containers

HOSTED: dict[str, Any] = {"type": "shell", "environment": {"type": "container_auto"}}
EVENTS = {"response.shell_call_command.added": ResponseShellCallCommandAddedEvent,
          "response.shell_call_command.delta": ResponseShellCallCommandDeltaEvent,
          "response.shell_call_command.done": ResponseShellCallCommandDoneEvent,
          "response.shell_call_output_content.delta": ResponseShellCallOutputContentDeltaEvent,
          "response.shell_call_output_content.done": ResponseShellCallOutputContentDoneEvent}


def run_calls(tmp_path: Path, calls: list[tuple[dict[str, Any], str, str]], timeout: float = 20.0,
              settings: dict[str, dict[str, Any]] | None = None
              ) -> list[tuple[dict[str, Any], ToolResult, list[tuple[str, dict[str, Any]]]]]:
    """Run (param, tool type, command) calls in one scope, in order."""
    async def main() -> list[tuple[dict[str, Any], ToolResult, list[tuple[str, dict[str, Any]]]]]:
        store = open_store(path=tmp_path / "store.sqlite3")
        box = Toolbox(ToolsConfig(settings=settings or {}), store, tmp_path)
        out = []
        try:
            for param, kind, command in calls:
                tool = box.tool(kind)
                events: list[tuple[str, dict[str, Any]]] = []
                ctx = ToolContext("resp_1", param, store, box, "conv_1", lambda t, f, seen=events: seen.append((t, f)),
                                  timeout=timeout)
                await tool.functions(param, ctx)
                call = ToolCall(f"call_{len(out)}", "shell" if kind == "shell" else "python",
                                json.dumps({"command": command} if kind == "shell" else {"code": command}))
                item = tool.start(call, param)
                out.append((item, await tool.run(item, call, ctx), events))
        finally:
            await box.close()
            await store.close()
        return out

    return asyncio.run(main())


def test_a_hosted_call_runs_in_the_container(tmp_path: Path) -> None:
    [(item, result, events)] = run_calls(tmp_path, [(HOSTED, "shell", "echo hello; echo oops >&2; pwd")])
    call = ResponseFunctionShellToolCall.model_validate(item)
    assert call.status == "completed" and call.action.commands == ["echo hello; echo oops >&2; pwd"]
    assert call.environment is not None and call.environment.type == "container_reference"
    [out] = result.items
    output = ResponseFunctionShellToolCallOutput.model_validate(out)
    assert output.call_id == call.call_id == "call_0" and output.status == "completed"
    assert (output.output[0].stdout, output.output[0].stderr) == ("hello\n/mnt/data\n", "oops\n")
    assert output.output[0].outcome.type == "exit" and output.output[0].outcome.exit_code == 0
    assert result.output == "$ echo hello; echo oops >&2; pwd\nhello\n/mnt/data\noops"
    assert [t for t, _ in events] == list(EVENTS)
    for kind, fields in events:  # the loop adds item_id, output_index and sequence_number
        EVENTS[kind].model_validate({**fields, "type": kind, "item_id": item["id"], "output_index": 0,
                                     "sequence_number": 1})


def test_shell_and_python_share_the_auto_container(tmp_path: Path) -> None:
    interpreter = {"type": "code_interpreter", "container": {"type": "auto"}}
    results = run_calls(tmp_path, [
        (HOSTED, "shell", "printf '3\\n4\\n' > nums.txt"),
        (interpreter, "code_interpreter", "print(sum(int(n) for n in open('nums.txt')))"),
        (HOSTED, "shell", "exit 7"),
        (HOSTED, "shell", "sleep 30"),
    ], timeout=5)
    assert "Files written: /mnt/data/nums.txt" in results[0][1].output
    assert results[1][1].output.startswith("The code printed:\n7\n")
    assert results[0][0]["environment"]["container_id"] == results[1][0]["container_id"]
    assert results[2][1].output == "$ exit 7\n(no output)\n[exit code 7]"
    assert results[2][1].items[0]["output"][0]["outcome"] == {"type": "exit", "exit_code": 7}
    assert results[3][1].items[0]["output"][0]["outcome"] == {"type": "timeout"}
    assert results[3][1].output.endswith("[timed out: the command was stopped]")


def test_a_referenced_container(tmp_path: Path) -> None:
    async def make() -> str:
        store = open_store(path=tmp_path / "store.sqlite3")
        box = Toolbox(ToolsConfig(), store, tmp_path)
        made = await box.service("containers", Containers).create("mine")
        await box.close()
        await store.close()
        return str(made["id"])

    cid = asyncio.run(make())
    param = {"type": "shell", "environment": {"type": "container_reference", "container_id": cid}}
    [(item, result, _)] = run_calls(tmp_path, [(param, "shell", "touch made.txt && ls")])
    assert item["environment"] == {"type": "container_reference", "container_id": cid}
    assert result.output.startswith("$ touch made.txt && ls\nmade.txt")
    assert (tmp_path / "containers" / cid / "made.txt").exists()


def test_local_shells_go_to_the_client(tmp_path: Path) -> None:
    box = Toolbox(ToolsConfig(), None, tmp_path)
    shell, local = box.tool("shell"), box.tool("local_shell")
    local_env = {"type": "shell", "environment": {"type": "local"}}
    assert not shell.runs_on_server(local_env) and shell.runs_on_server(HOSTED) and shell.runs_on_server({"type": "shell"})
    assert not local.runs_on_server({"type": "local_shell"})
    call = ToolCall("call_7", "shell", json.dumps({"command": "ls -la"}))
    item = shell.start(call, local_env)
    assert ResponseFunctionShellToolCall.model_validate(item).environment.type == "local"  # type: ignore[union-attr]
    assert shell.as_call(item) == ToolCall("call_7", "shell", json.dumps({"command": "ls -la"}))
    answer = {"type": "shell_call_output", "call_id": "call_7",
              "output": [{"stdout": "a.txt\n", "stderr": "", "outcome": {"type": "exit", "exit_code": 0}}]}
    assert shell.as_output(answer) == ("call_7", "a.txt")
    old = local.start(call, {"type": "local_shell"})
    parsed = LocalShellCall.model_validate(old)
    assert parsed.action.command == ["bash", "-lc", "ls -la"] and parsed.call_id == "call_7"
    assert local.as_call(old) == ToolCall("call_7", "shell", json.dumps({"command": "ls -la"}))
    assert local.as_output({"type": "local_shell_call_output", "id": "call_7",
                            "output": json.dumps({"stdout": "a.txt", "stderr": ""})}) == ("call_7", "a.txt")
    assert local.as_output({"type": "local_shell_call_output", "call_id": "call_7", "output": "plain"}) == (
        "call_7", "plain")
    specs = asyncio.run(local.functions({"type": "local_shell"}, ToolContext("r", {}, None, box, "s")))  # type: ignore[arg-type]
    assert specs[0].name == "shell" and "user's computer" in specs[0].description


@pytest.mark.parametrize(("environment", "param"), [
    ("local", "tools[0].environment"),
    ({"type": "remote"}, "tools[0].environment.type"),
    ({"type": "container_reference"}, "tools[0].environment.container_id"),
    ({"type": "container_auto", "memory_limit": "3g"}, "tools[0].environment.memory_limit"),
])
def test_check_names_the_bad_parameter(tmp_path: Path, environment: Any, param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        Toolbox(ToolsConfig(), None, tmp_path).tool("shell").check({"type": "shell", "environment": environment},
                                                                   "tools[0]")
    assert info.value.param == param


def test_a_command_that_keeps_writing_is_stopped_at_the_disk_limit(tmp_path: Path) -> None:
    started = time.monotonic()
    [(item, result, _), (_, after, _)] = run_calls(tmp_path, [
        (HOSTED, "shell", "i=0; while true; do head -c 100000 /dev/zero > f$i.bin; i=$((i+1)); sleep 0.01; done"),
        (HOSTED, "shell", "echo still here")], settings={"code_interpreter": {"max_disk_mb": 1}})
    assert time.monotonic() - started < 15  # not the 20 s budget
    [out] = result.items
    output = ResponseFunctionShellToolCallOutput.model_validate(out)
    assert "DiskFull" in output.output[0].stderr and output.output[0].outcome.type == "exit"
    assert "DiskFull" in result.output
    assert "still here" in after.output
