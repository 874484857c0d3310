from __future__ import annotations

import json
from typing import ClassVar

import pytest

from midtier.core.messages import Message, ResponseFormat, ToolChoice
from midtier.formats import detect, get_format
from midtier.templates import ChatTemplate

from .conformance import (
    TEMPLATES,
    TOOLS,
    Case,
    FormatConformance,
    assert_grammar_accepts,
    assert_monotone,
    final,
    parsed_calls,
    stream,
    toy_constrainer,
)

TS, TE = "<|START_THINKING|>", "<|END_THINKING|>"
AS, AE = "<|START_ACTION|>", "<|END_ACTION|>"
RS, RE = "<|START_RESPONSE|>", "<|END_RESPONSE|>"
PARIS = '{"tool_call_id": "0", "tool_name": "get_weather", "parameters": {"city": "Paris"}}'
TOKYO = '{"tool_call_id": "1", "tool_name": "get_weather", "parameters": {"city": "Tokyo", "unit": "c"}}'
PLUS_PARIS = 'Action: ```json\n[\n    {\n        "tool_name": "get_weather",\n        "parameters": {"city": "Paris"}\n    }\n]\n```'


class TestCommandR(FormatConformance):
    key = "command_r"
    templates = ("command-r7b.jinja", "command-r-plus.jinja")
    specials: ClassVar[list[str]] = [TS, TE, AS, AE, RS, RE, "<|START_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>",
                                     "<|CHATBOT_TOKEN|>", "<|SYSTEM_TOKEN|>", "<|USER_TOKEN|>"]
    end_of_turn = "<|END_OF_TURN_TOKEN|>"
    cases: ClassVar[list[Case]] = [
        Case("Hello there!", "Hello there!"),
        Case(f"{RS}It is sunny.{RE}", "It is sunny."),
        Case(f"{TS}I will look up the weather.{TE}{AS}[\n    {PARIS}\n]{AE}", None,
             [("get_weather", {"city": "Paris"})], reasoning="I will look up the weather."),
        Case(f"{TS}Two cities.{TE}{AS}[{PARIS}, {TOKYO}]{AE}", None,
             [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Tokyo", "unit": "c"})],
             reasoning="Two cities."),
        # the plan may run straight into the action
        Case(f"{TS}Plan{AS}[{PARIS}]{AE}", None, [("get_weather", {"city": "Paris"})], reasoning="Plan"),
        Case(f'{AS}[{{"tool_name": "send_email", "parameters": {{"to": "東京@例え.jp", "body": "a \\"q\\" ] }}\\n ✓",'
             f' "cc": ["x"]}}}}]{AE}', None,
             [("send_email", {"to": "東京@例え.jp", "body": 'a "q" ] }\n ✓', "cc": ["x"]})]),
        Case(f'{AS}[{{"tool_name": "get_weather", "parameters": {{"city": "Rome", "extra": {{"n": [1, null]}}}}}}]{AE}',
             None, [("get_weather", {"city": "Rome", "extra": {"n": [1, None]}})]),
        # Command R+
        Case(PLUS_PARIS, None, [("get_weather", {"city": "Paris"})]),
        Case("I will check.\n" + PLUS_PARIS, "I will check.", [("get_weather", {"city": "Paris"})]),
        Case('Action:\n```json\n[{"tool_name": "directly-answer", "parameters": {}}]\n```', None),
        Case('Action: [{"tool_name": "get_weather", "parameters": {"city": "Oslo"}}]', None,
             [("get_weather", {"city": "Oslo"})]),
        Case("Reaction: fine. Action: none needed.", "Reaction: fine. Action: none needed."),
        Case("Action: the plan is simple.", "Action: the plan is simple."),
        Case("Use <|START and ``` fences", "Use <|START and ``` fences"),
        Case("Unicode: 東京 ✓ — ok", "Unicode: 東京 ✓ — ok"),
    ]
    malformed: ClassVar[list[str]] = [
        AS,
        AS + "[",
        AS + '[{"tool_name": "get_weather", "parameters": {"city": "Par',
        AS + "not json" + AE,
        AS + "[1, 2]" + AE,
        AS + '[{"tool_name": 5}]' + AE,
        TS + "never ends",
        "Action:",
        "Action: ```json\n[",
        "Action: ```python\nprint(1)\n```",
        RE + AE + TE,
        # tag fragments around a response tag: dropping the tag must not join them into another
        f"<|END_{RS}RESPONSE|> ok",
        f"a <|START_{RE}RESPONSE|> b",
        f"Hi <|END_RESP{RE}ONSE|>!",
        '{"tool_name": "get_weather", "parameters": {}}',
    ]
    streams: ClassVar[list[str]] = [
        # the parameters before the name; an answer written as a call, never shown
        f'{AS}[{{"parameters": {{"city": "Oslo", "note": "a {{b}} \\"q\\""}}, "tool_name": "get_weather"}}]{AE}',
        f'{AS}[{{"tool_name": "directly-answer", "parameters": {{"answer": "long [1] {{x}} \\"q\\" answer"}}}}, '
        f'{PARIS}]{AE}',
        f"Action: ```json\n[{PARIS}]\n```\nDone.",
    ]


def _render_plus(messages: list[Message]) -> str:
    fmt = get_format("command_r")
    template = ChatTemplate((TEMPLATES / "command-r-plus.jinja").read_text(), bos_token="<BOS_TOKEN>")
    return template.render_conversation(*fmt.prepare(messages, TOOLS), add_generation_prompt=False)


def test_command_r_plus_round_trip() -> None:
    """Command R+'s template always ends with an instruction turn, so the generation prompt
    is not a prefix of a rendered turn: the turn is cut out of the conversation instead."""
    fmt = get_format("command_r")
    constrainer, tokenize = toy_constrainer(TestCommandR.specials)
    user = [Message("user", "What is the weather in Paris and in Tokyo?")]
    for calls in FormatConformance.ROUND_TRIP:
        full = _render_plus(user + [Message("assistant", None, calls)])
        turn = full.split("<|CHATBOT_TOKEN|>")[1].split("<|START_OF_TURN_TOKEN|>")[0]
        assert turn.startswith("\nAction:\n```json\n") and "None" not in turn
        parsed = fmt.parse(turn, partial=False)
        assert parsed_calls(parsed) == [(c.name, json.loads(c.arguments)) for c in calls], turn
        assert_grammar_accepts(fmt, constrainer, tokenize, turn, calls)


def test_prepare_gives_command_r_plus_parameter_descriptions() -> None:
    fmt = get_format("command_r")
    _, tools = fmt.prepare([], TOOLS)
    assert all(p["description"] == "" for t in tools for p in t.parameters["properties"].values())
    assert "description" not in TOOLS[0].parameters["properties"]["city"]  # the caller's tools are not changed
    ChatTemplate((TEMPLATES / "command-r-plus.jinja").read_text()).render_conversation([Message("user", "x")], tools)


def test_detects_both_command_r_templates_and_nothing_else() -> None:
    for path in sorted(TEMPLATES.glob("*.jinja")):
        assert (detect(path.read_text()) == "command_r") == (path.name in TestCommandR.templates), path.name


def test_template_ids_are_not_api_ids() -> None:
    parsed = get_format("command_r").parse(f"{AS}[{PARIS}]{AE}", partial=False)
    assert parsed.calls[0].id is None


def test_partial_markers_are_held_back() -> None:
    fmt = get_format("command_r")
    assert fmt.parse("Hi <|START_A", partial=True).content == "Hi"
    assert fmt.parse("Hi\nActi", partial=True).content == "Hi"
    assert fmt.parse("Hi\nActi", partial=False).content == "Hi\nActi"
    assert fmt.parse("Hi Acti", partial=True).content == "Hi Acti"
    assert fmt.parse(f"{RS}Sunny<|END_RES", partial=True).content == "Sunny"


def test_truncated_call_keeps_its_arguments() -> None:
    fmt = get_format("command_r")
    parsed = fmt.parse(AS + '[{"tool_name": "get_weather", "parameters": {"city": "Pa', partial=False)
    assert [(c.name, c.arguments) for c in parsed.calls] == [("get_weather", '{"city": "Pa')]


# -- the constraint -------------------------------------------------------------------------------

@pytest.mark.parametrize("special", [True, False])
def test_grammar(special: bool) -> None:
    constrainer, tokenize = toy_constrainer(TestCommandR.specials if special else [])
    fmt = get_format("command_r")
    auto = fmt.grammar(TOOLS, ToolChoice("auto"), ResponseFormat(), constrainer.markers)
    assert auto is not None
    assert constrainer.accepts(auto, tokenize(f"{TS}Plan it.{TE}{AS}[{PARIS}, {TOKYO}]{AE}"))
    assert constrainer.accepts(auto, tokenize(f"{RS}Sunny.{RE}"))
    assert constrainer.accepts(auto, tokenize("Plain text."))
    assert constrainer.accepts(auto, tokenize("Checking.\n" + PLUS_PARIS))
    assert not constrainer.accepts(auto, tokenize(f'{AS}[{{"tool_name": "get_weather", "parameters": {{"town": "x"}}}}]{AE}'))
    assert not constrainer.accepts(auto, tokenize(f"{AS}[]{AE}"))
    single = fmt.grammar(TOOLS, ToolChoice("required", ("get_weather",), parallel=False), ResponseFormat(),
                         constrainer.markers)
    assert single is not None and constrainer.accepts(single, tokenize(f"{AS}[{PARIS}]{AE}"))
    assert not constrainer.accepts(single, tokenize(f"{AS}[{PARIS}, {TOKYO}]{AE}"))
    assert not constrainer.accepts(single, tokenize(f"{RS}Sunny.{RE}"))
    none = fmt.grammar(TOOLS, ToolChoice("none"), ResponseFormat(), constrainer.markers, ban_stray_json=True)
    assert none is not None and constrainer.accepts(none, tokenize(f"{RS}Sunny.{RE}"))
    assert not constrainer.accepts(none, tokenize(PLUS_PARIS))
    assert not constrainer.accepts(none, tokenize(f"{AS}[{PARIS}]{AE}"))
    as_json = fmt.grammar(TOOLS, ToolChoice("none"), ResponseFormat("json_object"), constrainer.markers)
    assert as_json is not None and constrainer.accepts(as_json, tokenize(f'{RS}{{"a": 1}}{RE}'))
    assert not constrainer.accepts(as_json, tokenize(f"{RS}text{RE}"))


def test_content_only_grows_around_broken_tag_fragments() -> None:
    """The response tags are dropped in one pass: text around a tag that would spell another
    one once the tag is gone stays as it is, so content already streamed is never taken back."""
    fmt = get_format("command_r")
    for text, content in ((f"<|END_{RS}RESPONSE|> ok", "<|END_RESPONSE|> ok"),
                          (f"a <|START_{RE}RESPONSE|> b", "a <|START_RESPONSE|> b"),
                          (f"{RS}x<|END_{RS}RESPONSE|>{RE}", "x<|END_RESPONSE|>")):
        assert_monotone(fmt, text)
        assert fmt.parse(text, partial=False).content == content
        assert stream(fmt, text, [1] * len(text)) == final(fmt, text)
