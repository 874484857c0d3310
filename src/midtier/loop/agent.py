"""The server-side tool loop: model turn, built-in tools, model turn... inside one response.

``ToolLoop.run`` yields the internal events of every turn (the model's text, reasoning and
client calls as ``ServedModel.stream`` makes them) and of every built-in tool execution
(``ItemStart``/``ItemProgress``/``ItemDone``), then one ``Finish`` whose usage sums the turns.

After each turn: if the model called built-in tools, they run (all of them, concurrently,
each under the wall-clock budget), their outputs join the conversation and the model has
another turn. The loop ends at a turn with no built-in call, at a turn that made a call for
the client (function, custom, or a built-in the client runs: ``local_shell``, a ``local`` shell,
whose item ends the response for the client to answer), when a call waits for approval, or at
a limit: ``max_tool_calls`` (calls of every kind; when none are left the next turn may not
call), the turn budget (the last turn may not call), ``max_output_tokens`` (it bounds the output of all
turns together: a turn gets what is left, and none is left ends the response as incomplete). A forcing ``tool_choice`` (required, a
named tool) applies to the first turn only, else the model could never answer. A tool that
fails or overruns hands the model an error text; it never fails the response. Closing the
generator (a cancelled response, a client gone) cancels running tools.

Every execution is written to the audit log (records of kind ``audit`` owned by the
response), and what the model read is kept (records of kind ``tool_output`` by item id) so
that a later turn of the conversation shows it the same text.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from midtier.core.events import (
    Finish,
    ItemDone,
    ItemProgress,
    ItemStart,
    ReasoningDelta,
    StreamEvent,
    TextAnnotation,
    TextDelta,
    ToolCallArgsDelta,
    ToolCallDone,
    ToolCallStart,
)
from midtier.core.messages import Conversation, Message, ToolCall, ToolChoice, ToolSpec, Usage, new_id
from midtier.loop.served import Served
from midtier.loop.turn import TurnTrace
from midtier.store.base import Store
from midtier.tools.base import BuiltinTool, NeedsApproval, ToolContext, ToolError, ToolResult

log = logging.getLogger(__name__)

MAX_CITATIONS = 3  # citations placed on an answer, best first


@dataclass
class Builtin:
    """A built-in tool as one request uses it: the tool, its entry in ``tools``, and the
    functions the model sees for it."""

    tool: BuiltinTool
    param: dict[str, Any]
    names: tuple[str, ...] = ()


@dataclass
class Limits:
    max_tool_calls: int | None = None
    max_turns: int = 8
    tool_timeout: float = 60.0


@dataclass
class _Running:
    builtin: Builtin
    call: ToolCall
    item: dict[str, Any]
    result: ToolResult | None = None
    approval: dict[str, Any] | None = None


@dataclass
class ToolLoop:
    served: Served
    conv: Conversation
    builtins: list[Builtin]
    store: Store
    context: Callable[[Builtin, Callable[[str, dict[str, Any]], None]], ToolContext]
    limits: Limits = field(default_factory=Limits)
    trace: TurnTrace = field(default_factory=TurnTrace)
    response_id: str = ""

    async def run(self) -> AsyncGenerator[StreamEvent]:
        usage = Usage()
        conv = replace(self.conv, messages=list(self.conv.messages), tools=list(self.conv.tools))
        by_name: dict[str, Builtin] = {}
        for b in self.builtins:
            prepare = getattr(b.tool, "prepare", None)
            if prepare is not None:
                async for event in prepare(b.param, self.context(b, _no_emit)):
                    yield event
                    if isinstance(event, ItemDone):
                        conv.messages += _as_messages(b.tool, event.item)
            specs = await _shown(b, self.served.builtin_namespaces, self.context(b, _no_emit))
            b.names = tuple(s.name for s in specs)
            conv.tools += [s for s in specs if s.name not in by_name]
            by_name.update({s.name: b for s in specs})
        choice = _narrow(conv.tool_choice, conv, by_name)
        calls_made = 0
        citations: list[dict[str, Any]] = []
        for turn in range(max(self.limits.max_turns, 1)):
            left = None if self.limits.max_tool_calls is None else self.limits.max_tool_calls - calls_made
            last = turn == self.limits.max_turns - 1
            turn_choice = ToolChoice("none", None, choice.parallel) if last or left == 0 else choice
            turn_choice = replace(turn_choice, parallel=turn_choice.parallel and left != 1)
            this = replace(conv, tool_choice=turn_choice)
            budget = conv.sampling.max_tokens  # max_output_tokens bounds the whole response, every turn
            if budget is not None:
                if usage.completion_tokens >= budget:
                    yield Finish("length", usage)
                    return
                this = replace(this, sampling=replace(conv.sampling, max_tokens=budget - usage.completion_tokens))
            text, reasoning = [], []
            pending: dict[int, list[str]] = {}  # a built-in call's index -> [id, name, arguments]
            calls: list[ToolCall] = []  # every call of this turn, in order
            builtin_calls: list[ToolCall] = []
            client_call = False
            finish: Finish | None = None
            events = _limit_calls(self.served, self.served.stream(this, self.trace), left, self.trace)
            async with contextlib.aclosing(events):
                async for event in events:
                    if isinstance(event, Finish):
                        finish = event
                        break
                    if isinstance(event, ToolCallStart):
                        calls_made += 1
                        if event.name in by_name:
                            pending[event.index] = [event.id, event.name, ""]
                            continue
                        client_call = True
                    elif isinstance(event, ToolCallArgsDelta) and event.index in pending:
                        pending[event.index][2] += event.delta
                        continue
                    elif isinstance(event, ToolCallDone):
                        if event.index in pending:
                            cid, name, _ = pending.pop(event.index)
                            call = ToolCall(cid, name, event.arguments)
                            calls.append(call)
                            b = by_name[name]
                            if b.tool.runs_on_server(b.param):
                                builtin_calls.append(call)
                            else:  # a client-side built-in (local_shell): its item goes to the client
                                client_call = True
                                item = {**b.tool.start(call, b.param), "status": "completed"}
                                yield ItemStart(dict(item))
                                yield ItemDone(item)
                            continue
                        calls.append(_client_call(event, self.trace))
                    elif isinstance(event, TextDelta):
                        text.append(event.text)
                    elif isinstance(event, ReasoningDelta):
                        reasoning.append(event.text)
                    yield event
            assert finish is not None, "a turn ends with Finish"
            _add(usage, finish.usage)
            if not builtin_calls:
                for annotation in _place(citations, "".join(text)):
                    yield TextAnnotation(annotation)
                yield Finish(finish.reason, usage)
                return
            running = [self._start(by_name[c.name], c) for c in builtin_calls]
            for r in running:
                yield ItemStart(dict(r.item))
            async for event in self._execute(running):
                yield event
            conv.messages.append(Message("assistant", "".join(text) or None, tool_calls=calls,
                                         reasoning="".join(reasoning) or None))
            for r in running:
                output = r.result.output if r.result is not None else "The call is waiting for approval."
                conv.messages.append(Message("tool", output, tool_call_id=r.call.id))
                if r.result is not None:
                    citations = r.result.citations + [c for c in citations if c not in r.result.citations]
            if client_call or any(r.approval is not None for r in running):
                yield Finish("tool_calls", usage)
                return
            choice = ToolChoice("auto", choice.allowed if choice.mode == "auto" else None, choice.parallel)
        yield Finish("stop", usage)  # unreachable: the last turn may not call

    def _start(self, b: Builtin, call: ToolCall) -> _Running:
        item = b.tool.start(call, b.param)
        return _Running(b, call, item)

    async def _execute(self, running: list[_Running]) -> AsyncIterator[StreamEvent]:
        """Run the calls concurrently; yield their progress as it comes and each item once done."""
        queue: asyncio.Queue[StreamEvent | _Running] = asyncio.Queue()
        tasks = [asyncio.create_task(self._one(r, queue)) for r in running]
        try:
            done = 0
            while done < len(running):
                event = await queue.get()
                if isinstance(event, _Running):
                    done += 1
                    if event.approval is not None:
                        yield ItemDone(event.approval)
                        continue
                    yield ItemDone(dict(event.item))
                    for extra in event.result.items if event.result is not None else []:
                        yield ItemDone(extra)
                else:
                    yield event
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _one(self, r: _Running, queue: asyncio.Queue[StreamEvent | _Running]) -> None:
        item_id = r.item["id"]

        def emit(type_: str, fields: dict[str, Any]) -> None:
            queue.put_nowait(ItemProgress(item_id, type_, dict(fields)))

        ctx = self.context(r.builtin, emit)
        started, outcome, error = time.time(), "ok", None
        try:
            r.result = await asyncio.wait_for(r.builtin.tool.run(r.item, r.call, ctx), ctx.timeout)
            if r.item.get("status") in (None, "in_progress", "searching", "interpreting"):
                r.item["status"] = "completed"
        except NeedsApproval as exc:
            r.approval, outcome = exc.item, "approval_requested"
        except ToolError as exc:
            outcome, error = "error", exc.message
            r.item["status"] = exc.status
            r.result = ToolResult(f"Error: {exc.message}")
        except TimeoutError:
            outcome, error = "timeout", f"stopped after {ctx.timeout:g} s"
            r.item["status"] = "incomplete"
            r.result = ToolResult(f"Error: the tool ran longer than its {ctx.timeout:g} s budget and was stopped.")
        except asyncio.CancelledError:
            outcome, error = "cancelled", "the response was cancelled"
            raise
        except Exception as exc:  # a tool's bug: the model is told, the response goes on
            log.exception("built-in tool %s failed", r.builtin.tool.type)
            outcome, error = "error", f"internal error ({type(exc).__name__})"
            r.item["status"] = "failed"
            r.result = ToolResult("Error: the tool failed with an internal error.")
        finally:
            await self._record(r, started, outcome, error)
        queue.put_nowait(r)

    async def _record(self, r: _Running, started: float, outcome: str, error: str | None) -> None:
        entry = {"id": new_id("audit_"), "response_id": self.response_id, "tool": r.builtin.tool.type,
                 "item_id": r.item["id"], "name": r.call.name, "arguments": r.call.arguments,
                 "started_at": started, "duration_ms": round((time.time() - started) * 1000, 1),
                 "outcome": outcome, "error": error}
        try:
            await self.store.put_record("audit", entry["id"], entry, owner=self.response_id)
            if r.result is not None:
                await self.store.put_record("tool_output", r.item["id"], {
                    "call_id": r.call.id, "name": r.call.name, "arguments": r.call.arguments,
                    "output": r.result.output}, owner=self.response_id)
        except Exception:
            log.exception("writing the audit log of %s failed", r.item["id"])


async def _shown(b: Builtin, namespaces: frozenset[str], ctx: ToolContext) -> list[ToolSpec]:
    """How the model sees a built-in tool: in the form its family was trained on when the tool
    has one the model knows (gpt-oss's ``browser`` for web_search), else as functions."""
    native = getattr(b.tool, "native_functions", None)
    if native is not None and getattr(b.tool, "namespace", None) in namespaces:
        specs: list[ToolSpec] = await native(b.param, ctx)
        return specs
    return await b.tool.functions(b.param, ctx)


def _no_emit(type_: str, fields: dict[str, Any]) -> None:
    log.debug("progress outside an item dropped: %s", type_)


def _narrow(choice: ToolChoice, conv: Conversation, by_name: dict[str, Builtin]) -> ToolChoice:
    """Allowed names that are built-in tool types become the functions of those tools."""
    if choice.allowed is None:
        return choice
    names: list[str] = []
    for name in choice.allowed:
        expanded = [n for n, b in by_name.items() if b.tool.type == name]
        names += expanded or [name]
    return replace(choice, allowed=tuple(dict.fromkeys(names)))


def _client_call(event: ToolCallDone, trace: TurnTrace) -> ToolCall:
    start = trace.extra.get("calls", {}).get(event.index)
    if start is not None:
        return ToolCall(start[0], start[1], event.arguments, start[2])
    return ToolCall(f"call_{event.index}", "", event.arguments)


def _add(total: Usage, usage: Usage) -> None:
    total.prompt_tokens += usage.prompt_tokens
    total.completion_tokens += usage.completion_tokens
    total.cached_tokens += usage.cached_tokens


async def _limit_calls(served: Served, events: AsyncGenerator[StreamEvent], left: int | None,
                       trace: TurnTrace) -> AsyncGenerator[StreamEvent]:
    """The turn ends once it has made ``left`` calls; it remembers each call's id, name and type."""
    calls: dict[int, tuple[str, str, str]] = trace.extra.setdefault("calls", {})
    calls.clear()
    trace.raw_output = ""  # this turn's output only: a turn cut here counts its own tokens, not the loop's
    reached = False
    async with contextlib.aclosing(events):
        async for event in events:
            if isinstance(event, ToolCallStart):
                if left is not None and event.index >= left:
                    reached = True
                    break
                calls[event.index] = (event.id, event.name, event.type)
            yield event
            if isinstance(event, ToolCallDone) and left is not None and event.index == left - 1:
                reached = True
                break
    if reached:
        generated = served.count_tokens(trace.raw_output)
        yield Finish("tool_calls", Usage(trace.prompt_tokens, generated, trace.cached_tokens))


def _as_messages(tool: BuiltinTool, item: dict[str, Any]) -> list[Message]:
    call, output = tool.as_call(item), tool.as_output(item)
    out: list[Message] = []
    if call is not None:
        out.append(Message("assistant", None, tool_calls=[call]))
    if output is not None:
        out.append(Message("tool", output[1], tool_call_id=output[0]))
    return out


def _place(citations: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """The citations for an answer, placed: on the span naming their URL or title when the text
    has one, else at the end of the text (a file citation's ``index``); a container file on the
    span naming its path or name, and only when the text names it."""
    if not text.strip():
        return []
    out: list[dict[str, Any]] = []
    for citation in citations[:MAX_CITATIONS]:
        placed = dict(citation)
        if citation.get("type") == "url_citation":
            needle = next((n for n in (citation.get("url"), citation.get("title")) if n and n in text), None)
            start = text.find(needle) if needle else 0
            placed.update(start_index=start, end_index=start + len(needle) if needle else len(text))
        elif citation.get("type") == "container_file_citation":
            path = placed.pop("path", None)
            needle = next((n for n in (path, citation.get("filename")) if n and n in text), None)
            if needle is None:  # a file the answer does not name is not cited
                continue
            start = text.find(needle)
            placed.update(start_index=start, end_index=start + len(needle))
        else:
            placed.setdefault("index", len(text))
        out.append(placed)
    return out
