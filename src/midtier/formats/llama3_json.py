"""Llama 3.1 / 3.2 / 3.3 (and Llama 4 JSON) tool calls: ``{"name": ..., "parameters": {...}}``.

The model answers with a bare JSON object, optionally after ``<|python_tag|>``; several
calls follow each other separated by ``; `` (Llama 4's prompt asks for it), a newline or
nothing. The turn ends with ``<|eom_id|>`` or ``<|eot_id|>``, which the engine stops on.
Tool results go in the ``ipython`` role; the templates map our ``tool`` role themselves.

A bare JSON object at the start of the output IS the syntax here, so free text in ``auto``
may not start with ``{`` (a ``{`` there must become a valid call), and the shared stray-JSON
steering is off. Only an object with a ``name`` string and a ``parameters`` (or
``arguments``) value is a call: any other JSON stays content.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import ClassVar

from midtier.core.messages import Message, ResponseFormat, ToolChoice, ToolSpec
from midtier.formats._json import Field, ObjectScan, arguments_text, scan_object, skip_ws
from midtier.formats.base import (
    Format,
    Markers,
    Parsed,
    ParsedCall,
    Run,
    answer_rule,
    call_schema,
    free_text,
    json_schema_lark,
    object_run,
    settled_text,
    shown,
    strip_after,
    text_run,
    unsettled,
)

PYTHON_TAG = "<|python_tag|>"
EOM = "<|eom_id|>"
EOT = "<|eot_id|>"
ARGS_KEYS = ("parameters", "arguments")
#: free text that starts like a JSON object: in auto mode that can only be a call
_STARTS_WITH_OBJECT = r"[ \t\r\n]*\{(?s:.*)"


class Llama3JsonFormat(Format):
    key = "llama3_json"
    # the instruction every Llama 3.x / Llama 4 JSON template writes (llama-3.1/3.2/3.3, llama-4-json)
    markers: ClassVar[tuple[str, ...]] = ('"parameters": dictionary of argument name and its value',)
    priority = 0
    steer_stray_json = False
    #: where a parse starts (a resumed one, see ``Settled``): at the output's start ("start"),
    #: in text before any tag ("head"), after a call ("calls"), in the text after the calls
    #: ("after"); after content that is not blank
    phase = "start"
    text_before = False

    # -- layer 2 -----------------------------------------------------------------------------
    def prepare(self, messages: list[Message], tools: list[ToolSpec]) -> tuple[list[Message], list[ToolSpec]]:
        """The Llama 3.x templates render one call per assistant turn (``raise_exception``
        otherwise): a turn with several calls is written as the model writes them, objects
        separated by ``; ``, as its text. A ``None`` text would render as ``None`` or ``null``."""
        out: list[Message] = []
        for m in messages:
            if m.role == "assistant" and len(m.tool_calls) > 1:
                text = "; ".join(_call_text(c.name, c.arguments_object()) for c in m.tool_calls)
                m = replace(m, content=text, tool_calls=[])
            elif m.role == "assistant" and m.content is None:
                m = replace(m, content="")
            out.append(m)
        return out, tools

    # -- layer 3 -----------------------------------------------------------------------------
    def grammar(self, tools: list[ToolSpec], choice: ToolChoice, response_format: ResponseFormat,
                markers: Markers, *, ban_stray_json: bool = False) -> str | None:
        callable_tools = choice.callable_tools(tools)
        text = free_text(markers, PYTHON_TAG, ban_stray_json=ban_stray_json)
        if tools:
            # with tools, text that starts with "{" reads as a call: in auto it must be a valid
            # one, with none it cannot be written at all
            text = f"({text}) & ~/{_STARTS_WITH_OBJECT}/"
        lines = [f"TEXT: {text}"]
        answer = answer_rule(response_format, "TEXT")
        if not callable_tools:
            return "\n".join([f"start: {answer}", *lines]) + "\n"
        tag = markers.lit(PYTHON_TAG)
        schema = {"anyOf": [call_schema(t, args_key="parameters") for t in callable_tools]}
        lines.append(f"call: {json_schema_lark(schema)}")
        # "; " as Llama 4's prompt asks, a newline, or nothing (the Llama 4 template's own rendering)
        lines.append('SEP: /;[ \\n]?|\\n/')
        lines.append("calls: call (SEP? call)*" if choice.parallel else "calls: call")
        lines.append(markers.text_then("lead", "TEXT", PYTHON_TAG))  # text, then the tag
        if choice.mode == "required":
            start = f"start: {tag}? calls"
        elif answer == "TEXT":
            start = "start: TEXT | lead calls | calls"
        else:
            start = f"start: {answer} | {tag}? calls"
        return "\n".join([start, *lines]) + "\n"

    # -- layer 4 -----------------------------------------------------------------------------
    def parse(self, text: str, partial: bool) -> Parsed:
        out = Parsed()
        marks: list[tuple[int, int]] = []  # after each whole call: offset, calls so far
        runs: list[Run] = []
        if self.phase == "calls":  # a resumed parse (see Settled), after a call
            head, region = "", 0
        elif self.phase == "after":
            head, region = "", -1
        else:
            start = skip_ws(text, 0)
            if self.phase == "start" and start < len(text) and text[start] == "{":
                head, region = "", start
            else:
                tag = text.find(PYTHON_TAG)
                if tag < 0:
                    out.content = strip_after(shown(text, partial, _HELD, _ENDS), self.text_before)
                    if partial and start < len(text):  # no call at the start: text, up to a tag
                        cut = len(text) - unsettled(text, _HELD, _ENDS)
                        out.settled = settled_text(self, cut, text[:cut], 0, phase="head")
                        out.run = text_run(out.settled, _HELD if cut == len(text) else None)
                    return out
                head, region = text[:tag], tag + len(PYTHON_TAG)
        if region < 0:
            tail: str | None = text
        else:
            tail = _read_calls(text, region, partial, out.calls, self.phase == "calls", marks, runs)
            if not out.calls and tail is not None and self.phase != "calls":
                # the first object is not a call: everything from the tag (or the "{") on is text
                tail = text[len(head):]
        out.content = strip_after(head + shown(tail or "", partial, _HELD, _ENDS), self.text_before)
        if partial:
            if tail is None and runs:
                out.run = runs[-1]  # the output ends inside a call's object
            if tail is not None:  # the text after the calls (or instead of them)
                at, cut = len(text) - len(tail), len(text) - unsettled(tail, _HELD, _ENDS)
                out.settled = settled_text(self, cut, head + text[at:cut], len(out.calls), phase="after")
                out.run = text_run(out.settled, _HELD if cut == len(text) else None)
            elif marks:
                out.settled = settled_text(self, marks[-1][0], head, marks[-1][1], phase="calls")
            elif head:
                out.settled = settled_text(self, len(head), head, 0, phase="head")
        return out



def _call_text(name: str, arguments: object) -> str:
    return json.dumps({"name": name, "parameters": arguments}, ensure_ascii=False)


_HELD = (PYTHON_TAG, EOM, EOT)
_ENDS = (EOM, EOT)


def _read_calls(text: str, i: int, partial: bool, calls: list[ParsedCall], before: bool = False,
                marks: list[tuple[int, int]] | None = None, runs: list[Run] | None = None) -> str | None:
    """Read calls from ``text[i]`` on into ``calls``; returns the text after them that is
    content, or None when nothing after them is content (yet). ``before``: calls came
    before ``text[i]`` (a resumed parse); ``marks`` gets where each whole call ends and how
    many calls ``calls`` then holds; ``runs`` the run (see ``Run``) a partial parse ends in
    inside an object, if it does."""
    n = len(text)
    while True:
        j = skip_ws(text, i)
        if (calls or before) and j < n and text[j] == ";":
            j = skip_ws(text, j + 1)
        if j >= n:
            return None
        if text[j] != "{":
            # not (the start of) another call: the rest is text
            return text[j:]
        call, end, run = _read_object(text, j, final=not partial)
        if run is not None and runs is not None:
            runs.append(run)
        if call is None:
            if end is None and partial:
                return None  # undecided: hold everything from here back
            return text[j:]
        calls.append(call)
        if end is None:
            return None
        if marks is not None:
            marks.append((end, len(calls)))
        i = end


def _read_object(text: str, i: int, final: bool) -> tuple[ParsedCall | None, int | None, Run | None]:
    """The call the object at ``text[i]`` is: (call or None, end of the object or None),
    and while it is arriving (not ``final``), the run (see ``Run``) it ends in, if it does.

    (None, None) means undecided (the object is still arriving and may still be a call);
    (None, end) means it is not a call. Once an object has a ``name`` string and arguments
    it is a call for good: what goes wrong after that ends it, it does not undo it.
    """
    scan = scan_object(text, i)
    call, end = _object_call(text, scan, final)
    run = object_run(text, i, _args_field(scan), (), call is not None) if end is None and not final else None
    return call, end, run


def _object_call(text: str, scan: ObjectScan, final: bool) -> tuple[ParsedCall | None, int | None]:
    name = scan.complete_string(text, "name")
    args = _args_field(scan)
    if name is None or args is None or args.start < 0 or text[args.start] not in '{"':
        name_field = scan.fields.get("name")
        if (scan.error is not None or (name_field is not None and name_field.end is not None and name is None)
                or (args is not None and args.start >= 0 and text[args.start] not in '{"')):
            return None, len(text)  # malformed, a name that is not a string, or arguments of another type
        if scan.end is not None:
            return None, scan.end
        return None, (len(text) if final else None)
    arguments = arguments_text(text, args)
    end = scan.end if scan.error is None else scan.error  # after malformed JSON the rest is text
    return ParsedCall(name=name, arguments=arguments, done=end is not None or final), end


def _args_field(scan: ObjectScan) -> Field | None:
    return next((f for k, f in scan.fields.items() if k in ARGS_KEYS), None)
