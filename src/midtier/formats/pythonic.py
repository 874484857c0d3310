"""Pythonic tool calls (Llama 4, Llama 3.2, Gemma 3): ``[get_weather(city="Paris"), get_time(tz="UTC")]``.

The output is a Python list of calls with keyword arguments, at the start of the output
(Llama 4 may wrap it in ``<|python_start|>`` ... ``<|python_end|>``); Gemma's template puts
text after the list. Argument values are Python literals (strings in either quote style
with escapes, ints, floats, True/False/None, lists, tuples, dicts); JSON's true/false/null
are read too, since Gemma's template renders history values with ``tojson``.

``arguments`` is canonical JSON built as the call arrives: ``{`` when the name is known, then
``"city": "Paris"`` once that value is complete, then ``}`` when the call closes, so it only
grows.
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any, ClassVar

from midtier.core.messages import Message, ResponseFormat, ToolChoice, ToolSpec
from midtier.formats._json import skip_ws
from midtier.formats.base import (
    Format,
    Markers,
    Parsed,
    ParsedCall,
    Run,
    answer_rule,
    empty_content,
    free_text,
    json_schema_lark,
    settled_text,
    shown,
    strict_schema,
    strip_after,
    text_run,
    unsettled,
)

PYTHON_START = "<|python_start|>"
PYTHON_END = "<|python_end|>"
#: end-of-turn markers the engine normally stops on; dropped if they end the text
_ENDS = ("<|eot|>", "<|eom|>", "<end_of_turn>", "<|eot_id|>", "<|eom_id|>")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_PARAM = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")
_NUMBER = re.compile(r"[-+]?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]*)?")
_KEYWORDS: dict[str, Any] = {"True": True, "False": False, "None": None, "true": True, "false": False,
                             "null": None}
#: free text that starts like a list of calls: in auto mode that can only be calls
_STARTS_LIKE_CALLS = r"[ \t\r\n]*\[[ \t\r\n]*[A-Za-z_][A-Za-z0-9_.\-]*[ \t\r\n]*\((?s:.*)"
_TERMINALS = {
    "PY_STR": r"""/"([^"\\\n]|\\.)*"|'([^'\\\n]|\\.)*'/""",
    "INT": r"/-?(0|[1-9][0-9]*)/",
    "NUM": r"/-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?/",
    "BOOL": '"True" | "False" | "true" | "false"',
    "NONE": '"None" | "null"',
}


class PythonicFormat(Format):
    key = "pythonic"
    # the example both pythonic templates give (llama-4-pythonic, gemma-3-pythonic)
    markers: ClassVar[tuple[str, ...]] = ("[func_name1(",)
    priority = 0
    #: where a parse starts (a resumed one, see ``Settled``): at the output's start ("start"),
    #: in text before any tag ("head"), inside the list after a call and its comma ("list"),
    #: right after the list ("closed"), in the text after it ("after"); after content that is
    #: not blank
    phase = "start"
    text_before = False

    # -- layer 2 -----------------------------------------------------------------------------
    def prepare(self, messages: list[Message], tools: list[ToolSpec]) -> tuple[list[Message], list[ToolSpec]]:
        """Gemma's template raises on an assistant turn whose text is ``None``."""
        return empty_content(messages, "assistant"), tools

    # -- layer 3 -----------------------------------------------------------------------------
    def grammar(self, tools: list[ToolSpec], choice: ToolChoice, response_format: ResponseFormat,
                markers: Markers, *, ban_stray_json: bool = False) -> str | None:
        callable_tools = choice.callable_tools(tools)
        text = free_text(markers, ban_stray_json=ban_stray_json)
        if tools:
            text = f"({text}) & ~/{_STARTS_LIKE_CALLS}/"
        lines = [f"TEXT: {text}"]
        answer = answer_rule(response_format, "TEXT")
        if not callable_tools:
            return "\n".join([f"start: {answer}", *lines]) + "\n"
        used: set[str] = set()
        for t, tool in enumerate(callable_tools):
            lines += _call_rules(t, tool, used)
        # the first call's lexeme is "[name(": free text is ruled out at the same "(" that
        # completes it (a lone "[" lexeme would lose to the longer text lexeme)
        lines.append("first: " + " | ".join(f"first_call_{t}" for t in range(len(callable_tools))))
        lines.append("call: " + " | ".join(f"call_{t}" for t in range(len(callable_tools))))
        lines.append('calls: first (", " call)* "]"' if choice.parallel else 'calls: first "]"')
        lines += [f"{name}: {body}" for name, body in _TERMINALS.items() if name in used]
        start = "start: calls" if choice.mode == "required" else f"start: {answer} | calls"
        return "\n".join([start, *lines]) + "\n"

    # -- layer 4 -----------------------------------------------------------------------------
    def parse(self, text: str, partial: bool) -> Parsed:
        out = Parsed()
        marks: list[tuple[int, int]] = []  # in the list, after a call and its comma: offset, calls so far
        head, region = "", 0
        if self.phase == "list":  # a resumed parse (see Settled), inside the list after a call
            tail = _read_list(text, 0, partial, out.calls, inside=True, marks=marks)
        elif self.phase in ("closed", "after"):
            tail = 0
        else:
            i = skip_ws(text, 0)
            tag = text.find(PYTHON_START)
            if self.phase == "start" and i < len(text) and text[i] == "[":
                region = i
            elif tag >= 0:
                head, region = text[:tag], skip_ws(text, tag + len(PYTHON_START))
            else:
                out.content = strip_after(shown(text, partial, _HELD, _ENDS), self.text_before)
                if partial and (i < len(text) or self.phase == "head"):  # no list at the start: text
                    cut = len(text) - unsettled(text, _HELD, _ENDS)
                    out.settled = settled_text(self, cut, text[:cut], 0, phase="head")
                    out.run = text_run(out.settled, _HELD if cut == len(text) else None)
                return out
            tail = _read_list(text, region, partial, out.calls, marks=marks)
        any_calls = bool(out.calls) or self.phase not in ("start", "head")  # here or before
        after = -1
        if tail is not None:
            after = tail
            if self.phase != "after":
                after = skip_ws(text, tail)
                if text.startswith(PYTHON_END, after):
                    after += len(PYTHON_END)
            rest = text[after:] if any_calls else text[len(head):]
            out.content = strip_after(head + shown(rest, partial, _HELD, _ENDS), self.text_before)
        else:
            out.content = strip_after(head, self.text_before)
        if partial:
            if tail is None and out.calls and not out.calls[-1].done:
                out.run = out.calls[-1].run  # inside the last call's arguments
            if tail is not None and (not any_calls or self.phase == "after" or after < len(text)
                                     and not PYTHON_END.startswith(text[after:])):
                # the text after the list (or from the tag, when no call came)
                at = after if any_calls else len(head)
                cut = len(text) - unsettled(text[at:], _HELD, _ENDS)
                out.settled = settled_text(self, cut, head + text[at:cut], len(out.calls), phase="after")
                out.run = text_run(out.settled, _HELD if cut == len(text) else None)
            elif tail is not None:
                out.settled = settled_text(self, tail, head, len(out.calls), phase="closed")
            elif marks and (marks[-1][1] or self.phase == "list"):
                out.settled = settled_text(self, marks[-1][0], head, marks[-1][1], phase="list")
            elif head:
                out.settled = settled_text(self, len(head), head, 0, phase="head")
        return out



_HELD = (PYTHON_START, PYTHON_END, *_ENDS)


# -- the grammar ------------------------------------------------------------------------------

def _call_rules(t: int, tool: ToolSpec, used: set[str]) -> list[str]:
    """Rules for one call: keyword arguments in the schema's order, the required ones
    always, the others optionally, each value typed by its schema."""
    params = strict_schema(tool.parameters or {})
    props: dict[str, Any] = params.get("properties") or {}
    required = set(params.get("required") or [])
    keys = list(props)
    n = len(keys)
    lines = [f"kv_{t}_{i}: {json.dumps(k + '=')} {_value_rule(props[k], used)}" for i, k in enumerate(keys)]
    # rest_i: the arguments from i on, after at least one was written; first_i: the first written is i or later
    for i in range(n - 1, -1, -1):
        nxt = f" rest_{t}_{i + 1}" if i + 1 < n else ""
        kv = f'", "? kv_{t}_{i}'  # Gemma's template renders no "," between arguments
        lines.append(f"rest_{t}_{i}: {kv}{nxt}" if keys[i] in required else f"rest_{t}_{i}: ({kv})?{nxt}")
        alts = [f"kv_{t}_{i}{nxt}"]
        if keys[i] not in required and i + 1 < n:
            alts.append(f"first_{t}_{i + 1}")
        lines.append(f"first_{t}_{i}: " + " | ".join(alts))
    body = "" if n == 0 else f" first_{t}_0" + ("" if required & set(keys) else "?")
    lines.append(f'call_{t}: {json.dumps(tool.name + "(")}{body} ")"')
    lines.append(f'first_call_{t}: {json.dumps("[" + tool.name + "(")}{body} ")"')
    return lines


def _value_rule(schema: Any, used: set[str]) -> str:
    """A Python literal for a value of ``schema``: scalars as Python spells them, the rest as JSON."""
    if not isinstance(schema, dict):
        return json_schema_lark({})
    choices = schema.get("enum", [schema["const"]] if "const" in schema else None)
    if isinstance(choices, list) and choices and all(isinstance(c, str) for c in choices):
        return "(" + " | ".join(json.dumps(json.dumps(c, ensure_ascii=False)) for c in choices) + ")"
    kind = schema.get("type")
    plain = not (set(schema) - {"type", "description", "title", "default", "examples"})
    terminal = {"string": "PY_STR", "integer": "INT", "number": "NUM", "boolean": "BOOL", "null": "NONE"}.get(
        kind if isinstance(kind, str) else "")
    if terminal is not None and plain:
        used.add(terminal)
        return terminal
    return json_schema_lark(schema)


# -- the parser -------------------------------------------------------------------------------

class _Incomplete(Exception):
    """The text ends inside the value."""


class _Bad(Exception):
    """The text is not a Python literal."""


def _read_list(text: str, i: int, partial: bool, calls: list[ParsedCall], *, inside: bool = False,
               marks: list[tuple[int, int]] | None = None) -> int | None:
    """Read ``[call(...), ...]`` from ``text[i]`` into ``calls``. Returns where the text after
    the calls starts (with no call read, any offset: all of it is text), or None while
    nothing after the calls is text yet. ``inside``: ``text[i]`` is inside the list, after a
    call and its comma (a resumed parse); ``marks`` gets, after each comma, where reading
    goes on and how many calls ``calls`` then holds."""
    n = len(text)
    if not inside:
        if i >= n:
            return None
        if text[i] != "[":
            return i
        i += 1
    while True:
        i = skip_ws(text, i)
        m = _NAME.match(text, i)
        j = skip_ws(text, m.end()) if m else i
        if j >= n:  # the name, or the list, is still arriving
            return None if partial or calls or inside else i
        if m is None or text[j] != "(":
            return i  # not a call: text from here (all of it when no call came before)
        call = ParsedCall(name=m.group(), arguments="{")
        calls.append(call)
        end, malformed = _read_arguments(text, j + 1, call)
        if end is None:
            call.done = not partial
            return None
        if malformed:
            return end
        i = skip_ws(text, end)
        if i >= n:
            return None
        if text[i] == "]":
            return i + 1
        if text[i] != ",":
            return i
        i += 1
        if marks is not None:
            marks.append((i, len(calls)))


def _read_arguments(text: str, i: int, call: ParsedCall) -> tuple[int | None, bool]:
    """Read ``key=value, ...)`` into ``call.arguments``: (one past the ``)`` or, when the
    arguments stop being Python, where the text that follows starts, or None when the text
    ends first; whether they stopped being Python)."""
    n = len(text)
    first = True
    while True:
        i = skip_ws(text, i)
        if i >= n:
            return None, False
        if text[i] == ")":
            call.arguments += "}"
            call.done = True
            return i + 1, False
        m = _PARAM.match(text, i)
        j = skip_ws(text, m.end()) if m else i
        if m is not None and j >= n:
            return None, False
        if m is None or text[j] != "=":
            return _malformed(call, j)
        j = skip_ws(text, j + 1)
        try:
            value, end = _value(text, j)
            encoded = json.dumps(value, ensure_ascii=False, allow_nan=False)
        except _Incomplete:
            call.run = _string_run(text, j)
            return None, False
        except (_Bad, ValueError, RecursionError):
            return _malformed(call, j)
        k = skip_ws(text, end)
        if k >= n:
            return None, False  # "," or ")" not there yet: a number may still grow
        # Gemma's template writes keyword arguments with no "," between them
        if text[k] not in ",)" and not _PARAM.match(text, k):
            return _malformed(call, k)
        call.arguments += ("" if first else ", ") + json.dumps(m.group()) + ": " + encoded
        first = False
        i = k + 1 if text[k] == "," else k


def _string_run(text: str, i: int) -> Run | None:
    """The run (see ``Run``) of an argument that is a string literal from ``text[i]`` to the
    end of ``text``, if it is one: nothing changes until its quote, or an escape, comes."""
    q = text[i:i + 1]
    if not q or q not in "\"'" or "\\" in text[i:] or (text.startswith(q * 2, i) and i + 2 >= len(text)):
        return None  # not a string, an escape (it may go wrong), or "" that may open """
    return Run("silent", stops=q + "\\")


def _malformed(call: ParsedCall, i: int) -> tuple[int, bool]:
    """Close a call whose arguments stopped being Python at ``i``; the text from there is content."""
    call.arguments += "}"
    call.done = True
    return i, True


def _value(text: str, i: int) -> tuple[Any, int]:
    """One Python literal starting at ``text[i]``: (value, one past its end)."""
    n = len(text)
    if i >= n:
        raise _Incomplete
    c = text[i]
    if c in "\"'":
        return _string(text, i)
    if c in "[(":
        items, end = _sequence(text, i + 1, "]" if c == "[" else ")")
        return items, end
    if c == "{":
        return _dict(text, i + 1)
    if c in "-+0123456789.":
        return _number(text, i)
    m = _PARAM.match(text, i)
    if m is None:
        raise _Bad
    if m.end() == n:
        raise _Incomplete  # "Tru" may become "True"
    if m.group() in _KEYWORDS:
        return _KEYWORDS[m.group()], m.end()
    # "truesnooze=2": a keyword and the next argument's name with no "," between them (Gemma)
    for word, value in _KEYWORDS.items():
        if m.group().startswith(word) and text.startswith("=", skip_ws(text, m.end())):
            return value, i + len(word)
    raise _Bad


def _number(text: str, i: int) -> tuple[Any, int]:
    m = _NUMBER.match(text, i)
    assert m is not None  # the pattern matches the empty string
    if m.end() == len(text):
        raise _Incomplete
    token = m.group().replace("_", "")
    try:
        if re.fullmatch(r"[-+]?[0-9]+", token):
            return int(token), m.end()
        return float(token), m.end()
    except ValueError:
        raise _Bad from None


def _sequence(text: str, i: int, close: str) -> tuple[list[Any], int]:
    items: list[Any] = []
    while True:
        i = skip_ws(text, i)
        if i >= len(text):
            raise _Incomplete
        if text[i] == close:
            return items, i + 1
        value, i = _value(text, i)
        items.append(value)
        i = skip_ws(text, i)
        if i >= len(text):
            raise _Incomplete
        if text[i] == ",":
            i += 1
        elif text[i] != close:
            raise _Bad


def _dict(text: str, i: int) -> tuple[dict[str, Any], int]:
    out: dict[str, Any] = {}
    while True:
        i = skip_ws(text, i)
        if i >= len(text):
            raise _Incomplete
        if text[i] == "}":
            return out, i + 1
        key, i = _value(text, i)
        if isinstance(key, (list, dict)):
            raise _Bad
        i = skip_ws(text, i)
        if i >= len(text):
            raise _Incomplete
        if text[i] != ":":
            raise _Bad
        value, i = _value(text, skip_ws(text, i + 1))
        out[key if isinstance(key, str) else json.dumps(key)] = value
        i = skip_ws(text, i)
        if i >= len(text):
            raise _Incomplete
        if text[i] == ",":
            i += 1
        elif text[i] != "}":
            raise _Bad


_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"', "a": "\a", "b": "\b",
                   "f": "\f", "v": "\v", "\n": ""}


def _string(text: str, i: int) -> tuple[str, int]:
    """A string literal in either quote style, single or triple quoted, with Python's escapes."""
    n = len(text)
    q = text[i]
    if text.startswith(q * 2, i):
        if i + 2 >= n:
            raise _Incomplete  # "" or the start of """
        if text[i + 2] != q:
            return "", i + 2
    quote = q * 3 if text.startswith(q * 3, i) else q
    j = i + len(quote)
    out: list[str] = []
    while True:
        if j >= n:
            raise _Incomplete
        c = text[j]
        if text.startswith(quote, j):
            break
        if c == "\\":
            if j + 1 >= n:
                raise _Incomplete
            j = _escape(text, j + 1, out)
            continue
        out.append(c)
        j += 1
    value = "".join(out)
    try:
        # join surrogate pairs written as two \\u escapes
        value = value.encode("utf-16", "surrogatepass").decode("utf-16")
    except UnicodeError:
        raise _Bad from None
    return value, j + len(quote)


def _escape(text: str, j: int, out: list[str]) -> int:
    """Decode the escape whose letter is at ``text[j]``; returns where the string goes on."""
    c = text[j]
    if c in _SIMPLE_ESCAPES:
        out.append(_SIMPLE_ESCAPES[c])
        return j + 1
    width = {"x": 2, "u": 4, "U": 8}.get(c)
    if width is not None:
        digits = text[j + 1:j + 1 + width]
        if len(digits) < width and re.fullmatch(r"[0-9a-fA-F]*", digits):
            raise _Incomplete
        if not re.fullmatch(r"[0-9a-fA-F]+", digits) or int(digits, 16) > 0x10FFFF:
            raise _Bad
        out.append(chr(int(digits, 16)))
        return j + 1 + width
    if c in "01234567":
        m = re.match(r"[0-7]{1,3}", text[j:j + 3])
        assert m is not None
        out.append(chr(int(m.group(), 8)))
        return j + m.end()
    if c == "N":
        end = text.find("}", j)
        if end < 0:
            raise _Incomplete
        if text[j + 1] != "{":
            raise _Bad
        try:
            out.append(unicodedata.lookup(text[j + 2:end]))
        except KeyError:
            raise _Bad from None
        return end + 1
    out.append("\\" + c)  # an unknown escape keeps its backslash, as in Python
    return j + 1
