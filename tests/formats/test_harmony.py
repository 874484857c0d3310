"""gpt-oss / Harmony: the conformance suite, openai-harmony's golden files, and the quirks."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from midtier.constrain import Constrainer
from midtier.core.messages import Message, ResponseFormat, ToolCall, ToolChoice, ToolSpec
from midtier.formats import detect, get_format
from midtier.formats.base import Markers, Parsed
from midtier.formats.harmony import MARKERS, O200K_BASE_SHA256, HarmonyFormat, load_encoding, tiktoken_dir
from midtier.templates import ChatTemplate

from .conformance import (
    TEMPLATES,
    TOOLS,
    Case,
    FormatConformance,
    assert_extends,
    fuzz,
    parsed_calls,
    stream,
    toy_constrainer,
)

GOLDEN = TEMPLATES.parent / "harmony"
WEATHER = '{"city": "Paris"}'
CALL = f"<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{WEATHER}<|call|>"
THINK = "<|channel|>analysis<|message|>The user wants the weather.<|end|><|start|>assistant"
EMAIL = '{"to": "a@b.c", "body": "Grüße aus 東京 \\"quoted\\"\\nline 2 \\\\ done", "cc": ["x@y.z", "w@v.u"]}'


class TestHarmony(FormatConformance):
    key = "harmony"
    templates = ("gpt-oss.jinja",)
    specials: ClassVar[list[str]] = list(MARKERS)
    end_of_turn = ""  # a call turn ends with <|call|>, part of what the model writes
    cases: ClassVar[list[Case]] = [
        Case("<|channel|>final<|message|>Hello there!<|return|>", "Hello there!"),
        # the engine stops on <|return|> and <|call|> (end-of-generation tokens): often absent
        Case("<|channel|>final<|message|>Hello there!", "Hello there!"),
        Case(THINK + "<|channel|>final<|message|>It is sunny.<|return|>", "It is sunny.",
             reasoning="The user wants the weather."),
        Case(THINK + CALL, None, [("get_weather", {"city": "Paris"})], reasoning="The user wants the weather."),
        Case(CALL.removesuffix("<|call|>"), None, [("get_weather", {"city": "Paris"})]),
        # the order gpt-oss.jinja renders past calls in, and the content type without <|constrain|>
        Case(f" to=functions.get_weather<|channel|>commentary json<|message|>{WEATHER}<|call|>", None,
             [("get_weather", {"city": "Paris"})]),
        # <|constrain|> right after the recipient, no content type at all
        Case(f"<|channel|>commentary to=functions.get_weather<|constrain|>json<|message|>{WEATHER}", None,
             [("get_weather", {"city": "Paris"})]),
        Case(f"<|channel|>commentary to=functions.get_weather<|message|>{WEATHER}<|call|>", None,
             [("get_weather", {"city": "Paris"})]),
        Case(CALL + "<|start|>assistant" + CALL.replace("Paris", "Tokyo"), None,
             [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Tokyo"})]),
        Case("<|channel|>commentary<|message|>Let me check.<|end|><|start|>assistant" + CALL, "Let me check.",
             [("get_weather", {"city": "Paris"})]),
        Case(f"<|channel|>commentary to=functions.send_email <|constrain|>json<|message|>{EMAIL}<|call|>", None,
             [("send_email", json.loads(EMAIL))]),
        Case('<|channel|>commentary to=functions.get_weather json<|message|>{"city": "Paris", "extra": '
             '{"days": [1, 2.5, -3e2], "ok": true, "none": null}}<|call|>', None,
             [("get_weather", {"city": "Paris", "extra": {"days": [1, 2.5, -300.0], "ok": True, "none": None}})]),
        Case("<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{}<|call|>", None,
             [("get_weather", {})]),
        Case("<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|><|call|>", None,
             [("get_weather", {})]),
        # built-in tools keep their namespace in the name
        Case('<|channel|>analysis<|message|>Search.<|end|><|start|>assistant<|channel|>commentary '
             'to=browser.search code<|message|>{"query": "midtier", "topn": 3}<|call|>', None,
             [("browser.search", {"query": "midtier", "topn": 3})], reasoning="Search."),
        # a tool's reply the model wrote itself ends the turn
        Case(CALL + '<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>{"t": 20}<|end|>'
             "<|start|>assistant<|channel|>final<|message|>Sunny.", None, [("get_weather", {"city": "Paris"})]),
        # nothing inside reasoning is a call
        Case("<|channel|>analysis<|message|>Call to=functions.get_weather {\"city\": \"Paris\"} maybe.<|end|>"
             "<|start|>assistant<|channel|>final<|message|>No call.", "No call.",
             reasoning='Call to=functions.get_weather {"city": "Paris"} maybe.'),
        Case("<|channel|>final<|message|>Unicode: 東京 ✓ — ok, a < b, <b>bold</b>", "Unicode: 東京 ✓ — ok, a < b, <b>bold</b>"),
        Case("<|channel|>final<|message|>  padded\n\n", "padded"),
        Case("Hello there!", "Hello there!"),  # no header at all: plain text
        Case(" Plain text with a space first", "Plain text with a space first"),
        # harmony's non-strict reading of a missing <|message|>
        Case("I must refuse<|end|><|start|>assistant<|channel|>final<|message|>Sorry.<|return|>",
             "I must refuse\n\nSorry."),
        Case("<|channel|>analysis I must refuse<|end|><|start|>assistant<|channel|>final<|message|>Sorry.",
             "Sorry.", reasoning="I must refuse"),
        # <|end|> without <|start|>assistant, and <|channel|> without <|end|>
        Case("<|channel|>analysis<|message|>a<|end|><|channel|>final<|message|>b", "b", reasoning="a"),
        Case("<|channel|>analysis<|message|>a<|channel|>final<|message|>b", "b", reasoning="a"),
        Case("<|channel|>analysis<|message|>one<|end|><|start|>assistant<|channel|>analysis<|message|>two<|end|>"
             "<|start|>assistant<|channel|>final<|message|>x", "x", reasoning="one\n\ntwo"),
    ]
    malformed: ClassVar[list[str]] = [
        "<|channel|>",
        "<|channel|>commentary to=functions.get_weather",
        "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\": \"Pa",
        "<|channel|>commentary to=functions.get_weather<|message|>not json<|call|>",
        "<|channel|>commentary to=functions.get_weather json {\"city\": \"Paris\"}<|call|>",
        "<|message|><|message|><|end|>",
        "<|start|><|start|>assistant<|end|><|start|>",
        "<|end|><|call|><|return|><|constrain|>",
        "<|start|>user<|message|>hi<|end|>",
        "<|channel|>" + "x" * 400 + "<|message|>late",
        "<|channel|>final\nno message marker<|end|>",
        "to=",
        '{"name": "get_weather", "arguments": {"city": "Paris"}}',
        "<|channel|>analysis<|message|>unfinished thought <|",
    ]


# -- family-specific parsing -------------------------------------------------------------------

def _snap(parsed: Parsed) -> tuple[str, str, list[tuple[str, str]]]:
    return parsed.content, parsed.reasoning, [(c.name, c.arguments) for c in parsed.calls]


def test_output_cut_anywhere_extends_its_snapshot() -> None:
    """The final parse of output cut short extends the partial parse of the same text."""
    fmt = get_format("harmony")
    for text in [c.text for c in TestHarmony.cases] + TestHarmony.malformed:
        for cut in range(1, len(text) + 1):
            assert_extends(fmt.parse(text[:cut], partial=True), fmt.parse(text[:cut], partial=False), text[:cut])


def test_random_markup_is_monotone() -> None:
    fmt = get_format("harmony")
    pieces = [*MARKERS, "assistant", "analysis", "final", "commentary", " to=functions.get_weather", " json",
              " ", "\n", '{"city": ', '"Paris"}', "text", "<", "|", "user", "python"]
    fuzz(fmt, pieces, seed=7, n=300, longest=14)


def test_partial_marker_is_held_back() -> None:
    fmt = get_format("harmony")
    assert fmt.parse("<|channel|>final<|message|>Hi <|re", partial=True).content == "Hi"
    assert fmt.parse("<|channel|>final<|message|>Hi <|re", partial=False).content == "Hi <|re"
    assert fmt.parse("<|chan", partial=True) == Parsed()


def test_call_is_held_until_its_header_is_complete() -> None:
    fmt = get_format("harmony")
    assert fmt.parse("<|channel|>commentary to=functions.get_wea", partial=True).calls == []
    assert fmt.parse("<|channel|>commentary to=functions.get_weather json", partial=False).calls == []
    parsed = fmt.parse("<|channel|>commentary to=functions.get_weather json<|message|>", partial=True)
    assert [(c.name, c.arguments, c.done) for c in parsed.calls] == [("get_weather", "", False)]


def test_truncated_call_keeps_its_arguments_so_far() -> None:
    fmt = get_format("harmony")
    parsed = fmt.parse(CALL[: CALL.index("Paris") + 2], partial=False)
    assert [(c.name, c.arguments, c.done) for c in parsed.calls] == [("get_weather", '{"city": "Pa', True)]
    # a terminator's first characters are never arguments, not even in a final parse
    parsed = fmt.parse(CALL[: CALL.index("<|call|>") + 3], partial=False)
    assert parsed.calls[0].arguments == WEATHER


def test_python_tool_code_becomes_a_code_argument() -> None:
    fmt = get_format("harmony")
    text = '<|channel|>analysis to=python code<|message|>print("hi")\nx = 1 \\ 2<|call|>'
    parsed = fmt.parse(text, partial=False)
    assert [(c.name, json.loads(c.arguments)) for c in parsed.calls] == [("python", {"code": 'print("hi")\nx = 1 \\ 2'})]
    # streamed, the code string only grows; the engine's output ends without <|call|>
    assert stream(fmt, text.removesuffix("<|call|>"), [1] * len(text)) == ("", [("python", parsed.calls[0].arguments)])
    assert fmt.parse(text[:-10], partial=True).calls[0].arguments == '{"code": "print(\\"hi\\")\\nx = 1 \\\\'


def test_prompt_that_opens_a_message_continues_it() -> None:
    fmt = get_format("harmony")
    assert fmt.for_prompt("<|start|>user<|message|>hi<|end|><|start|>assistant") is fmt
    thinking = fmt.for_prompt("<|start|>assistant<|channel|>analysis<|message|>")
    parsed = thinking.parse("Easy.<|end|><|start|>assistant<|channel|>final<|message|>4", partial=False)
    assert (parsed.reasoning, parsed.content) == ("Easy.", "4")
    final = fmt.for_prompt("<|start|>assistant<|channel|>final<|message|>")
    assert final.parse("Just text", partial=True).content == "Just text"
    assert final.for_prompt("<|start|>assistant") .parse("Hi", partial=False).content == "Hi"


# -- detection ---------------------------------------------------------------------------------

def test_detects_gpt_oss_and_nothing_else() -> None:
    assert detect((TEMPLATES / "gpt-oss.jinja").read_text()) == "harmony"
    others = [p.name for p in TEMPLATES.glob("*.jinja")
              if p.name != "gpt-oss.jinja" and all(m in p.read_text() for m in HarmonyFormat.markers)]
    assert others == []


# -- the constraint ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def harmony_constrainer() -> tuple[Constrainer, Any]:
    return toy_constrainer(list(MARKERS))


def _accepts(cz: tuple[Constrainer, Any], choice: ToolChoice, text: str, fmt: HarmonyFormat | None = None,
             response_format: ResponseFormat | None = None) -> bool:
    constrainer, tokenize = cz
    grammar = (fmt or HarmonyFormat()).grammar(TOOLS, choice, response_format or ResponseFormat(),
                                               constrainer.markers)
    assert grammar is not None
    return constrainer.accepts(grammar, tokenize(text))


FINAL = "<|channel|>final<|message|>It is sunny."


def test_auto_allows_answers_reasoning_preambles_and_calls(harmony_constrainer: Any) -> None:
    auto = ToolChoice("auto")
    for text in [FINAL, FINAL + "<|return|>", THINK + FINAL, THINK + CALL, CALL.removesuffix("<|call|>"),
                 "<|channel|>commentary<|message|>Checking.<|end|><|start|>assistant" + CALL,
                 f"<|channel|>commentary to=functions.get_weather<|constrain|>json<|message|>{WEATHER}"]:
        assert _accepts(harmony_constrainer, auto, text), text
    assert not _accepts(harmony_constrainer, auto, "The weather is nice.")  # no header
    assert not _accepts(harmony_constrainer, auto, THINK)  # reasoning alone is no answer
    unknown = CALL.replace("get_weather", "get_time")
    assert not _accepts(harmony_constrainer, auto, unknown)


def test_required_forces_a_call_after_optional_analysis(harmony_constrainer: Any) -> None:
    required = ToolChoice("required")
    assert _accepts(harmony_constrainer, required, THINK + CALL)
    assert _accepts(harmony_constrainer, required, CALL)
    assert not _accepts(harmony_constrainer, required, FINAL)
    assert not _accepts(harmony_constrainer, required, THINK + FINAL)
    assert not _accepts(harmony_constrainer, required, "<|channel|>commentary<|message|>Hm.<|end|>"
                                                       "<|start|>assistant" + CALL)


def test_none_forbids_recipients(harmony_constrainer: Any) -> None:
    none = ToolChoice("none")
    assert _accepts(harmony_constrainer, none, THINK + FINAL)
    assert not _accepts(harmony_constrainer, none, CALL)
    assert not _accepts(harmony_constrainer, none, THINK + CALL)


def test_arguments_follow_the_schema(harmony_constrainer: Any) -> None:
    required = ToolChoice("required")
    extra = CALL.replace(WEATHER, '{"city": "Paris", "country": "FR"}')
    bad_enum = CALL.replace(WEATHER, '{"city": "Paris", "unit": "k"}')
    missing = CALL.replace(WEATHER, '{"unit": "c"}')
    for text in (extra, bad_enum, missing):
        assert not _accepts(harmony_constrainer, required, text), text
    assert _accepts(harmony_constrainer, required, CALL.replace(WEATHER, '{"city": "Paris", "unit": "c"}'))


def test_response_format_constrains_the_final_message(harmony_constrainer: Any) -> None:
    schema = ResponseFormat("json_schema", {"type": "object", "properties": {"n": {"type": "integer"}},
                                            "required": ["n"]}, strict=True)
    choice = ToolChoice("none")
    assert _accepts(harmony_constrainer, choice, THINK + '<|channel|>final<|message|>{"n": 4}', response_format=schema)
    assert not _accepts(harmony_constrainer, choice, THINK + "<|channel|>final<|message|>four", response_format=schema)
    announced = '<|channel|>final <|constrain|>json<|message|>{"n": 4}'
    assert _accepts(harmony_constrainer, choice, announced, response_format=schema)
    assert not _accepts(harmony_constrainer, choice, announced.replace("{", "x{"), response_format=schema)
    parsed = get_format("harmony").parse(announced, partial=False)
    assert (parsed.content, parsed.calls) == ('{"n": 4}', [])


def test_grammar_follows_the_prompt_lead(harmony_constrainer: Any) -> None:
    thinking = HarmonyFormat().for_prompt("<|start|>assistant<|channel|>analysis<|message|>")
    assert _accepts(harmony_constrainer, ToolChoice("auto"), "Hm.<|end|><|start|>assistant" + FINAL, thinking)
    final = HarmonyFormat().for_prompt("<|start|>assistant<|channel|>final<|message|>")
    assert _accepts(harmony_constrainer, ToolChoice("auto"), "It is sunny.", final)


def test_grammar_compiles_when_markers_are_plain_text() -> None:
    """A tokenizer without harmony's special tokens: markers are then quoted strings."""
    constrainer, tokenize = toy_constrainer([])
    assert not set(MARKERS) & constrainer.markers.special
    grammar = HarmonyFormat().grammar(TOOLS, ToolChoice("auto"), ResponseFormat(), Markers())
    assert grammar is not None
    assert constrainer.accepts(grammar, tokenize(THINK + CALL))
    assert not constrainer.accepts(grammar, tokenize("<|channel|>final<|message|>a<|call|>b"))


# -- the prompt side ---------------------------------------------------------------------------

def _template() -> ChatTemplate:
    return ChatTemplate((TEMPLATES / "gpt-oss.jinja").read_text())


def test_prepare_splits_parallel_calls_and_pairs_their_results() -> None:
    fmt = get_format("harmony")
    calls = [ToolCall("call_a", "get_weather", '{"city": "Paris"}'), ToolCall("call_b", "get_weather", '{"city": "Oslo"}')]
    messages = [Message("system", "Be brief."), Message("developer", "Use metric."), Message("user", "Weather?"),
                Message("assistant", None, calls, reasoning="Two cities."),
                Message("tool", "rain", tool_call_id="call_b"), Message("tool", "sun", tool_call_id="call_a")]
    out, _ = fmt.prepare(messages, TOOLS)
    assert [(m.role, m.content, [c.id for c in m.tool_calls]) for m in out] == [
        ("system", "Be brief.\n\nUse metric.", []), ("user", "Weather?", []),
        ("assistant", "Two cities.", ["call_a"]), ("tool", "sun", []),
        ("assistant", "", ["call_b"]), ("tool", "rain", []),
    ]
    text = _template().render_conversation(out, TOOLS)
    assert ("<|start|>assistant<|channel|>analysis<|message|>Two cities.<|end|>"
            '<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Paris"}<|call|>'
            '<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>"sun"<|end|>'
            '<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Oslo"}<|call|>'
            '<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>"rain"<|end|>'
            "<|start|>assistant") in text
    assert "# Instructions\n\nBe brief.\n\nUse metric." in text


def test_prepare_renders_none_contents_and_drops_finished_reasoning() -> None:
    fmt = get_format("harmony")
    messages = [Message("user", "Hi"), Message("assistant", None, reasoning="greeting"), Message("user", None)]
    out, _ = fmt.prepare(messages, [])
    text = _template().render_conversation(out, [])
    assert text.endswith("<|start|>user<|message|>Hi<|end|><|start|>assistant<|channel|>final<|message|><|end|>"
                         "<|start|>user<|message|><|end|><|start|>assistant")


# -- gpt-oss's built-in tools (browser, python) ------------------------------------------------

BUILTINS = [
    ToolSpec("browser.search", parameters={"type": "object", "properties": {
        "query": {"type": "string"}, "topn": {"type": "integer"}}, "required": ["query"]}, namespace="browser"),
    ToolSpec("browser.open", parameters={"type": "object", "properties": {
        "id": {"anyOf": [{"type": "integer"}, {"type": "string"}]}}}, namespace="browser"),
    ToolSpec("python", parameters={"type": "object", "properties": {"code": {"type": "string"}},
                                   "required": ["code"]}, namespace="python"),
]
SEARCH = '<|channel|>commentary to=browser.search <|constrain|>json<|message|>{"query": "midtier", "topn": 3}<|call|>'


def test_grammar_allows_the_builtin_recipients_only_when_shown(harmony_constrainer: Any) -> None:
    constrainer, tokenize = harmony_constrainer

    def accepts(tools: list[ToolSpec], text: str) -> bool:
        grammar = HarmonyFormat().grammar(tools, ToolChoice("auto"), ResponseFormat(), constrainer.markers)
        assert grammar is not None
        return constrainer.accepts(grammar, tokenize(text))

    for text in [THINK + SEARCH, SEARCH.replace("commentary", "analysis").replace(" <|constrain|>json", " code"),
                 ' to=browser.open<|channel|>commentary code<|message|>{"id": 0}<|call|>',
                 '<|channel|>commentary to=browser.open<|message|>{"id": "https://x.test/"}<|call|>',
                 "<|channel|>analysis to=python code<|message|>import math\nprint(math.pi)<|call|>",
                 THINK + CALL]:
        assert accepts(TOOLS + BUILTINS, text), text
    assert not accepts(TOOLS + BUILTINS, SEARCH.replace("to=browser", "to=functions.browser"))
    assert not accepts(TOOLS + BUILTINS, SEARCH.replace('"midtier"', "3"))  # the schema holds
    assert not accepts(TOOLS + BUILTINS, CALL.replace("commentary", "analysis"))  # functions stay on commentary
    assert not accepts(TOOLS, SEARCH)  # not shown, not callable
    assert not accepts(TOOLS, "<|channel|>analysis to=python code<|message|>print(1)<|call|>")


def test_builtins_are_shown_as_gpt_oss_was_trained_and_functions_as_before() -> None:
    fmt = get_format("harmony")
    source = (TEMPLATES / "gpt-oss.jinja").read_text()
    assert fmt.patch_template(source) != source
    patched, original = ChatTemplate(fmt.patch_template(source)), _template()
    kwargs = fmt.template_kwargs(TOOLS + BUILTINS)
    assert kwargs == {"builtin_tools": ["browser", "python"]} and fmt.template_kwargs(TOOLS) == {}
    functions = [Message("user", "Weather?"),
                 Message("assistant", None, [ToolCall("call_a", "get_weather", WEATHER)], reasoning="Paris."),
                 Message("tool", '{"t": 20}', tool_call_id="call_a"),
                 Message("assistant", None, [ToolCall("call_b", "python", '{"code": "1"}')]),
                 Message("tool", "1", tool_call_id="call_b"), Message("assistant", "Sunny.")]
    messages, tools = fmt.prepare(functions, TOOLS)
    for kw in ({}, {"builtin_tools": ["browser"]}):  # function calls render byte for byte as before
        assert patched.render_conversation(messages, tools, **kw) == original.render_conversation(messages, tools, **kw)

    builtins = [Message("user", "Search."),
                Message("assistant", None, [ToolCall("call_s", "browser.search", '{"query": "midtier"}')]),
                Message("tool", "【0†Midtier†x.test】 https://x.test/", tool_call_id="call_s"),
                Message("assistant", None, [ToolCall("call_p", "python", '{"code": "print(\\"a\\")"}')]),
                Message("tool", "a", tool_call_id="call_p")]
    messages, tools = fmt.prepare(builtins, TOOLS + BUILTINS)
    assert [t.name for t in tools] == [t.name for t in TOOLS]  # the built-ins are not functions
    text = patched.render_conversation(messages, tools, **kwargs)
    assert "## browser" in text and "## python" in text and "type search = " in text
    assert ('<|start|>assistant to=browser.search<|channel|>commentary code<|message|>{"query": "midtier"}<|call|>'
            "<|start|>browser.search to=assistant<|channel|>commentary<|message|>【0†Midtier†x.test】 https://x.test/"
            '<|end|><|start|>assistant to=python<|channel|>commentary code<|message|>print("a")<|call|>'
            "<|start|>python to=assistant<|channel|>commentary<|message|>a<|end|><|start|>assistant") in text
    parsed = fmt.parse(text[text.index(" to=browser.search"):text.index("<|call|>") + len("<|call|>")], partial=False)
    assert parsed_calls(parsed) == [("browser.search", {"query": "midtier"})]  # it reads back as the same call
    # without the built-ins shown, the same calls render as the template always did
    assert patched.render_conversation(messages, tools) == original.render_conversation(messages, tools)


# -- openai-harmony's golden files -------------------------------------------------------------

def golden(name: str) -> str:
    return (GOLDEN / name).read_text(encoding="utf-8").rstrip()


def _harmony_conversations() -> dict[str, tuple[Any, dict[str, Any]]]:
    """The conversations upstream's tests render into each golden file (openai/harmony tests)."""
    import openai_harmony as h

    identity = "You are ChatGPT, a large language model trained by OpenAI."
    weather = h.ToolDescription.new(
        "lookup_weather", "Use this tool to lookup the weather in a given location. Call it with the parameter "
        "'location', can be any textual description of a location.",
        parameters={"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]})
    units = {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"}
    functions = [
        h.ToolDescription.new("get_location", "Gets the location of the user."),
        h.ToolDescription.new("get_current_weather", "Gets the current weather in the provided location.", parameters={
            "type": "object", "properties": {"location": {"type": "string", "description":
                                                          "The city and state, e.g. San Francisco, CA"},
                                             "format": units}, "required": ["location"]}),
        h.ToolDescription.new("get_multiple_weathers", "Gets the current weather in the provided list of locations.",
                              parameters={"type": "object", "properties": {
                                  "locations": {"type": "array", "items": {"type": "string"}, "description":
                                                'List of city and state, e.g. ["San Francisco, CA", "New York, NY"]'},
                                  "format": units}, "required": ["locations"]}),
        h.ToolDescription.new("kitchensink", "A function with various complex schemas.", parameters={
            "description": "params object", "type": "object", "properties": {
                "string": {"type": "string", "title": "STRING", "description": "A string",
                           "examples": ["hello", "world"]},
                "string_nullable": {"type": "string", "nullable": True, "description": "A nullable string",
                                    "default": "the default"},
                "string_enum": {"type": "string", "enum": ["a", "b", "c"]},
                "oneof_string_or_number": {"oneOf": [{"type": "string", "default": "default_string_in_oneof"},
                                                     {"type": "number", "description": "numbers can happen too"}],
                                           "description": "a oneof", "default": 20}}}),
    ]

    def sys(**kw: Any) -> Any:
        content = h.SystemContent.new()
        if kw.get("identity"):
            content = content.with_model_identity(identity)
        if "effort" in kw:
            content = content.with_reasoning_effort(kw["effort"])
        if "date" in kw:
            content = content.with_conversation_start_date(kw["date"])
        if "cutoff" in kw:
            content = content.with_knowledge_cutoff(kw["cutoff"])
        if kw.get("channels"):
            content = content.with_required_channels(["analysis", "final"])
        if kw.get("browser"):
            content = content.with_browser_tool()
        if kw.get("python"):
            content = content.with_python_tool()
        return h.Message.from_role_and_content(h.Role.SYSTEM, content)

    def user(text: str) -> Any:
        return h.Message.from_role_and_content(h.Role.USER, text)

    def assistant(text: str, channel: str) -> Any:
        return h.Message.from_role_and_content(h.Role.ASSISTANT, text).with_channel(channel)

    capital = "What is the capital of the largest country in the world?"
    robot = h.Message.from_role_and_content(
        h.Role.DEVELOPER, h.DeveloperContent.new().with_instructions("Answer the user's questions like a robot."))
    E = h.ReasoningEffort
    drop, keep = {"auto_drop_analysis": True}, {"auto_drop_analysis": False}
    convos: dict[str, tuple[list[Any], dict[str, Any]]] = {
        "test_simple_convo.txt": ([sys(identity=True), user("What is 2 + 2?")], {}),
        "test_reasoning_system_message.txt": (
            [sys(identity=True, effort=E.MEDIUM, channels=True), user("What is 2 + 2?")], {}),
        "test_reasoning_system_message_no_instruction.txt": (
            [sys(identity=True, effort=E.HIGH, channels=True), user("What is the best place to eat candy in the world?")],
            {}),
        "test_reasoning_system_message_with_dates.txt": (
            [sys(identity=True, effort=E.MEDIUM, date="2021-01-01", cutoff="2021-01", channels=True),
             user("What is 42 * pi?")], {}),
        "test_render_functions_with_parameters.txt": (
            [sys(effort=E.HIGH, date="2025-06-28"),
             h.Message.from_role_and_content(h.Role.DEVELOPER, h.DeveloperContent.new()
                                             .with_instructions("Always respond in riddles")
                                             .with_function_tools(functions)),
             user("What is the weather like in SF?")], {}),
        "test_no_tools.txt": ([sys(date="2025-06-28")], {}),
        "test_browser_tool_only.txt": ([sys(date="2025-06-28", browser=True)], {}),
        "test_browser_and_function_tool.txt": (
            [sys(date="2025-06-28", browser=True),
             h.Message.from_role_and_content(h.Role.DEVELOPER, h.DeveloperContent.new().with_function_tools([weather]))],
            {}),
        "test_browser_and_python_tool.txt": ([sys(date="2025-06-28", browser=True, python=True)], {}),
        "test_dropping_cot_by_default.txt": (
            [user("What is 2 + 2?"), assistant("User asks: “What is 2 + 2?” Simple arithmetic. Provide answer.",
                                               "analysis"),
             assistant("2 + 2 equals 4.", "final"), user("What about 9 / 2?")], drop),
        "test_does_not_drop_if_ongoing_analysis.txt": (
            [user("What is the weather in SF?"),
             assistant("User asks: “What is the weather in SF?” We need to use lookup_weather tool.", "analysis"),
             assistant('{"location": "San Francisco"}', "commentary").with_recipient("functions.lookup_weather")
             .with_content_type("<|constrain|>json"),
             h.Message.from_author_and_content(h.Author.new(h.Role.TOOL, "functions.lookup_weather"),
                                               '{"temperature": 20, "description": "sunny"}')], drop),
        "test_preserve_cot.txt": (
            [user("What is 2 + 2?"), assistant('User asks a simple question: "What is 2 + 2?" The answer: 4.',
                                               "analysis"),
             assistant("2 + 2 equals 4.", "final"), user("What about 9 / 2?")], keep),
    }
    for effort in ("low", "medium", "high"):
        for instructed in (True, False):
            name = f"test_simple_convo_{effort}_effort{'' if instructed else '_no_instruction'}.txt"
            messages = [sys(identity=True, effort=E[effort.upper()]), *([robot] if instructed else []), user(capital)]
            convos[name] = (messages, {})
    return {k: (h.Conversation.from_messages(m), cfg) for k, (m, cfg) in convos.items()}


RENDERED_GOLDENS = sorted(
    p.name for p in GOLDEN.glob("*.txt")
    if p.name not in ("test_simple_reasoning_response.txt", "test_simple_tool_call.txt", "test_streamable_parser.txt",
                      "test_tool_response_parsing.txt", "test_keep_analysis_between_finals.txt"))


@pytest.fixture(scope="module")
def encoding() -> Any:
    return load_encoding()


@pytest.mark.parametrize("name", RENDERED_GOLDENS)
def test_openai_harmony_renders_the_goldens(encoding: Any, name: str) -> None:
    """Our offline openai-harmony reproduces upstream's renderings byte for byte."""
    import openai_harmony as h

    convo, config = _harmony_conversations()[name]
    tokens = encoding.render_conversation_for_completion(convo, h.Role.ASSISTANT, h.RenderConversationConfig(**config))
    assert encoding.decode_utf8(tokens) == golden(name)


def test_openai_harmony_renders_a_whole_conversation(encoding: Any) -> None:
    import openai_harmony as h

    messages = [h.Message.from_role_and_content(h.Role.USER, "What is 2 + 2?"),
                h.Message.from_role_and_content(h.Role.ASSISTANT, "thinking 2+2").with_channel("analysis"),
                h.Message.from_role_and_content(h.Role.ASSISTANT, "4").with_channel("final"),
                h.Message.from_role_and_content(h.Role.USER, "What is 3 + 5?"),
                h.Message.from_role_and_content(h.Role.ASSISTANT, "thinking 3+5").with_channel("analysis"),
                h.Message.from_role_and_content(h.Role.ASSISTANT, "8").with_channel("final")]
    tokens = encoding.render_conversation(h.Conversation.from_messages(messages))
    assert encoding.decode_utf8(tokens) == golden("test_keep_analysis_between_finals.txt")


# The template's known differences from openai-harmony's renderer, each undone by one rewrite of
# the template's text (so that the rest must match byte for byte):
_DATE = re.compile(r"Current date: \d{4}-\d{2}-\d{2}\n")  # the template always writes today's date


def _to_harmony(text: str) -> str:
    # a past call's content type: ``json`` where harmony writes ``<|constrain|>json``
    text = re.sub(r"(<\|channel\|>commentary) json<\|message\|>", r"\1 <|constrain|>json<|message|>", text)
    # a tool result: addressed and channelled, and its text JSON-quoted (``message.content|tojson``)
    return re.sub(r" to=assistant<\|channel\|>commentary<\|message\|>(\"(?:[^\"\\]|\\.)*\")<\|end\|>",
                  lambda m: "<|message|>" + json.loads(m.group(1)) + "<|end|>", text)


_SYSTEM_END = "# Valid channels: analysis, commentary, final. Channel must be included for every message."
_BEFORE_FIRST_USER = re.compile(r"^.*?(?=<\|start\|>user)", re.S)

TEMPLATE_GOLDENS: dict[str, dict[str, Any]] = {
    # file: how to render it (our messages, tools, template kwargs; "cut": drop the system part)
    "test_no_tools.txt": {},
    "test_browser_tool_only.txt": {"builtin_tools": ["browser"]},
    "test_browser_and_python_tool.txt": {"builtin_tools": ["browser", "python"]},
    "test_browser_and_function_tool.txt": {"builtin_tools": ["browser"], "tools": [ToolSpec(
        "lookup_weather", "Use this tool to lookup the weather in a given location. Call it with the parameter "
        "'location', can be any textual description of a location.",
        {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]})]},
    "test_simple_convo.txt": {"messages": [Message("user", "What is 2 + 2?")], "no_date": True},
    **{f"test_simple_convo_{e}_effort_no_instruction.txt": {
        "reasoning_effort": e, "no_date": True,
        "messages": [Message("user", "What is the capital of the largest country in the world?")]}
       for e in ("low", "medium", "high")},
    "test_dropping_cot_by_default.txt": {"cut": True, "messages": [
        Message("user", "What is 2 + 2?"),
        Message("assistant", "2 + 2 equals 4.", reasoning="User asks: “What is 2 + 2?” Simple arithmetic."),
        Message("user", "What about 9 / 2?")]},
    "test_does_not_drop_if_ongoing_analysis.txt": {"cut": True, "tools": [ToolSpec("lookup_weather")], "messages": [
        Message("user", "What is the weather in SF?"),
        Message("assistant", None, [ToolCall("call_1", "lookup_weather", '{"location": "San Francisco"}')],
                reasoning="User asks: “What is the weather in SF?” We need to use lookup_weather tool."),
        Message("tool", '{"temperature": 20, "description": "sunny"}', tool_call_id="call_1")]},
}


@pytest.mark.parametrize("name", sorted(TEMPLATE_GOLDENS))
def test_template_renders_the_goldens(name: str) -> None:
    """gpt-oss.jinja, through prepare and our ChatTemplate, matches the goldens it can express.

    It cannot express the others: required channels (``test_reasoning_system_message*``), a
    developer message without tools (it adds a blank line), the kitchensink schema, kept CoT
    of finished turns (``test_preserve_cot``) or a training rendering.
    """
    spec = dict(TEMPLATE_GOLDENS[name])
    fmt = get_format("harmony")
    messages = spec.pop("messages", None) or [Message("user", "Hi")]
    tools = spec.pop("tools", [])
    cut, no_date = spec.pop("cut", False), spec.pop("no_date", False)
    messages, tools = fmt.prepare(messages, tools)
    text = _template().render_conversation(messages, tools, add_generation_prompt=True,
                                           strftime_now=lambda _fmt: "2025-06-28", **spec, **fmt.template_kwargs())
    if "messages" not in TEMPLATE_GOLDENS[name]:
        text = text.replace("<|start|>user<|message|>Hi<|end|>", "")  # the template needs one message
    if no_date:
        text = _DATE.sub("", text)
    if cut:
        assert _SYSTEM_END in text
        text = _BEFORE_FIRST_USER.sub("", text, count=1)
    assert _to_harmony(text) == golden(name)


def _expected(messages: list[Any]) -> tuple[str, str, list[tuple[str, Any]]]:
    """What openai-harmony's parse of a completion means in our terms."""
    content, reasoning, calls = [], [], []
    for m in messages:
        if m.author.role.value != "assistant":
            break
        text = "".join(c.text for c in m.content)
        if m.recipient:
            calls.append((m.recipient.removeprefix("functions."), json.loads(text)))
        elif m.channel == "analysis":
            reasoning.append(text)
        else:
            content.append(text)
    return "\n\n".join(content), "\n\n".join(reasoning), calls


@pytest.mark.parametrize("name", ["test_simple_reasoning_response.txt", "test_simple_tool_call.txt"])
def test_parses_golden_completions_like_openai_harmony(encoding: Any, name: str) -> None:
    import openai_harmony as h

    tokens = [int(t) for t in golden(name).split()]
    want = _expected(encoding.parse_messages_from_completion_tokens(tokens, h.Role.ASSISTANT))
    fmt = get_format("harmony")
    parsed = fmt.parse(encoding.decode_utf8(tokens), partial=False)
    assert (parsed.content, parsed.reasoning, parsed_calls(parsed)) == want
    assert want[1]  # both have reasoning
    # streamed token by token, as the engine detokenizes them
    pieces = [encoding.decode_utf8([t]) for t in tokens]
    assert stream(fmt, "".join(pieces), [len(p) for p in pieces]) == stream(fmt, "".join(pieces), [len(pieces)])


def test_golden_tool_call_and_reasoning_response() -> None:
    fmt = get_format("harmony")
    text = ('<|channel|>analysis<|message|>User asks: "What is the weather in Tokyo?" We need to use lookup_weather '
            'tool.<|return|><|start|>assistant to=lookup_weather<|channel|>analysis code<|message|>{"location": "Tokyo"}')
    parsed = fmt.parse(text, partial=False)
    assert parsed_calls(parsed) == [("lookup_weather", {"location": "Tokyo"})]
    assert parsed.reasoning.startswith("User asks")


def test_parses_the_streamable_parser_golden(encoding: Any) -> None:
    import openai_harmony as h

    text = golden("test_streamable_parser.txt")
    parser = h.StreamableParser(encoding, h.Role.ASSISTANT)
    tokens = encoding.encode(text, allowed_special="all")
    for token in tokens:
        parser.process(token)
    assert len(parser.messages) == 3  # analysis, the call, and browser.search's own reply
    fmt = get_format("harmony")
    parsed = fmt.parse(text, partial=False)
    assert (parsed.content, parsed.reasoning, parsed_calls(parsed)) == _expected(parser.messages)
    assert parsed_calls(parsed) == [("browser.search", {"query": "current US president July 2025", "topn": 10,
                                                        "source": "news"})]
    pieces = [encoding.decode_utf8([t]) for t in tokens]
    assert _snap(fmt.parse(text, partial=True)) == _snap(parsed)
    assert stream(fmt, text, [len(p) for p in pieces]) == stream(fmt, text, [len(text)])


def test_a_tool_reply_is_not_the_assistant_speaking() -> None:
    parsed = get_format("harmony").parse(golden("test_tool_response_parsing.txt"), partial=False)
    assert parsed == Parsed()


# -- the offline BPE file ----------------------------------------------------------------------

def test_tiktoken_file_is_unpacked_once_and_verified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    monkeypatch.setenv("MIDTIER_CACHE", str(tmp_path))
    folder = tiktoken_dir()
    assert folder == tmp_path / "tiktoken"
    target = folder / "o200k_base.tiktoken"
    assert hashlib.sha256(target.read_bytes()).hexdigest() == O200K_BASE_SHA256
    stamp = target.stat().st_mtime_ns
    assert tiktoken_dir() == folder and target.stat().st_mtime_ns == stamp  # reused, not rewritten
    target.write_bytes(b"corrupt")
    tiktoken_dir()
    assert hashlib.sha256(target.read_bytes()).hexdigest() == O200K_BASE_SHA256
    assert [p.name for p in folder.iterdir()] == ["o200k_base.tiktoken"]


def test_encoding_tokenizes_harmony_special_tokens(encoding: Any) -> None:
    for marker in MARKERS:
        assert len(encoding.encode(marker, allowed_special="all")) == 1
    assert sorted(encoding.stop_tokens_for_assistant_actions()) == sorted(
        encoding.encode("<|call|><|return|>", allowed_special="all"))


# -- gpt-oss's real vocabulary -----------------------------------------------------------------

@pytest.fixture(scope="module")
def gpt_oss(encoding: Any) -> Constrainer:
    """A constraint compiler over o200k_harmony (the BPE file plus openai-harmony's special
    tokens), ending generation on <|call|> and <|return|> as the engine does."""
    import base64

    from midtier.engines.base import TokenizerSpec

    ranks: dict[int, bytes] = {}
    for line in (tiktoken_dir() / "o200k_base.tiktoken").read_bytes().splitlines():
        token, rank = line.split()
        ranks[int(rank)] = base64.b64decode(token)
    specials = {name: encoding.encode(name, allowed_special="all")[0] for name in encoding.special_tokens_set}
    n = max(max(ranks), max(specials.values())) + 1
    tokens = [ranks.get(i, b"") for i in range(n)]
    for name, i in specials.items():
        tokens[i] = b"\xff" + name.encode()
    spec = TokenizerSpec(tokens=tokens, special_ids=sorted(specials.values()),
                         eos_ids=list(encoding.stop_tokens_for_assistant_actions()), bos_id=None,
                         encode=lambda b: list(encoding.encode(b.decode("utf-8", "replace"))), n_vocab=n)
    return Constrainer(spec)


def test_constraint_on_gpt_oss_tokens(gpt_oss: Constrainer, encoding: Any) -> None:
    assert set(MARKERS) <= gpt_oss.markers.special
    auto = HarmonyFormat().grammar(TOOLS, ToolChoice("auto"), ResponseFormat(), gpt_oss.markers)
    required = HarmonyFormat().grammar(TOOLS, ToolChoice("required"), ResponseFormat(), gpt_oss.markers)
    assert auto is not None and required is not None

    def ids(text: str) -> list[int]:
        return list(encoding.encode(text, allowed_special="all"))

    # as the engine sees it: <|call|> / <|return|> end generation and are never consumed
    for text in (THINK + CALL.removesuffix("<|call|>"), THINK + FINAL,
                 f" to=functions.get_weather<|channel|>commentary json<|message|>{WEATHER}",
                 "<|channel|>commentary<|message|>Checking.<|end|><|start|>assistant" + CALL.removesuffix("<|call|>")):
        assert gpt_oss.accepts(auto, ids(text)), text
    assert gpt_oss.accepts(required, ids(THINK + CALL.removesuffix("<|call|>")))
    assert not gpt_oss.accepts(required, ids(THINK + FINAL))
    # end of generation is allowed once a call's arguments are whole, not inside reasoning
    constraint = gpt_oss.start(auto)
    call_id, return_id = ids("<|call|>")[0], ids("<|return|>")[0]
    for token in ids(THINK + CALL.removesuffix("<|call|>")):
        constraint.commit(token)
    mask = np.unpackbits(np.frombuffer(constraint.matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
    assert mask[call_id] and constraint.is_accepting()
    thinking = gpt_oss.start(auto)
    for token in ids("<|channel|>analysis<|message|>Hm"):
        thinking.commit(token)
    mask = np.unpackbits(np.frombuffer(thinking.matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
    assert not mask[call_id] and not mask[return_id] and not thinking.is_accepting()


# -- a whole turn ------------------------------------------------------------------------------

def test_a_turn_through_the_served_model() -> None:
    """gpt-oss.jinja renders the prompt, the grammar lets the scripted call through, the parser
    streams reasoning then the call (the mock's first special token, <|return|>, ends output)."""
    import asyncio

    from midtier.core.events import Finish, ReasoningDelta, ToolCallArgsDelta, ToolCallDone, ToolCallStart
    from midtier.core.messages import Conversation
    from midtier.engines.mock import MockEngine
    from midtier.loop.load import serve_engine
    from midtier.loop.turn import TurnTrace

    specials = ("<|return|>", *(m for m in MARKERS if m != "<|return|>"))  # the first is the mock's EOS
    engine = MockEngine(specials=specials, chat_template=(TEMPLATES / "gpt-oss.jinja").read_text())
    served = serve_engine("gpt-oss-mock", engine)
    assert served.format.key == "harmony"
    engine.enqueue(THINK + CALL)
    conv = Conversation([Message("system", "Be brief."), Message("user", "Weather in Paris?")], TOOLS)
    trace = TurnTrace()

    async def turn() -> list[Any]:
        return [e async for e in served.stream(conv, trace)]

    events = asyncio.run(turn())
    assert trace.prompt.endswith("<|start|>user<|message|>Weather in Paris?<|end|><|start|>assistant")
    assert "# Instructions\n\nBe brief." in trace.prompt and "type get_weather = " in trace.prompt
    assert trace.raw_output == THINK + CALL
    assert "".join(e.text for e in events if isinstance(e, ReasoningDelta)) == "The user wants the weather."
    assert [e.name for e in events if isinstance(e, ToolCallStart)] == ["get_weather"]
    assert "".join(e.delta for e in events if isinstance(e, ToolCallArgsDelta)) == WEATHER
    assert [e.arguments for e in events if isinstance(e, ToolCallDone)] == [WEATHER]
    assert isinstance(events[-1], Finish) and events[-1].reason == "tool_calls"
