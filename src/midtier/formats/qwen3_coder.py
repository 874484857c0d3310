"""Qwen3-Coder XML tool calls: one ``<parameter=...>`` element per argument.

    <tool_call>
    <function=get_weather>
    <parameter=city>
    Paris
    </parameter>
    </function>
    </tool_call>

Used by Qwen3-Coder, Qwen3.5 (which thinks first: its generation prompt opens
``<think>``) and NVIDIA Nemotron 3 Nano (same calls, same ``<think>``). A value is the raw
text between ``<parameter=KEY>\\n`` and ``\\n</parameter>``; its type comes from the tool's
schema, so the parser needs the request's tools (``for_request`` / ``with_tools``).
Without a schema for a parameter, a JSON object or array is read as such and anything
else stays a string.

The arguments are rebuilt as canonical JSON that only grows: ``{``, then each parameter
as it completes (a string parameter streams as it arrives), then ``}`` at ``</function>``.
"""

from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from midtier.core.messages import Message, ToolCall, ToolChoice, ToolSpec
from midtier.formats._json import skip_ws
from midtier.formats._reasoning import Thinking, ThinkThenCalls
from midtier.formats._xml import json_type
from midtier.formats.base import (
    Markers,
    Parsed,
    ParsedCall,
    Run,
    block_body,
    find_first,
    held_any,
    json_schema_lark,
    keep_call,
    read_blocks,
    strict_schema,
    text_and_blocks,
)
from midtier.formats.hermes import read_call as read_json_call

OPEN = "<tool_call>"
CLOSE = "</tool_call>"
FUNCTION = "<function="
FUNCTION_END = "</function>"
PARAMETER = "<parameter="
PARAMETER_END = "</parameter>"
#: a value ends at the first of these (a missing ``</parameter>`` before ``</tool_call>``)
_VALUE_ENDS = (PARAMETER_END, CLOSE)
#: what may come next inside a function, between parameters
_BODY_TAGS = (PARAMETER, FUNCTION_END, CLOSE, OPEN)

_INT = r"-?(0|[1-9][0-9]*)"
_NUMBER = r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?"
_BAD_NAME = re.compile(r"[\s<>]")
_ANY = "/(?s:.*)/"


class Qwen3CoderFormat(ThinkThenCalls):
    key = "qwen3_coder"
    markers: ClassVar[tuple[str, ...]] = (OPEN, FUNCTION, PARAMETER)
    priority = 2  # above qwen3: Qwen3.5 and Nemotron 3 Nano templates have <think> and ChatML too
    steer_stray_json = False

    opener = OPEN
    forbidden = (OPEN,)

    def __init__(self, thinking: Thinking = "auto", tools: dict[str, ToolSpec] | None = None) -> None:
        super().__init__(thinking)
        self.tools: dict[str, ToolSpec] = dict(tools or {})

    # -- per request -------------------------------------------------------------------------
    def with_tools(self, tools: list[ToolSpec]) -> Qwen3CoderFormat:
        """A copy that types parameter values by these tools' schemas."""
        fmt = copy.copy(self)
        fmt.tools = {t.name: t for t in tools}
        return fmt

    # -- layer 2 -----------------------------------------------------------------------------
    def prepare(self, messages: list[Message], tools: list[ToolSpec]) -> tuple[list[Message], list[ToolSpec]]:
        # the templates iterate a past call's arguments with |items: they must be an object
        out = []
        for m in super().prepare(messages, tools)[0]:
            if any(not c.arguments.strip() for c in m.tool_calls):
                m = replace(m, tool_calls=[c if c.arguments.strip() else ToolCall(c.id, c.name, "{}", c.type)
                                           for c in m.tool_calls])
            out.append(m)
        return out, tools

    # -- layer 3 -----------------------------------------------------------------------------
    def calls_grammar(self, tools: list[ToolSpec], choice: ToolChoice, markers: Markers) -> tuple[str, list[str]]:
        rules: list[str] = []
        close = markers.lit(CLOSE)
        functions = []
        for i, tool in enumerate(tools):
            functions.append(f"fn{i}")
            rules.append(f'fn{i}: {json.dumps(f"{FUNCTION}{tool.name}>{chr(10)}")} '
                         f'{_params_lark(tool, i, rules)}"{FUNCTION_END}\\n" {close}')
        rules.append(f'call: "\\n" ({" | ".join(functions)})')
        rules += _terminals(rules, markers)
        return (f'call ("\\n" {markers.lit(OPEN)} call)* "\\n"?' if choice.parallel else 'call "\\n"?'), rules

    # -- layer 4 -----------------------------------------------------------------------------
    def parse_rest(self, text: str, pos: int, partial: bool) -> Parsed:
        out = Parsed()
        content: list[str] = []

        def block(i: int, _: str) -> int | None:
            call, end, out.run = self._block(text, i + len(OPEN), partial)
            return keep_call(text, i, partial, call, end, content, out.calls)

        cut = read_blocks(text, pos, partial, (OPEN,), block, content, out.calls)
        return text_and_blocks(self, out, content, cut, partial)

    def _block(self, text: str, start: int, partial: bool) -> tuple[ParsedCall | None, int | None, Run | None]:
        """The call in the block whose body starts at ``start``, where the block ends, and
        the run (see ``Run``) a partial parse ends in, if it does."""
        j = skip_ws(text, start)
        if text.startswith(FUNCTION, j):
            call, end, run = self._function(text, j + len(FUNCTION), partial)
            return call, end, run if partial and end is None else None
        body, end = block_body(text, start, partial, CLOSE)
        if text.startswith("{", j):
            # the Hermes JSON shape, which these models sometimes fall back to
            return read_json_call(body, end is not None or not partial), end, None
        if partial and end is None and FUNCTION.startswith(text[j:]):
            # undecided yet: nothing changes until the function tag, a brace or the close tag
            return None, None, Run("silent", (FUNCTION, CLOSE), stops="{") if j == len(text) else None
        return None, end, None

    def _function(self, text: str, start: int, partial: bool) -> tuple[ParsedCall | None, int | None, Run | None]:
        gt = text.find(">", start)
        name = text[start: gt if gt >= 0 else len(text)]
        if _BAD_NAME.search(name) or (gt >= 0 and not name):
            close = text.find(CLOSE, start)
            return None, (close + len(CLOSE) if close >= 0 else None), Run("silent", (CLOSE,))
        if gt < 0:
            # the name is still arriving (or was cut: not a call)
            return None, None, Run("silent", (CLOSE,), stops=">")
        tool = self.tools.get(name)
        args = _Arguments(tool)
        p = gt + 1
        while True:
            p = skip_ws(text, p)
            if text.startswith(PARAMETER, p):
                after = args.parameter(text, p + len(PARAMETER))
                if after is None:
                    break
                p = after
            elif text.startswith(FUNCTION_END, p):
                args.closed = True
                q = skip_ws(text, p + len(FUNCTION_END))
                if text.startswith(CLOSE, q):
                    return args.call(name, True), q + len(CLOSE), None
                if partial and CLOSE.startswith(text[q:]):
                    return args.call(name, True), None, None  # </tool_call> may be arriving
                return args.call(name, True), p + len(FUNCTION_END), None
            elif text.startswith(CLOSE, p) or text.startswith(OPEN, p):
                args.closed = True  # a call the model did not close properly
                return args.call(name, True), p + (len(CLOSE) if text.startswith(CLOSE, p) else 0), None
            elif p >= len(text) or (partial and any(t.startswith(text[p:]) for t in _BODY_TAGS)):
                if p >= len(text):  # between parameters: nothing changes until a tag
                    args.run = Run("silent", _BODY_TAGS)
                break
            else:
                nxt = text.find("<", p + 1)  # skip what is not a tag
                p = nxt if nxt >= 0 else len(text)
        return args.call(name, not partial), None, args.run


@dataclass
class _Arguments:
    """A call's arguments as canonical JSON text, built as parameters complete."""

    tool: ToolSpec | None
    items: list[str] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)
    pending: str = ""  # a string parameter still arriving: its JSON text so far
    closed: bool = False
    run: Run | None = None  # the run (see ``Run``) the text ends in, if it does

    def call(self, name: str, done: bool) -> ParsedCall:
        parts = list(self.items)
        if self.pending:
            parts.append(self.pending)
        return ParsedCall(name, "{" + ", ".join(parts) + ("}" if self.closed else ""), done=done)

    def parameter(self, text: str, start: int) -> int | None:
        """Read ``KEY>\\nVALUE\\n</parameter>`` at ``start``; where reading goes on, or None
        when the parameter is not complete yet."""
        gt = text.find(">", start)
        key = text[start: gt if gt >= 0 else len(text)]
        if _BAD_NAME.search(key) or (gt >= 0 and not key):
            return start  # not a parameter tag: skip it
        if gt < 0:
            self.run = Run("silent", _BODY_TAGS, stops=">")  # the key is arriving
            return None
        v = gt + 1
        if v >= len(text):
            return None  # is there a newline to drop? not known yet
        if text[v] == "\n":
            v += 1
        end, marker = find_first(text, _VALUE_ENDS, v)
        duplicate = key in self.keys
        if end < 0:
            value = text[v:]
            held = held_any(value, _VALUE_ENDS)
            if not duplicate and _types(self._schema(key)) == {"string"}:
                # what may be the start of its end tag is held back, even when the output was
                # cut there: a truncated value is the text before it
                value = value[: len(value) - held]
                newline = value.endswith("\n")
                value = value[:-1] if newline else value
                self.pending = f"{json.dumps(key)}: {json.dumps(value, ensure_ascii=False)[:-1]}"
                if not held:  # the value streams as it comes
                    self.run = Run("args", _VALUE_ENDS, escape=True, newline=True, held="\n" if newline else "")
            elif not held:  # a value shown once it is whole
                self.run = Run("silent", _VALUE_ENDS)
            return None
        raw = text[v:end]
        raw = raw[:-1] if raw.endswith("\n") else raw
        self.pending = ""
        if not duplicate:
            self.keys.add(key)
            value = convert(raw, self._schema(key))
            self.items.append(f"{json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}")
        return end + len(PARAMETER_END) if marker == PARAMETER_END else end

    def _schema(self, key: str) -> dict[str, Any] | None:
        if self.tool is None:
            return None
        props = self.tool.parameters.get("properties")
        value = props.get(key) if isinstance(props, dict) else None
        return value if isinstance(value, dict) else None


def _types(schema: dict[str, Any] | None) -> set[str]:
    """The JSON types a parameter's schema allows (empty: unknown, anything)."""
    if not schema:
        return set()
    t = schema.get("type")
    if isinstance(t, str):
        return {t}
    if isinstance(t, list):
        return {x for x in t if isinstance(x, str)}
    if "enum" in schema and isinstance(schema["enum"], list):
        return {json_type(v) for v in schema["enum"]}
    if "const" in schema:
        return {json_type(schema["const"])}
    out: set[str] = set()
    for key in ("anyOf", "oneOf"):
        for member in schema.get(key) or []:
            inner = _types(member) if isinstance(member, dict) else set()
            if not inner:
                return set()
            out |= inner
    if "properties" in schema:
        out.add("object")
    return out


def convert(raw: str, schema: dict[str, Any] | None) -> Any:
    """A parameter's text as the value its schema's type says; the text itself when it
    does not fit (the model's words are never replaced by a guess)."""
    types = _types(schema)
    if "string" in types:
        return raw
    text = raw.strip()
    if not types:
        if text[:1] in ("{", "["):
            try:
                return json.loads(text)
            except ValueError:
                pass
        return raw
    if "null" in types and text in ("null", "None"):
        return None
    if "boolean" in types and text.lower() in ("true", "false"):
        return text.lower() == "true"
    if types & {"integer", "number"} and re.fullmatch(_NUMBER, text):
        number = json.loads(text)
        if isinstance(number, int) or ("number" in types and math.isfinite(number)):
            return number
        if math.isfinite(number) and number == int(number):
            return int(number)  # 3.0 for an integer
    if types & {"object", "array"}:
        try:
            value = json.loads(text)
        except ValueError:
            return raw
        if isinstance(value, dict) and "object" in types or isinstance(value, list) and "array" in types:
            return value
    return raw


# -- grammar for one tool's parameters ------------------------------------------------------------
def _terminals(rules: list[str], markers: Markers) -> list[str]:
    """The value terminals ``rules`` use. A string value and the line that ends it are one
    terminal (see ``lark_until``); it holds no other ``</parameter>``."""
    used = set(" ".join(rules).replace("(", " ").replace(")", " ").split())
    out = []
    if "STR" in used:
        body = (f"({_ANY} {json.dumps(chr(10) + PARAMETER_END + chr(10))}) & "
                f"~({_ANY} {json.dumps(PARAMETER_END)} /(?s:..+)/)")
        if CLOSE not in markers.special:
            body += f" & ~({_ANY} {json.dumps(CLOSE)} {_ANY})"
        out.append(f"STR: {body}")
    if "INT" in used:
        out.append(f"INT: /{_INT}/")
    if "NUMBER" in used:
        out.append(f"NUMBER: /{_NUMBER}/")
    return out


def _params_lark(tool: ToolSpec, index: int, rules: list[str]) -> str:
    """The parameters in schema order, required ones present; returns the sequence (with
    a trailing space when not empty) and appends each parameter's rule to ``rules``."""
    props = tool.parameters.get("properties")
    required = set(tool.parameters.get("required") or [])
    if not isinstance(props, dict):
        return ""
    parts = []
    for j, (key, schema) in enumerate(props.items()):
        rule = f"p{index}_{j}"
        head = json.dumps(f"{PARAMETER}{key}>\n")
        rules.append(f"{rule}: {head} {_value_lark(schema if isinstance(schema, dict) else {})}")
        parts.append(rule if key in required else f"{rule}?")
    return " ".join(parts) + " " if parts else ""


def _value_lark(schema: dict[str, Any]) -> str:
    """One value and the ``\\n</parameter>\\n`` that ends it."""
    end = json.dumps(f"\n{PARAMETER_END}\n")
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        literals = sorted({v if isinstance(v, str) else json.dumps(v) for v in enum})
        return f"({' | '.join(json.dumps(v) for v in literals)}) {end}"
    types = _types(schema)
    if not types or "string" in types:
        return "STR"
    options = []
    if "integer" in types and "number" not in types:
        options.append("INT")
    if "number" in types:
        options.append("NUMBER")
    if "boolean" in types:
        options.append('"true" | "false" | "True" | "False"')
    if "null" in types:
        options.append('"null" | "None"')
    for kind in ("object", "array"):
        if kind in types:
            options.append(json_schema_lark({**strict_schema(schema), "type": kind}))
    return f"({' | '.join(options)}) {end}"
