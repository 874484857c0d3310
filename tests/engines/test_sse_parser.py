"""The SSE parser of the upstream engines: events from bytes cut anywhere, any line ending,
UTF-8 split across reads, comments and ids skipped, a last event without its blank line."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest

from midtier.engines.openai_chat import SSEParser, sse_payloads

STREAM = ('data: {"a": "h\u00e9llo \u4e16\u754c"}\n\n'
          ": a comment\n"
          "id: 7\n"
          "event: error\n"
          'data: {"message": "x"}\n\n'
          "data: line one\n"
          "data:line two\n\n"
          "\n\n"  # blank lines alone are no event
          "data: [DONE]\n\n")
EVENTS = [("message", '{"a": "h\u00e9llo \u4e16\u754c"}'), ("error", '{"message": "x"}'),
          ("message", "line one\nline two"), ("message", "[DONE]")]


def parse(raw: bytes, cuts: list[int]) -> list[tuple[str, str]]:
    parser = SSEParser()
    out: list[tuple[str, str]] = []
    last = 0
    for cut in [*sorted(cuts), len(raw)]:
        out += parser.feed(raw[last:cut])
        last = cut
    return out + parser.close()


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_any_chunking_and_line_ending_gives_the_same_events(newline: str) -> None:
    raw = STREAM.replace("\n", newline).encode()
    rng = random.Random(7)
    assert parse(raw, []) == EVENTS
    assert parse(raw, list(range(1, len(raw)))) == EVENTS  # byte by byte, through every character
    for _ in range(200):
        assert parse(raw, rng.sample(range(1, len(raw)), rng.randint(1, 12))) == EVENTS


def test_a_cr_ends_its_line_at_once_and_its_lf_is_not_a_second_end() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\n\r") == [("message", "a")]  # \r\n, then \r: the event is whole now
    assert parser.feed(b"\ndata: b\r") == []  # that \n paired the \r: no empty line
    assert parser.feed(b"\r") == [("message", "b")]


def test_the_last_event_without_its_blank_line_is_kept() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: [DONE]") == []
    assert parser.close() == [("message", "[DONE]")]
    assert parser.close() == []


def test_lines_as_an_iterator() -> None:
    async def lines() -> AsyncIterator[str]:
        for line in STREAM.split("\n"):
            yield line

    async def go() -> list[tuple[str, str]]:
        return [e async for e in sse_payloads(lines())]

    assert asyncio.run(go()) == EVENTS
