"""Hermes / Qwen2.5 tool calls: ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``.

Used by Qwen2.5 (and its Coder models), Hermes 2 Pro and Hermes 3. Free text may come
before the calls; several calls follow each other, one block each.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import ClassVar

from midtier.core.messages import Message, ResponseFormat, ToolChoice, ToolSpec
from midtier.formats._json import arguments_text, open_json, scan_object, skip_ws
from midtier.formats.base import (
    Format,
    Markers,
    Parsed,
    ParsedCall,
    Run,
    answer_rule,
    block_body,
    call_schema,
    custom_input,
    free_text,
    held_prefix,
    json_args,
    json_schema_lark,
    keep_call,
    read_blocks,
    text_and_blocks,
)

OPEN = "<tool_call>"
CLOSE = "</tool_call>"
# a custom tool's call: <tool_call>\n<function=NAME>\nRAW INPUT\n</function>\n</tool_call>
CUSTOM_OPEN = "<function="
CUSTOM_END = "\n</function>"


_EXAMPLE = '{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}'
_DOUBLED_EXAMPLE = "{" + _EXAMPLE + "}"


def custom_block(name: str, text: str) -> str:
    return f"{OPEN}\n{CUSTOM_OPEN}{name}>\n{text}{CUSTOM_END}\n{CLOSE}"


class HermesFormat(Format):
    key = "hermes"
    markers: ClassVar[tuple[str, ...]] = (OPEN, CLOSE)
    priority = 0
    supports_custom_tools = True
    list_fanout = True

    def patch_template(self, source: str) -> str:
        """Qwen2.5-Coder-1.5B's template shows the call syntax with doubled braces (a Python
        f-string escape left in a Jinja string), teaching the model ``{{"name": ...}}``."""
        return source.replace(_DOUBLED_EXAMPLE, _EXAMPLE)

    def grammar(self, tools: list[ToolSpec], choice: ToolChoice, response_format: ResponseFormat,
                markers: Markers, *, ban_stray_json: bool = False) -> str | None:
        callable_tools = choice.callable_tools(tools)
        lines = [f"TEXT: {free_text(markers, OPEN, ban_stray_json=ban_stray_json)}"]
        answer = answer_rule(response_format, "TEXT")
        if not callable_tools:
            return "\n".join([f"start: {answer}", *lines]) + "\n"
        functions = [t for t in callable_tools if t.kind == "function"]
        customs = [t for t in callable_tools if t.kind == "custom"]
        rests = []
        if functions:
            schema = {"anyOf": [call_schema(t) for t in functions]}
            lines += [f'rest: "\\n" body "\\n" {markers.lit(CLOSE)}', f"body: {json_schema_lark(schema)}"]
            rests.append("rest")
        for i, tool in enumerate(customs):
            # a custom tool's input is raw text, so it is written as a block, not as JSON
            head = json.dumps(f"\n{CUSTOM_OPEN}{tool.name}>\n")
            tail = json.dumps(CUSTOM_END + "\n")
            body = custom_input(tool)
            if body is None:
                lines.append(markers.text_then(f"cinput{i}", "CTEXT", CUSTOM_END))
                lines.append(f"crest{i}: {head} cinput{i} {json.dumps(chr(10))} {markers.lit(CLOSE)}")
            else:
                lines.append(f"crest{i}: {head} {body} {tail} {markers.lit(CLOSE)}")
            rests.append(f"crest{i}")
        if any(t.grammar is None for t in customs):
            lines.append("CTEXT: /(?s:.*)/")
        lines += [
            f"rest_any: {' | '.join(rests)}",
            f"call: {markers.lit(OPEN)} rest_any",
            markers.text_then("lead", "TEXT", OPEN),  # text, then the first call's opening tag
        ]
        # the model ends a call with a newline before end-of-turn; another call may follow it
        more = '("\\n" call)* "\\n"?' if choice.parallel else '"\\n"?'
        if choice.mode == "required":
            start = f"start: call {more}"
        elif answer == "TEXT":
            start = f"start: TEXT | lead rest_any {more}"
        else:
            start = f"start: {answer} | call {more}"
        return "\n".join([start, *lines]) + "\n"

    def prepare(self, messages: list[Message], tools: list[ToolSpec]) -> tuple[list[Message], list[ToolSpec]]:
        """Past custom-tool calls are written into the assistant's text in their block syntax
        (the template only knows JSON calls)."""
        out = []
        for m in messages:
            custom = [c for c in m.tool_calls if c.type == "custom"]
            if custom:
                blocks = "\n".join(custom_block(c.name, c.arguments) for c in custom)
                content = f"{m.content}\n{blocks}" if m.content else blocks
                m = replace(m, content=content, tool_calls=[c for c in m.tool_calls if c.type != "custom"])
            out.append(m)
        return out, tools

    def parse(self, text: str, partial: bool) -> Parsed:
        return self.parse_from(text, 0, partial)

    def parse_from(self, text: str, pos: int, partial: bool) -> Parsed:
        """The parse of ``text`` from ``pos`` on (offsets count from the start of ``text``)."""
        out = Parsed()
        content: list[str] = []

        def block(i: int, _: str) -> int | None:
            body, end = block_body(text, i + len(OPEN), partial, CLOSE)
            at_end = partial and end is None and i + len(OPEN) + len(body) == len(text)
            call, out.run = read_call_run(body, end is not None or not partial, (CLOSE,) if at_end else None)
            return keep_call(text, i, partial, call, end, content, out.calls)

        cut = read_blocks(text, pos, partial, (OPEN,), block, content, out.calls)
        return text_and_blocks(self, out, content, cut, partial)


def _read_custom(body: str, start: int, final: bool, markers: tuple[str, ...] | None) -> ParsedCall | None:
    """A custom tool's block: ``<function=NAME>\\nRAW\\n</function>``; the raw input grows as it arrives."""
    name_end = body.find(">", start)
    if name_end < 0:
        return None
    name = body[start + len(CUSTOM_OPEN):name_end]
    first = name_end + 1 + (body.startswith("\n", name_end + 1))
    end = body.find(CUSTOM_END, first)
    if end < 0:
        end = len(body) if final else len(body) - held_prefix(body[first:], CUSTOM_END)
    call = ParsedCall(name=name, arguments=body[first:max(end, first)], done=final, custom=True)
    if markers is not None and end == len(body) > name_end + 1:  # the input goes on as it is
        call.run = Run("args", (CUSTOM_END, *markers))
    return call


def read_call(body: str, final: bool) -> ParsedCall | None:
    """A call from one block's body; None while the name is unknown (or, when final, if none)."""
    return read_call_run(body, final, None)[0]


def read_call_run(body: str, final: bool, markers: tuple[str, ...] | None) -> tuple[ParsedCall | None, Run | None]:
    """``read_call``, and with ``markers`` (the body is the end of the output, which these
    would end) the run (see ``Run``) the parse is in: inside the arguments, inside a string
    of the object (nothing changes until it ends), after the arguments (nothing changes)."""
    start = skip_ws(body, 0)
    if body.startswith(CUSTOM_OPEN, start):
        call = _read_custom(body, start, final, None if final else markers)
        return call, call.run if call is not None else None
    if start >= len(body) or body[start] != "{":
        return None, None
    scan = scan_object(body, start)
    name = scan.complete_string(body, "name")
    field = scan.fields.get("arguments") or scan.fields.get("parameters")
    call = None
    if name is not None:
        arguments = arguments_text(body, field)
        if field is None and scan.end is not None:
            arguments = "{}"
        call = ParsedCall(name=name, arguments=arguments, done=final)
    if markers is None or final or scan.error is not None:
        return call, None
    if call is not None and (scan.end is not None or field is not None and field.end is not None
                             and field.key == "arguments"):
        return call, Run("silent", markers)  # the name and the arguments are known for good
    if call is not None and field is not None and field.end is None and field.start >= 0 \
            and body[field.start] in "{[":
        return call, json_args(open_json(body, field.start), markers)
    state = open_json(body, start)
    if state is not None and state[0] == 1 and state[1]:  # in a key or a value that is no object
        return call, Run("silent", markers, json=2, depth=1, string=True, escaped=state[2])
    return call, None
