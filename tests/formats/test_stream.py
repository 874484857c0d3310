"""The streaming machinery itself: the scanners runs rely on, and runs taking chunks."""

from __future__ import annotations

import json
import random

import pytest

from midtier.core.events import ReasoningDelta, TextDelta, ToolCallArgsDelta
from midtier.formats import get_format
from midtier.formats._json import _string_end, json_run, open_json, value_end
from midtier.formats.base import held_any, held_prefix
from midtier.formats.stream import StreamParser

from .conformance import assert_streams_as_defined


def _string_end_by_chars(text: str, i: int) -> int | None:
    """The reference: one character at a time, a backslash taking the next one."""
    i += 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == '"':
            return i + 1
        i += 1
    return None


def _held_by_lengths(text: str, marker: str) -> int:
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-k:]):
            return k
    return 0


def test_string_end_agrees_with_reading_one_character_at_a_time() -> None:
    rng = random.Random(0)
    for _ in range(20000):
        text = '"' + "".join(rng.choice('ab\\"') for _ in range(rng.randint(0, 10)))
        assert _string_end(text, 0) == _string_end_by_chars(text, 0), text


def test_held_prefix_agrees_with_trying_every_length() -> None:
    rng = random.Random(1)
    for _ in range(20000):
        marker = "".join(rng.choice("<a/") for _ in range(rng.randint(1, 6)))
        text = "".join(rng.choice("<a/b") for _ in range(rng.randint(0, 9)))
        assert held_prefix(text, marker) == _held_by_lengths(text, marker), (text, marker)
    assert held_any("a </tool_c", ("<tool_call>", "</tool_call>")) == 8


def test_json_run_resumes_where_a_cut_left_it() -> None:
    """Scanning a JSON value in two pieces, carrying the state, is scanning it whole."""
    values = [json.dumps(v) for v in (
        {"a": "x \" y \\ z", "b": [1, {"c": "]}"}]}, ["\\u00e9", {"k": {}}], {"s": "\\\\\"", "t": [[], [[]]]})]
    for value in values:
        end, _ = value_end(value, 0)
        assert end == len(value)
        for cut in range(1, len(value)):
            state = open_json(value[:cut], 0)
            assert state is not None, value[:cut]
            assert json_run(value[cut:], 0, state) is None  # the value ends in the rest
            assert json_run(value[cut:-1], 0, state) == open_json(value[:-1], 0)
        assert open_json(value, 0) is None


def test_json_run_ends_below_its_floor() -> None:
    # inside a string at depth 1 with floor 2: the string ending ends the run
    assert json_run('abc", "x', 0, (1, True, False), floor=2) is None
    assert json_run('a\\"bc', 0, (1, True, False), floor=2) == (1, True, False)
    assert json_run('"}', 0, (1, True, True), floor=1) == (1, True, False)  # an escaped quote
    assert json_run("x\\", 0, (1, True, False)) == (1, True, True)  # an escape left open


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_a_long_argument_is_taken_in_a_run(size: int) -> None:
    """A string argument streams chunk by chunk without parsing, escapes and all."""
    fmt = get_format("hermes")
    body = 'say "hi" \\ then <b>, a < b, </tool_c ' * 30
    text = '<tool_call>\n{"name": "send_email", "arguments": {"to": "a", "body": ' + json.dumps(body) + "}}\n</tool_call>"
    parser = StreamParser(fmt)
    deltas = []
    for i in range(0, len(text), size):
        deltas += [e.delta for e in parser.feed(text[i:i + size]) if isinstance(e, ToolCallArgsDelta)]
    parser.finish()
    assert json.loads("".join(deltas))["body"] == body
    assert parser.parses < 40
    assert_streams_as_defined(fmt, text)


def test_a_held_marker_start_is_emitted_once_it_is_not_one() -> None:
    fmt = get_format("hermes")
    parser = StreamParser(fmt)
    out = parser.feed("Some text first. ")
    assert [e.text for e in out if isinstance(e, TextDelta)] == ["Some text first."]
    taken = parser.parses
    assert parser.feed("a <tool") == [TextDelta(" a")]  # "<tool" may start a call: held
    assert parser.feed("box> b") == [TextDelta(" <toolbox> b")]
    assert parser.parses == taken  # both chunks were taken by the content run


def test_reasoning_streams_in_a_run() -> None:
    fmt = get_format("qwen3").for_prompt("<|im_start|>assistant\n<think>\n")
    parser = StreamParser(fmt)
    events = []
    text = "Let me think. " * 50 + "</think>\n\nThe answer."
    for c in text:
        events += parser.feed(c)
    events += parser.finish()
    assert "".join(e.text for e in events if isinstance(e, ReasoningDelta)) == ("Let me think. " * 50).strip()
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "The answer."
    assert parser.parses < 40


def test_without_runs_every_chunk_is_parsed() -> None:
    parser = StreamParser(get_format("hermes"), runs=False)
    for c in "Plain text, nothing else.":
        parser.feed(c)
    assert parser.parses == len("Plain text, nothing else.")
