from __future__ import annotations

import json
import re
from typing import ClassVar

import pytest

from midtier.core.messages import Message, ResponseFormat, ToolCall, ToolChoice
from midtier.formats import REGISTRY, detect, get_format
from midtier.formats.base import Format, Markers
from midtier.formats.mistral import MistralFormat, MistralV11Format, short_id
from midtier.templates import ChatTemplate

from .conformance import TEMPLATES, TOOLS, Case, FormatConformance, parsed_calls, toy_constrainer

OLD_TEMPLATES = ("mistral-nemo.jinja", "mistral-small-3.1.jinja")
V11_TEMPLATES = ("mistral-small-3.2.jinja", "devstral-small-unsloth.jinja", "ministral-3-reasoning.jinja")
V11_KEY = "mistral_v11" if "mistral_v11" in REGISTRY else "mistral"
#: single special tokens in Mistral's tokenizers. llguidance can only name a special token
#: written <...>; these are referenced by id once Markers carries ids (see test_special_tokens_by_id),
#: so the conformance classes run with them as plain text.
MISTRAL_SPECIALS = ["[TOOL_CALLS]", "[ARGS]", "[CALL_ID]", "[THINK]", "[/THINK]"]

OLD = '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]'
NEW = '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}'
PARIS = ("get_weather", {"city": "Paris"})
TOKYO = ("get_weather", {"city": "Tokyo"})

COMMON_CASES = [
    Case("Hello there!", "Hello there!"),
    Case("Unicode: 東京 ✓ — ok [not a marker]", "Unicode: 東京 ✓ — ok [not a marker]"),
    Case(OLD, None, [PARIS]),
    Case(NEW, None, [PARIS]),
    Case(NEW + "</s>", None, [PARIS]),
    Case("Let me check.\n" + NEW, "Let me check.", [PARIS]),
    Case('[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "a1B2c3D4e"}, '
         '{"name": "get_weather", "arguments": {"city": "Tokyo"}, "id": "zzzzzzzzz"}]', None, [PARIS, TOKYO]),
    Case(NEW + NEW.replace("Paris", "Tokyo"), None, [PARIS, TOKYO]),
    Case('[TOOL_CALLS]get_weather[CALL_ID]a1B2c3D4e[ARGS]{"city": "Paris"}'
         '[TOOL_CALLS]get_weather[CALL_ID]b1B2c3D4e[ARGS]{"city": "Tokyo"}', None, [PARIS, TOKYO]),
    Case('[TOOL_CALLS]send_email[ARGS]{"to": "é@x.y", "body": "Line \\"1\\"\\nLine 2 [ARGS] [TOOL_CALLS]", '
         '"cc": ["a", "b"], "meta": {"n": -1.5, "ok": true, "v": null}}', None,
         [("send_email", {"to": "é@x.y", "body": 'Line "1"\nLine 2 [ARGS] [TOOL_CALLS]', "cc": ["a", "b"],
                          "meta": {"n": -1.5, "ok": True, "v": None}})]),
    Case('[TOOL_CALLS][{"name": "send_email", "arguments": "{\\"to\\": \\"x\\", \\"body\\": \\"y\\"}"}]', None,
         [("send_email", {"to": "x", "body": "y"})]),
    Case('[TOOL_CALLS]{"name": "get_weather", "arguments": {"city": "Paris"}}', None, [PARIS]),
    Case('[TOOL_CALLS][{"arguments": {"city": "Paris"}, "name": "get_weather"}]', None, [PARIS]),
    Case("[TOOL_CALLS] is how I call tools", "[TOOL_CALLS] is how I call tools"),
    Case("Text with [TOOL_CA", "Text with [TOOL_CA"),
]
MALFORMED = [
    "[TOOL_CALLS]",
    "[TOOL_CALLS][",
    "[TOOL_CALLS][{",
    '[TOOL_CALLS][{"name": ',
    '[TOOL_CALLS][{"name": 5, "arguments": {}}]',
    '[TOOL_CALLS][{"arguments": {}}]',
    "[TOOL_CALLS][not json]",
    '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Par',
    "[TOOL_CALLS]get_weather",
    "[TOOL_CALLS]get_weather[ARG",
    "[TOOL_CALLS]get_weather[ARGS]",
    "[TOOL_CALLS]get_weather[ARGS]not json",
    "[TOOL_CALLS]get_weather[CALL_ID]abc",
    "[TOOL_CALLS]get_weather[CALL_ID]!!![ARGS]{}",
    "[TOOL_CALLS]get_weather something",
    "[THINK]unfinished thought [TOOL_CALLS]get_weather[ARGS]{}",
    "[/THINK][TOOL_CALLS]",
    '[TOOL_CALLS][{"name": "get_weather", "arguments": {}} {"name": "send_email"',
]


class TestMistral(FormatConformance):
    key = "mistral"
    templates = OLD_TEMPLATES
    specials: ClassVar[list[str]] = []
    end_of_turn = "</s>"
    cases: ClassVar[list[Case]] = COMMON_CASES
    malformed: ClassVar[list[str]] = MALFORMED
    streams: ClassVar[list[str]] = [
        '[TOOL_CALLS][{"arguments": {"city": "Oslo", "note": "[x] {y} \\"q\\""}, "name": "get_weather"}, '
        '{"name": "get_weather", "arguments": {"city": "Tokyo"}, "id": "abcdefghi"}]',
        '[TOOL_CALLS]get_weather[ARGS]{"city": "Oslo [TOOL_CALLS] </s> {x}"}[TOOL_CALLS]send_email[CALL_ID]abcdefghi'
        '[ARGS]{"to": "a", "body": "b \\\\ \\"c\\""} after',
    ]


class TestMistralV11(FormatConformance):
    key = V11_KEY
    templates = V11_TEMPLATES
    specials: ClassVar[list[str]] = []
    end_of_turn = "</s>"
    cases: ClassVar[list[Case]] = [
        *COMMON_CASES,
        Case("[THINK]The user wants the weather.[/THINK]" + NEW, None, [PARIS], reasoning="The user wants the weather."),
        Case("[THINK]Maybe [TOOL_CALLS]x[ARGS]{} later.[/THINK]It is sunny.", "It is sunny.",
             reasoning="Maybe [TOOL_CALLS]x[ARGS]{} later."),
        Case("\n[THINK]\nShort.\n[/THINK]\n\nAnswer: 東京", "Answer: 東京", reasoning="Short."),
        Case("[THINK]Still thinking", None, reasoning="Still thinking"),
    ]
    malformed: ClassVar[list[str]] = MALFORMED

    @pytest.fixture
    def fmt(self) -> Format:
        return MistralV11Format()


# -- detection ---------------------------------------------------------------------------------

def test_detects_old_syntax_templates() -> None:
    for name in OLD_TEMPLATES:
        assert detect((TEMPLATES / name).read_text()) == "mistral", name


@pytest.mark.parametrize("name", OLD_TEMPLATES + V11_TEMPLATES)
def test_for_template_picks_the_syntax(name: str) -> None:
    template = ChatTemplate((TEMPLATES / name).read_text())
    fmt = get_format(detect(template.source) or "")
    assert isinstance(fmt, MistralFormat)
    configured = fmt.for_template(template)
    assert isinstance(configured, MistralFormat)
    assert configured.syntax == ("args" if name in V11_TEMPLATES else "json")


def test_detects_v11_templates() -> None:
    for name in V11_TEMPLATES:
        text = (TEMPLATES / name).read_text()
        assert detect(text) == V11_KEY, name
        assert all(m in text for m in MistralV11Format.markers)
    for name in OLD_TEMPLATES:
        assert not all(m in (TEMPLATES / name).read_text() for m in MistralV11Format.markers)


# -- ids and the prompt side -------------------------------------------------------------------

def test_new_call_ids_have_the_templates_shape() -> None:
    ids = {MistralFormat().new_call_id() for _ in range(50)}
    assert len(ids) == 50 and all(re.fullmatch(r"[A-Za-z0-9]{9}", i) for i in ids)


def test_short_ids_are_deterministic_and_keep_good_ids() -> None:
    assert short_id("call_0123456789abcdef") == short_id("call_0123456789abcdef")
    assert re.fullmatch(r"[A-Za-z0-9]{9}", short_id("call_0123456789abcdef"))
    assert short_id("call_1") != short_id("call_2")
    assert short_id("a1B2c3D4e") == "a1B2c3D4e"


def _history() -> list[Message]:
    calls = [ToolCall("call_abc", "get_weather", '{"city": "Paris"}'),
             ToolCall("call_def", "get_weather", '{"city": "Tokyo"}')]
    return [Message("user", "Weather in Paris and Tokyo?"), Message("assistant", None, calls),
            Message("tool", "sunny", tool_call_id="call_abc"), Message("tool", "rainy", tool_call_id="call_def"),
            Message("assistant", "Sunny in Paris, rainy in Tokyo."), Message("user", "Thanks! And Oslo?")]


def test_prepare_maps_ids_consistently() -> None:
    msgs, _ = MistralFormat().prepare(_history(), TOOLS)
    ids = [c.id for c in msgs[1].tool_calls]
    assert all(re.fullmatch(r"[A-Za-z0-9]{9}", i) for i in ids)
    assert [msgs[2].tool_call_id, msgs[3].tool_call_id] == ids
    assert msgs[1].content == ""
    # a result without an id answers the next call of the turn before
    history = _history()
    history[2] = Message("tool", "sunny")
    history[3] = Message("tool", "rainy")
    msgs, _ = MistralFormat().prepare(history, TOOLS)
    assert [msgs[2].tool_call_id, msgs[3].tool_call_id] == [c.id for c in msgs[1].tool_calls]


@pytest.mark.parametrize("name", OLD_TEMPLATES + V11_TEMPLATES)
def test_history_with_calls_and_results_renders(name: str) -> None:
    template = ChatTemplate((TEMPLATES / name).read_text(), bos_token="<s>", eos_token="</s>")
    msgs, tools = MistralFormat().prepare(_history(), TOOLS)
    text = template.render_conversation(msgs, tools, add_generation_prompt=True)
    assert "[TOOL_CALLS]" in text and "[TOOL_RESULTS]" in text and "sunny" in text


def _rendered_turn(name: str, calls: list[ToolCall]) -> str:
    fmt = MistralFormat()
    template = ChatTemplate((TEMPLATES / name).read_text(), bos_token="<s>", eos_token="</s>")
    user = [Message("user", "Go")]
    prompt = template.render_conversation(*fmt.prepare(user, TOOLS), add_generation_prompt=True)
    full = template.render_conversation(*fmt.prepare([*user, Message("assistant", None, calls)], TOOLS),
                                        add_generation_prompt=False)
    assert full.startswith(prompt)
    return full[len(prompt):].split("</s>")[0]


@pytest.mark.parametrize("name", OLD_TEMPLATES + V11_TEMPLATES)
@pytest.mark.parametrize("calls", FormatConformance.ROUND_TRIP)
def test_round_trip_every_template(name: str, calls: list[ToolCall]) -> None:
    turn = _rendered_turn(name, calls)
    parsed = MistralFormat().parse(turn, partial=False)
    assert parsed_calls(parsed) == [(c.name, json.loads(c.arguments)) for c in calls]
    if "[CALL_ID]" in turn:  # the model's own ids come back, in the shape the template wants
        assert [c.id for c in parsed.calls] == [short_id(c.id) for c in calls]


# -- the constraint ------------------------------------------------------------------------------

class IdMarkers(Markers):
    """Markers that know token ids, as the constrain layer would build them (proposed)."""

    def __init__(self, ids: dict[str, int]) -> None:
        super().__init__(set(ids))
        self.ids = ids


def test_special_tokens_by_id() -> None:
    constrainer, tokenize = toy_constrainer(MISTRAL_SPECIALS)
    ids = {s: 256 + i for i, s in enumerate(MISTRAL_SPECIALS)}
    old_ids = {s: i for s, i in ids.items() if s not in ("[ARGS]", "[CALL_ID]")}  # Nemo's tokenizer has neither
    for fmt, call, markers in ((MistralFormat(), OLD, IdMarkers(old_ids)), (MistralV11Format(), NEW, IdMarkers(ids))):
        grammar = fmt.grammar(TOOLS, ToolChoice("auto"), ResponseFormat(), markers)
        assert grammar is not None and "<[256]>" in grammar
        assert constrainer.accepts(grammar, tokenize("Sure. " + call))
        assert constrainer.accepts(grammar, tokenize("[THINK]hmm[/THINK]" + call))
        required = fmt.grammar(TOOLS, ToolChoice("required"), ResponseFormat(), markers)
        assert required is not None and constrainer.accepts(required, tokenize(call))
        # spelled out as text, the marker is not the token
        assert not constrainer.accepts(required, list(call.encode()))


def test_bracket_specials_without_ids_still_compile() -> None:
    """Until Markers carries ids, a ``[NAME]`` special is spelled as text (llguidance cannot
    name it), and a tokenizer with an ``[ARGS]`` token gets the v11 syntax."""
    constrainer, tokenize = toy_constrainer()
    markers = Markers(set(MISTRAL_SPECIALS))
    grammar = MistralFormat().grammar(TOOLS, ToolChoice("required"), ResponseFormat(), markers)
    assert grammar is not None
    constrainer.validate(grammar)
    assert constrainer.accepts(grammar, tokenize(NEW))


@pytest.mark.parametrize("fmt, call, other", [(MistralFormat(), OLD, NEW), (MistralV11Format(), NEW, OLD)])
def test_grammar_writes_the_instances_syntax(fmt: MistralFormat, call: str, other: str) -> None:
    constrainer, tokenize = toy_constrainer()
    grammar = fmt.grammar(TOOLS, ToolChoice("required"), ResponseFormat(), constrainer.markers)
    assert grammar is not None
    assert constrainer.accepts(grammar, tokenize(call))
    assert not constrainer.accepts(grammar, tokenize(other))


@pytest.mark.parametrize("fmt", [MistralFormat(), MistralV11Format()])
def test_modes(fmt: MistralFormat) -> None:
    constrainer, tokenize = toy_constrainer()
    call = OLD if fmt.syntax == "json" else NEW
    two = ('[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}, '
           '{"name": "get_weather", "arguments": {"city": "Tokyo"}}]') if fmt.syntax == "json" else \
        NEW + NEW.replace("Paris", "Tokyo")
    bad_args = call.replace('"city"', '"town"')
    g = {"none": fmt.grammar(TOOLS, ToolChoice("none"), ResponseFormat(), constrainer.markers),
         "auto": fmt.grammar(TOOLS, ToolChoice("auto"), ResponseFormat(), constrainer.markers),
         "required": fmt.grammar(TOOLS, ToolChoice("required"), ResponseFormat(), constrainer.markers)}

    def accepts(mode: str, text: str) -> bool:
        grammar = g[mode]
        assert grammar is not None
        return constrainer.accepts(grammar, tokenize(text))

    assert accepts("none", "It is sunny.") and not accepts("none", call)
    assert accepts("auto", "It is sunny.") and accepts("auto", call) and accepts("auto", "Sure. " + two)
    assert not accepts("auto", bad_args)
    assert accepts("required", two) and not accepts("required", "It is sunny.") and not accepts("required", bad_args)
    assert accepts("required", "[THINK]The user wants weather.[/THINK]" + call)
    single = fmt.grammar(TOOLS, ToolChoice("required", ("get_weather",), parallel=False), ResponseFormat(),
                         constrainer.markers)
    assert single is not None
    assert constrainer.accepts(single, tokenize(call)) and not constrainer.accepts(single, tokenize(two))
    rf = ResponseFormat("json_schema", {"type": "object", "properties": {"t": {"type": "number"}}, "required": ["t"]})
    answer = fmt.grammar(TOOLS, ToolChoice("auto"), rf, constrainer.markers)
    assert answer is not None
    assert constrainer.accepts(answer, tokenize('{"t": 1}')) and constrainer.accepts(answer, tokenize(call))
    assert not constrainer.accepts(answer, tokenize("It is sunny."))


def test_old_syntax_accepts_the_id_the_templates_write() -> None:
    constrainer, tokenize = toy_constrainer()
    grammar = MistralFormat().grammar(TOOLS, ToolChoice("required"), ResponseFormat(), constrainer.markers)
    assert grammar is not None
    with_id = '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "a1B2c3D4e"}]'
    assert constrainer.accepts(grammar, tokenize(with_id))
    assert not constrainer.accepts(grammar, tokenize(with_id.replace("a1B2c3D4e", "call_1")))


def test_partial_markers_are_held_back() -> None:
    fmt = get_format("mistral")
    assert fmt.parse("Hi [TOOL_C", partial=True).content == "Hi"
    assert fmt.parse("[THI", partial=True).content == ""
    assert fmt.parse("[THINK]hmm [/TH", partial=True).reasoning == "hmm"
    assert fmt.parse('[TOOL_CALLS]get_weather[CALL_ID]a1B2c', partial=True).calls == []
    parsed = fmt.parse('[TOOL_CALLS]get_weather[CALL_ID]a1B2c3D4e[ARGS]{"ci', partial=True)
    assert [(c.name, c.id, c.arguments) for c in parsed.calls] == [("get_weather", "a1B2c3D4e", '{"ci')]


def test_truncated_call_keeps_its_arguments_so_far() -> None:
    fmt = get_format("mistral")
    for text in ('[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Pa',
                 '[TOOL_CALLS]get_weather[ARGS]{"city": "Pa'):
        parsed = fmt.parse(text, partial=False)
        assert [(c.name, c.arguments, c.done) for c in parsed.calls] == [("get_weather", '{"city": "Pa', True)]


def test_end_of_sequence_is_not_text() -> None:
    fmt = get_format("mistral")
    assert fmt.parse("Hello</s>", partial=True).content == "Hello"
    assert fmt.parse("Hello</", partial=True).content == "Hello"
    assert fmt.parse("Hello</s>", partial=False).content == "Hello"
    parsed = fmt.parse(NEW + "</s>", partial=False)
    assert parsed.content == "" and parsed_calls(parsed) == [PARIS]
