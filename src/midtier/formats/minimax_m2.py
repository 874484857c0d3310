"""MiniMax M2 tool calls: XML invokes inside one ``<minimax:tool_call>`` section.

    <minimax:tool_call>
    <invoke name="get_weather">
    <parameter name="city">Paris</parameter>
    </invoke>
    </minimax:tool_call>

A parameter's value is written raw when it is a string and as JSON otherwise, so reading
it back needs the tool's schema (``with_tools``, ``for_request``; see ``_xml``). The model
always reasons first: the generation prompt opens ``<think>`` and the output closes it.
The template prints a missing content as ``None``; ``prepare`` gives it an empty one.
"""

from __future__ import annotations

import json
import re
from typing import Any, ClassVar

from midtier.core.messages import Message, ResponseFormat, ToolChoice, ToolSpec
from midtier.formats._json import skip_ws
from midtier.formats._reasoning import ReasoningFormat, thinking_after
from midtier.formats._xml import TypedValues, read_value, value_rules, value_run
from midtier.formats.base import (
    Markers,
    Parsed,
    ParsedCall,
    Run,
    answer_rule,
    empty_content,
    held_any,
    lark,
    read_blocks,
    resumed,
    strict_schema,
    text_and_blocks,
    tools_start,
)

OPEN = "<minimax:tool_call>"
CLOSE = "</minimax:tool_call>"
INVOKE = "<invoke name="
INVOKE_CLOSE = "</invoke>"
PARAM = "<parameter name="
PARAM_CLOSE = "</parameter>"

_NAME = re.compile(r"""\s*(["']?)([^"'<>\s]+)\1\s*""")
_NL = '"\\n"*'


def _tag_name(header: str) -> str | None:
    """The name in ``"get_weather"`` (what follows ``name=`` up to ``>``)."""
    m = _NAME.fullmatch(header)
    return m.group(2) if m else None


class MinimaxM2Format(ReasoningFormat, TypedValues):
    key = "minimax_m2"
    markers: ClassVar[tuple[str, ...]] = (OPEN, INVOKE, PARAM)
    priority = 10
    steer_stray_json = False

    # -- per request ----------------------------------------------------------------------------
    def for_prompt(self, prompt: str) -> MinimaxM2Format:
        """MiniMax M2's generation prompt opens ``<think>``."""
        return resumed(self, thinking=thinking_after(prompt, closing=False))

    # -- layer 2 --------------------------------------------------------------------------------
    def prepare(self, messages: list[Message], tools: list[ToolSpec]) -> tuple[list[Message], list[ToolSpec]]:
        return empty_content(messages), tools

    # -- layer 3 --------------------------------------------------------------------------------
    def grammar(self, tools: list[ToolSpec], choice: ToolChoice, response_format: ResponseFormat,
                markers: Markers, *, ban_stray_json: bool = False) -> str | None:
        lit = markers.lit
        callable_tools = choice.callable_tools(tools)
        _, lines = self.think_grammar(markers, OPEN, ban_stray_json=ban_stray_json)
        head = f"think {_NL} " if self.thinking == "open" else f"(think {_NL})? "  # and the newlines after it
        answer = answer_rule(response_format, "TEXT")
        if not callable_tools:
            return lark(f"start: {head}{answer}", *lines)
        invokes = []
        for i, tool in enumerate(callable_tools):
            params = strict_schema(tool.parameters or {})
            required = set(params.get("required") or [])
            parts = []
            for j, (key, schema) in enumerate((params.get("properties") or {}).items()):
                lines += value_rules(markers, f"v_{i}_{j}", schema, PARAM_CLOSE)
                part = f"{json.dumps(f'{PARAM}{json.dumps(key)}>')} v_{i}_{j} {_NL}"
                parts.append(f"({part})" + ("" if key in required else "?"))
            opening = json.dumps(f"{INVOKE}{json.dumps(tool.name)}>")
            lines.append(f"invoke_{i}: {opening} {_NL} {' '.join(parts)} {json.dumps(INVOKE_CLOSE)} {_NL}")
            invokes.append(f"invoke_{i}")
        lines.append(f"invoke: {' | '.join(invokes)}")
        many = "invoke+" if choice.parallel else "invoke"
        lines.append(f"section_rest: {_NL} {many} {lit(CLOSE)}")
        start, pre = tools_start(markers, choice, answer, OPEN, "section_rest",
                                 self.reply(markers, ban_stray_json=ban_stray_json), head)
        return lark(start, *lines, *pre)

    # -- layer 4 --------------------------------------------------------------------------------
    def parse_rest(self, text: str, pos: int, partial: bool) -> Parsed:
        out = Parsed()
        content: list[str] = []

        def block(i: int, _: str) -> int | None:
            end, run = self._read_section(text, i + len(OPEN), partial, out.calls)
            out.run = run if partial and end is None else None
            return end

        cut = read_blocks(text, pos, partial, (OPEN,), block, content, out.calls)
        return text_and_blocks(self, out, content, cut, partial)

    def _read_section(self, text: str, pos: int, partial: bool,
                      calls: list[ParsedCall]) -> tuple[int | None, Run | None]:
        """Read the invokes of a section whose body starts at ``pos``; where text resumes after
        its end (None: the section runs to the end of ``text``), and then the run (see ``Run``)
        a partial parse ends in, if it does."""
        end = text.find(CLOSE, pos)
        limit = end if end >= 0 else len(text)
        while True:
            pos = skip_ws(text, pos)
            if pos >= limit:
                return (end + len(CLOSE), None) if end >= 0 else (None, Run("silent", (INVOKE, CLOSE)))
            if text.startswith(INVOKE, pos):
                nxt, run = self._read_invoke(text, pos, limit, end >= 0, partial, calls)
                if nxt is None:
                    return None, run
                pos = nxt
                continue
            # anything else in a section is noise: skip to the next invoke or the end
            j = text.find(INVOKE, pos + 1, limit)
            pos = j if j >= 0 else limit

    def _read_invoke(self, text: str, pos: int, limit: int, section_closed: bool, partial: bool,
                     calls: list[ParsedCall]) -> tuple[int | None, Run | None]:
        """Read the invoke at ``pos`` (ending by ``limit``) into ``calls``; where text resumes
        after it (None: hold everything from here), and then the run (see ``Run``) a partial
        parse ends in, if it does."""
        h_end = text.find(">", pos, limit)
        if h_end < 0:  # the name is still arriving
            return (limit, None) if section_closed else (None, Run("silent", (CLOSE,), stops=">"))
        name = _tag_name(text[pos + len(INVOKE):h_end])
        e = text.find(INVOKE_CLOSE, h_end, limit)
        closed = e >= 0 or section_closed
        body_end = e if e >= 0 else limit
        resume = e + len(INVOKE_CLOSE) if e >= 0 else limit
        if name is None:
            return (resume, None) if closed else (None, Run("silent", (INVOKE_CLOSE, CLOSE)))
        body = text[h_end + 1:body_end]
        if not closed and partial:
            body = body[: len(body) - held_any(body, (INVOKE_CLOSE, CLOSE))]
        params, run = _params(body, self.properties.get(name, {}), closed)
        calls.append(ParsedCall(name=name, arguments="{" + params + ("}" if closed else ""), done=closed or not partial))
        return (resume, None) if closed else (None, run)


def _params(body: str, props: dict[str, dict[str, Any]], closed: bool) -> tuple[str, Run | None]:
    """The JSON members for the parameters in ``body``, as far as they are known, and the
    run (see ``Run``) the body ends in: in a value, or waiting for a tag."""
    parts: list[str] = []
    pos = 0
    ends = (INVOKE_CLOSE, CLOSE)
    while True:
        pos = skip_ws(body, pos)
        if not body.startswith(PARAM, pos):
            # the end, a tag still arriving, or something that is not a parameter
            return "".join(parts), Run("silent", (PARAM, *ends))
        h_end = body.find(">", pos)
        if h_end < 0:
            return "".join(parts), Run("silent", ends, stops=">")
        key = _tag_name(body[pos + len(PARAM):h_end])
        if key is None:
            return "".join(parts), Run("silent", ends)
        value, end = read_value(body, h_end + 1, PARAM_CLOSE, props.get(key), closed)
        if value is not None:
            parts.append((", " if parts else "") + json.dumps(key, ensure_ascii=False) + ": " + value)
        if end is None:
            return "".join(parts), value_run(props.get(key), (PARAM_CLOSE, *ends))
        pos = end
