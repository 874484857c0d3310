"""A tolerant scanner for the top level of a JSON object that may still be arriving.

Formats use it to find a call's ``name`` and the raw text of its ``arguments`` in output
that can be cut anywhere. It never raises: what it cannot read it reports as not complete.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

_WS = " \t\r\n"
_IN_STRING = re.compile(r'["\\]')
_NOT_WS = re.compile(r"[^ \t\r\n]")
_STRUCTURE = re.compile(r'["{}\[\]]')


@dataclass
class Field:
    key: str
    start: int  # where the value's text starts (-1 if not started yet)
    end: int | None  # one past the value's last character; None while incomplete

    def raw(self, text: str) -> str:
        if self.start < 0:
            return ""
        return text[self.start:self.end if self.end is not None else len(text)]


@dataclass
class ObjectScan:
    fields: dict[str, Field]
    end: int | None  # one past the closing brace; None while incomplete
    error: int | None = None  # offset of the first character that is not JSON
    #: while incomplete: where a key or a bare value (number, true, false, null) still arriving
    #: starts; it may yet turn out not to be JSON, and the error would be reported there
    pending: int | None = None

    def complete_string(self, text: str, key: str) -> str | None:
        """The decoded value of a string field, once it is whole."""
        f = self.fields.get(key)
        if f is None or f.end is None or text[f.start] != '"':
            return None
        return _decoded(text, f.start, f.end)


def skip_ws(text: str, i: int) -> int:
    n = len(text)
    if i >= n or text[i] not in _WS:
        return i
    m = _NOT_WS.search(text, i)
    return m.start() if m is not None else n


def _string_end(text: str, i: int) -> int | None:
    """``text[i]`` is an opening quote; return one past the closing quote."""
    start = i + 1
    q = text.find('"', start)
    while q >= 0:
        b = q  # an odd run of backslashes before the quote escapes it
        while b > start and text[b - 1] == "\\":
            b -= 1
        if (q - b) % 2 == 0:
            return q + 1
        q = text.find('"', q + 1)
    return None


def _decoded(text: str, start: int, end: int) -> str | None:
    """The JSON string ``text[start:end]`` (quotes included) decoded; None if it is not valid."""
    raw = text[start + 1:end - 1]
    if "\\" not in raw and raw.isprintable():
        return raw
    try:
        value = json.loads(text[start:end])
    except ValueError:
        return None
    return value if isinstance(value, str) else None


def value_end(text: str, i: int) -> tuple[int | None, int | None]:
    """Scan one JSON value starting at ``text[i]``: (end, error offset)."""
    n = len(text)
    if i >= n:
        return None, None
    c = text[i]
    if c == '"':
        return _string_end(text, i), None
    if c in "{[":
        depth = 0
        while True:
            m = _STRUCTURE.search(text, i)
            if m is None:
                return None, None
            i = m.start()
            c = text[i]
            if c == '"':
                e = _string_end(text, i)
                if e is None:
                    return None, None
                i = e
                continue
            if c in "{[":
                depth += 1
            else:
                depth -= 1
                if depth == 0:
                    return i + 1, None
            i += 1
    # number, true, false, null
    j = i
    while j < n and text[j] not in ",}] \t\r\n":
        j += 1
    if j == n:
        return None, None
    token = text[i:j]
    try:
        json.loads(token)
    except ValueError:
        return None, i
    return j, None


def scan_object(text: str, i: int) -> ObjectScan:
    """Scan the object whose ``{`` is at ``text[i]``.

    A key written twice is an error at its second occurrence: the first value stands, so a
    call's name or arguments never change as the object arrives."""
    fields: dict[str, Field] = {}
    n = len(text)
    i += 1
    while True:
        i = skip_ws(text, i)
        if i >= n:
            return ObjectScan(fields, None)
        if text[i] == "}":
            return ObjectScan(fields, i + 1)
        if text[i] == "," and fields:
            i = skip_ws(text, i + 1)
            if i >= n:
                return ObjectScan(fields, None)
        if text[i] != '"':
            return ObjectScan(fields, None, error=i)
        kend = _string_end(text, i)
        if kend is None:
            return ObjectScan(fields, None, pending=i)
        key = _decoded(text, i, kend)
        if key is None:
            return ObjectScan(fields, None, error=i)
        if key in fields:
            return ObjectScan(fields, None, error=i)
        i = skip_ws(text, kend)
        if i >= n:
            return ObjectScan(fields, None)
        if text[i] != ":":
            return ObjectScan(fields, None, error=i)
        i = skip_ws(text, i + 1)
        if i >= n:
            fields[key] = Field(key, -1, None)
            return ObjectScan(fields, None)
        end, err = value_end(text, i)
        fields[key] = Field(key, i, end)
        if err is not None:
            return ObjectScan(fields, None, error=err)
        if end is None:
            return ObjectScan(fields, None, pending=None if text[i] in '"{[' else i)
        i = end


def is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def unwrapped(raw: str) -> str | None:
    """The JSON object text that the JSON string ``raw`` holds, if it is one (some models
    write a call's arguments as a string)."""
    try:
        inner = json.loads(raw)
    except ValueError:
        return None
    return inner if isinstance(inner, str) and is_json_object(inner) else None


def arguments_text(text: str, field: Field | None, keep_string: bool = True) -> str:
    """A call's arguments as far as they are known: the JSON text of ``field``'s value ("" with
    no field). A string value holding the object counts once it is whole, unwrapped; one that
    holds no object is kept as it is if ``keep_string``, else it is no arguments."""
    if field is None:
        return ""
    raw = field.raw(text)
    if field.start < 0 or text[field.start] != '"':
        return raw
    if field.end is None:
        return ""  # a string still arriving: wait until it is whole
    inner = unwrapped(raw)
    return inner if inner is not None else raw if keep_string else ""


# -- where JSON text still arriving stands ------------------------------------------------------

#: the state of JSON text that has not ended: how many brackets are open, whether it is
#: inside a string, and whether an escape is open there
JsonState = tuple[int, bool, bool]


def json_run(text: str, i: int, state: JsonState, floor: int = 1) -> JsonState | None:
    """Scan JSON text from ``text[i]`` on, starting in ``state``: the state at its end, or
    None once fewer than ``floor`` brackets are open outside strings (the value ended).
    Strings and escapes are read as ``value_end`` reads them; nothing else is checked."""
    depth, string, escaped = state
    n = len(text)
    if escaped:
        if i >= n:
            return state
        i, escaped = i + 1, False
    while i < n:
        if string:
            m = _IN_STRING.search(text, i)
            if m is None:
                return depth, True, False
            j = m.start()
            if text[j] == "\\":
                if j + 1 >= n:
                    return depth, True, True
                i = j + 2
                continue
            string, i = False, j + 1
            if depth < floor:
                return None
        else:
            m = _STRUCTURE.search(text, i)
            if m is None:
                return depth, False, False
            j = m.start()
            c = text[j]
            if c == '"':
                string = True
            elif c in "{[":
                depth += 1
            else:
                depth -= 1
                if depth < floor:
                    return None
            i = j + 1
    return depth, string, escaped


def open_json(text: str, i: int) -> JsonState | None:
    """The state at the end of ``text`` of the object or array at ``text[i]``; None when it
    ended."""
    return json_run(text, i, (0, False, False))
