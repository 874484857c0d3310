"""The Responses and Conversations APIs over the one generation path Chat Completions uses.

A request's items (with those of its ``previous_response_id`` chain or its conversation)
become a ``core.messages.Conversation``; ``ServedModel.stream`` runs the turn; a
``streaming.responses.ResponseStream`` folds its events into the ``Response`` object and
renders the stream events on the way. Items are kept in the store in the shape the API
returns them (each with an id), so a response's context is rebuilt from what was sent.

Background responses run in a task of this process (``Runs``); their events are kept in
memory, so a client may follow them, or resume at ``starting_after``. A stored response
with no events at hand is replayed from its stored object.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from midtier.core.errors import EngineError, InvalidRequest, MidtierError, NotFound
from midtier.core.events import StreamEvent
from midtier.core.messages import (
    Conversation,
    Message,
    ResponseFormat,
    Sampling,
    ToolCall,
    ToolChoice,
    ToolSpec,
    new_id,
)
from midtier.loop import TurnTrace
from midtier.loop.agent import Builtin, Limits, ToolLoop
from midtier.loop.served import Served
from midtier.server.app import read_json, store_of, toolbox_of
from midtier.server.chat import _TOOL_NAME, check_schema
from midtier.server.errors import validation_error
from midtier.server.sse import EventStreamResponse, run_unless_disconnected, sse_event
from midtier.store.base import Page, Store, StoredResponse
from midtier.streaming.responses import ResponseStream, replay
from midtier.tools import REGISTRY, BuiltinTool, Toolbox, ToolContext, ToolsConfig
from midtier.types.responses import (
    AllowedToolsChoice,
    CreateResponseRequest,
    CustomToolCallItem,
    CustomToolCallOutputItem,
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionToolParam,
    GrammarFormat,
    ItemReference,
    MessageItem,
    NamedTool,
    OtherItem,
    OtherTool,
    OtherToolChoice,
    ReasoningItem,
)

log = logging.getLogger(__name__)

PROGRESS_EVERY = 1.0  # seconds between a background response's progress writes to the store
KEEP_RUNS = 64  # finished runs whose events stay in memory for resuming streams


# -- request bodies ------------------------------------------------------------------------------
_UNION_LISTS = ("input", "items", "tools")


def _param_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """A pydantic location without union branch names: ``input[0].role``, not
    ``input.list[tagged-union[...]][0].message.role``."""
    out: list[Any] = []
    tagged = False  # the next name is the tag of a discriminated union's branch
    for part in loc:
        if isinstance(part, str) and (part.startswith(("list[", "tagged-union[")) or part == "str"):
            continue
        if tagged and isinstance(part, str):
            tagged = False
            continue
        out.append(part)
        tagged = part in ("tool_choice", "format") or (isinstance(part, int) and len(out) > 1
                                                       and out[-2] in _UNION_LISTS)
    return tuple(out)


def parse_body(model: type[BaseModel], data: dict[str, Any]) -> Any:
    """Validate a body; the error names the deepest culprit (a union reports every branch)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        best = max(errors, key=lambda e: len(_param_loc(tuple(e["loc"]))))
        detail: dict[str, Any] = {"type": best["type"], "loc": _param_loc(tuple(best["loc"])), "input": best["input"]}
        if "ctx" in best:
            detail["ctx"] = best["ctx"]
        raise validation_error(ValidationError.from_exception_data(exc.title, [detail])) from None  # type: ignore[list-item]


# -- tools ---------------------------------------------------------------------------------------
def tools_from_request(req: CreateResponseRequest, served: Served,
                       toolbox: Toolbox | None = None) -> tuple[list[ToolSpec], list[dict[str, Any]], list[Builtin]]:
    """The tools as specs, as the Response object echoes them, and the built-in ones."""
    specs: list[ToolSpec] = []
    echo: list[dict[str, Any]] = []
    builtins: list[Builtin] = []
    for i, tool in enumerate(req.tools or []):
        param = f"tools[{i}]"
        if isinstance(tool, OtherTool):
            if toolbox is None or not toolbox.available(tool.type):
                enabled = sorted(t for t in REGISTRY if toolbox is not None and toolbox.available(t))
                raise InvalidRequest(f"tool type {tool.type!r} is not supported by this server: it takes function "
                                     f"and custom tools{''.join(', ' + t for t in enabled)}",
                                     param=f"{param}.type", code="unsupported_tool_type")
            entry = tool.model_dump()
            builtin = toolbox.tool(tool.type)
            builtin.check(entry, param)
            builtins.append(Builtin(builtin, entry))
            echo.append(entry)
            continue
        if not _TOOL_NAME.match(tool.name):
            raise InvalidRequest(f"invalid tool name {tool.name!r}: use 1 to 64 of a-z, A-Z, 0-9, _ and -",
                                 param=f"{param}.name", code="invalid_value")
        if any(t.name == tool.name for t in specs):
            raise InvalidRequest(f"duplicate tool name {tool.name!r}", param=f"{param}.name", code="duplicate_tool_name")
        if isinstance(tool, FunctionToolParam):
            params = tool.parameters if tool.parameters is not None else {"type": "object", "properties": {}}
            check_schema(params, f"{param}.parameters")
            strict = tool.strict is not False  # the Responses API's default is strict
            specs.append(ToolSpec(tool.name, tool.description or "", params, strict))
            echo.append({"type": "function", "name": tool.name, "description": tool.description,
                         "parameters": params, "strict": strict})
            continue
        fmt = tool.format
        grammar = (fmt.syntax, fmt.definition) if isinstance(fmt, GrammarFormat) else None
        spec = ToolSpec(tool.name, tool.description or "", kind="custom", grammar=grammar)
        if grammar is not None:
            served.validate_custom(spec, param=f"{param}.format.definition")
        specs.append(spec)
        echo.append({"type": "custom", "name": tool.name, "format": fmt.model_dump() if fmt else {"type": "text"},
                     **({"description": tool.description} if tool.description is not None else {})})
    return specs, echo, builtins


def tool_choice_from_request(req: CreateResponseRequest, tools: list[ToolSpec],
                             builtins: list[Builtin] | None = None) -> ToolChoice:
    """``tool_choice``; a built-in tool is named by its type (the loop expands it to its functions)."""
    # max_tool_calls: none left means no call; one left means one call in this turn
    parallel = req.parallel_tool_calls is not False and req.max_tool_calls != 1
    kinds: dict[str, str] = {t.name: t.kind for t in tools}
    kinds.update({b.tool.type: "builtin" for b in builtins or []})
    choice = req.tool_choice
    allowed: tuple[str, ...] | None = None
    if choice is None:
        mode = "auto" if kinds else "none"
    elif isinstance(choice, str):
        if choice == "required" and not kinds:
            raise InvalidRequest("tool_choice 'required' needs at least one tool in tools", param="tool_choice",
                                 code="invalid_value")
        mode = choice
    elif isinstance(choice, OtherToolChoice):
        if kinds.get(choice.type) != "builtin":
            raise InvalidRequest(f"tool_choice type {choice.type!r} names no tool of tools", param="tool_choice.type",
                                 code="unsupported_tool_type" if choice.type not in REGISTRY else "invalid_value")
        mode, allowed = "required", (choice.type,)
    elif isinstance(choice, NamedTool):
        if kinds.get(choice.name) != choice.type:
            raise InvalidRequest(f"tool_choice names no {choice.type} tool {choice.name!r} of tools",
                                 param="tool_choice.name", code="invalid_value")
        mode, allowed = "required", (choice.name,)
    else:
        assert isinstance(choice, AllowedToolsChoice)
        names = []
        for j, entry in enumerate(choice.tools):
            fn = entry.get("function")
            name = fn.get("name") if isinstance(fn, dict) else entry.get("name", entry.get("type"))
            if name not in kinds:
                raise InvalidRequest(f"allowed_tools names unknown tool {name!r}", param=f"tool_choice.tools[{j}]",
                                     code="invalid_value")
            names.append(str(name))
        mode, allowed = choice.mode, tuple(names)
    if req.max_tool_calls == 0:
        mode = "none"
    return ToolChoice(mode, allowed, parallel)  # type: ignore[arg-type]


def response_format(req: CreateResponseRequest) -> ResponseFormat:
    fmt = req.text.format if req.text is not None else None
    if fmt is None or fmt.type == "text":
        return ResponseFormat()
    if fmt.type == "json_object":
        return ResponseFormat("json_object")
    check_schema(fmt.schema_, "text.format.schema")
    return ResponseFormat("json_schema", fmt.schema_, bool(fmt.strict), fmt.name)


# -- items ---------------------------------------------------------------------------------------
def _parts(content: Any, role: str, param: str) -> list[dict[str, Any]]:
    """A message's content as stored: text parts only (a text model takes no images, files or audio)."""
    if isinstance(content, str):
        content = [{"type": "input_text", "text": content}]
    out: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        part = part if isinstance(part, dict) else part.model_dump()
        kind, text, refusal = part.get("type"), part.get("text"), part.get("refusal")
        if kind == "refusal" and role == "assistant" and isinstance(refusal, str):
            out.append({"type": "refusal", "refusal": refusal})
        elif kind in ("input_text", "output_text", "text") and isinstance(text, str):
            out.append({"type": "output_text", "text": text, "annotations": [], "logprobs": []} if role == "assistant"
                       else {"type": "input_text", "text": text})
        else:
            raise InvalidRequest(f"content part type {kind!r} is not supported by this model; only text is",
                                 param=f"{param}[{j}].type", code="unsupported_content")
    return out


def _output(output: Any, param: str) -> Any:
    return output if isinstance(output, str) else _parts(output, "tool", param)


def stored_items(items: Iterable[Any], param: str, context: list[dict[str, Any]],
                 tool_items: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    """Request items in their stored shape, each with an id; references resolved against
    ``context`` and the items before them. ``tool_items``: the item types of the built-in tools
    this server runs, kept as sent."""
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        p = f"{param}[{i}]"
        if isinstance(item, MessageItem):
            out.append({"id": item.id or new_id("msg_"), "type": "message", "role": item.role,
                        "content": _parts(item.content, item.role, f"{p}.content"), "status": "completed"})
        elif isinstance(item, FunctionCallItem):
            out.append({"id": item.id or new_id("fc_"), "type": "function_call", "call_id": item.call_id,
                        "name": item.name, "arguments": item.arguments, "status": "completed"})
        elif isinstance(item, FunctionCallOutputItem):
            out.append({"id": item.id or new_id("fco_"), "type": "function_call_output", "call_id": item.call_id,
                        "output": _output(item.output, f"{p}.output"), "status": "completed"})
        elif isinstance(item, CustomToolCallItem):
            out.append({"id": item.id or new_id("ctc_"), "type": "custom_tool_call", "call_id": item.call_id,
                        "name": item.name, "input": item.input, "status": "completed"})
        elif isinstance(item, CustomToolCallOutputItem):
            out.append({"id": item.id or new_id("ctco_"), "type": "custom_tool_call_output", "call_id": item.call_id,
                        "output": _output(item.output, f"{p}.output"), "status": "completed"})
        elif isinstance(item, ReasoningItem):
            reasoning: dict[str, Any] = {"id": item.id or new_id("rs_"), "type": "reasoning",
                                         "summary": [s.model_dump(exclude_none=True) for s in item.summary]}
            if item.content is not None:
                reasoning["content"] = [{"type": "reasoning_text", "text": c.text or ""} for c in item.content]
            if item.encrypted_content is not None:
                reasoning["encrypted_content"] = item.encrypted_content
            out.append(reasoning)
        elif isinstance(item, ItemReference):
            found = next((x for x in reversed(context + out) if x.get("id") == item.id), None)
            if found is None:
                raise NotFound(f"Item with id '{item.id}' not found.", param=f"{p}.id")
            out.append(found)
        else:
            assert isinstance(item, OtherItem)
            if item.type not in tool_items:
                raise InvalidRequest(f"item type {item.type!r} is not supported by this server", param=f"{p}.type",
                                     code="unsupported_item_type")
            kept = item.model_dump()
            kept.setdefault("id", None)
            kept["id"] = kept["id"] or new_id(item.type.split("_")[0][:4] + "_")
            out.append(kept)
    return out


def check_call_ids(items: list[dict[str, Any]], context: list[dict[str, Any]], param: str) -> None:
    """Every tool output answers a call made before it, in the context or the input."""
    calls = {x["call_id"] for x in context if x["type"] in ("function_call", "custom_tool_call")}
    for i, item in enumerate(items):
        if item["type"] in ("function_call", "custom_tool_call"):
            calls.add(item["call_id"])
        elif item["type"] in ("function_call_output", "custom_tool_call_output") and item["call_id"] not in calls:
            raise InvalidRequest(f"No tool call found for {item['type']} with call_id '{item['call_id']}'.",
                                 param=f"{param}[{i}].call_id", code="invalid_tool_call_id")
        elif item["type"] == "mcp_approval_response":
            asked = {x.get("id") for x in context + items[:i] if x.get("type") == "mcp_approval_request"}
            if item.get("approval_request_id") not in asked:
                raise InvalidRequest(f"No mcp_approval_request found with id '{item.get('approval_request_id')}'.",
                                     param=f"{param}[{i}].approval_request_id", code="invalid_value")


def _text(parts: Any) -> str:
    if isinstance(parts, str):
        return parts
    return "".join(str(p.get("text", p.get("refusal", ""))) for p in parts)


def messages_from_items(items: list[dict[str, Any]], tool_for: Callable[[str], BuiltinTool | None] | None = None,
                        outputs: dict[str, dict[str, Any]] | None = None) -> list[Message]:
    """Stored items as the conversation model: a run of assistant-side items (reasoning,
    text, calls) is one assistant message; each tool output is a tool message. A built-in
    tool's items read back as the call and the output the model saw (``outputs``: the
    ``tool_output`` records by item id), or as ``tool_for(type)`` reads them."""
    out: list[Message] = []
    outputs = outputs or {}

    def assistant(opens_turn: bool = False) -> Message:
        last = out[-1] if out else None
        if last is None or last.role != "assistant" or (opens_turn and (last.content or last.tool_calls)):
            out.append(Message("assistant"))
        return out[-1]

    for item in items:
        kind = item["type"]
        if kind == "message" and item["role"] != "assistant":
            out.append(Message(item["role"], _text(item["content"])))
        elif kind == "message":
            m = assistant()
            m.content = (m.content or "") + _text(item["content"])
        elif kind == "reasoning":
            text = "".join(c.get("text", "") for c in item.get("content") or [])
            if text:
                m = assistant(opens_turn=True)
                m.reasoning = (m.reasoning or "") + text
        elif kind in ("function_call", "custom_tool_call"):
            custom = kind == "custom_tool_call"
            assistant().tool_calls.append(ToolCall(item["call_id"], item["name"],
                                                   item["input"] if custom else item["arguments"],
                                                   "custom" if custom else "function"))
        elif kind in ("function_call_output", "custom_tool_call_output"):
            out.append(Message("tool", _text(item["output"]), tool_call_id=item["call_id"]))
        elif item.get("id") in outputs:
            seen = outputs[item["id"]]
            assistant().tool_calls.append(ToolCall(seen["call_id"], seen["name"], seen["arguments"]))
            out.append(Message("tool", seen["output"], tool_call_id=seen["call_id"]))
        elif tool_for is not None and (tool := tool_for(kind)) is not None:
            call, output = tool.as_call(item), tool.as_output(item)
            if call is not None:
                assistant().tool_calls.append(call)
            if output is not None:
                out.append(Message("tool", output[1], tool_call_id=output[0]))
    return out


def truncate(conv: Conversation, served: Served, room: int) -> None:
    """``truncation: auto``: drop the oldest turns until the prompt leaves ``room`` tokens."""
    limit = served.context_length
    if limit is None:
        raise InvalidRequest(f"truncation 'auto' needs the context length of model {served.name!r}, which this "
                             "server does not know (set context_length in its config)", param="truncation",
                             code="unsupported_value")
    while served.prompt_tokens(conv) + room > limit:
        msgs = conv.messages
        first = next((i for i, m in enumerate(msgs) if m.role not in ("system", "developer")), None)
        if first is None:
            return
        end = next((j for j in range(first + 1, len(msgs)) if msgs[j].role == "user"), None)
        if end is None:
            return  # the last turn alone is too long: the model says so
        del msgs[first:end]


# -- a response, planned -------------------------------------------------------------------------
@dataclass
class Plan:
    """Everything one response needs: its turn, the object being filled, and where it goes."""

    req: CreateResponseRequest
    served: Served
    conv: Conversation
    state: ResponseStream
    input_items: list[dict[str, Any]]
    store: Store
    conversation_id: str | None = None
    conversation_ids: set[str] = field(default_factory=set)
    trace: TurnTrace = field(default_factory=TurnTrace)
    appended: bool = False
    builtins: list[Builtin] = field(default_factory=list)
    toolbox: Toolbox | None = None
    scope: str = ""  # the conversation, or the first response of the chain
    history: list[dict[str, Any]] = field(default_factory=list)  # the items of the context and the input

    @property
    def id(self) -> str:
        return str(self.state.response["id"])


def response_object(req: CreateResponseRequest, tools: list[dict[str, Any]], conversation_id: str | None) -> dict[str, Any]:
    """The Response object before generation: its id and the request's parameters, echoed."""
    text: dict[str, Any] = {"format": {"type": "text"}}
    if req.text is not None:
        if req.text.format is not None:
            text["format"] = req.text.format.model_dump(by_alias=True, exclude_none=True)
        if req.text.verbosity is not None:
            text["verbosity"] = req.text.verbosity
    choice = req.tool_choice
    obj: dict[str, Any] = {
        "id": new_id("resp_"), "object": "response", "created_at": int(time.time()), "status": "in_progress",
        "background": bool(req.background), "error": None, "incomplete_details": None,
        "instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
        "max_tool_calls": req.max_tool_calls, "model": req.model, "output": [],
        "parallel_tool_calls": req.parallel_tool_calls is not False,
        "previous_response_id": req.previous_response_id,
        "conversation": {"id": conversation_id} if conversation_id else None,
        "reasoning": {"effort": None, "summary": None,
                      **(req.reasoning.model_dump(exclude_none=True) if req.reasoning else {})},
        "service_tier": "default", "store": req.store is not False,
        "temperature": 1.0 if req.temperature is None else req.temperature,
        "text": text,
        "tool_choice": choice if isinstance(choice, str) else choice.model_dump() if choice else "auto",
        "tools": tools, "top_logprobs": 0, "top_p": 1.0 if req.top_p is None else req.top_p,
        "truncation": req.truncation or "disabled", "metadata": req.metadata or {},
        "safety_identifier": req.safety_identifier, "prompt_cache_key": req.prompt_cache_key,
        "prompt_cache_retention": req.prompt_cache_retention,
    }
    if req.user is not None:
        obj["user"] = req.user
    return obj


def _tool_lookup(toolbox: Toolbox | None) -> tuple[frozenset[str], Callable[[str], BuiltinTool | None]]:
    """The item types of the enabled built-in tools, and the tool of an item type."""
    by_item: dict[str, str] = {}
    if toolbox is not None:
        for kind in REGISTRY:
            if toolbox.available(kind):
                for item_type in toolbox.tool(kind).item_types:
                    by_item.setdefault(item_type, kind)

    def tool_for(item_type: str) -> BuiltinTool | None:
        kind = by_item.get(item_type)
        return toolbox.tool(kind) if toolbox is not None and kind is not None else None

    return frozenset(by_item), tool_for


async def plan_response(req: CreateResponseRequest, served: Served, store: Store,
                        toolbox: Toolbox | None = None) -> Plan:
    if req.previous_response_id and req.conversation:
        raise InvalidRequest("previous_response_id and conversation cannot be used together",
                             param="conversation", code="invalid_value")
    if req.background and req.store is False:
        raise InvalidRequest("background responses must be stored: background needs store true",
                             param="background", code="invalid_value")
    tools, tools_echo, builtins = tools_from_request(req, served, toolbox)
    choice = tool_choice_from_request(req, tools, builtins)
    context: list[dict[str, Any]] = []
    conversation_id = None
    scope = ""
    if req.previous_response_id:
        chain = await store.chain(req.previous_response_id)
        if not chain:
            raise NotFound(f"Previous response with id '{req.previous_response_id}' not found.",
                           param="previous_response_id")
        for previous in chain:
            context += previous.input_items + list(previous.response.get("output") or [])
        scope = chain[0].conversation_id or chain[0].id
    elif req.conversation:
        conversation_id = req.conversation if isinstance(req.conversation, str) else req.conversation.id
        if await store.get_conversation(conversation_id) is None:
            raise NotFound(f"Conversation with id '{conversation_id}' not found.", param="conversation")
        context = await store.all_items(conversation_id)
        scope = conversation_id
    raw = [MessageItem(role="user", content=req.input)] if isinstance(req.input, str) else req.input or []
    tool_items, tool_for = _tool_lookup(toolbox)
    items = stored_items(raw, "input", context, tool_items)
    check_call_ids(items, context, "input")
    outputs: dict[str, dict[str, Any]] = {}
    for item in context:
        if item.get("type") in tool_items and (seen := await store.get_record("tool_output", item["id"])):
            outputs[item["id"]] = seen
    messages = messages_from_items(context + items, tool_for, outputs)
    if not messages:
        raise InvalidRequest("input must hold at least one item", param="input", code="empty_array")
    # instructions are the current request's only: those of earlier responses are not carried over
    if req.instructions:
        messages.insert(0, Message("developer", req.instructions))
    sampling = Sampling(temperature=1.0 if req.temperature is None else req.temperature,
                        top_p=1.0 if req.top_p is None else req.top_p, max_tokens=req.max_output_tokens)
    conv = Conversation(messages, tools, choice, response_format(req), sampling)
    if req.truncation == "auto":
        truncate(conv, served, min(req.max_output_tokens or 1, (served.context_length or 0) // 2))
    obj = response_object(req, tools_echo, conversation_id)
    state = ResponseStream(obj, count_tokens=served.count_tokens)
    return Plan(req, served, conv, state, items, store, conversation_id, {str(x.get("id")) for x in context},
                builtins=builtins, toolbox=toolbox, scope=scope or str(obj["id"]), history=context + items)


# -- generation ----------------------------------------------------------------------------------
async def _aclose(events: AsyncIterator[Any]) -> None:
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()


def turn(plan: Plan) -> AsyncIterator[StreamEvent]:
    """The response's turns: the model's, and those of the built-in tools it calls (``ToolLoop``)."""
    settings = plan.toolbox.config if plan.toolbox is not None else ToolsConfig()
    include = frozenset(plan.req.include or [])

    def context(builtin: Builtin, emit: Callable[[str, dict[str, Any]], None]) -> ToolContext:
        assert plan.toolbox is not None
        return ToolContext(plan.id, builtin.param, plan.store, plan.toolbox, plan.scope, emit, include,
                           settings.tool_timeout, extra={"history": plan.history})

    limits = Limits(plan.req.max_tool_calls, settings.max_turns, settings.tool_timeout)
    loop = ToolLoop(plan.served, plan.conv, plan.builtins, plan.store, context, limits, plan.trace, plan.id)
    return loop.run()


async def save(plan: Plan) -> None:
    """Store the response as it stands; once it has ended, add its items to its conversation."""
    snapshot = plan.state.snapshot()
    if snapshot["store"]:
        await plan.store.put_response(StoredResponse(plan.id, snapshot, plan.input_items, plan.req.previous_response_id,
                                                     plan.conversation_id, snapshot["created_at"]))
    if plan.conversation_id and not plan.appended and plan.state.status in ("completed", "incomplete"):
        plan.appended = True
        new: dict[str, dict[str, Any]] = {}
        for item in plan.input_items + snapshot["output"]:
            if item["id"] not in plan.conversation_ids:
                new.setdefault(item["id"], item)
        await plan.store.add_items(plan.conversation_id, list(new.values()))


def _failure(exc: Exception) -> tuple[str, str]:
    if isinstance(exc, MidtierError):
        return exc.message, "invalid_prompt" if exc.status < 500 else "server_error"
    return "The server had an error while processing your request.", "server_error"


async def drive(plan: Plan, events: AsyncIterator[StreamEvent],
                first: StreamEvent | None = None) -> AsyncGenerator[list[dict[str, Any]]]:
    """Fold a turn's events into the plan's response, yielding the stream events of each.
    The response is stored before its terminal event is yielded; a failure on the way ends
    it as ``failed``."""
    state = plan.state
    try:
        batch = state.feed(first if first is not None else await anext(events))
        while True:
            if state.finished:
                try:
                    await save(plan)
                except Exception:
                    yield batch  # the response is whole; only storing it failed
                    raise
            yield batch
            if state.finished:
                return
            batch = state.feed(await anext(events))
    except Exception as exc:  # the stream has started: the response fails, the request does not
        if state.finished:
            raise
        log.exception("response %s failed", plan.id)
        batch = state.fail(*_failure(exc))
        await save(plan)
        yield batch
    finally:
        await _aclose(events)


@dataclass
class Run:
    """A response's stream events as they happen, for clients that follow or resume it."""

    events: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False
    task: asyncio.Task[None] | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def push(self, events: list[dict[str, Any]]) -> None:
        self.events += events
        self._wake()

    def close(self) -> None:
        self.done = True
        self._wake()

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def follow(self, after: int = -1) -> AsyncGenerator[dict[str, Any]]:
        """Every event with a sequence number above ``after``, then each one as it comes."""
        i = max(after + 1, 0)
        while True:
            changed = self._changed
            while i < len(self.events):
                yield self.events[i]
                i += 1
            if self.done:
                return
            await changed.wait()


class Runs:
    """The runs of this process by response id; finished ones are kept a while for resuming."""

    def __init__(self, keep: int = KEEP_RUNS) -> None:
        self.keep = keep
        self.runs: OrderedDict[str, Run] = OrderedDict()

    def add(self, response_id: str, run: Run) -> Run:
        self.runs[response_id] = run
        finished = [rid for rid, r in self.runs.items() if r.done]
        for rid in finished[: max(0, len(finished) - self.keep)]:
            del self.runs[rid]
        return run

    def get(self, response_id: str) -> Run | None:
        return self.runs.get(response_id)

    async def stop(self, response_id: str) -> None:
        run = self.runs.get(response_id)
        if run is not None and run.task is not None and not run.task.done():
            run.task.cancel()
            await asyncio.wait({run.task})
        if run is not None:
            run.close()  # a task cancelled before its first step never closed it

    async def stop_all(self) -> None:
        for rid in list(self.runs):
            await self.stop(rid)


async def run_background(plan: Plan, run: Run) -> None:
    state = plan.state
    try:
        run.push(state.in_progress())
        await save(plan)
        last = time.monotonic()
        async with contextlib.aclosing(drive(plan, turn(plan))) as batches:
            async for batch in batches:
                run.push(batch)
                boundary = any(e["type"].startswith("response.output_item.") for e in batch)
                if not state.finished and (boundary or time.monotonic() - last > PROGRESS_EVERY):
                    await save(plan)
                    last = time.monotonic()
    except asyncio.CancelledError:
        run.push(state.cancel())  # generation has stopped: its stream closed with the task
        await save(plan)
    except Exception as exc:
        log.exception("background response %s failed", plan.id)
        if not state.finished:
            run.push(state.fail(*_failure(exc)))
            with contextlib.suppress(Exception):
                await save(plan)
    finally:
        run.close()


# -- routes: responses ---------------------------------------------------------------------------
def _store(request: Request) -> Store:
    return store_of(request)


def _runs(request: Request) -> Runs:
    runs: Runs = request.app.state.runs
    return runs


def _sse(events: AsyncGenerator[dict[str, Any]] | Iterable[dict[str, Any]]) -> EventStreamResponse:
    async def encode() -> AsyncIterator[bytes]:
        if isinstance(events, AsyncGenerator):
            async with contextlib.aclosing(events):
                async for e in events:
                    yield sse_event(e["type"], e)
        else:
            for e in events:
                yield sse_event(e["type"], e)

    return EventStreamResponse(encode())


async def _streamed(plan: Plan, first: StreamEvent, events: AsyncIterator[StreamEvent],
                    run: Run) -> AsyncGenerator[dict[str, Any]]:
    try:
        head = plan.state.created() + plan.state.in_progress()
        run.push(head)
        for e in head:
            yield e
        async with contextlib.aclosing(drive(plan, events, first)) as batches:
            async for batch in batches:
                run.push(batch)
                for e in batch:
                    yield e
    except Exception as exc:  # not the response's failure (drive ends those): the store's, say
        log.exception("stream of response %s broke", plan.id)
        for e in plan.state.error(*_failure(exc)):
            yield e
    finally:
        run.close()
        await _aclose(events)


async def create_response(request: Request) -> Response | EventStreamResponse:
    req: CreateResponseRequest = parse_body(CreateResponseRequest, await read_json(request))
    served = request.app.state.models.get(req.model)
    plan = await plan_response(req, served, _store(request), toolbox_of(request))
    runs = _runs(request)
    if req.background:
        run = runs.add(plan.id, Run())
        run.push(plan.state.created("queued"))
        await save(plan)
        queued = plan.state.snapshot()
        run.task = asyncio.create_task(run_background(plan, run))
        return _sse(run.follow()) if req.stream else JSONResponse(queued)
    events = turn(plan)
    # an error before the first event (context length, a template error) is a plain HTTP error
    finished, first = await run_unless_disconnected(request.receive, anext(events))
    if not finished or first is None:
        await _aclose(events)
        return Response(status_code=499)
    if req.stream:
        run = runs.add(plan.id, Run()) if plan.state.response["store"] else Run()
        return _sse(_streamed(plan, first, events, run))

    async def fold() -> None:
        async with contextlib.aclosing(drive(plan, events, first)) as batches:
            async for _ in batches:
                pass

    finished, _ = await run_unless_disconnected(request.receive, fold())
    if not finished:
        return Response(status_code=499)
    if plan.state.status == "failed":
        raise EngineError(plan.state.response["error"]["message"])
    return JSONResponse(plan.state.snapshot())


async def _stored(request: Request) -> StoredResponse:
    response_id = request.path_params["response_id"]
    stored = await _store(request).get_response(response_id)
    if stored is None:
        raise NotFound(f"Response with id '{response_id}' not found.", param="response_id")
    return stored


def _int_query(request: Request, name: str, default: int) -> int:
    value = request.query_params.get(name)
    try:
        return default if value is None else int(value)
    except ValueError:
        raise InvalidRequest(f"{name} must be an integer", param=name, code="invalid_value") from None


async def get_response(request: Request) -> Response | EventStreamResponse:
    stored = await _stored(request)
    if request.query_params.get("stream", "").lower() not in ("true", "1"):
        return JSONResponse(stored.response)
    after = _int_query(request, "starting_after", -1)
    run = _runs(request).get(stored.id)
    if run is not None:
        return _sse(run.follow(after))
    return _sse(e for e in replay(stored.response) if e["sequence_number"] > after)


async def delete_response(request: Request) -> Response:
    stored = await _stored(request)
    await _runs(request).stop(stored.id)
    await _store(request).delete_response(stored.id)
    return JSONResponse({"id": stored.id, "object": "response.deleted", "deleted": True})


async def cancel_response(request: Request) -> Response:
    stored = await _stored(request)
    if not stored.response.get("background"):
        raise InvalidRequest("Only responses created with background set to true can be cancelled.",
                             param="response_id", code="invalid_value")
    await _runs(request).stop(stored.id)
    stored = await _stored(request)
    if stored.response.get("status") in ("queued", "in_progress"):
        # its run never started, or belongs to a process that is gone: it will not finish
        stored.response["status"] = "cancelled"
        await _store(request).put_response(stored)
    return JSONResponse(stored.response)


def _page(page: Page) -> dict[str, Any]:
    return {"object": "list", "data": page.data, "first_id": page.first_id, "last_id": page.last_id,
            "has_more": page.has_more}


def _order(request: Request) -> Any:
    order = request.query_params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest(f"order must be 'asc' or 'desc', got {order!r}", param="order", code="invalid_value")
    return order


async def list_input_items(request: Request) -> Response:
    page = await _store(request).list_input_items(
        request.path_params["response_id"], after=request.query_params.get("after"),
        limit=_int_query(request, "limit", 20), order=_order(request))
    return JSONResponse(_page(page))


# -- wiring --------------------------------------------------------------------------------------
def routes() -> list[Route]:
    from midtier.server import conversations

    return [
        Route("/v1/responses", create_response, methods=["POST"]),
        Route("/v1/responses/{response_id}", get_response, methods=["GET"]),
        Route("/v1/responses/{response_id}", delete_response, methods=["DELETE"]),
        Route("/v1/responses/{response_id}/cancel", cancel_response, methods=["POST"]),
        Route("/v1/responses/{response_id}/input_items", list_input_items, methods=["GET"]),
        *conversations.routes(),
    ]


def attach(app: Starlette, store: Store | None) -> None:
    app.state.store = store
    app.state.runs = Runs()


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """At shutdown, background runs stop (as cancelled) before the store closes."""
    yield
    await app.state.runs.stop_all()
    await app.state.toolbox.close()
    if app.state.store is not None:
        await app.state.store.close()
