"""Mistral tool calls, in both of the family's syntaxes.

- ``[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]``: Mistral Nemo, Mistral Small 3.1
  (``mistral`` key; the history may carry an ``"id"`` in each object).
- ``[TOOL_CALLS]NAME[ARGS]{...}``, one marker per call, optionally ``[CALL_ID]ID`` before
  ``[ARGS]``: tokenizers v11 and later, i.e. Mistral Small 3.2, Devstral, Ministral 3
  (``MistralV11Format``: ``for_template`` picks it when the template writes ``[ARGS]``).

The parser reads both (what follows ``[TOOL_CALLS]`` decides); the grammar writes the one
the instance is for. Ministral 3 reasoning models think first: ``[THINK]...[/THINK]``.
The templates require call ids of 9 alphanumeric characters; ``prepare`` maps API ids onto
that shape deterministically, and ``new_call_id`` makes ids of it.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import string
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from midtier.core.messages import Message, ResponseFormat, ToolChoice, ToolSpec
from midtier.formats._json import arguments_text, open_json, scan_object, skip_ws, value_end
from midtier.formats.base import (
    Format,
    Markers,
    Parsed,
    ParsedCall,
    Run,
    Settled,
    answer_rule,
    call_schema,
    free_text,
    held_prefix,
    json_args,
    json_schema_lark,
    object_run,
    resumed,
    shown,
    strict_schema,
    strip_after,
    text_run,
    unsettled,
)

if TYPE_CHECKING:
    from midtier.templates import ChatTemplate


TOOL_CALLS = "[TOOL_CALLS]"
ARGS = "[ARGS]"
CALL_ID = "[CALL_ID]"
THINK = "[THINK]"
THINK_END = "[/THINK]"
EOS = "</s>"
_ALNUM = string.ascii_letters + string.digits
_ID = re.compile(r"[A-Za-z0-9]{9}")
_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
_ID_SCHEMA = {"type": "string", "pattern": "^[a-zA-Z0-9]{9}$"}


class MistralFormat(Format):
    key = "mistral"
    markers: ClassVar[tuple[str, ...]] = (TOOL_CALLS,)
    priority = 0
    #: the syntax the grammar writes: "json" ([TOOL_CALLS][{...}]) or "args" ([TOOL_CALLS]name[ARGS]{...})
    syntax: ClassVar[Literal["json", "args"]] = "json"
    #: where a parse starts (a resumed one, see ``Settled``): at the output's start ("start"),
    #: inside reasoning ("think"), in text before any call ("text"), at a later [TOOL_CALLS]
    #: ("calls") or inside a list after an item and its comma ("array"), in the text after
    #: the calls ("after"); after reasoning and content that are not blank, after calls
    #: with these ids
    phase = "start"
    thought_before = False
    text_before = False
    ids: frozenset[str] = frozenset()

    def for_template(self, template: ChatTemplate) -> Format:
        """The syntax the template writes past calls in: ``[ARGS]`` means tokenizer v11."""
        if self.syntax == "json" and all(m in template.source for m in MistralV11Format.markers):
            return MistralV11Format()
        return self

    def new_call_id(self) -> str:
        return "".join(secrets.choice(_ALNUM) for _ in range(9))

    # -- layer 2 -----------------------------------------------------------------------------
    def prepare(self, messages: list[Message], tools: list[ToolSpec]) -> tuple[list[Message], list[ToolSpec]]:
        """Ids in the templates' shape (9 alphanumeric characters, ``raise_exception``
        otherwise), the same for a call and its result; a result without an id takes the
        next call's of the turn before. An assistant text of ``None`` becomes ``""``
        (Devstral's and Ministral's templates index or measure it)."""
        out: list[Message] = []
        pending: list[str] = []
        for m in messages:
            if m.role == "assistant":
                calls = [replace(c, id=short_id(c.id)) for c in m.tool_calls]
                pending = [c.id for c in calls]
                m = replace(m, content="" if m.content is None else m.content, tool_calls=calls)
            elif m.role == "tool":
                if m.tool_call_id is not None:
                    call_id: str | None = short_id(m.tool_call_id)
                    if call_id in pending:
                        pending.remove(call_id)
                else:
                    call_id = pending.pop(0) if pending else None
                m = replace(m, tool_call_id=call_id)
            out.append(m)
        return out, tools

    # -- layer 3 -----------------------------------------------------------------------------
    def grammar(self, tools: list[ToolSpec], choice: ToolChoice, response_format: ResponseFormat,
                markers: Markers, *, ban_stray_json: bool = False) -> str | None:
        syntax = "args" if self.syntax == "args" or ARGS in markers.special else "json"
        lit = markers.lit
        lines = [f"TEXT: {free_text(markers, TOOL_CALLS, ban_stray_json=ban_stray_json)}",
                 f"think: {lit(THINK)} thought", f"REASONING: {markers.text_without(THINK_END)}",
                 markers.text_then("thought", "REASONING", THINK_END)]
        answer = answer_rule(response_format, "TEXT")
        callable_tools = choice.callable_tools(tools)
        if not callable_tools:
            return "\n".join([f"start: think? {answer}", *lines]) + "\n"
        # "after": what follows the first [TOOL_CALLS]
        if syntax == "json":
            array: dict[str, Any] = {"type": "array", "items": {"anyOf": [_json_call_schema(t) for t in callable_tools]},
                                     "minItems": 1}
            if not choice.parallel:
                array["maxItems"] = 1
            # Mistral Small 3.1's template writes "[TOOL_CALLS] [", Nemo's "[TOOL_CALLS]["
            lines.append(f'after: " "? {json_schema_lark(array)}')
        else:
            for t, tool in enumerate(callable_tools):
                params = strict_schema(tool.parameters) or {"type": "object"}
                lines.append(f"tail_{t}: {json.dumps(tool.name)} ({lit(CALL_ID)} CALL_ID)? {lit(ARGS)} "
                             f"{json_schema_lark(params)}")
            lines.append("tail: " + " | ".join(f"tail_{t}" for t in range(len(callable_tools))))
            lines.append("CALL_ID: /[a-zA-Z0-9]{9}/")
            lines.append(f"after: tail ({lit(TOOL_CALLS)} tail)*" if choice.parallel else "after: tail")
        lines.append(f"calls: {lit(TOOL_CALLS)} after")
        lines.append(markers.text_then("lead", "TEXT", TOOL_CALLS))
        if choice.mode == "required":
            body = "calls"
        elif answer == "TEXT":
            body = "TEXT | lead after"
        else:
            body = f"{answer} | calls"
        return "\n".join([f"start: think? ({body})", *lines]) + "\n"

    # -- layer 4 -----------------------------------------------------------------------------
    def parse(self, text: str, partial: bool) -> Parsed:
        out = Parsed()
        pos, thought, decided = 0, "", self.phase != "start"
        if self.phase in ("start", "think"):
            p = skip_ws(text, 0)
            if self.phase == "think" or text.startswith(THINK, p):
                start = 0 if self.phase == "think" else p + len(THINK)
                end = text.find(THINK_END, start)
                if end < 0:
                    body = text[start:]
                    if partial:
                        body = body[: len(body) - held_prefix(body, THINK_END)]
                    out.reasoning = strip_after(body, self.thought_before)
                    if partial and body:  # all of the reasoning so far is final
                        resume = resumed(self, phase="think", thought_before=self.thought_before or bool(body.strip()))
                        out.settled = Settled(start + len(body), resume, reasoning=body)
                        if start + len(body) == len(text) and resume.thought_before:
                            out.run = Run("reasoning", (THINK_END,))
                    return out
                thought = text[start:end]
                out.reasoning = strip_after(thought, self.thought_before)
                pos, decided = end + len(THINK_END), True
            elif partial and THINK.startswith(text[p:]) and p < len(text):
                return out  # may be the start of "[THINK]"
            else:
                decided = p < len(text)  # whitespace only: "[THINK]" may still come
        content: list[str] = []
        marks: list[tuple[int, int, str]] = []  # where a later call starts: offset, calls before, phase
        # where a later parse may resume: offset, the content and calls before it, its phase
        settled = (pos, "", 0, "text" if self.phase in ("start", "think") else self.phase)
        rest: int | None
        if self.phase in ("calls", "array"):
            rest = _read_calls(text, 0, partial, out.calls, resume=self.phase, seen=self.ids, marks=marks)
        elif self.phase == "after":
            rest = 0
        else:
            marker = text.find(TOOL_CALLS, pos)
            if marker < 0:
                content.append(shown(text[pos:], partial, _HELD, _ENDS))
                cut = len(text) - unsettled(text[pos:], _HELD, _ENDS)
                settled = (cut, text[pos:cut], 0, "text")
                rest = None
            else:
                content.append(text[pos:marker])
                settled = (marker, text[pos:marker], 0, "text")
                rest = _read_calls(text, marker, partial, out.calls, marks=marks)
        if rest is not None:
            content.append(shown(text[rest:], partial, _HELD, _ENDS))
        elif partial and out.calls and not out.calls[-1].done:
            out.run = out.calls[-1].run  # the output ends inside the last call's arguments
        if rest is not None and not TOOL_CALLS.startswith(text[skip_ws(text, rest):]):
            # the text after the calls (another [TOOL_CALLS] may be arriving until then)
            cut = len(text) - unsettled(text[rest:], _HELD, _ENDS)
            settled = (cut, "".join(content[:-1]) + text[rest:cut], len(out.calls), "after")
        elif marks:
            settled = (marks[-1][0], "".join(content), marks[-1][1], marks[-1][2])
        out.content = strip_after("".join(content), self.text_before)
        if partial and decided:
            offset, piece, calls, phase = settled
            new_ids = {c.id for c in out.calls[:calls] if c.id is not None}
            ids = self.ids | new_ids if new_ids else self.ids
            resume = resumed(self, phase=phase, text_before=self.text_before or bool(piece.strip()),
                             thought_before=self.thought_before or bool(thought.strip()), ids=ids)
            out.settled = Settled(offset, resume, content=piece, reasoning=thought, calls=calls)
            if offset == len(text) and phase in ("text", "after"):
                out.run = text_run(out.settled, _HELD)
        return out


class MistralV11Format(MistralFormat):
    """Tokenizer v11 and later: ``[TOOL_CALLS]name[CALL_ID]id[ARGS]{...}``."""

    key = "mistral_v11"
    markers: ClassVar[tuple[str, ...]] = (TOOL_CALLS, ARGS)
    priority = 1
    syntax: ClassVar[Literal["json", "args"]] = "args"


_HELD = (TOOL_CALLS, EOS)
_ENDS = (EOS,)


def short_id(call_id: str) -> str:
    """``call_id`` as 9 alphanumeric characters: itself if it has that shape, else a hash of it."""
    if _ID.fullmatch(call_id):
        return call_id
    n = int.from_bytes(hashlib.sha256(call_id.encode()).digest()[:8], "big")
    chars = []
    for _ in range(9):
        n, r = divmod(n, len(_ALNUM))
        chars.append(_ALNUM[r])
    return "".join(chars)


def _json_call_schema(tool: ToolSpec) -> dict[str, Any]:
    schema = call_schema(tool)
    schema["properties"]["id"] = _ID_SCHEMA  # the templates write it after the arguments
    return schema


# -- the parser -------------------------------------------------------------------------------

def _read_calls(text: str, i: int, partial: bool, calls: list[ParsedCall], *, resume: str = "",
                seen: frozenset[str] = frozenset(), marks: list[tuple[int, int, str]] | None = None) -> int | None:
    """Read the calls that start with the ``[TOOL_CALLS]`` at ``text[i]`` into ``calls``.
    Returns where the text after them starts (``i`` when what follows is not a call), or
    None while nothing after them is text yet.

    A resumed parse (see ``Settled``) starts after calls, with those calls' ids ``seen``: at a
    later ``[TOOL_CALLS]`` (``resume="calls"``) or inside a JSON list after an item and its
    comma (``"array"``). ``marks`` gets such places: offset, calls before it, which of the two."""
    n = len(text)
    array = resume == "array"
    while True:
        if array:
            array = False
            end = _read_json_calls(text, i, partial, calls, inside=True, marks=marks)
        else:
            j = skip_ws(text, i + len(TOOL_CALLS))
            if j >= n:
                return None if partial or calls or resume else i
            if text[j] in "[{":
                end = _read_json_calls(text, j, partial, calls, marks=marks)
            elif _NAME.match(text, j):
                end = _read_args_call(text, j, partial, calls, seen)
            else:
                end = -1
        if end is None:
            return None
        if end < 0:  # not a call after all: the marker and what follows are text
            return i
        k = skip_ws(text, end)
        if text.startswith(TOOL_CALLS, k):
            i = k
            if marks is not None:
                marks.append((k, len(calls), "calls"))
            continue
        return end if k < n else None


def _read_args_call(text: str, j: int, partial: bool, calls: list[ParsedCall],
                    seen: frozenset[str] = frozenset()) -> int | None:
    """``name[CALL_ID]id[ARGS]{...}`` at ``text[j]``: one past the arguments (or where
    what is not arguments starts), None while arriving, -1 when this is not such a call.
    ``seen``: ids of calls before ``calls``."""
    n = len(text)
    m = _NAME.match(text, j)
    assert m is not None
    k = m.end()
    if k >= n or (partial and (ARGS.startswith(text[k:]) or CALL_ID.startswith(text[k:]))):
        return None if partial else -1  # the name (or the marker after it) is still arriving
    call_id: str | None = None
    if text.startswith(CALL_ID, k):
        args_at = text.find(ARGS, k + len(CALL_ID))
        if args_at < 0:
            if partial:
                return None
            calls.append(ParsedCall(name=m.group(), arguments="", done=True))
            return None
        candidate = text[k + len(CALL_ID):args_at].strip()
        if _ID.fullmatch(candidate) and candidate not in seen and all(c.id != candidate for c in calls):
            call_id = candidate  # the model's own id, if it has the shape and is new
        k = args_at
    if not text.startswith(ARGS, k):
        return -1
    a = skip_ws(text, k + len(ARGS))
    call = ParsedCall(name=m.group(), arguments="", id=call_id)
    calls.append(call)
    if a >= n:
        call.done = not partial
        return None
    if text[a] != "{":
        call.arguments, call.done = "{}", True  # no JSON arguments: the call has none
        return a
    end, _ = value_end(text, a)
    call.arguments = text[a:end if end is not None else n]
    call.done = end is not None or not partial
    if end is None and partial:  # the arguments stream as they are written
        call.run = json_args(open_json(text, a), ())
    return end


def _read_json_calls(text: str, j: int, partial: bool, calls: list[ParsedCall], *, inside: bool = False,
                     marks: list[tuple[int, int, str]] | None = None) -> int | None:
    """``[{...}, ...]`` (or bare objects) at ``text[j]``: one past them (or where what is
    not a call starts), None while arriving, -1 when the first is not a call. ``inside``:
    ``text[j]`` is inside a list, after an item and its comma (a resumed parse); ``marks``
    gets those places in a list."""
    n = len(text)
    if inside:
        in_array, i, count = True, j, 1
    else:
        in_array = text[j] == "["
        i = j + 1 if in_array else j
        count = 0
    fresh = inside  # right after a comma already read
    while True:
        i = skip_ws(text, i)
        if i >= n:
            return None
        if fresh:
            fresh = False
        elif count and text[i] == ",":
            i = skip_ws(text, i + 1)
            if i >= n:
                return None
            if in_array and marks is not None:
                marks.append((i, len(calls), "array"))
        elif count and not in_array:
            return i  # bare objects: the calls end at anything but ","
        if in_array and text[i] == "]":
            return i + 1
        call, end = _json_call(text, i, not partial) if text[i] == "{" else (None, n)
        if call is None:
            if end is None:
                return None  # undecided: hold everything from here back
            return i if count else -1
        calls.append(call)
        count += 1
        if end is None:
            return None
        i = end


def _json_call(text: str, i: int, final: bool) -> tuple[ParsedCall | None, int | None]:
    """The call the object at ``text[i]`` is, and one past it (None while arriving);
    (None, None) while undecided, (None, end) when it is not a call."""
    scan = scan_object(text, i)
    name = scan.complete_string(text, "name")
    if name is None:
        if scan.error is not None or scan.end is not None or final:
            return None, len(text)
        return None, None
    field = next((f for k, f in scan.fields.items() if k in ("arguments", "parameters")), None)
    arguments = arguments_text(text, field)
    end = scan.end if scan.error is None else scan.error
    if field is None and end is not None:
        arguments = "{}"
    call = ParsedCall(name=name, arguments=arguments, done=end is not None or final)
    if end is None and not final:
        call.run = object_run(text, i, field, (), True)
    return call, end
