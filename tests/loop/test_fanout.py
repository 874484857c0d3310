"""A list of values for a tool's first required scalar parameter fans out into one call each."""

from __future__ import annotations

import json

from midtier.core.events import TextDelta, ToolCallArgsDelta, ToolCallDone, ToolCallStart
from midtier.core.messages import Conversation, Message, ToolChoice, ToolSpec
from midtier.engines.mock import MockEngine
from midtier.loop.fanout import FanOut, fan_out_tools, fan_parameter

from .test_turn import WEATHER, calls, run

TIME = ToolSpec("get_time", "Time in a zone", {
    "type": "object", "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}, "fmt": {"type": "string"}},
    "required": ["zone"]})
NO_ARGS = ToolSpec("ping", "Ping")


def test_the_fanned_parameter_is_the_first_required_scalar() -> None:
    assert fan_parameter(WEATHER) == "city"
    assert fan_parameter(TIME) == "zone"
    assert fan_parameter(NO_ARGS) is None
    shown, fan = fan_out_tools([WEATHER, NO_ARGS])
    assert fan == {"get_weather": "city"}
    city = shown[0].parameters["properties"]["city"]
    assert city["anyOf"][0] == {"type": "string"} and city["anyOf"][1]["type"] == "array"
    assert shown[1] is NO_ARGS and WEATHER.parameters["properties"]["city"] == {"type": "string"}


def test_a_tool_may_refuse_lists() -> None:
    """Search tools do: Qwen2.5-Coder-0.5B filled a file_search query list with six synonyms."""
    search = ToolSpec("file_search", "Search", {"type": "object", "properties": {"query": {"type": "string"}},
                                                "required": ["query"]}, fan_out=False)
    assert fan_parameter(search) is None
    shown, fan = fan_out_tools([search, WEATHER])
    assert fan == {"get_weather": "city"} and shown[0] is search


def test_a_list_becomes_one_call_per_value() -> None:
    ids = iter(["call_b", "call_c"])
    fan = FanOut({"get_weather": "city"}, lambda: next(ids))
    out = fan.filter([
        TextDelta("ok"),
        ToolCallStart(0, "call_a", "get_weather"),
        ToolCallArgsDelta(0, '{"city": ["Paris", '),
        ToolCallArgsDelta(0, '"Tokyo"], "unit": "c"}'),
        ToolCallDone(0, '{"city": ["Paris", "Tokyo"], "unit": "c"}'),
        ToolCallStart(1, "call_d", "other"),
        ToolCallArgsDelta(1, "{}"),
        ToolCallDone(1, "{}"),
    ])
    starts = [e for e in out if isinstance(e, ToolCallStart)]
    assert [(e.index, e.id, e.name) for e in starts] == [
        (0, "call_a", "get_weather"), (1, "call_b", "get_weather"), (2, "call_d", "other")]
    done = [json.loads(e.arguments) for e in out if isinstance(e, ToolCallDone)]
    assert done == [{"city": "Paris", "unit": "c"}, {"city": "Tokyo", "unit": "c"}, {}]


def test_a_single_value_stays_one_call() -> None:
    fan = FanOut({"get_weather": "city"}, lambda: "x")
    out = fan.filter([ToolCallStart(0, "call_a", "get_weather"), ToolCallArgsDelta(0, '{"city": "Paris"}'),
                      ToolCallDone(0, '{"city": "Paris"}')])
    assert [json.loads(e.arguments) for e in out if isinstance(e, ToolCallDone)] == [{"city": "Paris"}]


def test_through_a_turn_and_not_when_parallel_is_off() -> None:
    listed = '<tool_call>\n{"name": "get_weather", "arguments": {"city": ["Paris", "Tokyo"]}}\n</tool_call>'
    engine = MockEngine()
    engine.enqueue(listed)
    events, trace = run(engine, Conversation([Message("user", "Paris and Tokyo?")], [WEATHER], ToolChoice("required")))
    assert calls(events) == [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Tokyo"})]
    assert '"anyOf"' in trace.prompt  # the model was told a list is welcome
    parallel_prompt = trace.prompt
    engine = MockEngine()
    engine.enqueue(listed)
    events, trace = run(engine, Conversation([Message("user", "Paris and Tokyo?")], [WEATHER],
                                             ToolChoice("required", None, parallel=False)))
    # the grammar refuses the list (the scripted output stops there): never two cities
    assert all("Tokyo" not in e.arguments for e in events if isinstance(e, ToolCallDone))
    # the tools are shown the same (a later turn's prompt extends this one): only the grammar differs
    assert trace.prompt == parallel_prompt


def test_the_tools_are_shown_the_same_on_every_turn_of_a_conversation() -> None:
    """tool_choice none, or no parallel calls, on a later turn must not re-render the tools: the
    whole prompt after them would be prefilled again."""
    prompts = []
    for choice in (ToolChoice("auto"), ToolChoice("none"), ToolChoice("auto", None, parallel=False)):
        engine = MockEngine()
        engine.enqueue("Sunny.")
        _, trace = run(engine, Conversation([Message("user", "Paris?")], [WEATHER], choice))
        prompts.append(trace.prompt)
    assert prompts[0] == prompts[1] == prompts[2]


def test_a_list_is_short() -> None:
    """A small model may repeat a list's items until it runs out of tokens: the grammar ends
    the list at MAX_FAN values."""
    from midtier.loop.fanout import MAX_FAN

    cities = [f"City{i}" for i in range(MAX_FAN + 4)]
    listed = ('<tool_call>\n{"name": "get_weather", "arguments": {"city": ' + json.dumps(cities)
              + "}}\n</tool_call>")
    engine = MockEngine()
    engine.enqueue(listed)
    events, trace = run(engine, Conversation([Message("user", "All of them?")], [WEATHER], ToolChoice("required")))
    # the grammar refuses a ninth value (the scripted output stops there)
    assert f'"City{MAX_FAN - 1}"' in trace.raw_output and f'"City{MAX_FAN}"' not in trace.raw_output
    assert not any(f"City{MAX_FAN}" in getattr(e, "arguments", "") for e in events)
