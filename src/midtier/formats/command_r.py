"""Cohere Command R7B and Command R+ tool calls: a JSON list of ``tool_name``/``parameters``.

Command R7B plans, then acts or answers, each between special tokens:

    <|START_THINKING|>I will look up the weather.<|END_THINKING|><|START_ACTION|>[
        {"tool_call_id": "0", "tool_name": "get_weather", "parameters": {"city": "Paris"}}
    ]<|END_ACTION|>
    <|START_RESPONSE|>It is sunny.<|END_RESPONSE|>

The plan is reasoning; the response tags are dropped from the content; the
``tool_call_id`` is the template's own counter, not an id for the API. Command R+'s
tool-use template asks for ``Action:`` and a fenced JSON list, and for a call to the
pseudo-tool ``directly-answer`` when no tool is needed: such a call is not reported.

``prepare`` works around two template quirks: a missing content prints as ``None``, and
Command R+ fails on parameters without a description.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import replace
from typing import Any, ClassVar

from midtier.core.messages import Message, ResponseFormat, ToolChoice, ToolSpec
from midtier.formats._json import skip_ws
from midtier.formats._reasoning import ReasoningFormat
from midtier.formats.base import (
    Markers,
    Parsed,
    ParsedCall,
    Run,
    answer_rule,
    empty_content,
    free_text,
    held_any,
    json_schema_lark,
    lark,
    settled_text,
    strict_schema,
    strip_after,
    text_run,
)
from midtier.formats.granite import read_call_list

THINK_S, THINK_E = "<|START_THINKING|>", "<|END_THINKING|>"
ACTION_S, ACTION_E = "<|START_ACTION|>", "<|END_ACTION|>"
RESPONSE_S, RESPONSE_E = "<|START_RESPONSE|>", "<|END_RESPONSE|>"
ACTION = "Action:"  # Command R+
FENCE = "```"
DIRECTLY_ANSWER = "directly-answer"

_ACTION_HERE = re.compile(r"[ \t]*Action:")
_ACTION_LINE = re.compile(r"(?<=\n)[ \t]*Action:")


class CommandRFormat(ReasoningFormat):
    key = "command_r"
    markers: ClassVar[tuple[str, ...]] = ("<|START_OF_TURN_TOKEN|>", "<|CHATBOT_TOKEN|>")
    priority = 10
    steer_stray_json = False
    #: the plan is the reasoning; an action or a response ends it too
    think_tags = (THINK_S, THINK_E)
    think_ends = (ACTION_S, RESPONSE_S)
    #: where a resumed parse (see ``Settled``) starts: after this many calls, inside a line
    #: (``Action:`` cannot start it)
    calls_before = 0
    mid_line = False

    # -- layer 2 --------------------------------------------------------------------------------
    def prepare(self, messages: list[Message], tools: list[ToolSpec]) -> tuple[list[Message], list[ToolSpec]]:
        return empty_content(messages), [_described(t) for t in tools]

    # -- layer 3 --------------------------------------------------------------------------------
    def grammar(self, tools: list[ToolSpec], choice: ToolChoice, response_format: ResponseFormat,
                markers: Markers, *, ban_stray_json: bool = False) -> str | None:
        lit = markers.lit
        callable_tools = choice.callable_tools(tools)
        head, lines = self.think_grammar(markers, ACTION_S, ACTION, RESPONSE_S, ban_stray_json=ban_stray_json)
        answer = answer_rule(response_format, "TEXT")
        if answer == "TEXT":
            lines += [markers.text_then("response", "RESPONSE_TEXT", RESPONSE_E),
                      f"RESPONSE_TEXT: {free_text(markers, ACTION_S)}",
                      f"answer: TEXT | {lit(RESPONSE_S)} response"]
        else:
            lines.append(f"answer: {answer} | {lit(RESPONSE_S)} {answer} {lit(RESPONSE_E)}")
        if not callable_tools:
            return lark(f"start: {head}answer", *lines)
        items = [_item_schema(t) for t in callable_tools]
        schema: dict[str, Any] = {"type": "array", "items": {"anyOf": items}, "minItems": 1,
                                  "x-guidance": {"whitespace_flexible": True}}
        if not choice.parallel:
            schema["maxItems"] = 1
        lines += [f"list: {json_schema_lark(schema)}", "WS: /[ \\t\\r\\n]*/",
                  f"action_r7b: {lit(ACTION_S)} list {lit(ACTION_E)}",
                  f'action_rplus: WS {json.dumps(FENCE + "json")} WS list WS {json.dumps(FENCE)} WS']
        if choice.mode == "required":
            return lark(f"start: {head}(action_r7b | WS {json.dumps(ACTION)} action_rplus)", *lines)
        pre = self.reply(markers, ACTION_S, RESPONSE_S, ban_stray_json=ban_stray_json)
        return lark(f"start: {head}(answer | action_r7b | pre action_rplus)", *lines,
                    markers.text_then("pre", "PRE_TEXT", ACTION), f"PRE_TEXT: {pre}")

    # -- layer 4 --------------------------------------------------------------------------------
    def parse_rest(self, text: str, pos: int, partial: bool) -> Parsed:
        out = Parsed()
        content: list[str] = []
        calls: list[ParsedCall] = []
        # where a resumed parse may start (see Settled): offset, content pieces and calls
        # before it, whether it is inside a line; the start of the rest always qualifies
        settled = (pos, 0, 0, self.mid_line and pos == 0)
        runs: list[Run] = []  # the run the text ends in, inside a list of calls
        while True:
            i, r7b = _next_action(text, pos, here=not (self.mid_line and pos == 0))
            if i < 0:
                tail = text[pos:]
                if partial:
                    tail = tail[: len(tail) - _held(tail, line_start=not (self.mid_line and pos == 0))]
                content.append(tail)
                c = pos + len(tail)
                if c > pos and _clean_end(content):
                    settled = (c, len(content), len(calls), text[c - 1] != "\n")
                break
            content.append(text[pos:i])
            if _clean_end(content):
                settled = (i, len(content), len(calls), False)  # all before this action is final
            if r7b:
                end = read_call_list(text, i + len(ACTION_S), partial, calls, "tool_name", ("parameters",), runs=runs)
                if end is not None:
                    end = _skip(text, end, ACTION_E, partial)
            else:
                start = i + text[i:].index(ACTION) + len(ACTION)
                end = _read_fenced(text, start, partial, calls, runs)
                if end == -1:  # "Action:" that is not followed by a list: it is text
                    content.append(text[i:start])
                    pos = start
                    continue
            if end is None:
                if not partial and not calls and not self.calls_before:
                    content.append(text[i:])  # not a list of calls after all: what was written stays
                break
            pos = end
        out.calls = [c for c in calls if c.name != DIRECTLY_ANSWER]
        out.content = strip_after(_without_response_tags("".join(content)), self.text_before)
        if partial:
            offset, pieces, n, mid_line = settled
            piece = _without_response_tags("".join(content[:pieces]))
            shown = sum(c.name != DIRECTLY_ANSWER for c in calls[:n])
            out.settled = settled_text(self, offset, piece, shown, mid_line=mid_line,
                                       calls_before=self.calls_before + n)
            if offset == len(text) and mid_line:  # in text, inside a line that is no action
                out.run = text_run(out.settled, (ACTION_S, RESPONSE_S, RESPONSE_E), stops="\n")
            elif runs:  # inside an object of a list of calls
                run = runs[-1]
                if run.kind == "args" and calls[-1].name == DIRECTLY_ANSWER:
                    run = replace(run, kind="silent")  # what "directly_answer" writes is never shown
                out.run = run
        return out


def _without_response_tags(text: str) -> str:
    """``text`` without the response tags, removed in one pass: the text around a tag never
    joins into another one (``<|END_`` + a tag + ``RESPONSE|>`` stays), so what is shown only
    grows."""
    return _RESPONSE_TAGS.sub("", text)


_RESPONSE_TAGS = re.compile(f"{re.escape(RESPONSE_S)}|{re.escape(RESPONSE_E)}")


def _clean_end(content: list[str]) -> bool:
    """Whether content may be cut where ``content`` (the parse's pieces so far) ends: the
    response tags are dropped from the content joined whole (one pass: matches never
    overlap), so no cut may fall inside one, and none does unless the content ends with
    the start of one. (The content settled before the parse ends with none, having been
    cut here, so a start of a tag lies in the parse's own pieces.)"""
    end = ""
    for piece in reversed(content):
        end = piece + end
        if len(end) >= _LONGEST_TAG:
            break
    return not held_any(end, _TAGS)


_TAGS = (RESPONSE_S, RESPONSE_E)
_LONGEST_TAG = max(map(len, _TAGS))


def _next_action(text: str, pos: int, here: bool = True) -> tuple[int, bool]:
    """Where the next action starts from ``pos`` (-1: none) and whether it is R7B's.
    ``here``: whether ``Action:`` may start at ``pos`` itself (not only after a newline)."""
    i = text.find(ACTION_S, pos)
    # only an "Action:" line before the next <|START_ACTION|> matters: search no further
    m = (_ACTION_HERE.match(text, pos) if here else None) or _ACTION_LINE.search(text, pos, i if i >= 0 else len(text))
    if m is not None and (i < 0 or m.start() < i):
        return m.start(), False
    return i, i >= 0


def _held(tail: str, line_start: bool = True) -> int:
    """How much of ``tail`` may still become a marker: a special token, or ``Action:`` at the
    start of a line (``tail`` starts one, if ``line_start``)."""
    held = held_any(tail, (ACTION_S, RESPONSE_S, RESPONSE_E))
    nl = tail.rfind("\n")
    line = tail[nl + 1:] if nl >= 0 or line_start else ""
    if line and ACTION.startswith(line.lstrip(" \t")):
        held = max(held, len(line))
    return held


def _skip(text: str, pos: int, marker: str, partial: bool) -> int | None:
    """Past ``marker`` (after whitespace) if it follows ``pos``; None while it may be arriving."""
    j = skip_ws(text, pos)
    if text.startswith(marker, j):
        return j + len(marker)
    if partial and marker.startswith(text[j:]):
        return None
    return pos


def _read_fenced(text: str, pos: int, partial: bool, calls: list[ParsedCall], runs: list[Run]) -> int | None:
    """Read the list after ``Action:`` (in a ```json fence or bare): one past it, None while
    undecided or incomplete, -1 when no list follows."""
    j = skip_ws(text, pos)
    fenced = text.startswith(FENCE, j)
    if fenced:
        line_end = text.find("\n", j)
        if line_end < 0:
            return None if partial else -1
        if text[j + len(FENCE):line_end].strip() not in ("", "json"):
            return -1
        j = line_end + 1
    j = skip_ws(text, j)
    if j >= len(text) or (not fenced and partial and FENCE.startswith(text[j:])):
        return None if partial else -1
    if text[j] not in "[{":
        return -1
    end = read_call_list(text, j, partial, calls, "tool_name", ("parameters",), runs=runs)
    if end is None or not fenced:
        return end
    return _skip(text, end, FENCE, partial)


def _item_schema(tool: ToolSpec) -> dict[str, Any]:
    return {"type": "object",
            "properties": {"tool_call_id": {"type": "string"}, "tool_name": {"const": tool.name},
                           "parameters": strict_schema(tool.parameters) or {"type": "object"}},
            "required": ["tool_name", "parameters"], "additionalProperties": False}


def _described(tool: ToolSpec) -> ToolSpec:
    """The tool with a description (empty) on every parameter, and a ``required`` list."""
    params = tool.parameters or {}
    props = params.get("properties") or {}
    if all(isinstance(p, dict) and "description" in p for p in props.values()) and "required" in params:
        return tool
    params = copy.deepcopy(params)
    for p in (params.get("properties") or {}).values():
        if isinstance(p, dict):
            p.setdefault("description", "")
    params.setdefault("required", [])
    return replace(tool, parameters=params)
