"""DeepSeek tool calls: special-token sections, in two dialects, after R1-style reasoning.

V3 / R1 (``deepseek``, ``deepseek_r1``)::

    <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather
    ```json
    {"city": "Paris"}
    ```<｜tool▁call▁end｜>
    <｜tool▁call▁begin｜>...<｜tool▁call▁end｜><｜tool▁calls▁end｜>

V3.1 (``deepseek_v31``)::

    <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Paris"}<｜tool▁call▁end｜><｜tool▁calls▁end｜>

Reasoning is ``<think>...</think>`` at the start; R1 distills and V3.1 in thinking mode
open it in the generation prompt (``for_prompt`` sees that). One parser reads both call
dialects (the word after ``<｜tool▁sep｜>`` tells them apart); each key's grammar writes
its own. The keys differ in what the template needs:

- ``deepseek``: vLLM's DeepSeek-V3 template, which describes the tools itself and writes
  a past call's arguments with ``|tojson`` (objects).
- ``deepseek_r1``: DeepSeek's own V3/R1 templates (here the R1 distills), which
  concatenate the arguments as a string and do not describe the tools: ``prepare`` passes
  arguments as JSON text and puts the tools in the system prompt.
- ``deepseek_v31``: V3.1, likewise string arguments and tools in the system prompt, in
  the shape DeepSeek documents for V3.1; ``thinking=True`` is a template kwarg of the
  request (the default is non-thinking, the mode V3.1 calls tools in).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from typing import ClassVar

from midtier.core.messages import Message, ToolCall, ToolChoice, ToolSpec
from midtier.formats._json import open_json, scan_object, skip_ws
from midtier.formats._reasoning import ThinkThenCalls
from midtier.formats.base import (
    Markers,
    Parsed,
    ParsedCall,
    Run,
    empty_content,
    held_prefix,
    json_args,
    json_schema_lark,
    read_blocks,
    strict_schema,
    text_and_blocks,
)

CALLS_BEGIN = "<｜tool▁calls▁begin｜>"
CALLS_END = "<｜tool▁calls▁end｜>"
CALL_BEGIN = "<｜tool▁call▁begin｜>"
CALL_END = "<｜tool▁call▁end｜>"
SEP = "<｜tool▁sep｜>"
#: a bare call begins a section too (models sometimes drop the section token)
_OPENERS = (CALLS_BEGIN, CALL_BEGIN)
_NAME = re.compile(r"[^\s<>{}`]+")
_NAME_END = re.compile(r"[\n`{]")
#: the V3 template's own whitespace between calls (vLLM's is indented Jinja)
_GAP = r"/[ \t]*\n?[ \t]*/"


class DeepseekFormat(ThinkThenCalls):
    key = "deepseek"
    markers: ClassVar[tuple[str, ...]] = (CALLS_BEGIN, CALL_BEGIN, SEP)
    priority = 1
    steer_stray_json = False
    #: the call dialect the grammar writes: "v3" (``function<sep>NAME`` + fenced JSON) or "v31"
    dialect: ClassVar[str] = "v3"

    opener = CALLS_BEGIN
    forbidden = _OPENERS

    # -- layer 3 -----------------------------------------------------------------------------
    def calls_grammar(self, tools: list[ToolSpec], choice: ToolChoice, markers: Markers) -> tuple[str, list[str]]:
        lit = markers.lit
        rules, bodies = [], []
        for i, tool in enumerate(tools):
            args = json_schema_lark(strict_schema(tool.parameters) or {"type": "object"})
            if self.dialect == "v31":
                rules.append(f"fn{i}: {json.dumps(tool.name)} {lit(SEP)} {args}")
            else:
                rules.append(f'fn{i}: "function" {lit(SEP)} {json.dumps(tool.name + chr(10) + "```json" + chr(10))}'
                             f' {args} "\\n```"')
            bodies.append(f"fn{i}")
        rules.append(f"call: {lit(CALL_BEGIN)} ({' | '.join(bodies)}) {lit(CALL_END)}")
        gap = "" if self.dialect == "v31" else "GAP "
        if gap:
            rules.append(f"GAP: {_GAP}")
        calls = f"call ({gap}call)*" if choice.parallel else "call"
        return f"{calls} {gap}{lit(CALLS_END)}", rules

    # -- layer 4 -----------------------------------------------------------------------------
    def parse_rest(self, text: str, pos: int, partial: bool) -> Parsed:
        out = Parsed()
        content: list[str] = []

        def block(i: int, opener: str) -> int | None:
            end, out.run = _section(text, i + len(opener) if opener == CALLS_BEGIN else i, partial, out.calls,
                                    content)
            return end

        cut = read_blocks(text, pos, partial, _OPENERS, block, content, out.calls)
        return text_and_blocks(self, out, content, cut, partial)


def _section(text: str, k: int, partial: bool, calls: list[ParsedCall],
             content: list[str]) -> tuple[int | None, Run | None]:
    """Read the calls of a section from ``k``; where the text after it starts, or None when
    the section runs to the end of the output (or may still go on), and then the run (see
    ``Run``) a partial parse ends in, if it does."""
    while True:
        k = skip_ws(text, k)
        if text.startswith(CALL_BEGIN, k):
            read = _call(text, k + len(CALL_BEGIN), partial)
            if read.undecided:
                return None, read.run
            if read.call is not None:
                calls.append(read.call)
            else:  # not a call: what the model wrote stays text
                content.append(text[k: read.end if read.end is not None else len(text)])
            if read.end is None:
                return None, read.run
            k = read.end
        elif text.startswith(CALLS_END, k):
            return k + len(CALLS_END), None
        elif k >= len(text) or (partial and any(m.startswith(text[k:]) for m in (CALL_BEGIN, CALLS_END))):
            return None, None
        else:
            return k, None  # the section ended without its end token: the rest is text


@dataclass
class _Read:
    call: ParsedCall | None
    end: int | None  # one past <｜tool▁call▁end｜>; None while the call is open
    undecided: bool = False
    run: Run | None = None  # while the call is open in a partial parse: the run it ends in, if any


def _call(text: str, start: int, partial: bool) -> _Read:
    """One call whose body starts at ``start``, in either dialect."""
    close = text.find(CALL_END, start)
    end = close + len(CALL_END) if close >= 0 else None
    final = end is not None or not partial
    limit = close if close >= 0 else len(text)
    if not final:
        limit -= held_prefix(text[start:limit], CALL_END)
    # a partial parse whose call runs on to the end of the text, nothing held back, ends in
    # a run: nothing changes until the end tag, or until what ``stops`` it
    at_end = not final and limit == len(text)
    sep = text.find(SEP, start, limit)
    if sep < 0:
        return _Read(None, end) if final else _Read(None, None, True, _silent((SEP,)) if at_end else None)
    head = text[start:sep].strip()
    a = skip_ws(text, sep + len(SEP))
    if a >= limit:
        if not final:
            return _Read(None, None, undecided=True)
        ok = head != "function" and _NAME.fullmatch(head)
        return _Read(ParsedCall(head, "{}" if end else "", done=True) if ok else None, end)
    if text[a] == "{":  # V3.1: NAME<sep>{...}
        name, args_at = head, a
    else:  # V3: TYPE<sep>NAME\n```json\n{...}\n```
        line = _NAME_END.search(text, a, limit)
        if line is None and end is None:  # the name is not known to be whole
            return _Read(None, None) if final else _Read(None, None, True, _silent((), "\n`{") if at_end else None)
        name_end = line.start() if line else limit
        name = text[a:name_end].strip()
        args_at = text.find("{", name_end, limit)
    if not _NAME.fullmatch(name):  # not a call; held back like one until it ends
        return _Read(None, end) if final else _Read(None, None, True, _silent(()) if at_end else None)
    # (the object alone: a slice up to it would copy the output before it, for every call)
    args, run = _arguments(text[args_at:limit], 0, final) if args_at >= 0 else ("", None)
    call = ParsedCall(name, args or ("{}" if end else ""), done=final)
    if args_at < 0:
        run = _silent((), "{")  # the arguments have not started
    return _Read(call, end, run=run if at_end else None)


def _silent(markers: tuple[str, ...], stops: str = "") -> Run:
    return Run("silent", (*markers, CALL_END), stops)


def _arguments(text: str, at: int, final: bool) -> tuple[str, Run | None]:
    """The JSON object's text at ``at``, as far as it is there and well formed. Until it is
    ``final`` it only grows: a key or a bare value still arriving is held back until it is
    known to be JSON, since once the JSON breaks the text stops where it broke. Then the
    run (see ``Run``) of a partial parse: shown as written inside strings and nested values
    (which only a string, or a nested value, ending would end), silent once whole."""
    if at < 0:
        return "", None
    scan = scan_object(text, at)
    if scan.end is not None:
        return text[at:scan.end], _silent(())
    if scan.error is not None:
        return text[at:scan.error], _silent(())
    if scan.pending is not None and not final:
        return text[at:scan.pending], None
    state = None if final else open_json(text, at)
    run = json_args(state, (CALL_END,), floor=2) if state is not None and (state[1] or state[0] >= 2) else None
    return text[at:], run


# -- the templates that write arguments as text and leave the tools out ---------------------------
def arguments_as_text(messages: list[Message]) -> list[Message]:
    """Past calls whose arguments the template concatenates as a string: ``arguments_object``
    of a JSON string literal is the string itself, so the template gets the JSON text."""
    out = []
    for m in messages:
        if m.tool_calls:
            m = replace(m, tool_calls=[ToolCall(c.id, c.name, json.dumps(c.arguments.strip() or "{}"), c.type)
                                       for c in m.tool_calls])
        out.append(m)
    return out


def with_system_text(messages: list[Message], text: str) -> list[Message]:
    """``text`` appended to the last system message (these templates keep the last one, or
    join them all), or a system message of its own first."""
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        if m.role in ("system", "developer"):
            joined = f"{m.content}\n\n{text}" if m.content else text
            return [*messages[:i], replace(m, content=joined), *messages[i + 1:]]
    return [Message("system", text), *messages]


def _tool_json(tool: ToolSpec) -> str:
    return json.dumps(tool.to_openai(), ensure_ascii=False)


class DeepseekR1Format(DeepseekFormat):
    """DeepSeek's own V3/R1 templates (the R1 distills here): V3 calls, string arguments."""

    key = "deepseek_r1"
    markers: ClassVar[tuple[str, ...]] = (CALLS_BEGIN, SEP, "tool['function']['arguments'] + '\\n' + '```'")
    priority = 2
    native_tools = False

    def prepare(self, messages: list[Message], tools: list[ToolSpec]) -> tuple[list[Message], list[ToolSpec]]:
        # the template renders a turn's calls only when its content is None (text beside
        # calls would drop them), and concatenates a plain turn's content
        messages = arguments_as_text([
            replace(m, content=None if m.tool_calls else m.content or "") if m.role == "assistant" else m
            for m in messages])
        if tools:
            listing = "\n".join(_tool_json(t) for t in tools)
            messages = with_system_text(messages, (
                "# Tools\n\nYou may call one or more functions to assist with the user query.\n"
                f"<tools>\n{listing}\n</tools>\n\n"
                f"To call functions, write {CALLS_BEGIN}, then each call as\n"
                f"{CALL_BEGIN}function{SEP}<function_name>\n```json\n<arguments as a JSON object>\n```{CALL_END}\n"
                f"and end with {CALLS_END}."))
        return messages, tools


class DeepseekV31Format(DeepseekFormat):
    """DeepSeek V3.1: ``NAME<sep>{args}`` calls chained without separators."""

    key = "deepseek_v31"
    markers: ClassVar[tuple[str, ...]] = (CALLS_BEGIN, SEP, "'<｜tool▁sep｜>' + tool['function']['arguments']")
    priority = 2
    native_tools = False
    dialect = "v31"

    def prepare(self, messages: list[Message], tools: list[ToolSpec]) -> tuple[list[Message], list[ToolSpec]]:
        messages = arguments_as_text(empty_content(messages, "assistant"))
        if tools:
            listing = "\n\n".join(f"### {t.name}\nDescription: {t.description}\n\nParameters: "
                                  f"{json.dumps(t.parameters, ensure_ascii=False)}" for t in tools)
            messages = with_system_text(messages, (
                f"## Tools\nYou have access to the following tools:\n\n{listing}\n\n"
                "IMPORTANT: ALWAYS adhere to this exact format for tool use:\n"
                f"{CALLS_BEGIN}{CALL_BEGIN}tool_call_name{SEP}tool_call_arguments{CALL_END}"
                "{{additional_tool_calls}}" f"{CALLS_END}\n\n"
                "Where:\n- `tool_call_name` must be an exact match to one of the available tools\n"
                "- `tool_call_arguments` must be valid JSON that strictly follows the tool's Parameters Schema\n"
                "- For multiple tool calls, chain them directly without separators or spaces"))
        return messages, tools
