"""One turn on the mock engine: steering in auto mode, repeated calls, stop sequences."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from midtier.core.events import Finish, TextDelta, ToolCallDone, ToolCallStart
from midtier.core.messages import Conversation, Message, ToolCall, ToolChoice, ToolSpec
from midtier.engines.mock import MockEngine
from midtier.loop.load import serve_engine
from midtier.loop.turn import TurnTrace

WEATHER = ToolSpec("get_weather", "Weather in a city", {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def run(engine: MockEngine, conv: Conversation) -> tuple[list[Any], TurnTrace]:
    served = serve_engine("mock", engine, format_key="hermes")
    trace = TurnTrace()

    async def go() -> list[Any]:
        return [e async for e in served.stream(conv, trace)]

    return asyncio.run(go()), trace


def calls(events: list[Any]) -> list[tuple[str, Any]]:
    names = {e.index: e.name for e in events if isinstance(e, ToolCallStart)}
    return [(names[e.index], json.loads(e.arguments)) for e in events if isinstance(e, ToolCallDone)]


def text(events: list[Any]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def test_stray_fenced_json_call_is_steered_onto_the_real_syntax() -> None:
    engine = MockEngine()
    engine.enqueue('```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```', CALL)
    events, trace = run(engine, Conversation([Message("user", "Weather in Paris?")], [WEATHER]))
    assert trace.steered == "call"
    assert calls(events) == [("get_weather", {"city": "Paris"})]
    assert text(events) == ""
    assert isinstance(events[-1], Finish) and events[-1].reason == "tool_calls"
    assert len(engine.prompts) == 2 and engine.prompts[0] == engine.prompts[1]


def test_stray_json_naming_no_tool_becomes_text() -> None:
    engine = MockEngine()
    engine.enqueue('{"name": "reverse_string", "arguments": {}}', "Here is how.")
    events, trace = run(engine, Conversation([Message("user", "Reverse a string")], [WEATHER]))
    assert trace.steered == "text"
    assert calls(events) == [] and text(events) == "Here is how."


def test_a_call_written_as_xml_is_steered_onto_the_real_syntax() -> None:
    for stray in ('```xml\n<tools type="function" function="get_weather">\n  <arguments><city>Paris</city>',
                  "<function=get_weather>\n<parameter=city>Paris</parameter>",
                  '```xml\n<toolsFunction name="get_weather">\n  <arguments>\n    <city>Paris</city>',
                  '```xml\n<response>\n    <function name="get_weather">\n        <arguments>',
                  "<get_weather>\n  <city>Paris</city>\n</get_weather>",
                  "```xml\n<response>\n    <function name>get_weather</function>\n    <arguments>"):
        engine = MockEngine()
        engine.enqueue(stray, CALL)
        events, trace = run(engine, Conversation([Message("user", "Weather in Paris?")], [WEATHER]))
        assert trace.steered == "call", stray
        assert calls(events) == [("get_weather", {"city": "Paris"})] and text(events) == ""


def test_a_tag_naming_a_tools_object_is_a_call() -> None:
    event = ToolSpec("create_calendar_event", "Add an event", {
        "type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]})
    engine = MockEngine()
    engine.enqueue("```xml\n<calendar_event>\n  <title>Sprint review</title>",
                   '<tool_call>\n{"name": "create_calendar_event", "arguments": {"title": "Sprint review"}}\n</tool_call>')
    events, trace = run(engine, Conversation([Message("user", "Book the sprint review")], [event, WEATHER]))
    assert trace.steered == "call" and calls(events) == [("create_calendar_event", {"title": "Sprint review"})]


def test_xml_naming_no_tool_becomes_text() -> None:
    for stray in ('```xml\n<tools type="function" function="reverse_string">\n<arguments>',
                  '```xml\n<tools/>\n{"name": "reverse_string", "arguments**: {"text": "abc"}}\n```',
                  '```xml\n<tools]\n{"type": "function", "function": {"name}:reverse_string", "description": "'):
        engine = MockEngine()
        engine.enqueue(stray, "Here is how.")
        events, trace = run(engine, Conversation([Message("user", "Reverse a string")], [WEATHER]))
        assert trace.steered == "text", stray
        assert calls(events) == [] and text(events) == "Here is how."


def test_an_echo_of_a_tool_result_is_left_alone() -> None:
    """A small model's way of answering from a result: poor prose, but no call to steer."""
    echo = '```xml\n<tool_response>\n{"temp_c": 17}\n</tool_response>\n```'
    engine = MockEngine()
    engine.enqueue(echo)
    conv = Conversation([Message("user", "Weather in Paris?"),
                         Message("assistant", tool_calls=[ToolCall("call_1", "get_weather", '{"city": "Paris"}')]),
                         Message("tool", '{"temp_c": 17}', tool_call_id="call_1")], [WEATHER])
    events, trace = run(engine, conv)
    assert trace.steered is None and text(events) == echo and calls(events) == []


def test_prose_cannot_go_on_to_write_a_call_as_text() -> None:
    """Auto mode: an answer that starts as prose is cut where it would write a call as JSON
    (the constraint refuses it); prose followed by a real call is fine."""
    for call in ('{"name": "undo_commit", "arguments": {}}', "{'name': 'undo_commit', 'arguments': {}}",
                 '{"tool": "undo_commit", "parameters": {}}',
                 # keys with mangled quotes, as Qwen2.5-Coder-0.5B writes them once the plain ones are refused
                 '{"name": "undo_commit", "arguments**: {}}', '{"name": "undo_commit", "arguments}: {}}',
                 '{"name**: "undo_commit", "args": {}}'):
        engine = MockEngine()
        engine.enqueue(f"To do that:\n```json\n{call}\n```")
        events, trace = run(engine, Conversation([Message("user", "Undo my last commit")], [WEATHER]))
        assert trace.steered is None and calls(events) == []
        # cut before the key closes: the text never holds the whole call shape
        assert text(events).startswith("To do that:") and not re.search(r", *[\"']?(arg|param)", text(events)), call
    engine.enqueue("Let me check. " + CALL)
    events, trace = run(engine, Conversation([Message("user", "Weather in Paris?")], [WEATHER]))
    assert text(events).strip() == "Let me check." and calls(events) == [("get_weather", {"city": "Paris"})]


def test_text_after_a_stray_json_start_is_still_read_for_a_call_written_as_xml() -> None:
    """Seen on Qwen2.5-Coder-0.5B: JSON naming no tool, turned to text, then the call as XML."""
    engine = MockEngine()
    engine.enqueue('{"name": "add_task", "arguments": {}}',
                   '```xml\n<response>\n    <function name="get_weather">\n        <arguments>', CALL)
    events, trace = run(engine, Conversation([Message("user", "Weather in Paris?")], [WEATHER]))
    assert trace.steered == "call" and len(engine.prompts) == 3
    assert calls(events) == [("get_weather", {"city": "Paris"})] and text(events) == ""


def test_a_real_call_and_a_tagged_answer_are_not_steered() -> None:
    for output in (CALL, "<div>Paris is sunny.</div>", "```html\n<p>It is sunny.</p>\n```"):
        engine = MockEngine()
        engine.enqueue(output)
        events, trace = run(engine, Conversation([Message("user", "Weather in Paris?")], [WEATHER]))
        assert trace.steered is None and len(engine.prompts) == 1, output
        assert (calls(events) != []) == (output == CALL)


def test_plain_text_is_not_probed_twice() -> None:
    engine = MockEngine()
    engine.enqueue("Hello there.")
    events, trace = run(engine, Conversation([Message("user", "Hi")], [WEATHER]))
    assert trace.steered is None and text(events) == "Hello there." and len(engine.prompts) == 1


def test_repeating_an_answered_call_is_a_loop_not_an_intent() -> None:
    engine = MockEngine()
    engine.enqueue('{"name": "get_weather", "arguments": {"city": "Paris"}}', "It is sunny in Paris.")
    history = [Message("user", "Weather in Paris?"),
               Message("assistant", None, [ToolCall("call_1", "get_weather", '{"city": "Paris"}')]),
               Message("tool", "sunny", tool_call_id="call_1")]
    events, trace = run(engine, Conversation(history, [WEATHER]))
    assert trace.steered == "text" and calls(events) == [] and text(events) == "It is sunny in Paris."


def test_a_call_repeated_within_a_turn_ends_it() -> None:
    engine = MockEngine()
    engine.enqueue(CALL + "\n" + CALL + "\n" + CALL)
    events, _ = run(engine, Conversation([Message("user", "Weather in Paris?")], [WEATHER], ToolChoice("required")))
    assert calls(events) == [("get_weather", {"city": "Paris"})]
    assert isinstance(events[-1], Finish) and events[-1].reason == "tool_calls"


def test_distinct_parallel_calls_all_pass() -> None:
    engine = MockEngine()
    engine.enqueue(CALL + "\n" + CALL.replace("Paris", "Tokyo"))
    events, _ = run(engine, Conversation([Message("user", "Paris and Tokyo?")], [WEATHER], ToolChoice("required")))
    assert [a["city"] for _, a in calls(events)] == ["Paris", "Tokyo"]


def test_a_repeat_is_caught_before_its_block_closes() -> None:
    engine = MockEngine()
    engine.enqueue(CALL + "\n" + CALL[:-4] + " and on and on")
    events, _ = run(engine, Conversation([Message("user", "Weather in Paris?")], [WEATHER], ToolChoice("required")))
    assert calls(events) == [("get_weather", {"city": "Paris"})]
    assert isinstance(events[-1], Finish) and events[-1].reason == "tool_calls"
