"""FunctionGemma tool calls: ``call:NAME{key:value,...}`` between call tokens.

    <start_function_call>call:get_weather{city:<escape>Paris<escape>,days:3}<end_function_call>

Strings are wrapped in ``<escape>`` tokens; Google's format writes other values bare
(``3``, ``true``, ``[<escape>a<escape>]``, ``{k:<escape>v<escape>}``), while vLLM's
template wraps every value in ``<escape>`` and prints it with Python's ``str`` (``True``,
``['a']``). The parser reads all of these, typing values by the tools' schemas when it has
them (``with_tools``, ``for_request``). ``prepare`` makes past calls render as this format
writes them: non-string values as JSON inside ``<escape>``, tool results named after their
call.
"""

from __future__ import annotations

import ast
import json
from dataclasses import replace
from typing import Any, ClassVar

from midtier.core.messages import Message, ResponseFormat, ToolChoice, ToolSpec
from midtier.formats._json import skip_ws
from midtier.formats._xml import NAME, TypedValues, is_string, read_value, value_lark, value_run
from midtier.formats.base import (
    Markers,
    Parsed,
    ParsedCall,
    Run,
    answer_rule,
    block_body,
    free_text,
    keep_call,
    lark,
    read_blocks,
    strict_schema,
    text_and_blocks,
    tools_start,
)

OPEN = "<start_function_call>"
CLOSE = "<end_function_call>"
ESC = "<escape>"
_LITERAL_LIMIT = 20_000  # longer Python-literal values are not evaluated


def _to_json(value: Any) -> str | None:
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return None


def typed(raw: str, schema: dict[str, Any] | None) -> str:
    """The JSON text of a value written inside ``<escape>``: a string if the schema says so,
    else the JSON or Python literal it spells (``True``, ``['a']``), else a string."""
    if is_string(schema):
        return json.dumps(raw, ensure_ascii=False)
    text = raw.strip()
    try:
        return json.dumps(json.loads(text), ensure_ascii=False)
    except ValueError:
        pass
    if len(text) <= _LITERAL_LIMIT:
        try:
            value = ast.literal_eval(text)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            value = None
        out = None if value is None or isinstance(value, str) else _to_json(value)
        if out is not None:
            return out
    return json.dumps(raw, ensure_ascii=False)


def _bare(text: str, i: int, stops: str) -> tuple[Any, int] | None:
    """A value in Google's notation at ``text[i]``: (value, end), or None while incomplete."""
    i = skip_ws(text, i)
    if text.startswith(ESC, i):
        j = text.find(ESC, i + len(ESC))
        return None if j < 0 else (text[i + len(ESC):j], j + len(ESC))
    if i < len(text) and text[i] in "{[":
        closing = "}" if text[i] == "{" else "]"
        items: Any = {} if closing == "}" else []
        i += 1
        while True:
            i = skip_ws(text, i)
            if i >= len(text):
                return None
            if text[i] == closing:
                return items, i + 1
            if text[i] == ",":
                i += 1
                continue
            if closing == "}":
                colon = text.find(":", i)
                if colon < 0:
                    return None
                key = text[i:colon].strip()
                got = _bare(text, colon + 1, ",}")
                if got is None:
                    return None
                items[key], i = got
            else:
                got = _bare(text, i, ",]")
                if got is None:
                    return None
                items.append(got[0])
                i = got[1]
    j = i
    while j < len(text) and text[j] not in stops:
        j += 1
    if j >= len(text):
        return None
    token = text[i:j].strip()
    try:
        return json.loads(token), j
    except ValueError:
        return token, j


class FunctiongemmaFormat(TypedValues):
    key = "functiongemma"
    markers: ClassVar[tuple[str, ...]] = (OPEN, ESC)
    priority = 10
    steer_stray_json = True  # a 270M model: it does stray into bare JSON

    # -- layer 2 --------------------------------------------------------------------------------
    def prepare(self, messages: list[Message], tools: list[ToolSpec]) -> tuple[list[Message], list[ToolSpec]]:
        names: dict[str, str] = {}
        out = []
        for msg in messages:
            if msg.content is None:
                msg = replace(msg, content="")
            if msg.role == "assistant" and msg.tool_calls:
                calls = []
                for call in msg.tool_calls:
                    names[call.id] = call.name
                    args = call.arguments_object()
                    if isinstance(args, dict):
                        flat = {k: v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
                                for k, v in args.items()}
                        call = replace(call, arguments=json.dumps(flat, ensure_ascii=False))
                    calls.append(call)
                msg = replace(msg, tool_calls=calls)
            elif msg.role == "tool" and msg.name is None and msg.tool_call_id in names:
                msg = replace(msg, name=names[msg.tool_call_id])
            out.append(msg)
        return out, tools

    # -- layer 3 --------------------------------------------------------------------------------
    def grammar(self, tools: list[ToolSpec], choice: ToolChoice, response_format: ResponseFormat,
                markers: Markers, *, ban_stray_json: bool = False) -> str | None:
        lit = markers.lit
        callable_tools = choice.callable_tools(tools)
        lines = [f"TEXT: {free_text(markers, OPEN, ban_stray_json=ban_stray_json)}"]
        answer = answer_rule(response_format, "TEXT")
        if not callable_tools:
            return lark(f"start: {answer}", *lines)
        lines += [markers.text_then("esc_text", "ESC_TEXT_TEXT", ESC), "ESC_TEXT_TEXT: /(?s:.*)/"]
        bodies = []
        for i, tool in enumerate(callable_tools):
            params = strict_schema(tool.parameters or {})
            required = set(params.get("required") or [])
            pairs = []
            for j, (key, schema) in enumerate((params.get("properties") or {}).items()):
                lines.append(f"v_{i}_{j}: {lit(ESC)} {value_lark(markers, schema, ESC, 'esc_text')}")
                pairs.append((f"{json.dumps(key + ':')} v_{i}_{j}", key in required))
            lines.append(f"body_{i}: {json.dumps('call:' + tool.name + '{')} {_sequence(pairs)} \"}}\" {lit(CLOSE)}")
            bodies.append(f"body_{i}")
        lines.append(f"body: {' | '.join(bodies)}")
        calls = f"body ({lit(OPEN)} body)*" if choice.parallel else "body"
        start, pre = tools_start(markers, choice, answer, OPEN, calls, free_text(markers, ban_stray_json=ban_stray_json))
        return lark(start, *lines, *pre)

    # -- layer 4 --------------------------------------------------------------------------------
    def parse(self, text: str, partial: bool) -> Parsed:
        out = Parsed()
        content: list[str] = []

        def block(i: int, _: str) -> int | None:
            body, end = block_body(text, i + len(OPEN), partial, CLOSE)
            call, run = self._read_call(body, end is not None)
            if call is not None:
                call.done = end is not None or not partial
            if partial and end is None and i + len(OPEN) + len(body) == len(text):
                out.run = run
            return keep_call(text, i, partial, call, end, content, out.calls)

        cut = read_blocks(text, 0, partial, (OPEN,), block, content, out.calls)
        return text_and_blocks(self, out, content, cut, partial)

    def _read_call(self, body: str, closed: bool) -> tuple[ParsedCall | None, Run | None]:
        """The call in one block's body (None: not one, or not yet), and the run (see
        ``Run``) an open block ends in, if it does."""
        s = skip_ws(body, 0)
        if body.startswith("call:", s):
            s += len("call:")
        brace = body.find("{", s)
        if brace < 0:
            name = body[s:].strip()
            # the name is arriving (once "call:" is whole: it is held back till then)
            run = Run("silent", (CLOSE,), stops="{") if s > 0 and body[:s].strip().startswith("call:") else None
            return (ParsedCall(name, "{}") if closed and NAME.fullmatch(name) else None), run
        name = body[s:brace].strip()
        if not NAME.fullmatch(name):
            return None, _SILENT
        members, ended, run = _members(body, brace + 1, self.properties.get(name, {}), closed)
        return ParsedCall(name, "{" + members + ("}" if ended or closed else "")), _SILENT if ended else run


_SILENT = Run("silent", (CLOSE,))  # nothing changes until the block ends


def _members(body: str, pos: int, props: dict[str, dict[str, Any]],
             closed: bool) -> tuple[str, bool, Run | None]:
    """The JSON members of the arguments from ``pos`` as far as they are known, whether
    their closing brace has come, and the run (see ``Run``) the body ends in, if it does:
    inside an escaped value."""
    parts: list[str] = []
    while True:
        pos = skip_ws(body, pos)
        if body.startswith(",", pos):
            pos = skip_ws(body, pos + 1)
        if body.startswith("}", pos):
            return "".join(parts), True, None
        colon = body.find(":", pos)
        if colon < 0:
            return "".join(parts), False, None
        key = body[pos:colon].strip().strip("\"'")
        if not NAME.fullmatch(key):
            return "".join(parts), False, _SILENT  # not a key: stop reading here
        member = (", " if parts else "") + json.dumps(key, ensure_ascii=False) + ": "
        v = skip_ws(body, colon + 1)
        schema = props.get(key)
        if body.startswith(ESC, v):
            value, end = read_value(body, v + len(ESC), ESC, schema, closed, typed)
            if value is not None:
                parts.append(member + value)
            if end is None:
                return "".join(parts), False, value_run(schema, (ESC, CLOSE))
            pos = end
            continue
        got = _bare(body, v, ",}")
        if got is None:
            return "".join(parts), False, None
        value, pos = got
        parts.append(member + (typed(value, schema) if isinstance(value, str) else json.dumps(value,
                                                                                              ensure_ascii=False)))


def _sequence(pairs: list[tuple[str, bool]]) -> str:
    """Lark for comma-separated ``pairs`` in order, each optional unless required."""
    def rest(k: int) -> str:  # after at least one pair
        return " ".join(f'"," {p}' if req else f'("," {p})?' for p, req in pairs[k:])

    def first(k: int) -> str:  # before any pair
        if k == len(pairs):
            return ""
        p, req = pairs[k]
        if req:
            return f"{p} {rest(k + 1)}".strip()
        later = first(k + 1)
        with_p = f"{p} {rest(k + 1)}".strip()
        return f"({with_p} | {later})" if later else f"({with_p})?"

    return first(0)
