"""shell: the model runs shell commands, in its container's sandbox or on the client's machine.

``{"type": "shell"}`` with ``environment`` ``{"type": "container_auto", ...}`` (the default: the
conversation's auto container, the one code_interpreter uses) or ``{"type":
"container_reference", "container_id"}`` runs on the server, in the container's sandbox
(``midtier.tools.sandbox``: same folder, limits and isolation as its Python). Each call is a
``shell_call`` item (``action.commands``) followed by a ``shell_call_output`` item (per command:
``stdout``, ``stderr``, ``outcome`` exit or timeout); events ``response.shell_call_command.added``,
``.delta``, ``.done`` per command, then ``response.shell_call_output_content.delta`` and ``.done``.

``{"type": "shell", "environment": {"type": "local"}}`` and ``{"type": "local_shell"}`` run on the
client, as OpenAI does: the response ends with the ``shell_call`` (``local_shell_call``) item and
the client sends a ``shell_call_output`` (``local_shell_call_output``) in its next request;
``as_call``/``as_output`` read both back for the model.

The model sees one function, ``shell(command)``: one command line per call.
"""

from __future__ import annotations

import json
import shlex
from typing import TYPE_CHECKING, Any, ClassVar

from midtier.core.errors import InvalidRequest
from midtier.core.messages import ToolCall, ToolSpec, new_id
from midtier.tools.base import ToolContext, ToolError, ToolResult
from midtier.tools.code_interpreter import check_container, resolve_container, truncate
from midtier.tools.containers import Containers
from midtier.tools.sandbox import GRACE, CommandResult, SandboxError

if TYPE_CHECKING:
    from midtier.tools import Toolbox

DESCRIPTION = "Run a shell command (bash) and read its output. Files are in the current folder."
LOCAL_DESCRIPTION = "Run a shell command on the user's computer and read its output."
MAX_OUTPUT = 10_000  # characters kept per stream of a command unless the call asks for fewer
FUNCTION = "shell"


class ShellTool:
    type: ClassVar[str] = "shell"
    item_type: ClassVar[str] = "shell_call"
    item_types: ClassVar[tuple[str, ...]] = ("shell_call", "shell_call_output")

    def __init__(self, toolbox: Toolbox) -> None:
        self.toolbox = toolbox
        self.settings = toolbox.settings("shell")

    def runs_on_server(self, param: dict[str, Any]) -> bool:
        return (param.get("environment") or {}).get("type") != "local"

    def check(self, param: dict[str, Any], where: str) -> None:
        env = param.get("environment")
        if env is None:
            return
        if not isinstance(env, dict):
            raise InvalidRequest("environment must be an object", param=f"{where}.environment", code="invalid_value")
        kind = env.get("type")
        if kind == "container_reference":
            if not isinstance(env.get("container_id"), str) or not env["container_id"]:
                raise InvalidRequest("Missing required parameter: 'container_id'.",
                                     param=f"{where}.environment.container_id", code="missing_required_parameter")
        elif kind == "container_auto":
            check_container(env, f"{where}.environment")
        elif kind != "local":
            raise InvalidRequest("environment.type must be container_auto, container_reference or local",
                                 param=f"{where}.environment.type", code="invalid_value")

    async def functions(self, param: dict[str, Any], ctx: ToolContext) -> list[ToolSpec]:
        local = not self.runs_on_server(param)
        return [ToolSpec(FUNCTION, LOCAL_DESCRIPTION if local else DESCRIPTION, {
            "type": "object",
            "properties": {"command": {"type": "string", "description": "The command line to run, e.g. ls -la"}},
            "required": ["command"]}, fan_out=False)]

    def start(self, call: ToolCall, param: dict[str, Any]) -> dict[str, Any]:
        env = param.get("environment") or {}
        item: dict[str, Any] = {"id": new_id("sh_"), "type": "shell_call", "call_id": call.id,
                                "action": {"commands": _commands(call), "timeout_ms": None, "max_output_length": None},
                                "status": "in_progress"}
        if env.get("type") == "local":
            item["environment"] = {"type": "local"}
        elif env.get("type") == "container_reference":
            item["environment"] = {"type": "container_reference", "container_id": env["container_id"]}
        return item

    async def run(self, item: dict[str, Any], call: ToolCall, ctx: ToolContext) -> ToolResult:
        env = ctx.param.get("environment") or {"type": "container_auto"}
        if env.get("type") == "local":
            raise ToolError("a local shell runs on the client, not on the server")
        container = await resolve_container(self.toolbox, env["container_id"] if env.get("type") == "container_reference"
                                            else env, ctx.scope)
        item["environment"] = {"type": "container_reference", "container_id": container["id"]}
        commands = [c for c in item["action"]["commands"] if c.strip()]
        if not commands:
            raise ToolError("no command given: call shell with {\"command\": \"...\"}", status="incomplete")
        for i, command in enumerate(commands):
            ctx.emit("response.shell_call_command.added", {"command_index": i, "command": ""})
            ctx.emit("response.shell_call_command.delta", {"command_index": i, "delta": command})
            ctx.emit("response.shell_call_command.done", {"command_index": i, "command": command})
        timeout = max(0.5, ctx.timeout - GRACE - 1.0)
        if item["action"].get("timeout_ms"):
            timeout = min(timeout, item["action"]["timeout_ms"] / 1000)
        cap = int(item["action"].get("max_output_length") or self.settings.get("max_output", MAX_OUTPUT))
        containers: Containers = self.toolbox.service("containers", Containers)
        try:
            results, files = await containers.run_shell(container, commands, timeout, cap)
        except SandboxError as exc:
            raise ToolError(f"the sandbox is unavailable: {exc}") from exc
        output: list[dict[str, Any]] = []
        for i, r in enumerate(results):
            ctx.emit("response.shell_call_output_content.delta",
                     {"command_index": i, "delta": {"stdout": r.stdout, "stderr": r.stderr}})
            content = _content(r)
            ctx.emit("response.shell_call_output_content.done", {"command_index": i, "output": [content]})
            output.append(content)
        item["status"] = "completed"
        out_item = {"id": new_id("sho_"), "type": "shell_call_output", "call_id": item["call_id"], "output": output,
                    "status": "completed", "max_output_length": item["action"].get("max_output_length")}
        text = _for_model(commands, output, int(self.settings.get("model_output_chars", 4000)))
        if files:
            text += "\nFiles written: " + ", ".join(f["path"] for f in files)
        return ToolResult(text, items=[out_item])

    # -- history ------------------------------------------------------------------------------------------
    def as_call(self, item: dict[str, Any]) -> ToolCall | None:
        if item.get("type") == "shell_call":
            commands = (item.get("action") or {}).get("commands") or []
            return ToolCall(str(item["call_id"]), FUNCTION, json.dumps({"command": "\n".join(commands)}))
        if item.get("type") == "local_shell_call":
            argv = (item.get("action") or {}).get("command") or []
            line = argv[2] if len(argv) == 3 and argv[1] in ("-c", "-lc") else shlex.join(argv)
            return ToolCall(str(item["call_id"]), FUNCTION, json.dumps({"command": line}))
        return None

    def as_output(self, item: dict[str, Any]) -> tuple[str, str] | None:
        limit = int(self.settings.get("model_output_chars", 4000))
        if item.get("type") == "shell_call_output":
            return str(item["call_id"]), _for_model([], list(item.get("output") or []), limit)
        if item.get("type") == "local_shell_call_output":
            call_id = item.get("call_id") or item.get("id")
            return str(call_id), truncate(_local_text(item.get("output")), limit)
        return None


class LocalShellTool(ShellTool):
    """``{"type": "local_shell"}``: the older client-side shell; its calls are ``local_shell_call``
    items (``action``: exec of an argv) that the client answers with ``local_shell_call_output``."""

    type: ClassVar[str] = "local_shell"
    item_type: ClassVar[str] = "local_shell_call"
    item_types: ClassVar[tuple[str, ...]] = ("local_shell_call", "local_shell_call_output")

    def runs_on_server(self, param: dict[str, Any]) -> bool:
        return False

    def check(self, param: dict[str, Any], where: str) -> None:
        return None

    def start(self, call: ToolCall, param: dict[str, Any]) -> dict[str, Any]:
        command = "\n".join(_commands(call))
        return {"id": new_id("lsh_"), "type": "local_shell_call", "call_id": call.id, "status": "in_progress",
                "action": {"type": "exec", "command": ["bash", "-lc", command], "env": {}, "timeout_ms": None,
                           "user": None, "working_directory": None}}

    async def run(self, item: dict[str, Any], call: ToolCall, ctx: ToolContext) -> ToolResult:
        raise ToolError("a local shell runs on the client, not on the server")


def _commands(call: ToolCall) -> list[str]:
    """The command lines of a call: ``{"command": ...}``, ``{"commands": [...]}`` or raw text."""
    args = call.arguments_object()
    if isinstance(args, dict):
        value = args.get("command", args.get("commands", args.get("cmd")))
        if isinstance(value, str):
            return [value]
        if isinstance(value, list):
            if value and all(isinstance(v, str) for v in value) and value[0] in ("bash", "sh") and "-c" in value:
                return [value[-1]]  # an argv, as local_shell's own shape
            return [v for v in value if isinstance(v, str)]
        return []
    return [args] if isinstance(args, str) and args.strip() else []


def _content(r: CommandResult) -> dict[str, Any]:
    outcome = {"type": "timeout"} if r.timed_out else {"type": "exit", "exit_code": r.exit_code or 0}
    return {"stdout": r.stdout, "stderr": r.stderr, "outcome": outcome}


def _for_model(commands: list[str], output: list[dict[str, Any]], limit: int) -> str:
    parts = []
    for i, out in enumerate(output):
        lines = [f"$ {commands[i]}"] if i < len(commands) else []
        lines += [s.rstrip("\n") for s in (out.get("stdout") or "", out.get("stderr") or "") if s.strip()] or [
            "(no output)"]
        outcome = out.get("outcome") or {}
        if outcome.get("type") == "timeout":
            lines.append("[timed out: the command was stopped]")
        elif outcome.get("exit_code"):
            lines.append(f"[exit code {outcome['exit_code']}]")
        parts.append("\n".join(lines))
    return truncate("\n\n".join(parts), limit)


def _local_text(output: Any) -> str:
    """A client's local shell output: JSON (``{"stdout", "stderr"}`` or ``{"output"}``) or plain text."""
    if not isinstance(output, str):
        return json.dumps(output)
    try:
        data = json.loads(output)
    except ValueError:
        return output
    if isinstance(data, dict):
        parts = [str(data[k]) for k in ("output", "stdout", "stderr") if data.get(k)]
        return "\n".join(parts) if parts else output
    return output
