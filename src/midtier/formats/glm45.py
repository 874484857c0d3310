"""GLM 4.5 / 4.6 / 4.7 tool calls: a name, then key/value tags, one block per call.

    <tool_call>get_weather
    <arg_key>city</arg_key>
    <arg_value>Paris</arg_value>
    </tool_call>

(GLM 4.7 writes it without the newlines). A value is written raw when it is a string and
as JSON otherwise, so reading it back needs the tool's schema: ``with_tools`` (or
``for_request``) gives a copy that knows the tools; without one a value that reads as JSON
is taken as JSON. Reasoning comes first in ``<think>...</think>``; GLM 4.7's generation
prompt opens ``<think>`` itself.

Arguments are streamed as a canonical JSON object built from the tags: ``{`` once the
name is known, each pair once its value is complete (a string value as it arrives), and
``}`` when the block closes.
"""

from __future__ import annotations

import json
import re
from typing import Any, ClassVar

from midtier.core.messages import Message, ResponseFormat, ToolChoice, ToolSpec
from midtier.formats._json import skip_ws
from midtier.formats._reasoning import ReasoningFormat, thinking_after
from midtier.formats._xml import NAME, TypedValues, read_value, value_rules, value_run
from midtier.formats.base import (
    Markers,
    Parsed,
    ParsedCall,
    Run,
    answer_rule,
    block_body,
    empty_content,
    keep_call,
    lark,
    read_blocks,
    resumed,
    strict_schema,
    text_and_blocks,
    tools_start,
)

OPEN = "<tool_call>"
CLOSE = "</tool_call>"
KEY_OPEN, KEY_CLOSE = "<arg_key>", "</arg_key>"
VALUE_OPEN, VALUE_CLOSE = "<arg_value>", "</arg_value>"

_NL = '"\\n"?'  # GLM 4.5/4.6 put newlines between the tags, GLM 4.7 does not


class Glm45Format(ReasoningFormat, TypedValues):
    key = "glm45"
    markers: ClassVar[tuple[str, ...]] = (OPEN, CLOSE, KEY_OPEN, VALUE_OPEN)
    priority = 20  # above hermes and qwen3, whose <tool_call> these templates also contain
    steer_stray_json = False

    # -- per request ----------------------------------------------------------------------------
    def for_prompt(self, prompt: str) -> Glm45Format:
        """GLM 4.7's generation prompt opens ``<think>``."""
        return resumed(self, thinking=thinking_after(prompt, closing=False))

    # -- layer 2 --------------------------------------------------------------------------------
    def prepare(self, messages: list[Message], tools: list[ToolSpec]) -> tuple[list[Message], list[ToolSpec]]:
        """The GLM templates print a missing content as ``None``: give it an empty one."""
        return empty_content(messages), tools

    # -- layer 3 --------------------------------------------------------------------------------
    def grammar(self, tools: list[ToolSpec], choice: ToolChoice, response_format: ResponseFormat,
                markers: Markers, *, ban_stray_json: bool = False) -> str | None:
        lit = markers.lit
        callable_tools = choice.callable_tools(tools)
        head, lines = self.think_grammar(markers, OPEN, ban_stray_json=ban_stray_json)
        answer = answer_rule(response_format, "TEXT")
        if answer != "TEXT":
            answer = f"{_NL} {answer}"  # JSON, after the newline that follows </think>
        if not callable_tools:
            return lark(f"start: {head}{answer}", *lines)
        bodies = []
        for i, tool in enumerate(callable_tools):
            params = strict_schema(tool.parameters or {})
            required = set(params.get("required") or [])
            pairs = []
            for j, (key, schema) in enumerate((params.get("properties") or {}).items()):
                lines += value_rules(markers, f"v_{i}_{j}", schema, VALUE_CLOSE)
                pair = f"{lit(KEY_OPEN)} {json.dumps(key)} {lit(KEY_CLOSE)} {_NL} {lit(VALUE_OPEN)} v_{i}_{j} {_NL}"
                pairs.append(f"({pair})" + ("" if key in required else "?"))
            lines.append(f"body_{i}: {json.dumps(tool.name)} {_NL} {' '.join(pairs)} {lit(CLOSE)}")
            bodies.append(f"body_{i}")
        lines.append(f"body: {' | '.join(bodies)}")
        # after a call: more calls (newline-separated in GLM 4.5/4.6), and a trailing newline
        more = f"({_NL} {lit(OPEN)} body)* {_NL}" if choice.parallel else _NL
        lines.append(f"more: {more}")
        start, pre = tools_start(markers, choice, answer, OPEN, "body more",
                                 self.reply(markers, ban_stray_json=ban_stray_json), head, gap=f"{_NL} ")
        return lark(start, *lines, *pre)

    # -- layer 4 --------------------------------------------------------------------------------
    def parse_rest(self, text: str, pos: int, partial: bool) -> Parsed:
        out = Parsed()
        content: list[str] = []

        def block(i: int, _: str) -> int | None:
            body, end = block_body(text, i + len(OPEN), partial, CLOSE)
            closed = end is not None
            call, run = self._read_call(body, closed, closed or not partial)
            if partial and not closed and i + len(OPEN) + len(body) == len(text):
                out.run = run
            return keep_call(text, i, partial, call, end, content, out.calls)

        cut = read_blocks(text, pos, partial, (OPEN,), block, content, out.calls)
        return text_and_blocks(self, out, content, cut, partial)

    def _read_call(self, body: str, closed: bool, final: bool) -> tuple[ParsedCall | None, Run | None]:
        """The call in one block's body; None while its name is unknown (or if it has none).
        Then the run (see ``Run``) an open block ends in, if it does."""
        m = re.search(r"[\n<]", body)
        if m is None and not closed:
            return None, _NAME_RUN  # the name may go on
        name = body[: m.start() if m else len(body)].strip()
        if not NAME.fullmatch(name):
            return None, _SILENT
        props = self.properties.get(name, {})
        pairs, run = _pairs(body, m.start() if m else len(body), props, closed)
        return ParsedCall(name=name, arguments="{" + pairs + ("}" if closed else ""), done=final), run


_SILENT = Run("silent", (CLOSE,))  # nothing changes until the block ends
_NAME_RUN = Run("silent", (CLOSE,), stops="\n<")


def _pairs(body: str, pos: int, props: dict[str, dict[str, Any]], closed: bool) -> tuple[str, Run | None]:
    """The JSON members for the key/value tags of ``body`` from ``pos``, as far as they are
    known, and the run (see ``Run``) the body ends in: in a value, or waiting for a tag."""
    parts: list[str] = []
    while True:
        pos = skip_ws(body, pos)
        if not body.startswith(KEY_OPEN, pos):
            # the end, a tag still arriving, or something that is not a pair: stop here
            return "".join(parts), Run("silent", (KEY_OPEN, CLOSE))
        k_end = body.find(KEY_CLOSE, pos)
        if k_end < 0:
            return "".join(parts), Run("silent", (KEY_CLOSE, CLOSE))
        key = body[pos + len(KEY_OPEN):k_end].strip()
        v = skip_ws(body, k_end + len(KEY_CLOSE))
        if not body.startswith(VALUE_OPEN, v):
            return "".join(parts), Run("silent", (VALUE_OPEN, CLOSE))
        value, end = read_value(body, v + len(VALUE_OPEN), VALUE_CLOSE, props.get(key), closed)
        if value is not None:
            parts.append((", " if parts else "") + json.dumps(key, ensure_ascii=False) + ": " + value)
        if end is None:
            return "".join(parts), value_run(props.get(key), (VALUE_CLOSE, CLOSE))
        pos = end
