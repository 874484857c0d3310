"""Kimi K2 tool calls: special-token sections with ids of the shape ``functions.NAME:IDX``.

    <|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>
    {"city": "Paris"}<|tool_call_end|><|tool_calls_section_end|>

(one line in practice). Used by Kimi K2 Instruct (both template revisions) and Kimi K2
Thinking, which writes ``<think>...</think>`` first and may end its reasoning by opening
the tool section without ``</think>``. The id names the function: the templates render a
past call's id as the model wrote it, so ``prepare`` gives every past call an id of that
shape (a running index across the conversation, as Moonshot's own ids have) and the
parser reports the model's own id.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import ClassVar

from midtier.core.messages import Message, ResponseFormat, ToolChoice, ToolSpec, new_id
from midtier.formats._json import open_json, skip_ws, unwrapped, value_end
from midtier.formats._reasoning import ReasoningFormat, thinking_after
from midtier.formats.base import (
    Markers,
    Parsed,
    ParsedCall,
    Run,
    answer_rule,
    find_first,
    held_prefix,
    json_args,
    json_schema_lark,
    lark,
    read_blocks,
    resumed,
    strict_schema,
    text_and_blocks,
    tools_start,
)

SECTION_BEGIN = "<|tool_calls_section_begin|>"
SECTION_END = "<|tool_calls_section_end|>"
CALL_BEGIN = "<|tool_call_begin|>"
ARG_BEGIN = "<|tool_call_argument_begin|>"
CALL_END = "<|tool_call_end|>"
# the model sometimes writes the singular section tokens; a bare call opens a section too
_OPENERS = (SECTION_BEGIN, "<|tool_call_section_begin|>", CALL_BEGIN)
_SECTION_ENDS = (SECTION_END, "<|tool_call_section_end|>")

_ID = re.compile(r"(?:functions\.)?([\w.\-]+?)(?::(\d+))?")


class KimiK2Format(ReasoningFormat):
    key = "kimi_k2"
    markers: ClassVar[tuple[str, ...]] = (SECTION_BEGIN, ARG_BEGIN)
    priority = 10
    steer_stray_json = False

    #: ends reasoning that has no closing tag
    think_ends = _OPENERS
    #: a resumed parse (see ``Settled``) comes after this many calls
    calls_before = 0

    # -- per request ----------------------------------------------------------------------------
    def for_prompt(self, prompt: str) -> KimiK2Format:
        return resumed(self, thinking=thinking_after(prompt, closing=False))

    def new_call_id(self) -> str:
        # only used when the model wrote no id; ``prepare`` renames it after the function
        return new_id("functions.call_") + ":0"

    # -- layer 2 --------------------------------------------------------------------------------
    def prepare(self, messages: list[Message], tools: list[ToolSpec]) -> tuple[list[Message], list[ToolSpec]]:
        """Give past calls ids ``functions.NAME:IDX``, unique in the conversation, and point
        tool results at them (kimi-k2.jinja renders ``tool_call_id``; the later templates
        render the call's id and pair results with calls in order)."""
        used: set[str] = set()
        counter = 0
        renamed: dict[str, str] = {}
        out: list[Message] = []
        for msg in messages:
            if msg.role == "assistant" and msg.tool_calls:
                calls = []
                for call in msg.tool_calls:
                    m = _ID.fullmatch(call.id)
                    if m and call.id.startswith("functions.") and m.group(1) == call.name and m.group(2) \
                            and call.id not in used:
                        new = call.id
                        counter = max(counter, int(m.group(2)) + 1)
                    else:
                        while f"functions.{call.name}:{counter}" in used:
                            counter += 1
                        new = f"functions.{call.name}:{counter}"
                        counter += 1
                    used.add(new)
                    renamed[call.id] = new
                    calls.append(replace(call, id=new))
                out.append(replace(msg, tool_calls=calls))
            elif msg.role == "tool" and msg.tool_call_id in renamed:
                out.append(replace(msg, tool_call_id=renamed[msg.tool_call_id]))
            else:
                out.append(msg)
        return out, tools

    # -- layer 3 --------------------------------------------------------------------------------
    def grammar(self, tools: list[ToolSpec], choice: ToolChoice, response_format: ResponseFormat,
                markers: Markers, *, ban_stray_json: bool = False) -> str | None:
        lit = markers.lit
        callable_tools = choice.callable_tools(tools)
        head, lines = self.think_grammar(markers, *_OPENERS, ban_stray_json=ban_stray_json)
        answer = answer_rule(response_format, "TEXT")
        if not callable_tools:
            return lark(f"start: {head}{answer}", *lines)
        alts = []
        for i, tool in enumerate(callable_tools):
            params = strict_schema(tool.parameters) or {"type": "object"}
            prefix = json.dumps(f"functions.{tool.name}:")
            lines.append(f"call_{i}: {lit(CALL_BEGIN)} {prefix} IDX {lit(ARG_BEGIN)} args_{i} {lit(CALL_END)}")
            lines.append(f"args_{i}: {json_schema_lark(params)}")
            alts.append(f"call_{i}")
        lines.append("IDX: /[0-9]+/")
        lines.append(f"call: {' | '.join(alts)}")
        many = "call+" if choice.parallel else "call"
        lines.append(f"calls: {many} {lit(SECTION_END)}")
        start, pre = tools_start(markers, choice, answer, SECTION_BEGIN, "calls",
                                 self.reply(markers, ban_stray_json=ban_stray_json), head)
        return lark(start, *lines, *pre)

    # -- layer 4 --------------------------------------------------------------------------------
    def parse_rest(self, text: str, pos: int, partial: bool) -> Parsed:
        out = Parsed()
        content: list[str] = []

        def block(i: int, opener: str) -> int | None:
            if opener == CALL_BEGIN:  # a call without its section
                end, run = _read_call(text, i, partial, out.calls, self.calls_before)
            else:
                end, run = _read_section(text, i + len(opener), partial, out.calls, self.calls_before)
            out.run = run if partial and end is None else None
            return end

        cut = read_blocks(text, pos, partial, _OPENERS, block, content, out.calls)
        return text_and_blocks(self, out, content, cut, partial, calls_before=self.calls_before + cut[2])


def _read_section(text: str, pos: int, partial: bool, calls: list[ParsedCall],
                  before: int = 0) -> tuple[int | None, Run | None]:
    """Read the calls of a section whose body starts at ``pos``; where text resumes after
    its end (None: the section runs to the end of ``text``, or is still undecided), and
    then the run (see ``Run``) a partial parse ends in, if it does."""
    while True:
        pos = skip_ws(text, pos)
        if text.startswith(CALL_BEGIN, pos):
            nxt, run = _read_call(text, pos, partial, calls, before)
            if nxt is None:
                return None, run
            pos = nxt
            continue
        for end in _SECTION_ENDS:
            if text.startswith(end, pos):
                return pos + len(end), None
        # anything else inside a section is noise: skip to the next call or the end
        j, _ = find_first(text, (CALL_BEGIN, *_SECTION_ENDS), pos + 1)
        if j < 0:
            return None, None
        pos = j


_SILENT = Run("silent", (CALL_END,))  # nothing changes until the call's end


def _read_call(text: str, pos: int, partial: bool, calls: list[ParsedCall],
               before: int = 0) -> tuple[int | None, Run | None]:
    """Read the call whose ``<|tool_call_begin|>`` is at ``pos`` into ``calls``; where text
    resumes after it (None: the call runs to the end of ``text``), and then the run (see
    ``Run``) a partial parse ends in, if it does. ``before``: how many calls came before
    ``calls`` (a resumed parse)."""
    id_start = pos + len(CALL_BEGIN)
    a = text.find(ARG_BEGIN, id_start)
    e = text.find(CALL_END, id_start)
    nxt = text.find(CALL_BEGIN, id_start)
    if nxt >= 0 and (a < 0 or nxt < a) and (e < 0 or nxt < e):
        return nxt, None  # a call without arguments or end, and another call after it
    if a < 0 or (0 <= e < a):
        # no arguments: the name is not known yet, or this is not a call
        return (None, Run("silent", (ARG_BEGIN, CALL_END, CALL_BEGIN))) if e < 0 else (e + len(CALL_END), None)
    raw_id = text[id_start:a].strip()
    m = _ID.fullmatch(raw_id)
    body_start = a + len(ARG_BEGIN)
    closed = e >= 0
    body = text[body_start:e if closed else len(text)]
    resume = e + len(CALL_END) if closed else None
    if m is None:
        return resume, _SILENT
    if not closed and partial:
        body = body[: len(body) - held_prefix(body, CALL_END)]
    arguments, run = _arguments(body, closed)
    if arguments is None:
        return resume, run
    name = m.group(1)
    call_id = f"functions.{name}:{m.group(2)}" if m.group(2) is not None else f"functions.{name}:{before + len(calls)}"
    calls.append(ParsedCall(name=name, arguments=arguments, done=closed or not partial, id=call_id))
    return resume, run


def _arguments(body: str, closed: bool) -> tuple[str | None, Run | None]:
    """The JSON text of a call's arguments so far; None when this is not (yet) a call. Then
    the run (see ``Run``) an open call's arguments are in, if they are."""
    s = skip_ws(body, 0)
    if s >= len(body):
        # not a call until its arguments start (they may be garbage)
        return ("{}", None) if closed else (None, Run("silent", (CALL_END,), stops="{"))
    if body[s] == "{":
        end, _ = value_end(body, s)
        if end is not None:
            return body[s:end], _SILENT
        return body[s:], None if closed else json_args(open_json(body, s), (CALL_END,))
    # arguments written as a JSON string that holds the object
    return (unwrapped(body), None) if closed else (None, _SILENT)
