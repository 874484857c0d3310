"""code_interpreter: the model runs Python in its container's sandbox and reads the output.

Request: ``{"type": "code_interpreter", "container": "cntr_…" | {"type": "auto", "file_ids",
"memory_limit"}}``. An ``auto`` container is the conversation's (``ctx.scope``): reused along a
``previous_response_id`` chain or a conversation, made on first use, with ``file_ids`` copied
in. The model sees one function, ``python(code)``; the interpreter keeps its variables between
calls of the same container, like a notebook (the last expression's value is shown). A model
trained on its own ``python`` tool (gpt-oss, ``Format.builtin_namespaces``) sees that instead
(``native_functions``): it sends the code itself to ``python``, and the call runs the same.

Each call is one ``code_interpreter_call`` item (``code``, ``container_id``, ``status``), with
``outputs`` (``logs``, and an ``image`` per picture the code wrote, as a data URL) when
``include`` asks for ``code_interpreter_call.outputs``, as OpenAI does. Events:
``response.code_interpreter_call.in_progress``, ``response.code_interpreter_call_code.delta``
and ``.done``, ``.interpreting``, ``.completed``. The item ends ``completed`` when the code ran
(an exception in it is output too), ``incomplete`` when it ran out of time, ``failed`` when the
sandbox died. Files the code writes become container files (``midtier.tools.containers``).

Settings (``settings["code_interpreter"]``): ``sandbox`` (backend key, ``midtier.tools.sandbox``),
``isolation``, ``python``, ``uid``, the ``Limits`` fields but ``memory_mb`` (a container's
``memory_limit`` sets it: 1g is 1024 MB), ``max_memory_mb`` (4096: the cap on that), ``max_sandboxes`` (16 running at once), ``model_output_chars``
(4000: what the model reads of one call's output).
"""

from __future__ import annotations

import ast
import base64
import json
import mimetypes
import re
from collections import OrderedDict
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar

from midtier.core.errors import InvalidRequest
from midtier.core.messages import ToolCall, ToolSpec, new_id
from midtier.tools.base import ToolContext, ToolError, ToolResult
from midtier.tools.containers import MEMORY_MB, Containers
from midtier.tools.sandbox import GRACE, STATE_LOST, PythonResult, SandboxError

if TYPE_CHECKING:
    from midtier.tools import Toolbox

OUTPUTS = "code_interpreter_call.outputs"
IMAGE_TYPES = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".svg")
MAX_IMAGE_BYTES = 2 * 1024 * 1024
DONE = "Now answer in plain text."
RETRY = "Fix the code and run it again, or tell the user what went wrong."
DESCRIPTION = ("Run Python code in a stateful sandbox and read its output; use print() to show results. "
               "Files are in the current folder.")


def truncate(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, with a marker saying how much was left out."""
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[... {len(text) - limit} more characters not shown]"


def check_container(container: Any, where: str) -> None:
    """A ``container`` (code_interpreter) or ``environment`` (shell) entry: an id, or auto.
    ``where`` names it in errors (empty: a Containers API body, whose keys are top-level)."""
    def at(key: str) -> str:
        return f"{where}.{key}" if where else key

    if isinstance(container, str):
        if not container:
            raise InvalidRequest("container must be a container id or {\"type\": \"auto\"}", param=where,
                                 code="invalid_value")
        return
    if not isinstance(container, dict) or container.get("type") not in ("auto", "container_auto"):
        raise InvalidRequest("container must be a container id or {\"type\": \"auto\"}", param=where,
                             code="invalid_value")
    file_ids = container.get("file_ids")
    if file_ids is not None and (not isinstance(file_ids, list) or not all(isinstance(f, str) for f in file_ids)):
        raise InvalidRequest("file_ids must be a list of file ids", param=at("file_ids"), code="invalid_value")
    memory = container.get("memory_limit")
    if memory is not None and memory not in MEMORY_MB:
        raise InvalidRequest(f"memory_limit must be one of {', '.join(MEMORY_MB)}", param=at("memory_limit"),
                             code="invalid_value")
    policy = container.get("network_policy")
    if policy is not None and (not isinstance(policy, dict) or policy.get("type") != "disabled"):
        raise InvalidRequest("this server's sandboxes have no network: network_policy must be disabled",
                             param=at("network_policy"), code="unsupported_value")
    if container.get("skills"):
        raise InvalidRequest("skills are not supported", param=at("skills"), code="unsupported_value")


async def resolve_container(toolbox: Toolbox, container: Any, scope: str) -> dict[str, Any]:
    """The running container a request names (an id) or its conversation's ``auto`` one."""
    containers: Containers = toolbox.service("containers", Containers)
    if isinstance(container, str):
        return await containers.require(container, "container", running=True)
    return await containers.for_scope(scope, container)


class CodeInterpreterTool:
    type: ClassVar[str] = "code_interpreter"
    item_type: ClassVar[str] = "code_interpreter_call"
    item_types: ClassVar[tuple[str, ...]] = ("code_interpreter_call",)
    function = "python"
    namespace: ClassVar[str] = "python"

    def __init__(self, toolbox: Toolbox) -> None:
        self.toolbox = toolbox
        self.settings = toolbox.settings(self.type)
        self._resolved: OrderedDict[int, tuple[dict[str, Any], str]] = OrderedDict()  # id(param) -> container

    @property
    def containers(self) -> Containers:
        containers: Containers = self.toolbox.service("containers", Containers)
        return containers

    def runs_on_server(self, param: dict[str, Any]) -> bool:
        return True

    def check(self, param: dict[str, Any], where: str) -> None:
        if "container" not in param or param["container"] is None:
            raise InvalidRequest("Missing required parameter: 'container'.", param=f"{where}.container",
                                 code="missing_required_parameter")
        check_container(param["container"], f"{where}.container")

    async def functions(self, param: dict[str, Any], ctx: ToolContext) -> list[ToolSpec]:
        container = await resolve_container(self.toolbox, param["container"], ctx.scope)
        self._resolved[id(param)] = (param, container["id"])
        while len(self._resolved) > 256:
            self._resolved.popitem(last=False)
        names = [r["path"].rsplit("/", 1)[-1] for r in await self.containers.store.all_records(
            "container_file", container["id"])][:20]
        description = DESCRIPTION + (f" Files: {', '.join(names)}." if names else "")
        return [ToolSpec(self.function, description, {
            "type": "object",
            "properties": {"code": {"type": "string", "description": "The Python code to run."}},
            "required": ["code"]}, fan_out=False)]

    async def native_functions(self, param: dict[str, Any], ctx: ToolContext) -> list[ToolSpec]:
        """gpt-oss's ``python``: its template describes it; the call is the same ``python``."""
        return [replace(spec, namespace=self.namespace) for spec in await self.functions(param, ctx)]

    def start(self, call: ToolCall, param: dict[str, Any]) -> dict[str, Any]:
        resolved = self._resolved.get(id(param))
        container = param.get("container")
        container_id = container if isinstance(container, str) else resolved[1] if resolved and resolved[0] is param else ""
        return {"id": new_id("ci_"), "type": self.item_type, "status": "in_progress", "code": _code(call),
                "container_id": container_id, "outputs": None}

    async def run(self, item: dict[str, Any], call: ToolCall, ctx: ToolContext) -> ToolResult:
        container = await resolve_container(self.toolbox, ctx.param["container"], ctx.scope)
        item["container_id"] = container["id"]
        code = item["code"] or ""
        ctx.emit("response.code_interpreter_call.in_progress", {})
        ctx.emit("response.code_interpreter_call_code.delta", {"delta": code})
        ctx.emit("response.code_interpreter_call_code.done", {"code": code})
        if not code.strip():
            raise ToolError("no code given: call python with {\"code\": \"...\"}")
        item["status"] = "interpreting"
        ctx.emit("response.code_interpreter_call.interpreting", {})
        budget = max(0.5, ctx.timeout - GRACE - 1.0)
        try:
            result, files = await self.containers.run_python(container, repair(code), budget)
        except SandboxError as exc:
            raise ToolError(f"the sandbox is unavailable: {exc}") from exc
        item["status"] = {"timeout": "incomplete", "killed": "failed"}.get(result.outcome, "completed")
        logs = _logs(result)
        if OUTPUTS in ctx.include:
            outputs: list[dict[str, Any]] = [{"type": "logs", "logs": logs}] if logs else []
            outputs += [o for o in [await self._image(container["id"], f) for f in files] if o is not None]
            item["outputs"] = outputs
        ctx.emit("response.code_interpreter_call.completed", {})
        # the files the code wrote: the answer cites them (container_file_citation), as OpenAI's does
        citations = [{"type": "container_file_citation", "container_id": container["id"], "file_id": f["id"],
                      "filename": f["path"].rsplit("/", 1)[-1], "path": f["path"]} for f in files]
        return ToolResult(self._for_model(result, files), citations=citations)

    def _for_model(self, result: PythonResult, files: list[dict[str, Any]]) -> str:
        """What the model reads: the output framed in words a small model acts on (without the
        last sentence, Qwen2.5-Coder-0.5B answers a printed number by running the code again)."""
        limit = int(self.settings.get("model_output_chars", 4000))
        printed = result.output.rstrip("\n") + ("\n[output truncated]" if result.truncated else "")
        parts = [f"Note: {STATE_LOST}"] if result.restarted else []
        if result.error is None:
            parts.append(f"The code printed:\n{truncate(printed, limit)}" if printed.strip()
                         else "The code ran and printed nothing (use print() to show values).")
        else:
            if printed.strip():
                parts.append(f"The code printed:\n{truncate(printed, limit // 2)}")
            parts.append(f"It failed:\n{truncate(result.error, limit // 2)}")
        if files:
            parts.append("Files written: " + ", ".join(f["path"] for f in files))
        parts.append(DONE if result.error is None else RETRY)
        return "\n".join(parts)

    async def _image(self, container_id: str, record: dict[str, Any]) -> dict[str, Any] | None:
        if not record["path"].lower().endswith(IMAGE_TYPES) or record["bytes"] > MAX_IMAGE_BYTES:
            return None
        data = await self.containers.read_file(container_id, record)
        if data is None:
            return None
        mime = mimetypes.guess_type(record["path"])[0] or "image/png"
        return {"type": "image", "url": f"data:{mime};base64,{base64.b64encode(data).decode()}"}

    # -- history ------------------------------------------------------------------------------------------
    def as_call(self, item: dict[str, Any]) -> ToolCall | None:
        if item.get("type") != self.item_type:
            return None
        return ToolCall(str(item["id"]), self.function, json.dumps({"code": item.get("code") or ""}))

    def as_output(self, item: dict[str, Any]) -> tuple[str, str] | None:
        if item.get("type") != self.item_type:
            return None
        logs = [o.get("logs", "") for o in item.get("outputs") or [] if o.get("type") == "logs"]
        text = "\n".join(logs) if logs else "(the output of this call was not kept)"
        return str(item["id"]), truncate(text, int(self.settings.get("model_output_chars", 4000)))


def repair(code: str) -> str:
    """``code``, or a mended copy when it does not parse and the mend does: small models close the
    JSON object inside the string (``print(x)}``) or escape its newlines twice (``a = 1\\nb = 2``)."""
    if _parses(code):
        return code
    candidates = [re.sub(r'["}\s]+$', "", code)]
    if "\\n" in code and "\n" not in code.strip():
        candidates += [code.replace("\\n", "\n"), re.sub(r'["}\s]+$', "", code.replace("\\n", "\n"))]
    return next((c for c in candidates if c.strip() and _parses(c)), code)


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return False
    return True


def _code(call: ToolCall) -> str:
    """The code of a call: ``{"code": ...}`` as asked, or the raw text a small model may write."""
    args = call.arguments_object()
    if isinstance(args, dict):
        code = args.get("code")
        if isinstance(code, str):
            return code
        strings = [v for v in args.values() if isinstance(v, str)]
        return strings[0] if len(strings) == 1 else ""
    return args if isinstance(args, str) else ""


def _logs(result: PythonResult) -> str:
    """What the call printed, then its error: the ``logs`` output and what the model reads."""
    parts = [result.output.rstrip("\n")] if result.output.strip() else []
    if result.truncated:
        parts.append("[output truncated]")
    if result.error:
        parts.append(result.error)
    return "\n".join(parts)
