"""Values written raw in tags and typed by the tool's schema (glm45, minimax_m2, functiongemma).

These families write a string argument as its bare text and anything else as JSON
(``<arg_value>Paris</arg_value>``, ``<arg_value>3</arg_value>``), so reading a value back
needs the tool's schema: a format that reads them is a ``TypedValues`` and learns the
schemas from ``with_tools``. Without a schema a value that reads as JSON is taken as JSON.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from typing import Any, TypeVar

from midtier.core.messages import ToolSpec
from midtier.formats.base import Format, Markers, Run, held_prefix, json_schema_lark

T = TypeVar("T", bound="TypedValues")

#: a tool's or a parameter's name as these formats write it
NAME = re.compile(r"[\w.\-]+")

_PY_LITERALS = {"True": True, "False": False, "None": None}


def schema_types(schema: dict[str, Any] | None) -> set[str]:
    """The JSON types a property schema allows (empty: unknown, anything)."""
    if not schema:
        return set()
    t = schema.get("type")
    if isinstance(t, str):
        return {t}
    if isinstance(t, list):
        return {x for x in t if isinstance(x, str)}
    out: set[str] = set()
    for key in ("anyOf", "oneOf"):
        for sub in schema.get(key) or []:
            if isinstance(sub, dict):
                out |= schema_types(sub)
    if "enum" in schema and not out:
        out = {json_type(v) for v in schema["enum"]}
    return out


def json_type(value: Any) -> str:
    """The JSON type of a decoded JSON value."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if value is None:
        return "null"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else "string"


def is_string(schema: dict[str, Any] | None) -> bool:
    return schema_types(schema) == {"string"}


def value_json(raw: str, schema: dict[str, Any] | None) -> str:
    """The JSON text of a value the model wrote raw: a string when the schema says so (or
    when it reads as nothing else), else the JSON it spells."""
    if is_string(schema):
        return json.dumps(raw, ensure_ascii=False)
    types = schema_types(schema)
    text = raw.strip()
    try:
        value = json.loads(text)
    except ValueError:
        if text not in _PY_LITERALS:
            return json.dumps(raw, ensure_ascii=False)
        value = _PY_LITERALS[text]
    if types and "string" in types and json_type(value) not in types and not (
            json_type(value) == "integer" and "number" in types):
        return json.dumps(raw, ensure_ascii=False)
    return json.dumps(value, ensure_ascii=False)


def partial_string(raw: str) -> str:
    """The JSON text of a string value still arriving: the opening quote, no closing one."""
    return json.dumps(raw, ensure_ascii=False)[:-1]


def read_value(body: str, start: int, close: str, schema: dict[str, Any] | None, closed: bool,
               typed: Callable[[str, dict[str, Any] | None], str] = value_json) -> tuple[str | None, int | None]:
    """The value written raw from ``start`` up to ``close``: its JSON text (``typed`` types it)
    and one past ``close``. While ``close`` has not come, the end is None and the text is the
    value so far when it is a string (it streams, short of a start of ``close``), all of it
    when the block it is in ``closed`` (it ends there), else None."""
    end = body.find(close, start)
    if end >= 0:
        return typed(body[start:end], schema), end + len(close)
    raw = body[start:]
    if closed:
        return typed(raw, schema), None
    if is_string(schema):
        return partial_string(raw[: len(raw) - held_prefix(raw, close)]), None
    return None, None


def value_run(schema: dict[str, Any] | None, markers: tuple[str, ...]) -> Run:
    """The run (see ``Run``) of a value still arriving that ``markers`` end (its close tag
    first, see ``read_value``): a string streams, escaped; anything else shows once whole."""
    return Run("args", markers, escape=True) if is_string(schema) else Run("silent", markers)


def tool_properties(tools: list[ToolSpec]) -> dict[str, dict[str, Any]]:
    return {t.name: dict((t.parameters or {}).get("properties") or {}) for t in tools}


class TypedValues(Format):
    """A format whose parser types raw values by the tools' schemas (see ``with_tools``)."""

    def __init__(self) -> None:
        self.properties: dict[str, dict[str, Any]] = {}  # tool name -> its parameters' schemas

    def with_tools(self: T, tools: list[ToolSpec]) -> T:
        """A copy whose parser types values by these tools' schemas."""
        other = copy.copy(self)
        other.properties = tool_properties(tools)
        return other


def value_lark(markers: Markers, schema: dict[str, Any], close: str, raw: str) -> str:
    """A Lark expression for a value of this property schema as the templates write it, then
    ``close``: a string raw (the rule ``raw``: text up to and including ``close``; the options
    of a string enum), anything else as JSON (or raw, when it may also be a string)."""
    types = schema_types(schema)
    if types == {"string"}:
        options = schema.get("enum") if "enum" in schema else [schema["const"]] if "const" in schema else None
        if options is None:
            return raw
        alts = " | ".join(json.dumps(o) for o in options if isinstance(o, str)) or '""'
        return f"({alts}) {markers.lit(close)}"
    as_json = f"{json_schema_lark(schema)} {markers.lit(close)}"
    return f"({as_json} | {raw})" if not types or "string" in types else as_json


def value_rules(markers: Markers, name: str, schema: dict[str, Any], close: str) -> list[str]:
    """Lark lines for the rule ``name``: a value of this property schema (see ``value_lark``)."""
    raw = f"{name}_raw"
    value = value_lark(markers, schema, close, raw)
    if value != raw and not value.endswith(f" | {raw})"):
        return [f"{name}: {value}"]
    term = raw.upper() + "_TEXT"
    return [f"{name}: {value}", markers.text_then(raw, term, close), f"{term}: /(?s:.*)/"]
