"""Granite 3.x tool calls: ``<|tool_call|>`` and a JSON list of calls.

    <|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris"}}]

IBM's examples put ``"arguments"`` before ``"name"``; both orders parse. The Granite 3.3
template does not render past calls at all (and fails on a missing content), so
``prepare`` writes them into the assistant's content in the syntax above. With the
template's ``thinking`` switch the model writes ``<think>...</think>`` and then wraps its
answer in ``<response>...</response>``: the first is reasoning, the tags of the second are
dropped.

Granite 4.0 writes Hermes-style ``<tool_call>`` blocks; its template is served by the
``hermes`` format.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from midtier.core.messages import Message, ResponseFormat, ToolChoice, ToolSpec
from midtier.formats._json import arguments_text, scan_object, skip_ws
from midtier.formats._reasoning import ReasoningFormat
from midtier.formats.base import (
    Markers,
    Parsed,
    ParsedCall,
    Run,
    Settled,
    answer_rule,
    call_schema,
    held_prefix,
    json_schema_lark,
    lark,
    object_run,
    resumed,
    strip_after,
    text_run,
    tools_start,
)

TOOL_CALL = "<|tool_call|>"
RESPONSE_OPEN, RESPONSE_CLOSE = "<response>", "</response>"


class GraniteFormat(ReasoningFormat):
    key = "granite"
    markers: ClassVar[tuple[str, ...]] = (TOOL_CALL, "<|start_of_role|>")
    priority = 10
    steer_stray_json = True  # small Granite models often answer with the bare JSON list
    #: where a resumed parse (see ``Settled``) starts: in a phase ("text" before <|tool_call|>,
    #: "list" inside its list after a call and its comma, "after" the list), after the
    #: content's start and its first </response>
    phase = "text"
    lead_done = False
    close_done = False

    # -- layer 2 --------------------------------------------------------------------------------
    def prepare(self, messages: list[Message], tools: list[ToolSpec]) -> tuple[list[Message], list[ToolSpec]]:
        out = []
        for msg in messages:
            content = msg.content or ""
            if msg.role == "assistant" and msg.tool_calls:
                calls = [{"name": c.name, "arguments": c.arguments_object()} for c in msg.tool_calls]
                content += TOOL_CALL + json.dumps(calls, ensure_ascii=False)
                msg = replace(msg, tool_calls=[])
            out.append(replace(msg, content=content))
        return out, tools

    # -- layer 3 --------------------------------------------------------------------------------
    def grammar(self, tools: list[ToolSpec], choice: ToolChoice, response_format: ResponseFormat,
                markers: Markers, *, ban_stray_json: bool = False) -> str | None:
        callable_tools = choice.callable_tools(tools)
        head, lines = self.think_grammar(markers, TOOL_CALL, ban_stray_json=ban_stray_json)
        answer = answer_rule(response_format, "TEXT")
        if not callable_tools:
            return lark(f"start: {head}{answer}", *lines)
        schema: dict[str, Any] = {"type": "array", "items": {"anyOf": [call_schema(t) for t in callable_tools]},
                                  "minItems": 1}
        if not choice.parallel:
            schema["maxItems"] = 1
        lines.append(f"list: {json_schema_lark(schema)}")
        start, pre = tools_start(markers, choice, answer, TOOL_CALL, "list",
                                 self.reply(markers, ban_stray_json=ban_stray_json), head)
        return lark(start, *lines, *pre)

    # -- layer 4 --------------------------------------------------------------------------------
    def parse_rest(self, text: str, pos: int, partial: bool) -> Parsed:
        out = Parsed()
        before, after = "", ""
        marks: list[tuple[int, int]] = []  # in the list: after an item and its comma, calls so far
        runs: list[Run] = []  # the run the text ends in, inside the list
        # where a resumed parse may start (see Settled): offset, phase, how much of the content
        # text is before it, calls before it, and how much of that text lies right before it
        # (a cut can move back into it); in a list only after a call (else the list may be text)
        cut = _Cut(pos, self.phase, 0, 0, 0)
        if self.phase == "text":
            i = text.find(TOOL_CALL, pos)
            if i < 0:
                before = text[pos:]
                if partial:
                    before = before[: len(before) - held_prefix(before, TOOL_CALL)]
                cut = _Cut(pos + len(before), "text", len(before), 0, len(before))
            else:
                before = text[pos:i]
                end = read_call_list(text, i + len(TOOL_CALL), partial, out.calls, marks=marks, runs=runs)
                cut = _Cut(i, "text", len(before), 0, len(before))
                if end is not None:
                    after = text[end:]
                    cut = _Cut(len(text), "after", len(before) + len(after), len(out.calls), len(after))
                elif not partial and not out.calls:
                    after = text[i:]  # not a list of calls after all: what the model wrote stays
                elif marks and marks[-1][1]:
                    cut = _Cut(marks[-1][0], "list", len(before), marks[-1][1], 0)
        elif self.phase == "list":
            end = read_call_list(text, pos, partial, out.calls, marks=marks, inside=True, runs=runs)
            if end is not None:
                after = text[end:]
                cut = _Cut(len(text), "after", len(after), len(out.calls), len(after))
            elif marks:
                cut = _Cut(marks[-1][0], "list", 0, marks[-1][1], 0)
        else:
            after = text[pos:]
            cut = _Cut(len(text), "after", len(after), 0, len(after))
        raw = before + after
        out.content = strip_after(_unwrap_response(raw, partial, not self.lead_done, not self.close_done),
                                  self.text_before)
        if partial:
            out.settled = self._settled(raw, cut, pos)
            out.run = self._text_run(out.settled, cut, len(text)) or (runs[-1] if runs else None)
        return out

    def _text_run(self, settled: Settled, cut: _Cut, n: int) -> Run | None:
        """The content run of a parse that settled all of its ``n`` characters in text."""
        state = settled.resume
        if not isinstance(state, GraniteFormat) or settled.offset != n or cut.offset != n \
                or cut.phase not in ("text", "after") or state.phase != cut.phase or not state.lead_done:
            return None
        markers = (TOOL_CALL,) if cut.phase == "text" else ()
        return text_run(settled, markers if state.close_done else (*markers, RESPONSE_CLOSE))

    def _settled(self, raw: str, cut: _Cut, pos: int) -> Settled:
        """Settled at ``cut``, moved back before a ``<response>`` tag that may still be arriving
        (each is dropped from the content joined whole: none may be cut), or to the start."""
        offset, n = cut.offset, cut.text
        back = n - _keep(raw[:n], not self.lead_done, not self.close_done)
        if back > cut.run:
            return Settled(pos, self)
        offset, n = offset - back, n - back
        piece = raw[:n]
        content = _unwrap_response(piece, False, not self.lead_done, not self.close_done)
        resume = resumed(self, text_before=self.text_before or bool(content.strip()), phase=cut.phase,
                         lead_done=self.lead_done or bool(piece.strip()),
                         close_done=self.close_done or RESPONSE_CLOSE in piece)
        return Settled(offset, resume, content=content, calls=cut.calls)


@dataclass
class _Cut:
    """A point where a parse may resume (see ``GraniteFormat.parse_rest``)."""

    offset: int
    phase: str
    text: int  # how much of the content text is before it
    calls: int  # calls before it
    run: int  # how much of that text lies right before it in the output


def _keep(raw: str, lead: bool, close: bool) -> int:
    """How much of the content text ``raw`` is final: up to a ``<response>`` at its start or a
    ``</response>`` that may still be arriving (each is dropped from the text joined whole)."""
    if lead:
        body = raw.lstrip()
        if body and len(body) < len(RESPONSE_OPEN) and RESPONSE_OPEN.startswith(body):
            return len(raw) - len(body)
    if close and RESPONSE_CLOSE not in raw:
        return len(raw) - held_prefix(raw, RESPONSE_CLOSE)
    return len(raw)


def _unwrap_response(text: str, partial: bool, lead: bool = True, close: bool = True) -> str:
    """``text`` without the ``<response>`` tags of thinking mode (a tag still arriving held back).
    Without ``lead``, the start of the content came before ``text``; without ``close``, the
    closing tag did."""
    start = skip_ws(text, 0)
    if not lead:
        pass
    elif text.startswith(RESPONSE_OPEN, start):
        text = text[:start] + text[start + len(RESPONSE_OPEN):]
    elif partial and RESPONSE_OPEN.startswith(text[start:]) and start < len(text):
        return ""
    if not close:
        return text
    j = text.find(RESPONSE_CLOSE)
    if j >= 0:
        return text[:j] + text[j + len(RESPONSE_CLOSE):]
    if partial:
        text = text[: len(text) - held_prefix(text, RESPONSE_CLOSE)]
    return text


def read_call_list(text: str, pos: int, partial: bool, calls: list[ParsedCall], name_key: str = "name",
                   args_keys: tuple[str, ...] = ("arguments", "parameters"), *, inside: bool = False,
                   marks: list[tuple[int, int]] | None = None, runs: list[Run] | None = None) -> int | None:
    """Read the calls of the JSON list (or single object) at ``pos`` into ``calls``; one past
    its end, or None while it is incomplete or where it stops being a list of calls.

    ``inside``: ``pos`` is inside a list, after an item and its comma (a resumed parse);
    ``marks`` gets, after each item's comma, where reading goes on and how many calls
    ``calls`` then holds; ``runs`` the run (see ``Run``) a partial parse ends in, inside an
    item, if it does."""
    single = False
    if not inside:
        pos = skip_ws(text, pos)
        if pos >= len(text):
            return None
        single = text[pos] == "{"
        if not single:
            if text[pos] != "[":
                return None
            pos += 1
    while True:
        pos = skip_ws(text, pos)
        if pos >= len(text) or text[pos] != "{":
            return pos + 1 if (not single and text.startswith("]", pos)) else None
        scan = scan_object(text, pos)
        call = _call(text, scan, scan.end is not None or not partial, name_key, args_keys)
        if call is not None:
            calls.append(call)
        if scan.end is None:
            if partial and runs is not None and scan.error is None:
                field = next((scan.fields[k] for k in args_keys if k in scan.fields), None)
                run = object_run(text, pos, field, (), call is not None)
                if run is not None:
                    runs.append(run)
            return None
        if single:
            return scan.end
        pos = skip_ws(text, scan.end)
        if text.startswith(",", pos):
            pos += 1
            if marks is not None:
                marks.append((pos, len(calls)))
        elif text.startswith("]", pos):
            return pos + 1
        else:
            return None


def _call(text: str, scan: Any, final: bool, name_key: str, args_keys: tuple[str, ...]) -> ParsedCall | None:
    """One call from a scanned object; None while its name is unknown (or when it has none)."""
    name = scan.complete_string(text, name_key)
    if name is None:
        return None
    field = next((scan.fields[k] for k in args_keys if k in scan.fields), None)
    arguments = arguments_text(text, field, keep_string=False)
    if field is None and scan.end is not None:
        arguments = "{}"
    return ParsedCall(name=name, arguments=arguments, done=scan.end is not None or final)
