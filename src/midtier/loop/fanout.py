"""Parallel calls for models that write one call per turn: a list of values fans out.

Small models almost never write a second call block (Qwen2.5-Coder-0.5B: P < 0.01 after
its first call, even for "the weather in Paris and in Tokyo"), yet they readily put two
cities in a list. When parallel calls are allowed, each tool's first required scalar
parameter is shown to the model as "one value, or a list of values: one call for each",
the grammar allows that list, and a call that uses it becomes one call per value. What
the client sees is only ever calls that match its own schema.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from midtier.core.events import StreamEvent, ToolCallArgsDelta, ToolCallDone, ToolCallStart
from midtier.core.messages import ToolSpec

_SCALARS = ("string", "integer", "number")


def fan_parameter(tool: ToolSpec) -> str | None:
    """The parameter a list may stand for, or None: the first required scalar one."""
    if tool.kind != "function" or not tool.fan_out:
        return None
    props = tool.parameters.get("properties") or {}
    for name in tool.parameters.get("required") or []:
        spec = props.get(name)
        if isinstance(spec, dict) and spec.get("type") in _SCALARS and "anyOf" not in spec:
            return str(name)
    return None


MAX_FAN = 8  # calls one listed parameter may fan out into


def fan_out_tools(tools: list[ToolSpec]) -> tuple[list[ToolSpec], dict[str, str]]:
    """The tools as the model sees them, and which parameter of which tool may be a list."""
    shown: list[ToolSpec] = []
    fan: dict[str, str] = {}
    for tool in tools:
        name = fan_parameter(tool)
        if name is None:
            shown.append(tool)
            continue
        fan[tool.name] = name
        spec = dict(tool.parameters["properties"][name])
        note = "One value, or a list of values to make one call for each."
        described = f"{spec.get('description', '').rstrip('.')}. {note}".lstrip(". ")
        spec.pop("description", None)
        # a small model may repeat a list's items until it runs out of tokens: a list is short
        listed = {"anyOf": [spec, {"type": "array", "items": spec, "minItems": 1, "maxItems": MAX_FAN}],
                  "description": described}
        params = {**tool.parameters, "properties": {**tool.parameters["properties"], name: listed}}
        shown.append(replace(tool, parameters=params))
    return shown, fan


def _is_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


class FanOut:
    """Rewrites a turn's events: a call whose fanned parameter holds a list becomes one call
    per value. Such a call is held until it is whole; other events pass at once."""

    def __init__(self, fan: dict[str, str], make_id: Callable[[], str]) -> None:
        self.fan = fan
        self.make_id = make_id
        self.index: dict[int, int] = {}  # a call's index in the model's output -> in the turn's
        self.next = 0
        self.held: dict[int, tuple[ToolCallStart, list[str]]] = {}
        self.emitted: set[int] = set()  # calls passed on whole before their block closed

    def filter(self, events: list[StreamEvent]) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        for event in events:
            if isinstance(event, ToolCallStart):
                if event.name in self.fan:
                    self.held[event.index] = (event, [])
                else:
                    self.index[event.index] = self.next
                    self.next += 1
                    out.append(replace(event, index=self.index[event.index]))
            elif isinstance(event, ToolCallArgsDelta | ToolCallDone) and event.index in self.held:
                start, parts = self.held[event.index]
                if isinstance(event, ToolCallArgsDelta):
                    parts.append(event.delta)
                    whole = "".join(parts)
                    if _is_object(whole):  # whole before its block closes: pass it on now
                        del self.held[event.index]
                        self.emitted.add(event.index)
                        out += self._emit(start, whole)
                else:
                    del self.held[event.index]
                    out += self._emit(start, event.arguments)
            elif isinstance(event, ToolCallArgsDelta | ToolCallDone) and event.index in self.emitted:
                continue
            elif isinstance(event, ToolCallArgsDelta | ToolCallDone):
                out.append(replace(event, index=self.index[event.index]))
            else:
                out.append(event)
        return out

    def _emit(self, start: ToolCallStart, arguments: str) -> list[StreamEvent]:
        texts = [arguments]
        try:
            args: Any = json.loads(arguments)
        except ValueError:
            args = None
        key = self.fan[start.name]
        if isinstance(args, dict) and isinstance(args.get(key), list) and args[key]:
            texts = [json.dumps({**args, key: value}, ensure_ascii=False) for value in args[key]]
        out: list[StreamEvent] = []
        for i, text in enumerate(texts):
            index, self.next = self.next, self.next + 1
            call_id = start.id if i == 0 else self.make_id()
            out += [ToolCallStart(index, call_id, start.name, start.type), ToolCallArgsDelta(index, text),
                    ToolCallDone(index, text)]
        return out
