"""An upstream-served model: calls held until whole and checked against the tool schemas,
retries of invalid calls and of failures that generated nothing, and what is reported after."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from engines.fault_proxy import FakeUpstream, Reply, call_delta, chunk, text_reply
from midtier.core.errors import InvalidGrammar, UpstreamError
from midtier.core.events import Finish, StreamEvent, TextDelta, ToolCallArgsDelta, ToolCallDone, ToolCallStart
from midtier.core.messages import Conversation, Message, ToolChoice, ToolSpec
from midtier.engines.openai_chat import OpenAIChatEngine, Timeouts
from midtier.loop.served import Served
from midtier.loop.turn import TurnTrace
from midtier.loop.upstream import UpstreamModel

WEATHER = ToolSpec("get_weather", "Weather in a city", {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
    "additionalProperties": False})
TIME = ToolSpec("get_time", "Time in a city", {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
PATCH = ToolSpec("patch", "Apply a patch", kind="custom", grammar=("regex", r"\+\+\+ [a-z]+\n"))


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as up:
        yield up


def model(up: FakeUpstream, **kw: Any) -> UpstreamModel:
    engine = OpenAIChatEngine(up.url, name="up", timeouts=Timeouts(connect=2, read=5))
    return UpstreamModel("up", engine, **{"retry_backoff": 0.01, **kw})


def run(m: UpstreamModel, conv: Conversation, trace: TurnTrace | None = None) -> list[StreamEvent]:
    async def go() -> list[StreamEvent]:
        try:
            return [e async for e in m.stream(conv, trace)]
        finally:
            await m.close()

    return asyncio.run(go())


def conv(*tools: ToolSpec, choice: ToolChoice | None = None) -> Conversation:
    return Conversation([Message("user", "Weather and time in Paris?")], list(tools), choice or ToolChoice())


def calls(events: list[StreamEvent]) -> list[tuple[int, str, str]]:
    names = {e.index: e.name for e in events if isinstance(e, ToolCallStart)}
    return [(e.index, names[e.index], e.arguments) for e in events if isinstance(e, ToolCallDone)]


def weather_call(index: int = 0, args: str = '{"city": "Paris"}', name: str = "get_weather") -> list[Any]:
    return [call_delta(index, id=f"call_{index}", name=name, args=""), call_delta(index, args=args)]


def test_upstream_model_is_a_served_model(upstream: FakeUpstream) -> None:
    assert isinstance(model(upstream), Served)


def test_valid_parallel_calls_pass_in_order_each_whole(upstream: FakeUpstream) -> None:
    # interleaved upstream deltas; each call comes out contiguous, with its index
    upstream.enqueue(Reply([
        call_delta(0, id="a", name="get_weather", args='{"city": '),
        call_delta(1, id="b", name="get_time", args='{"city": "Paris"}'),
        call_delta(0, args='"Paris"}'),
        chunk(finish="tool_calls")]))
    events = run(model(upstream), conv(WEATHER, TIME))
    kinds = [(type(e).__name__, getattr(e, "index", None)) for e in events]
    assert kinds == [("ToolCallStart", 0), ("ToolCallArgsDelta", 0), ("ToolCallDone", 0),
                     ("ToolCallStart", 1), ("ToolCallArgsDelta", 1), ("ToolCallDone", 1), ("Finish", None)]
    assert calls(events) == [(0, "get_weather", '{"city": "Paris"}'), (1, "get_time", '{"city": "Paris"}')]
    assert isinstance(events[-1], Finish) and events[-1].reason == "tool_calls"


def test_a_call_passes_once_the_next_one_starts(upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply([*weather_call(0), *weather_call(1, name="get_time"), chunk(finish="tool_calls")],
                           delay=0.05))
    m = model(upstream)

    async def go() -> list[str]:
        seen = []
        async for e in m.stream(conv(WEATHER, TIME)):
            seen.append(type(e).__name__)
            if isinstance(e, ToolCallDone) and e.index == 0:
                seen.append(f"requests finished: {upstream.finished}")
        await m.close()
        return seen

    assert "requests finished: 0" in asyncio.run(go())  # call 0 came out while the stream went on


def test_text_streams_at_once_and_the_trace_records_the_turn(upstream: FakeUpstream) -> None:
    upstream.enqueue(text_reply("Hi", " there"))
    trace = TurnTrace()
    events = run(model(upstream), conv(), trace)
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["Hi", " there"]
    assert trace.raw_output == "Hi there" and json.loads(trace.prompt)[0]["content"].startswith("Weather")
    assert trace.prompt_tokens > 0


def test_invalid_arguments_are_asked_again_once(upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply([*weather_call(args='{"town": "Paris"}'), chunk(finish="tool_calls")]),
                     Reply([*weather_call(), chunk(finish="tool_calls")]))
    events = run(model(upstream), conv(WEATHER))
    assert calls(events) == [(0, "get_weather", '{"city": "Paris"}')]
    assert len(upstream.requests) == 2


def test_invalid_twice_is_a_502_that_says_why(upstream: FakeUpstream) -> None:
    bad = Reply([*weather_call(args='{"city": 7}'), chunk(finish="tool_calls")])
    upstream.enqueue(bad, Reply(list(bad.events)))
    with pytest.raises(UpstreamError) as err:
        run(model(upstream), conv(WEATHER))
    assert err.value.status == 502 and err.value.code == "invalid_tool_call"
    assert "city: 7 is not of type 'string'" in err.value.message and "get_weather" in err.value.message
    assert len(upstream.requests) == 2


def test_invalid_reported_as_text_when_configured(upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply([*weather_call(args="{not json"), chunk(finish="tool_calls")]))
    events = run(model(upstream, invalid_call_retries=0, on_invalid_call="text"), conv(WEATHER))
    assert calls(events) == []
    note = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert "was invalid and was not made" in note and "not JSON" in note and "{not json" in note
    assert isinstance(events[-1], Finish) and events[-1].reason == "stop"


@pytest.mark.parametrize(("name", "args", "reason"), [
    ("get_time", '{"city": "Paris"}', "no tool named 'get_time'"),
    ("get_weather", '{"city": "Paris", "unit": "C"}', "Additional properties"),
    ("get_weather", '["Paris"]', "must be a JSON object"),
])
def test_what_makes_a_call_invalid(upstream: FakeUpstream, name: str, args: str, reason: str) -> None:
    upstream.enqueue(Reply([*weather_call(args=args, name=name), chunk(finish="tool_calls")]))
    with pytest.raises(UpstreamError, match=reason):
        run(model(upstream, invalid_call_retries=0), conv(WEATHER))


def test_a_call_tool_choice_forbids_is_invalid(upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply([*weather_call(), chunk(finish="tool_calls")]))
    with pytest.raises(UpstreamError, match="tool_choice does not allow"):
        run(model(upstream, invalid_call_retries=0), conv(WEATHER, TIME, choice=ToolChoice("auto", ("get_time",))))


def test_no_call_where_one_was_required_is_retried_then_reported(upstream: FakeUpstream) -> None:
    upstream.enqueue(text_reply("Sunny."), text_reply("Still sunny."))
    with pytest.raises(UpstreamError, match="no tool call, though tool_choice required one"):
        run(model(upstream), conv(WEATHER, choice=ToolChoice("required")))
    assert len(upstream.requests) == 2


def test_after_text_was_passed_on_an_invalid_call_is_not_retried(upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply([chunk({"content": "Let me check."}), *weather_call(args="{}"), chunk(finish="tool_calls")]))
    m = model(upstream)

    async def go() -> list[Any]:
        seen: list[Any] = []
        with pytest.raises(UpstreamError, match="'city' is a required property"):
            async for e in m.stream(conv(WEATHER)):
                seen.append(e)
        await m.close()
        return seen

    assert asyncio.run(go()) == [TextDelta("Let me check.")]
    assert len(upstream.requests) == 1


def test_a_call_cut_by_max_tokens_shows_as_is(upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply([*weather_call(args='{"city": "Par'), chunk(finish="length")]))
    events = run(model(upstream), conv(WEATHER))
    assert calls(events) == [(0, "get_weather", '{"city": "Par')]
    assert isinstance(events[-1], Finish) and events[-1].reason == "length"


def test_custom_tool_calls_come_back_as_their_raw_input(upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply([*weather_call(name="patch", args=json.dumps({"input": "+++ abc\n"})),
                            chunk(finish="tool_calls")]))
    events = run(model(upstream), conv(PATCH))
    start = next(e for e in events if isinstance(e, ToolCallStart))
    assert start.type == "custom" and calls(events) == [(0, "patch", "+++ abc\n")]
    assert [e.delta for e in events if isinstance(e, ToolCallArgsDelta)] == ["+++ abc\n"]


def test_custom_tool_input_must_match_its_grammar(upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply([*weather_call(name="patch", args=json.dumps({"input": "--- abc"})),
                            chunk(finish="tool_calls")]))
    with pytest.raises(UpstreamError, match="does not match the tool's regex grammar"):
        run(model(upstream, invalid_call_retries=0), conv(PATCH))


def test_custom_grammars_are_checked_when_the_request_comes(upstream: FakeUpstream) -> None:
    m = model(upstream)
    m.validate_custom(PATCH, param="tools[0]")
    with pytest.raises(InvalidGrammar):
        m.validate_custom(ToolSpec("bad", kind="custom", grammar=("lark", "start: (")), param="tools[0]")


def test_failures_that_generated_nothing_are_retried_with_backoff(upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(reset_after=0), Reply(status=503, json={"error": {"message": "loading"}}),
                     text_reply("ok"))
    events = run(model(upstream, max_retries=2), conv())
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["ok"]
    assert len(upstream.requests) == 3


def test_retries_run_out(upstream: FakeUpstream) -> None:
    upstream.enqueue(*[Reply(status=503, json={"error": {"message": "loading"}}) for _ in range(3)])
    with pytest.raises(UpstreamError) as err:
        run(model(upstream, max_retries=1), conv())
    assert err.value.status == 503 and "loading" in err.value.message
    assert len(upstream.requests) == 2


def test_a_reset_after_text_was_passed_on_is_not_retried(upstream: FakeUpstream) -> None:
    upstream.enqueue(text_reply("a", "b", "c", reset_after=2), text_reply("never"))
    m = model(upstream)

    async def go() -> list[Any]:
        seen: list[Any] = []
        with pytest.raises(UpstreamError, match="broke"):
            async for e in m.stream(conv()):
                seen.append(e)
        await m.close()
        return seen

    assert asyncio.run(go()) == [TextDelta("a")]
    assert len(upstream.requests) == 1


def test_client_errors_are_not_retried(upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(status=400, json={"error": {"message": "too long", "code": "context_length_exceeded"}}))
    with pytest.raises(UpstreamError) as err:
        run(model(upstream), conv())
    assert (err.value.status, err.value.code) == (400, "context_length_exceeded")
    assert len(upstream.requests) == 1


def test_estimates_without_a_tokenizer(upstream: FakeUpstream) -> None:
    m = model(upstream, context_length=1000)
    assert m.context_length == 1000 and m.count_tokens("x" * 40) == 10
    assert 5 < m.prompt_tokens(conv(WEATHER)) < 200
