from __future__ import annotations

import json
from typing import ClassVar

import pytest

from midtier.core.messages import Message, ResponseFormat, ToolCall, ToolChoice
from midtier.formats import detect, get_format
from midtier.templates import ChatTemplate

from .conformance import TEMPLATES, TOOLS, Case, FormatConformance, parsed_calls, toy_constrainer

CALL = '{"name": "get_weather", "parameters": {"city": "Paris"}}'
TOKYO = CALL.replace("Paris", "Tokyo")
SPECIALS = ["<|python_tag|>", "<|eom_id|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]


class TestLlama3Json(FormatConformance):
    key = "llama3_json"
    templates = ("llama-3.1.jinja", "llama-3.2.jinja", "llama-3.3.jinja", "llama-4-json-vllm.jinja")
    specials: ClassVar[list[str]] = SPECIALS
    end_of_turn = "<|eot_id|>"
    cases: ClassVar[list[Case]] = [
        Case("Hello there!", "Hello there!"),
        Case("Unicode: 東京 ✓ — ok", "Unicode: 東京 ✓ — ok"),
        Case(CALL, None, [("get_weather", {"city": "Paris"})]),
        Case("\n" + CALL + "\n", None, [("get_weather", {"city": "Paris"})]),
        Case("<|python_tag|>" + CALL + "<|eom_id|>", None, [("get_weather", {"city": "Paris"})]),
        Case("Let me check.<|python_tag|>" + CALL, "Let me check.", [("get_weather", {"city": "Paris"})]),
        Case(CALL + "; " + TOKYO, None, [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Tokyo"})]),
        Case(CALL + "\n" + TOKYO, None, [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Tokyo"})]),
        Case(CALL + TOKYO, None, [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Tokyo"})]),
        Case('{"name": "send_email", "parameters": {"to": "a@b.c", "body": "Line \\"1\\"\\nLine 2 \\u00e9 {}"}}', None,
             [("send_email", {"to": "a@b.c", "body": 'Line "1"\nLine 2 é {}'})]),
        Case('{"name": "send_email", "parameters": {"to": "ü@b.c", "body": "x", "cc": ["a", "b"], '
             '"meta": {"n": -1.5e3, "ok": true, "v": null, "deep": [{"k": [1, 2]}]}}}', None,
             [("send_email", {"to": "ü@b.c", "body": "x", "cc": ["a", "b"],
                              "meta": {"n": -1500.0, "ok": True, "v": None, "deep": [{"k": [1, 2]}]}})]),
        # what small models also write: "arguments", JSON text in a string, a "type" key first
        Case('{"name": "get_weather", "arguments": {"city": "Oslo"}}', None, [("get_weather", {"city": "Oslo"})]),
        Case('{"name": "get_weather", "parameters": "{\\"city\\": \\"Rome\\"}"}', None,
             [("get_weather", {"city": "Rome"})]),
        Case('{"type": "function", "name": "get_weather", "parameters": {"city": "Lima"}}', None,
             [("get_weather", {"city": "Lima"})]),
        Case('{"parameters": {"city": "Kyiv"}, "name": "get_weather"}', None, [("get_weather", {"city": "Kyiv"})]),
        # JSON that is not a call stays text
        Case('{"name": "John", "age": 31}', '{"name": "John", "age": 31}'),
        Case('{"answer": 42}', '{"answer": 42}'),
        Case('Use {"name": "get_weather", "parameters": {}} to call it.',
             'Use {"name": "get_weather", "parameters": {}} to call it.'),
        Case("Sure.<|python_tag|>brave_search.call(query=\"x\")", 'Sure.<|python_tag|>brave_search.call(query="x")'),
        Case(CALL + " Done.", "Done.", [("get_weather", {"city": "Paris"})]),
        Case("Text with <|pyth", "Text with <|pyth"),
    ]
    malformed: ClassVar[list[str]] = [
        '{"name": ',
        '{"name": "get_weather", "parameters": {"city": "Par',
        '{not json}',
        "<|python_tag|>",
        '<|python_tag|>{"name": 5, "parameters": {}}',
        '{"name": "get_weather", "parameters": 7}',
        '{"name": "get_weather"}',
        '[{"name": "get_weather", "parameters": {}}]',
        CALL + '; {"nam',
        CALL + "; {oops",
        '{"name": "get_weather", "parameters": {}, 5}',
        "}}}{{{",
    ]
    streams: ClassVar[list[str]] = [
        # arguments before the name: silent until the name comes, then the call
        '{"parameters": {"city": "Oslo", "note": "a < b \\"q\\" {x}"}, "name": "get_weather"}; ' + TOKYO,
        "<|python_tag|>" + CALL.replace("Paris", "Par <|eom_id|> is") + "\n\nThen text <|eot_id|>",
    ]


def test_detects_llama_templates() -> None:
    for name in TestLlama3Json.templates:
        assert detect((TEMPLATES / name).read_text()) == "llama3_json", name


def test_not_detected_in_other_families() -> None:
    for name in ("llama-4-pythonic-vllm.jinja", "gemma-3-pythonic-vllm.jinja", "hermes-3.jinja",
                 "functionary-v3.1.jinja", "xlam-llama-vllm.jinja", "deepseek-r1-distill-llama.jinja"):
        assert detect((TEMPLATES / name).read_text()) != "llama3_json", name


def test_partial_object_is_held_until_it_is_a_call() -> None:
    fmt = get_format("llama3_json")
    assert fmt.parse('{"name": "get_weather"', partial=True).calls == []
    assert fmt.parse('{"name": "get_weather"', partial=True).content == ""
    parsed = fmt.parse('{"name": "get_weather", "parameters": {"ci', partial=True)
    assert [(c.name, c.arguments) for c in parsed.calls] == [("get_weather", '{"ci')]
    # truncated before the arguments began: text, not a call
    assert fmt.parse('{"name": "get_weather"', partial=False).content == '{"name": "get_weather"'


def test_truncated_call_keeps_its_arguments_so_far() -> None:
    fmt = get_format("llama3_json")
    parsed = fmt.parse('{"name": "get_weather", "parameters": {"city": "Pa', partial=False)
    assert [(c.name, c.arguments, c.done) for c in parsed.calls] == [("get_weather", '{"city": "Pa', True)]


def test_python_tag_prefix_is_held_back() -> None:
    fmt = get_format("llama3_json")
    assert fmt.parse("Hi <|python_t", partial=True).content == "Hi"
    assert fmt.parse("Hi <|eo", partial=True).content == "Hi"


def _render(name: str, messages: list[Message], *, prepare: bool = True) -> str:
    fmt = get_format("llama3_json")
    template = ChatTemplate((TEMPLATES / name).read_text(), bos_token="<|begin_of_text|>")
    if prepare:
        messages, tools = fmt.prepare(messages, TOOLS)
    else:
        tools = TOOLS
    return template.render_conversation(messages, tools, add_generation_prompt=False)


@pytest.mark.parametrize("name", TestLlama3Json.templates)
def test_round_trip_single_call_every_template(name: str) -> None:
    fmt = get_format("llama3_json")
    calls = [ToolCall("call_1", "send_email", '{"to": "a@b.c", "body": "Hi \\"you\\"\\nbye", "cc": ["x@y.z"]}')]
    user = [Message("user", "Mail them.")]
    prompt = ChatTemplate((TEMPLATES / name).read_text(), bos_token="<|begin_of_text|>").render_conversation(
        fmt.prepare(user, TOOLS)[0], TOOLS, add_generation_prompt=True)
    full = _render(name, [*user, Message("assistant", None, calls)])
    assert full.startswith(prompt)
    turn = full[len(prompt):].split("<|eot")[0]
    assert parsed_calls(fmt.parse(turn, partial=False)) == [("send_email", json.loads(calls[0].arguments))]


@pytest.mark.parametrize("name", ["llama-3.1.jinja", "llama-3.2.jinja", "llama-3.3.jinja"])
def test_several_calls_render_as_the_model_writes_them(name: str) -> None:
    calls = [ToolCall("call_1", "get_weather", '{"city": "Paris"}'), ToolCall("call_2", "get_weather", '{"city": "Tokyo"}')]
    history = [Message("user", "Weather?"), Message("assistant", None, calls),
               Message("tool", "sunny", tool_call_id="call_1"), Message("tool", "rainy", tool_call_id="call_2")]
    text = _render(name, history)
    assert '<|start_header_id|>assistant<|end_header_id|>\n\n' + CALL + "; " + TOKYO + "<|eot_id|>" in text
    # tool results are in the ipython role
    assert text.count("<|start_header_id|>ipython<|end_header_id|>") == 2


def test_llama4_json_template_renders_several_calls_natively() -> None:
    calls = [ToolCall("call_1", "get_weather", '{"city": "Paris"}'), ToolCall("call_2", "get_weather", '{"city": "Tokyo"}')]
    text = _render("llama-4-json-vllm.jinja", [Message("user", "Weather?"), Message("assistant", "", calls)],
                   prepare=False)
    turn = text.split("<|header_start|>assistant<|header_end|>\n\n")[-1].split("<|eot|>")[0]
    fmt = get_format("llama3_json")
    assert parsed_calls(fmt.parse(turn, partial=False)) == [("get_weather", {"city": "Paris"}),
                                                             ("get_weather", {"city": "Tokyo"})]


def test_tools_go_in_the_first_user_message_by_default() -> None:
    text = _render("llama-3.2.jinja", [Message("user", "Weather?")])
    user_turn = text.split("<|start_header_id|>user<|end_header_id|>")[1]
    assert '"name": "get_weather"' in user_turn


def test_auto_accepts_text_and_bare_calls_only_valid_ones() -> None:
    constrainer, tokenize = toy_constrainer(SPECIALS)
    fmt = get_format("llama3_json")
    auto = fmt.grammar(TOOLS, ToolChoice("auto"), ResponseFormat(), constrainer.markers)
    assert auto is not None
    ok = ["It is sunny.", "", CALL, "<|python_tag|>" + CALL, "Let me see.<|python_tag|>" + CALL,
          CALL + "; " + TOKYO, CALL + "\n" + TOKYO, CALL + TOKYO]
    for text in ok:
        assert constrainer.accepts(auto, tokenize(text)), text
    bad = ['{"name": "get_weather", "parameters": {"town": "Paris"}}',  # undeclared argument
           '{"name": "get_time", "parameters": {}}',  # unknown tool
           '{"answer": 42}',  # a text answer cannot start with "{"
           '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "k"}}']
    for text in bad:
        assert not constrainer.accepts(auto, tokenize(text)), text


def test_python_tag_written_as_text() -> None:
    """A tokenizer without a <|python_tag|> token (Llama 4): the tag is text."""
    constrainer, tokenize = toy_constrainer([])
    fmt = get_format("llama3_json")
    auto = fmt.grammar(TOOLS, ToolChoice("auto"), ResponseFormat(), constrainer.markers)
    assert auto is not None
    for text in ("It is sunny.", CALL, "<|python_tag|>" + CALL, "Let me see.<|python_tag|>" + CALL):
        assert constrainer.accepts(auto, tokenize(text)), text
    assert not constrainer.accepts(auto, tokenize("Let me see.<|python_tag|>{}"))


def test_required_and_named_and_single() -> None:
    constrainer, tokenize = toy_constrainer(SPECIALS)
    fmt = get_format("llama3_json")
    required = fmt.grammar(TOOLS, ToolChoice("required"), ResponseFormat(), constrainer.markers)
    assert required is not None
    assert not constrainer.accepts(required, tokenize("It is sunny."))
    assert constrainer.accepts(required, tokenize(CALL))
    named = fmt.grammar(TOOLS, ToolChoice("required", ("get_weather",), parallel=False), ResponseFormat(),
                        constrainer.markers)
    assert named is not None
    assert constrainer.accepts(named, tokenize(CALL))
    assert not constrainer.accepts(named, tokenize(CALL + "; " + TOKYO))
    email = '{"name": "send_email", "parameters": {"to": "a", "body": "b"}}'
    assert not constrainer.accepts(named, tokenize(email))


def test_none_and_json_answer() -> None:
    constrainer, tokenize = toy_constrainer(SPECIALS)
    fmt = get_format("llama3_json")
    none = fmt.grammar(TOOLS, ToolChoice("none"), ResponseFormat(), constrainer.markers, ban_stray_json=True)
    assert none is not None
    assert constrainer.accepts(none, tokenize("It is sunny."))
    assert not constrainer.accepts(none, tokenize(CALL))
    assert not constrainer.accepts(none, tokenize("<|python_tag|>" + CALL))
    schema = {"type": "object", "properties": {"temp": {"type": "number"}}, "required": ["temp"]}
    rf = ResponseFormat("json_schema", schema)
    auto = fmt.grammar(TOOLS, ToolChoice("auto"), rf, constrainer.markers)
    assert auto is not None
    assert constrainer.accepts(auto, tokenize('{"temp": 21}'))
    assert constrainer.accepts(auto, tokenize(CALL))
    assert not constrainer.accepts(auto, tokenize("It is sunny."))


def test_bare_json_is_the_syntax_not_a_stray() -> None:
    fmt = get_format("llama3_json")
    assert fmt.steer_stray_json is False
    assert fmt.call_intent('{"name": "get_weather"', ["get_weather"]) is False
