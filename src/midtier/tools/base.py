"""Built-in tools: what the server runs itself inside one Responses call.

A request names a built-in tool by its OpenAI type (``{"type": "code_interpreter", ...}``).
The model sees each as one or more functions (``functions``). When the model calls one, the
loop (``midtier.loop.agent``) asks the tool for its output item (``start``), sends it, runs
the tool (``run``) under a wall-clock budget, and hands the model the text ``run`` returns.
``run`` fills the item in place (status, outputs, results...) and reports progress with
``ctx.emit`` (the tool's own stream events, ``response.code_interpreter_call.interpreting``
and the like). A tool that fails raises ``ToolError``: the model reads its message and the
response goes on; the item ends ``failed`` (or ``incomplete``).

Shared backends (the containers, the search indexes, the web provider, MCP sessions) hang
off the ``Toolbox`` (``midtier.tools``), one per server, and reach a tool through ``ctx.toolbox``.

                 the loop                          a tool
    model call ─► tool.start(call, param) ─► item (status in_progress), sent as output_item.added
               ─► await tool.run(item, call, ctx) (ctx.emit(...) on the way) ─► ToolResult
               ─► output_item.done with the item; ToolResult.output goes to the model
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from midtier.core.messages import ToolCall, ToolSpec

if TYPE_CHECKING:
    from midtier.store.base import Store
    from midtier.tools import Toolbox


class ToolError(Exception):
    """A failure the model should read (a timeout, a bad argument, a sandbox limit hit).
    ``status`` is the item's final status."""

    def __init__(self, message: str, *, status: str = "failed") -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class NeedsApproval(Exception):
    """Raised by ``run`` when a call must wait for the client's approval: ``item`` (an
    ``mcp_approval_request``) is sent in place of the call's item and the response ends there,
    like a function call; the client answers in its next request."""

    def __init__(self, item: dict[str, Any]) -> None:
        super().__init__(item.get("id"))
        self.item = item


@dataclass
class ToolContext:
    """What one execution of a built-in tool may use."""

    response_id: str
    param: dict[str, Any]  # the tool's entry in the request's ``tools``, as sent
    store: Store
    toolbox: Toolbox
    # the conversation this call belongs to: the conversation id, or the id of the first response
    # of a previous_response_id chain; an ``auto`` container lives as long as its scope is used
    scope: str
    # one of the open item's own stream events: (event type, fields); the loop adds item_id,
    # output_index and sequence_number
    emit: Callable[[str, dict[str, Any]], None] = lambda type_, fields: None
    include: frozenset[str] = frozenset()  # the request's ``include``
    timeout: float = 60.0  # the wall-clock budget of this execution, seconds
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ToolResult:
    """What a tool returns: what the model reads, and what the response shows besides the item."""

    output: str  # the call's result as the model reads it
    items: list[dict[str, Any]] = field(default_factory=list)  # further output items after the call's own
    # citations the answer may carry: ``{"type": "file_citation", "file_id", "filename"}`` or
    # ``{"type": "url_citation", "url", "title"}``; the loop places them in the final text
    citations: list[dict[str, Any]] = field(default_factory=list)


class BuiltinTool(Protocol):
    """One kind of built-in tool (one per server, stateless between requests but for its backends).
    The toolbox makes it as ``cls(toolbox)``."""

    type: ClassVar[str]  # the tool type in a request's ``tools`` ("code_interpreter")
    item_type: ClassVar[str]  # the type of its call items ("code_interpreter_call")
    # every item type it makes or reads back in a request's input (the call's, its output's...)
    item_types: ClassVar[tuple[str, ...]]

    def runs_on_server(self, param: dict[str, Any]) -> bool:
        """False when its calls go to the client like function calls (``local_shell``, shell with a
        local environment): the loop sends the item and ends the response there."""

    def check(self, param: dict[str, Any], where: str) -> None:
        """Validate the request's entry (raise ``InvalidRequest`` with ``param=where + ...``)."""

    async def functions(self, param: dict[str, Any], ctx: ToolContext) -> list[ToolSpec]:
        """How the model sees this tool: one or more functions, with instructions in their descriptions."""

    def start(self, call: ToolCall, param: dict[str, Any]) -> dict[str, Any]:
        """The output item of ``call``, in progress (with a fresh ``id``)."""

    async def run(self, item: dict[str, Any], call: ToolCall, ctx: ToolContext) -> ToolResult:
        """Execute ``call``: fill ``item`` in place, emit progress, return what the model reads.
        Cancellation (``asyncio.CancelledError``) must stop the work at once (kill processes)."""

    # optional: ``async def prepare(self, param, ctx) -> AsyncIterator[StreamEvent]``, run before
    # the first model turn (after ``check``, before ``functions``): the events of items of its own
    # (``mcp_list_tools``; calls approved in this request's input, run now). ``ctx.extra["history"]``
    # holds the items of the context and the input. Every item it finishes (``ItemDone``) that
    # ``as_call``/``as_output`` read as a call and its result is added to what the model sees.

    # optional: ``namespace: ClassVar[str]`` and ``async def native_functions(self, param, ctx) ->
    # list[ToolSpec]``: the tool in the form a model family was trained on (gpt-oss's "browser",
    # "python"; specs with ``namespace`` set, named by their full recipient, ``browser.search``),
    # shown instead of ``functions`` when the served model's format knows that namespace
    # (``Format.builtin_namespaces``). ``start`` and ``run`` then get calls by those names.

    # -- history: items of earlier turns (a previous_response_id chain, a conversation, the input) --
    def as_call(self, item: dict[str, Any]) -> ToolCall | None:
        """The call the model made, for an item that holds one (its function name and JSON
        arguments as the model wrote them); None for an output item."""

    def as_output(self, item: dict[str, Any]) -> tuple[str, str] | None:
        """``(call id, the text the model read)`` for an item that holds a call's result (for a
        server-run tool, the call item itself; its call id is the one ``as_call`` gives). The loop
        also keeps the exact text the model read (a ``tool_output`` record by item id), which is
        used first; this is the fallback for items sent by a client."""
