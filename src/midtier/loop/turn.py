"""One model turn: render the conversation (layer 2), constrain (layer 3), generate, parse (layer 4).

Both APIs call ``ServedModel.stream``; its events are the only output of a turn, so a
non-streamed response is the fold of the same events a streamed one sends.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field, replace
from typing import Any

from midtier.constrain import Constrainer
from midtier.core.errors import ContextLengthExceeded, InvalidRequest
from midtier.core.events import (
    Finish,
    FinishReason,
    StreamEvent,
    ToolCallArgsDelta,
    ToolCallDone,
    ToolCallStart,
)
from midtier.core.messages import Conversation, Message, ToolChoice, ToolSpec, Usage
from midtier.engines.base import Engine, GenerateOptions
from midtier.formats.base import STRAY_JSON_START, Format, StreamParser
from midtier.loop.fanout import FanOut, fan_out_tools
from midtier.loop.stops import StopFilter
from midtier.templates import ChatTemplate

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 4096  # no runaway generation: the cap when a request names none
PROBE_TOKENS = 64  # how far auto mode may read a stray JSON call before deciding
_STRAY = re.compile(STRAY_JSON_START)


@dataclass
class Rendered:
    text: str
    ids: list[int]


@dataclass
class TurnPlan:
    """What a turn generates from, decided before it generates (``ServedModel.plan``)."""

    conv: Conversation  # as rendered: tools fanned out for parallel calls
    rendered: Rendered
    fmt: Format  # the format configured for this request
    grammar: str | None  # the constraint of the first generation
    fan: dict[str, str] = field(default_factory=dict)


@dataclass
class TurnTrace:
    """Every layer of one turn, for introspection."""

    prompt: str = ""
    prompt_tokens: int = 0
    grammar: str | None = None
    raw_output: str = ""
    steered: str | None = None  # "call" or "text" when auto mode redirected a stray JSON start
    cached_tokens: int = 0  # of the prompt, as the engine's chunks report it (a turn cut early knows it too)
    extra: dict[str, Any] = field(default_factory=dict)


class ServedModel:
    """A model as served: its engine, chat template, format and constraint compiler."""

    format_reason: str = ""

    def __init__(self, name: str, engine: Engine, fmt: Format, template: ChatTemplate,
                 constrainer: Constrainer | None = None, default_max_tokens: int = DEFAULT_MAX_TOKENS) -> None:
        self.name = name
        self.engine = engine
        self.format = fmt
        self.template = template
        self.constrainer = constrainer or Constrainer(engine.tokenizer_spec())
        self.default_max_tokens = default_max_tokens
        self._template_has_developer = "developer" in template.source

    # -- what every served model offers (loop.served.Served) ----------------------------------
    @property
    def context_length(self) -> int:
        return self.engine.context_length

    @property
    def builtin_namespaces(self) -> frozenset[str]:
        return self.format.builtin_namespaces

    def count_tokens(self, text: str) -> int:
        return len(self.engine.tokenize(text, special=True))

    def prompt_tokens(self, conv: Conversation) -> int:
        return len(self.render(conv).ids)

    def validate_custom(self, tool: ToolSpec, param: str | None = None) -> None:
        self.constrainer.validate_custom(tool, param=param)

    # -- layer 2 ------------------------------------------------------------------------------
    def render(self, conv: Conversation) -> Rendered:
        messages, tools = self.format.prepare(list(conv.messages), list(conv.tools))
        if not self._template_has_developer:
            messages = [Message(**{**m.__dict__, "role": "system"}) if m.role == "developer" else m
                        for m in messages]
        kwargs = {**self.format.template_kwargs(conv.tools), **conv.template_kwargs}
        text = self.template.render_conversation(messages, tools, add_generation_prompt=True, **kwargs)
        ids = self.engine.tokenize(text, special=True)
        return Rendered(text, ids)

    def grammar(self, conv: Conversation, choice: ToolChoice | None = None, *, fmt: Format | None = None,
                ban_stray_json: bool = False) -> str | None:
        return (fmt or self.format).grammar(conv.tools, choice or conv.tool_choice, conv.response_format,
                                            self.constrainer.markers, ban_stray_json=ban_stray_json)

    def max_tokens(self, conv: Conversation, prompt_tokens: int) -> int:
        room = self.engine.context_length - prompt_tokens
        if room <= 0:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {self.engine.context_length} tokens, but the "
                f"messages take {prompt_tokens} tokens.", param="messages")
        asked = conv.sampling.max_tokens
        if asked is not None and asked < 1:
            raise InvalidRequest("max_tokens must be at least 1", param="max_tokens", code="invalid_value")
        return min(asked or self.default_max_tokens, room)

    def plan(self, conv: Conversation, trace: TurnTrace | None = None) -> TurnPlan:
        """Layers 2 and 3 of a turn without generating: the prompt, the format, the grammar.
        ``trace`` gets the prompt as soon as it is rendered."""
        fan: dict[str, str] = {}
        shown = conv
        if self.format.list_fanout and conv.tools:
            # the tools are shown the same whatever this turn's tool_choice and parallel setting,
            # so that the prompt of the next turn extends this one's (prefix reuse); only the
            # grammar (the fanned tools or the client's own) says whether a list may be written
            tools, fanned = fan_out_tools(conv.tools)
            shown = replace(conv, tools=tools)
            if conv.tool_choice.parallel and conv.tool_choice.mode != "none":
                conv, fan = shown, fanned
        rendered = self.render(shown)
        if trace is not None:
            trace.prompt, trace.prompt_tokens = rendered.text, len(rendered.ids)
        fmt = self.format.for_request(rendered.text, conv.tools)
        if any(t.kind == "custom" for t in conv.tools) and not fmt.supports_custom_tools:
            raise InvalidRequest(f"custom tools are not supported by this model's tool-call format {fmt.key!r}",
                                 param="tools", code="unsupported_tool_type")
        choice = conv.tool_choice
        grammar = self.grammar(conv, fmt=fmt, ban_stray_json=choice.mode == "none" and bool(conv.tools)
                               and conv.response_format.type == "text")
        return TurnPlan(conv, rendered, fmt, grammar, fan)

    def draft(self, conv: Conversation) -> Conversation | None:
        """The conversation a turn first drafts a call with (``stream``), or None if it does not.

        A model never trained on tools rarely starts a call of its own: in auto mode, a turn
        drafts one, and keeps it if the conversation grounds it (see _grounded)."""
        choice = conv.tool_choice
        names = [t.name for t in choice.callable_tools(conv.tools)]
        if (choice.mode == "auto" and names and conv.response_format.type == "text"
                and not self.format.native_tools):
            return replace(conv, tool_choice=ToolChoice("required", tuple(names), choice.parallel))
        return None

    # -- a whole turn -------------------------------------------------------------------------
    async def stream(self, conv: Conversation, trace: TurnTrace | None = None) -> AsyncGenerator[StreamEvent, None]:
        trace = trace if trace is not None else TurnTrace()
        forced = self.draft(conv)
        if forced is not None:
            # keep the drafted call if the conversation grounds it; else the model has its turn
            draft = [event async for event in self._turn(forced, trace)]
            if _grounded(conv, _calls_of(draft)):
                trace.steered = "call"
                for event in draft:
                    yield event
                return
            trace.raw_output = ""
        async for event in self._turn(conv, trace):
            yield event

    async def _turn(self, conv: Conversation, trace: TurnTrace) -> AsyncGenerator[StreamEvent, None]:
        plan = self.plan(conv, trace)
        conv, rendered, fmt, grammar, fan = plan.conv, plan.rendered, plan.fmt, plan.grammar, plan.fan
        max_tokens = self.max_tokens(conv, len(rendered.ids))
        choice = conv.tool_choice
        names = [t.name for t in choice.callable_tools(conv.tools)]
        plain_text = conv.response_format.type == "text"
        # what auto mode watches the start of the output for: "any" stray call (JSON or XML-ish),
        # "xml" once a stray JSON start was turned into text (the text may still open with a tag
        # and write the call as XML), None once steered to a call or when nothing is watched
        steering: str | None = "any" if choice.mode == "auto" and names and plain_text and fmt.steer_stray_json else None
        parser = StreamParser(fmt)
        stops = StopFilter(conv.sampling.stop)
        repeats = RepeatGuard()
        fanout = FanOut(fan, fmt.new_call_id)
        while True:
            trace.grammar = grammar
            constraint = self.constrainer.start(grammar, conv.tools) if grammar is not None else None
            options = GenerateOptions(conv.sampling, max_tokens, constraint, grammar=grammar)
            probe = "" if steering else None
            restart: str | None = None
            generated = 0
            trace.cached_tokens = 0
            gen = self.engine.generate(rendered.ids, options)
            try:
                async for chunk in gen:
                    generated += len(chunk.token_ids)
                    trace.cached_tokens = chunk.cached_tokens or trace.cached_tokens
                    if probe is not None:
                        probe += chunk.text
                        decided = fmt.call_intent(probe, names) if steering == "any" else False
                        more = chunk.finish is None and generated < PROBE_TOKENS
                        xml = _xml_intent(_answer(fmt, probe), names) if not decided else False
                        if xml:
                            restart = "call"  # a call written as XML-ish text: make it a real one
                            break
                        if (decided is None or xml is None) and more:
                            continue
                        if decided:
                            # read the whole call: one already made and answered is a loop, not an intent
                            whole = fmt.stray_call(probe)
                            if whole is None and more:
                                continue
                            restart = "text" if whole is not None and _answered(conv, *whole) else "call"
                        elif steering == "any" and _STRAY.match(probe):
                            restart = "text"
                        if restart:
                            break
                        text, probe = probe, None
                    else:
                        text = chunk.text
                    trace.raw_output += text
                    for event in repeats.filter(fanout.filter(parser.feed(stops.push(text)))):
                        yield event
                    if stops.stopped or repeats.looping:
                        break
                    if chunk.finish is not None:
                        finish_reason: FinishReason = chunk.finish
                        usage = Usage(chunk.prompt_tokens, chunk.completion_tokens, chunk.cached_tokens)
                        break
                else:  # pragma: no cover - engines always end with a finish chunk
                    raise RuntimeError("engine ended without a finish chunk")
            finally:
                await gen.aclose()
            if restart is not None:
                trace.steered = restart
                steering = "xml" if restart == "text" else None
                if restart == "call":
                    grammar = self.grammar(conv, ToolChoice("required", tuple(names), choice.parallel), fmt=fmt)
                else:
                    grammar = self.grammar(conv, fmt=fmt, ban_stray_json=True)
                continue
            break
        if not repeats.looping:
            for event in repeats.filter(fanout.filter(parser.feed(stops.flush()))):
                yield event
            for event in repeats.filter(fanout.filter(parser.finish())):
                yield event
        if stops.stopped or repeats.looping:
            finish_reason, usage = "stop", Usage(len(rendered.ids), generated, trace.cached_tokens)
        if finish_reason != "length" and repeats.calls:
            finish_reason = "tool_calls"
        yield Finish(finish_reason, usage)


# Output that starts with a tag (after a fence, maybe): a 0.5B model writes calls as XML of
# every shape (<tools function="x">, <function=x>, <response><function name="x">, <x>...</x>).
# It is a call when the probe sees it name a tool that may be called; else it stays text.
_XML_START = re.compile(r"[ \t\r\n]*(```[ \t]*[A-Za-z]*[ \t\r\n]*)?<[A-Za-z]")
_XML_PREFIX = re.compile(r"[ \t\r\n]*(``?|```[ \t]*[A-Za-z]*[ \t\r\n]*)?<?")
_XML_NAME = re.compile(r"""(?:function|name|tool)["']?[ \t]*[=:>][ \t\r\n]*["']?([\w.-]+)|<function=([\w.-]+)"""
                       r"""|<name>[ \t\r\n]*([\w.-]+)|<([\w.-]+)[ \t\r\n/>]""")


def _answer(fmt: Format, probe: str) -> str | None:
    """The answer text of ``probe`` as the format parses it; None when it holds the format's
    own syntax (a real call, reasoning), which is never a call written as text."""
    parsed = fmt.parse(probe, partial=True)
    return None if parsed.calls or parsed.reasoning else parsed.content


def _xml_intent(probe: str | None, names: list[str]) -> bool | None:
    """Whether output that starts with a tag names a tool that may be called (a call written as
    XML-ish text: steer it onto the real syntax): None while it starts so but names none yet;
    False when it does not start so."""
    if probe is None:
        return False
    if not _XML_START.match(probe):
        return None if _XML_PREFIX.fullmatch(probe) else False
    for m in _XML_NAME.finditer(probe):
        name = next(g for g in m.groups() if g)
        if name in names or (m.group(4) and _names_tool(name, names)):
            return True
    return None


def _names_tool(tag: str, names: list[str]) -> bool:
    """Whether a tag names one tool by its object (``<calendar_event>`` for create_calendar_event):
    a name's words after its verb, or before its last word, and no other tool's."""
    if len(tag) < 5 or "_" not in tag:
        return False
    return sum(n.endswith("_" + tag) or n.startswith(tag + "_") for n in names) == 1


def _calls_of(events: list[StreamEvent]) -> list[tuple[str, str]]:
    names = {e.index: e.name for e in events if isinstance(e, ToolCallStart)}
    return [(names[e.index], e.arguments) for e in events if isinstance(e, ToolCallDone)]


def _grounded(conv: Conversation, calls: list[tuple[str, str]]) -> bool:
    """Whether every drafted call takes a required string argument from what the user wrote.

    For models that were never trained on tools (a format with ``native_tools`` False),
    auto mode drafts a call and asks this: a call the user's words fill in (the city they
    named, the address they gave) is one they asked for; a call filled with invented values
    is not, and the model answers in text instead.
    """
    if not calls:
        return False
    said = " ".join(m.content or "" for m in conv.messages if m.role == "user").casefold()
    tools = {t.name: t for t in conv.tools}
    for name, arguments in calls:
        tool = tools.get(name)
        try:
            args = json.loads(arguments)
        except ValueError:
            return False
        if tool is None or not isinstance(args, dict):
            return False
        required = tool.parameters.get("required", []) if tool.kind == "function" else []
        values = [v for k, v in args.items() if k in required and isinstance(v, str) and len(v.strip()) >= 2]
        if not any(v.strip().casefold() in said for v in values):
            return False
    return True


class RepeatGuard:
    """Stops a turn whose model starts repeating a call it already made in the same turn.

    Small models, once in a call block, may write the same call again and again. The first
    call streams as it comes; a later one is held until it is whole, and if it is the same
    call (name and arguments) as an earlier one, it is dropped and the turn ends there.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []  # (name, canonical arguments) of calls passed on
        self.held: list[StreamEvent] = []
        self.names: dict[int, str] = {}
        self.args: dict[int, str] = {}
        self.looping = False

    def filter(self, events: list[StreamEvent]) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        for event in events:
            if self.looping:
                break
            index = getattr(event, "index", None)
            if index is None or index == 0:
                out.append(event)
                if isinstance(event, ToolCallDone):
                    self.calls.append((self.names.get(0, ""), _canonical_text(event.arguments)))
                elif isinstance(event, ToolCallStart):
                    self.names[0] = event.name
                continue
            if isinstance(event, ToolCallStart):
                self.names[index] = event.name
                self.args[index] = ""
            elif isinstance(event, ToolCallArgsDelta):
                self.args[index] += event.delta
            self.held.append(event)
            # a repeat shows as soon as its arguments are whole, before the block closes
            key = (self.names[index], _canonical_text(self.args[index]))
            if key in self.calls and _is_json(self.args[index]):
                self.looping = True
                log.info("the model repeated call %s(%s): ending the turn", *key)
                self.held = []
                break
            if isinstance(event, ToolCallDone):
                self.calls.append(key)
                out += self.held
                self.held = []
        return out


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _canonical_text(arguments: str) -> str:
    try:
        return _canonical(json.loads(arguments))
    except ValueError:
        return arguments


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _answered(conv: Conversation, name: str, arguments: Any) -> bool:
    """Whether the conversation already holds this exact call and its result."""
    answered = {m.tool_call_id for m in conv.messages if m.role == "tool"}
    want = _canonical(arguments)
    for m in conv.messages:
        for call in m.tool_calls:
            if call.id in answered and call.name == name and _canonical(call.arguments_object()) == want:
                return True
    return False
