from __future__ import annotations

from typing import ClassVar

import pytest

from midtier.core.errors import InvalidGrammar
from midtier.core.messages import Message, ResponseFormat, ToolCall, ToolChoice, ToolSpec
from midtier.formats import detect, get_format
from midtier.formats.hermes import custom_block

from .conformance import TEMPLATES, TOOLS, Case, FormatConformance, toy_constrainer

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


class TestHermes(FormatConformance):
    key = "hermes"
    templates = ("qwen2.5-instruct.jinja", "hermes-2-pro.jinja", "hermes-3.jinja")
    specials: ClassVar[list[str]] = ["<tool_call>", "</tool_call>", "<|im_end|>"]
    end_of_turn = "<|im_end|>"
    cases: ClassVar[list[Case]] = [
        Case("Hello there!", "Hello there!"),
        Case(CALL, None, [("get_weather", {"city": "Paris"})]),
        Case(CALL + "\n", None, [("get_weather", {"city": "Paris"})]),
        Case("Let me check.\n" + CALL, "Let me check.", [("get_weather", {"city": "Paris"})]),
        Case(CALL + "\n" + CALL.replace("Paris", "Tokyo"), None,
             [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Tokyo"})]),
        Case('<tool_call>\n{"arguments": {"city": "Oslo"}, "name": "get_weather"}\n</tool_call>', None,
             [("get_weather", {"city": "Oslo"})]),
        Case('<tool_call>\n{"name": "get_weather", "arguments": "{\\"city\\": \\"Rome\\"}"}\n</tool_call>', None,
             [("get_weather", {"city": "Rome"})]),
        Case('<tool_call>\n{"name": "send_email", "parameters": {"to": "x", "body": "a < b"}}\n</tool_call>', None,
             [("send_email", {"to": "x", "body": "a < b"})]),
        Case('Use <b>bold</b> and <tool_c', "Use <b>bold</b> and <tool_c"),
        Case("Unicode: 東京 ✓ — ok", "Unicode: 東京 ✓ — ok"),
    ]
    malformed: ClassVar[list[str]] = [
        "<tool_call>\nnot json\n</tool_call>",
        "<tool_call>\n{\"name\": \n</tool_call>",
        "<tool_call>\n{\"nam",
        "<tool_call>",
        "</tool_call>",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par',
        '<tool_call>\n{"name": 5}\n</tool_call>',
        "{\"name\": \"get_weather\", \"arguments\": {}}",
    ]


def test_not_a_call_stays_content() -> None:
    fmt = get_format("hermes")
    parsed = fmt.parse("<tool_call>\nnot json\n</tool_call> after", partial=False)
    assert parsed.calls == []
    assert parsed.content == "<tool_call>\nnot json\n</tool_call> after"


def test_partial_marker_is_held_back_until_known() -> None:
    fmt = get_format("hermes")
    assert fmt.parse("Hi <tool_c", partial=True).content == "Hi"
    assert fmt.parse("Hi <tool_c", partial=False).content == "Hi <tool_c"


def test_truncated_call_keeps_its_arguments_so_far() -> None:
    fmt = get_format("hermes")
    parsed = fmt.parse('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa', partial=False)
    assert [(c.name, c.arguments) for c in parsed.calls] == [("get_weather", '{"city": "Pa')]


def test_detects_qwen_and_hermes_templates() -> None:
    for name in TestHermes.templates:
        assert detect((TEMPLATES / name).read_text()) == "hermes"


def test_strict_schema_refuses_undeclared_properties() -> None:
    constrainer, tokenize = toy_constrainer(TestHermes.specials)
    fmt = get_format("hermes")
    grammar = fmt.grammar(TOOLS, ToolChoice("required"), ResponseFormat(), constrainer.markers)
    assert grammar is not None
    extra = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "city2": "Oslo"}}\n</tool_call>'
    assert not constrainer.accepts(grammar, tokenize(extra))
    bad_enum = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "k"}}\n</tool_call>'
    assert not constrainer.accepts(grammar, tokenize(bad_enum))


def test_none_with_tools_bans_json_that_looks_like_a_call() -> None:
    constrainer, tokenize = toy_constrainer(TestHermes.specials)
    fmt = get_format("hermes")
    grammar = fmt.grammar(TOOLS, ToolChoice("none"), ResponseFormat(), constrainer.markers, ban_stray_json=True)
    assert grammar is not None
    assert constrainer.accepts(grammar, tokenize("It is sunny in Paris."))
    assert not constrainer.accepts(grammar, tokenize('{"name": "get_weather"}'))
    assert not constrainer.accepts(grammar, tokenize('```json\n{"name": "get_weather"}\n```'))


LARK_MATH = 'start: expr\nexpr: NUMBER (OP NUMBER)*\nNUMBER: /[0-9]+/\nOP: "+" | "-" | "*"\n'


def _custom_tools() -> list[ToolSpec]:
    return [ToolSpec("calc", "Evaluate arithmetic", kind="custom", grammar=("lark", LARK_MATH)),
            ToolSpec("note", "Write a free-form note", kind="custom"),
            ToolSpec("digits", "A code of digits", kind="custom", grammar=("regex", r"[0-9]{4}"))]


def test_custom_tool_calls_parse_as_raw_input() -> None:
    fmt = get_format("hermes")
    text = custom_block("calc", "12+30*2") + "\n" + custom_block("note", 'a "quoted"\nline')
    parsed = fmt.parse(text, partial=False)
    assert [(c.name, c.arguments, c.custom) for c in parsed.calls] == [
        ("calc", "12+30*2", True), ("note", 'a "quoted"\nline', True)]
    # streamed, the raw input grows and a half-written end tag is held back
    assert fmt.parse(text[: text.index("</function>") + 3], partial=True).calls[0].arguments == "12+30*2"


def test_custom_tool_grammars_are_enforced() -> None:
    constrainer, tokenize = toy_constrainer(TestHermes.specials)
    fmt = get_format("hermes")
    tools = [*TOOLS, *_custom_tools()]
    grammar = fmt.grammar(tools, ToolChoice("required", ("calc",)), ResponseFormat(), constrainer.markers)
    assert grammar is not None
    assert constrainer.accepts(grammar, tokenize(custom_block("calc", "12+30*2")), tools)
    assert not constrainer.accepts(grammar, tokenize(custom_block("calc", "12+x")), tools)
    grammar = fmt.grammar(tools, ToolChoice("required", ("digits",)), ResponseFormat(), constrainer.markers)
    assert grammar is not None
    assert constrainer.accepts(grammar, tokenize(custom_block("digits", "2024")), tools)
    assert not constrainer.accepts(grammar, tokenize(custom_block("digits", "20245")), tools)
    grammar = fmt.grammar(tools, ToolChoice("auto"), ResponseFormat(), constrainer.markers)
    assert grammar is not None
    assert constrainer.accepts(grammar, tokenize("Let me note it.\n" + custom_block("note", "anything at all")),
                               tools)


def test_invalid_custom_grammar_is_reported() -> None:
    constrainer, _ = toy_constrainer(TestHermes.specials)
    with pytest.raises(InvalidGrammar):
        constrainer.validate_custom(ToolSpec("bad", kind="custom", grammar=("lark", "start: undefined_rule\n")))
    with pytest.raises(InvalidGrammar):
        constrainer.validate_custom(ToolSpec("bad", kind="custom", grammar=("regex", "[unclosed")))


def test_past_custom_calls_render_as_their_block() -> None:
    fmt = get_format("hermes")
    msgs, _ = fmt.prepare([Message("assistant", None, [ToolCall("ctc_1", "calc", "1+1", type="custom")])], [])
    assert msgs[0].content == custom_block("calc", "1+1") and msgs[0].tool_calls == []


def test_doubled_brace_example_is_mended() -> None:
    fmt = get_format("hermes")
    qwen = (TEMPLATES / "qwen2.5-instruct.jinja").read_text()
    single = '{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}'
    assert single in qwen
    doubled = qwen.replace(single, "{" + single + "}")
    assert fmt.patch_template(doubled) == qwen
    assert fmt.patch_template(qwen) == qwen


def test_an_answer_leaks_no_call_anywhere() -> None:
    constrainer, tokenize = toy_constrainer(TestHermes.specials)
    fmt = get_format("hermes")
    grammar = fmt.grammar(TOOLS, ToolChoice("none"), ResponseFormat(), constrainer.markers, ban_stray_json=True)
    assert grammar is not None
    assert constrainer.accepts(grammar, tokenize('Use a dict like {"name": "x"} in Python.'))
    assert not constrainer.accepts(grammar, tokenize('Sure:\n```json\n{"name": "get_weather", "arguments": {}}\n```'))
    assert not constrainer.accepts(grammar, tokenize('```xml\n<tools>\n{"type": "function", "function": {"name": "x"}}'))
    assert not constrainer.accepts(grammar, tokenize('```xml\n<tools/>\n{"name": "get_weather", "arguments}: {}}'))
    assert not constrainer.accepts(grammar, tokenize('Sure: {"name": "get_weather", "arguments**: {}}'))
    assert not constrainer.accepts(grammar, tokenize('Hi: {"type": "function", "function": {"name}:get_weather"'))
    assert constrainer.accepts(grammar, tokenize('```xml\n<tool_response>\n{"temp_c": 17}\n</tool_response>\n```'))
