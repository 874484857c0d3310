"""The tests every format passes. A format's test file subclasses ``FormatConformance``
and fills in its config and cases (the shape of vLLM's tests/tool_parsers/common_tests.py).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest

from midtier.constrain import Constrainer
from midtier.core.events import StreamEvent, TextDelta, ToolCallArgsDelta, ToolCallDone, ToolCallStart
from midtier.core.messages import Message, ResponseFormat, ToolCall, ToolChoice, ToolSpec
from midtier.engines.base import TokenizerSpec
from midtier.formats import get_format
from midtier.formats.base import Format, Parsed, StreamParser, diff
from midtier.templates import ChatTemplate

TEMPLATES = Path(__file__).resolve().parents[3] / "shared" / "data" / "templates"

WEATHER = ToolSpec("get_weather", "Get the weather for a city", {
    "type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
    "required": ["city"]})
EMAIL = ToolSpec("send_email", "Send an email", {
    "type": "object",
    "properties": {"to": {"type": "string"}, "subject": {"type": "string"}, "body": {"type": "string"},
                   "cc": {"type": "array", "items": {"type": "string"}}},
    "required": ["to", "body"]})
TOOLS = [WEATHER, EMAIL]


@dataclass
class Case:
    """A model output and what it means."""

    text: str
    content: str | None
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    reasoning: str | None = None


def toy_tokenizer(specials: list[str]) -> tuple[TokenizerSpec, Any]:
    """Bytes plus the given special tokens; returns the spec and a tokenize(text) function."""
    tokens = [bytes([i]) for i in range(256)] + [b"\xff" + s.encode() for s in specials] + [b"\xff<eos>"]
    eos = len(tokens) - 1
    spec = TokenizerSpec(tokens=tokens, special_ids=list(range(256, len(tokens))), eos_ids=[eos], bos_id=None,
                         encode=lambda b: list(b), n_vocab=len(tokens))

    def tokenize(text: str) -> list[int]:
        out: list[int] = []
        i = 0
        while i < len(text):
            hit = next((s for s in specials if text.startswith(s, i)), None)
            if hit is not None:
                out.append(256 + specials.index(hit))
                i += len(hit)
            else:
                out.extend(text[i].encode())
                i += 1
        return out

    return spec, tokenize


def toy_constrainer(specials: list[str] | tuple[str, ...] = ()) -> tuple[Constrainer, Callable[[str], list[int]]]:
    """A constrainer for the toy tokenizer with these special tokens, and its tokenize(text)."""
    spec, tokenize = toy_tokenizer(list(specials))
    return Constrainer(spec), tokenize


def assert_extends(prev: Parsed, new: Parsed, where: object) -> None:
    """``new`` extends ``prev``: its content, reasoning and each call's arguments start with
    ``prev``'s, calls only get added, and a call keeps its name and id and stays done."""
    assert new.content.startswith(prev.content), (where, prev.content, new.content)
    assert new.reasoning.startswith(prev.reasoning), (where, prev.reasoning, new.reasoning)
    assert len(new.calls) >= len(prev.calls), where
    for before, after in zip(prev.calls, new.calls, strict=False):
        assert before.name == after.name and before.id == after.id, (where, before, after)
        assert after.arguments.startswith(before.arguments), (where, before.arguments, after.arguments)
        assert after.done or not before.done, (where, before, after)


def assert_monotone(fmt: Format, text: str) -> None:
    """Every snapshot of ``text`` (each prefix parsed as partial), then the final parse,
    extends the one before (see ``Format``: parsers are monotone)."""
    prev = fmt.parse("", partial=True)
    for cut in range(1, len(text) + 2):
        new = fmt.parse(text[:cut], partial=True) if cut <= len(text) else fmt.parse(text, partial=False)
        assert_extends(prev, new, text[:cut])
        prev = new


def fuzz(fmt: Format, fragments: list[str], seed: int, n: int = 150, longest: int = 12) -> None:
    """``assert_monotone`` on ``n`` outputs of up to ``longest`` random ``fragments``, each
    also streamed in random small chunks as it is defined (see ``assert_streams_as_defined``)."""
    rng = random.Random(seed)
    for _ in range(n):
        text = "".join(rng.choice(fragments) for _ in range(rng.randint(1, longest)))
        assert_monotone(fmt, text)
        sizes = [rng.randint(1, 5) for _ in text]
        want = events_of(Snapshots(fmt), text, sizes)
        assert events_of(StreamParser(fmt, make_id=lambda: "call"), text, sizes) == want, (text, sizes)


def assert_grammar_accepts(fmt: Format, constrainer: Constrainer, tokenize: Callable[[str], list[int]], text: str,
                           calls: list[ToolCall], tools: list[ToolSpec] = TOOLS, *, auto: bool = True) -> None:
    """The constraint accepts ``text``, a turn that makes ``calls``: ``required`` (parallel when
    there are several calls), and ``auto`` too unless told not to check it."""
    choice = ToolChoice("required", None, parallel=len(calls) > 1)
    grammar = fmt.grammar(tools, choice, ResponseFormat(), constrainer.markers)
    assert grammar is not None and constrainer.accepts(grammar, tokenize(text)), text
    if auto:
        grammar = fmt.grammar(tools, ToolChoice("auto"), ResponseFormat(), constrainer.markers)
        assert grammar is not None and constrainer.accepts(grammar, tokenize(text)), text


def fold(events: list[Any]) -> tuple[str, list[tuple[str, str]]]:
    content = "".join(e.text for e in events if isinstance(e, TextDelta))
    calls: list[list[str]] = []
    for e in events:
        if isinstance(e, ToolCallStart):
            calls.append([e.name, ""])
        elif isinstance(e, ToolCallArgsDelta):
            calls[e.index][1] += e.delta
    return content, [(n, a) for n, a in calls]


def stream(fmt: Format, text: str, sizes: list[int]) -> tuple[str, list[tuple[str, str]]]:
    parser = StreamParser(fmt)
    events: list[Any] = []
    i = 0
    for size in sizes:
        events += parser.feed(text[i:i + size])
        i += size
        if i >= len(text):
            break
    events += parser.feed(text[i:])
    events += parser.finish()
    return fold(events)


def final(fmt: Format, text: str) -> tuple[str, list[tuple[str, str]]]:
    return stream(fmt, text, [len(text)])


class Snapshots:
    """Streaming as it is defined: every chunk parses the whole output so far, then ``diff``."""

    def __init__(self, fmt: Format) -> None:
        self.fmt, self.text, self.parsed, self.ids = fmt, "", Parsed(), list[str]()

    def feed(self, chunk: str) -> list[StreamEvent]:
        if not chunk:
            return []
        self.text += chunk
        return self._advance(self.fmt.parse(self.text, partial=True))

    def finish(self) -> list[StreamEvent]:
        final = self.fmt.parse(self.text, partial=False)
        events = self._advance(final)
        return events + [ToolCallDone(i, c.arguments) for i, c in enumerate(final.calls) if not c.done]

    def _advance(self, new: Parsed) -> list[StreamEvent]:
        events = diff(self.parsed, new, self.ids, lambda: "call")
        self.parsed = new
        return events


def events_of(parser: StreamParser | Snapshots, text: str, sizes: list[int]) -> list[list[StreamEvent]]:
    """The events of each chunk (``sizes`` long, then the rest), then of ``finish``."""
    out, i = [], 0
    for size in sizes:
        if i >= len(text):
            break
        out.append(parser.feed(text[i:i + size]))
        i += size
    out.append(parser.feed(text[i:]))
    return out + [parser.finish()]


def chunkings(text: str, seed: int) -> list[list[int]]:
    """One-character chunks, and random ones of 1 to 4 and of 1 to 16 characters."""
    rng = random.Random(seed)
    return [[1] * len(text), [rng.randint(1, 4) for _ in text], [rng.randint(1, 16) for _ in text]]


def assert_streams_as_defined(fmt: Format, text: str, seed: int = 0) -> None:
    """``StreamParser`` (settling, runs) emits, chunk for chunk, what parsing every snapshot
    whole and diffing emits, and so does it without runs."""
    for sizes in chunkings(text, seed):
        want = events_of(Snapshots(fmt), text, sizes)
        assert events_of(StreamParser(fmt, make_id=lambda: "call"), text, sizes) == want, (text, sizes)
        assert events_of(StreamParser(fmt, make_id=lambda: "call", runs=False), text, sizes) == want, (text, sizes)


#: a string argument as written in JSON and in raw values alike: markers' starts, a bracket,
#: escapes (taken as they are in raw values)
LONG_ARG = 'a < b, <b>x</b> </para </tool_c <| [1] {k} \\"q\\" \\\\ \\n \\u00e9 end. ' * 12
#: the same without escapes, and the most characters each format parses anew in it
PLAIN_ARG = "a < b, <b>x</b> </para </tool_c <| [1] {k} end. " * 12

#: an answer with characters that start markers in many formats, and blank runs
PROSE = ("The forecast says a < b holds, <b>bold</b> too, and [brackets] or {braces} or | pipes; "
         "then   spaces,\n escapes\\ and \"quotes\" -- \t tabs.\n\nA new paragraph, 東京 ✓. ") * 6


class FormatConformance:
    #: the registry key
    key: ClassVar[str]
    #: templates in shared/data/templates this format covers (first one used for round trips)
    templates: ClassVar[tuple[str, ...]] = ()
    #: marker strings that are single special tokens in the family's tokenizer
    specials: ClassVar[list[str]] = []
    #: the text that ends an assistant turn in the rendered template
    end_of_turn: ClassVar[str] = ""
    cases: ClassVar[list[Case]] = []
    #: outputs that are not valid calls: must not raise, must not invent a call
    malformed: ClassVar[list[str]] = []
    #: longer outputs that streaming must take in runs (long text, long string arguments)
    streams: ClassVar[list[str]] = []
    #: what a plain answer starts with in this format (a message header, a closed reasoning)
    answer_prefix: ClassVar[str] = ""

    @pytest.fixture
    def fmt(self) -> Format:
        return get_format(self.key)

    # -- parsing ---------------------------------------------------------------------------
    def test_cases(self, fmt: Format) -> None:
        for case in self.cases:
            parsed = fmt.parse(case.text, partial=False)
            assert (parsed.content or None) == case.content, case.text
            got = [(c.name, json.loads(c.arguments)) for c in parsed.calls]
            assert got == case.calls, case.text
            if case.reasoning is not None:
                assert parsed.reasoning == case.reasoning

    @pytest.mark.parametrize("seed", range(8))
    def test_random_chunking_equals_final(self, fmt: Format, seed: int) -> None:
        rng = random.Random(seed)
        for case in self.cases:
            sizes = [rng.randint(1, 16) for _ in range(len(case.text))]
            assert stream(fmt, case.text, sizes) == final(fmt, case.text), case.text

    def test_one_char_chunks_equal_final(self, fmt: Format) -> None:
        for case in self.cases:
            assert stream(fmt, case.text, [1] * len(case.text)) == final(fmt, case.text), case.text

    def test_every_prefix_is_safe(self, fmt: Format) -> None:
        """Truncated output never raises and never yields a call the whole output lacks."""
        for case in self.cases:
            whole = fmt.parse(case.text, partial=False)
            for cut in range(len(case.text)):
                for partial in (True, False):
                    parsed = fmt.parse(case.text[:cut], partial=partial)
                    assert len(parsed.calls) <= len(whole.calls)
                    for got, full in zip(parsed.calls, whole.calls, strict=False):
                        assert got.name == full.name
                        assert full.arguments.startswith(got.arguments)

    def test_every_prefix_is_monotone(self, fmt: Format) -> None:
        """Streaming only ever adds: each snapshot's content, reasoning and arguments are
        prefixes of the next snapshot's, for the cases and the malformed outputs alike."""
        for text in [case.text for case in self.cases] + self.malformed:
            assert_monotone(fmt, text)

    def test_streams_as_defined(self, fmt: Format) -> None:
        """Runs and settling change how fast streaming is, never what it emits: for the cases,
        the malformed outputs and ``streams``, under many chunkings."""
        texts = [case.text for case in self.cases] + self.malformed + self.streams
        texts.append("\n\n".join(case.text for case in self.cases))
        for k, text in enumerate(texts):
            assert_streams_as_defined(fmt, text, seed=k)

    def test_spliced_outputs_stream_as_defined(self, fmt: Format) -> None:
        """Outputs spliced from pieces of the cases (cut markers, cut JSON, text between
        calls) stream as defined under random small chunks."""
        rng = random.Random(self.key)
        sources = [case.text for case in self.cases] + self.malformed + self.streams + [PROSE]
        for _ in range(80):
            parts = []
            for _ in range(rng.randint(1, 8)):
                src = rng.choice(sources)
                if rng.random() < 0.3:
                    parts.append(src)
                    continue
                a = rng.randrange(len(src))
                parts.append(src[a:rng.randint(a + 1, min(len(src), a + 40))])
            text = "".join(parts)
            sizes = [rng.randint(1, 6) for _ in text]
            want = events_of(Snapshots(fmt), text, sizes)
            assert events_of(StreamParser(fmt, make_id=lambda: "call"), text, sizes) == want, (text, sizes)

    def test_long_arguments_stream_as_defined(self, fmt: Format) -> None:
        """A call with a long string argument (the cases' "Paris" made long) streams as
        defined, and in a run: few of its chunks are parsed."""
        texts = [case.text for case in self.cases if "Paris" in case.text]
        assert texts, "no case has a call with the argument Paris"
        for k, text in enumerate(texts):
            assert_streams_as_defined(fmt, text.replace("Paris", LONG_ARG), seed=k)
        text = texts[0].replace("Paris", PLAIN_ARG)
        parser = StreamParser(fmt)
        for c in text:
            parser.feed(c)
        parser.finish()
        assert parser.parses < len(text) - len(PLAIN_ARG) * 0.9, parser.parses

    def test_a_long_answer_is_not_parsed_per_chunk(self, fmt: Format) -> None:
        """Plain text streams in a run: few of its chunks are parsed."""
        text = self.answer_prefix + PROSE
        parser = StreamParser(fmt)
        for c in text:
            parser.feed(c)
        parser.finish()
        assert parser.parses < len(text) / 10, parser.parses
        assert_streams_as_defined(fmt, text)

    def test_malformed_never_raises_or_invents(self, fmt: Format) -> None:
        for text in self.malformed:
            for partial in (True, False):
                parsed = fmt.parse(text, partial=partial)
                for call in parsed.calls:
                    assert call.name in {t.name for t in TOOLS} and text.count(call.name) >= 1
            stream(fmt, text, [3] * len(text))

    # -- the template and the constraint ----------------------------------------------------
    def _template(self) -> ChatTemplate:
        return ChatTemplate((TEMPLATES / self.templates[0]).read_text(), bos_token="<s>", eos_token="</s>")

    def rendered_calls(self, fmt: Format, calls: list[ToolCall]) -> str:
        """The assistant turn the template renders for ``calls``: what the model would write."""
        template = self._template()
        user = [Message("user", "What is the weather in Paris and in Tokyo?")]
        msgs, tools = fmt.prepare(user, TOOLS)
        kwargs = fmt.template_kwargs()
        prefix = template.render_conversation(msgs, tools, add_generation_prompt=True, **kwargs)
        msgs, tools = fmt.prepare(user + [Message("assistant", None, calls)], TOOLS)
        full = template.render_conversation(msgs, tools, add_generation_prompt=False, **kwargs)
        assert full.startswith(prefix), "the generation prompt is not a prefix of the rendered turn"
        turn = full[len(prefix):]
        if self.end_of_turn and self.end_of_turn in turn:
            turn = turn[: turn.index(self.end_of_turn)]
        return turn

    ROUND_TRIP: ClassVar[list[list[ToolCall]]] = [
        [ToolCall("call_1", "get_weather", '{"city": "Paris"}')],
        [ToolCall("call_1", "get_weather", '{"city": "Paris", "unit": "c"}'),
         ToolCall("call_2", "get_weather", '{"city": "Tokyo"}')],
        [ToolCall("call_3", "send_email", '{"to": "a@b.c", "body": "Hi \\"you\\"\\nbye", "cc": ["x@y.z"]}')],
    ]

    def test_template_round_trip(self, fmt: Format) -> None:
        if not self.templates:
            pytest.skip("format has no template of its own")
        for calls in self.ROUND_TRIP:
            text = self.rendered_calls(fmt, calls)
            parsed = fmt.parse(text, partial=False)
            assert [(c.name, json.loads(c.arguments)) for c in parsed.calls] == \
                [(c.name, json.loads(c.arguments)) for c in calls], text

    def test_constraint_accepts_rendered_calls(self, fmt: Format) -> None:
        if not self.templates:
            pytest.skip("format has no template of its own")
        constrainer, tokenize = toy_constrainer(self.specials)
        for calls in self.ROUND_TRIP:
            assert_grammar_accepts(fmt, constrainer, tokenize, self.rendered_calls(fmt, calls), calls)

    def test_constraint_none_forbids_calls(self, fmt: Format) -> None:
        if not self.templates:
            pytest.skip("format has no template of its own")
        constrainer, tokenize = toy_constrainer(self.specials)
        text = self.rendered_calls(fmt, self.ROUND_TRIP[0])
        grammar = fmt.grammar(TOOLS, ToolChoice("none"), ResponseFormat(), constrainer.markers)
        assert grammar is None or not constrainer.accepts(grammar, tokenize(text))

    def test_parallel_false_allows_one_call(self, fmt: Format) -> None:
        if not self.templates:
            pytest.skip("format has no template of its own")
        constrainer, tokenize = toy_constrainer(self.specials)
        two = self.rendered_calls(fmt, self.ROUND_TRIP[1])
        single = fmt.grammar(TOOLS, ToolChoice("required", None, parallel=False), ResponseFormat(),
                             constrainer.markers)
        assert single is not None and not constrainer.accepts(single, tokenize(two))

    def test_named_tool_forces_that_tool(self, fmt: Format) -> None:
        if not self.templates:
            pytest.skip("format has no template of its own")
        constrainer, tokenize = toy_constrainer(self.specials)
        weather = self.rendered_calls(fmt, self.ROUND_TRIP[0])
        only_email = fmt.grammar(TOOLS, ToolChoice("required", ("send_email",), parallel=False), ResponseFormat(),
                                 constrainer.markers)
        assert only_email is not None and not constrainer.accepts(only_email, tokenize(weather))


def parsed_calls(parsed: Parsed) -> list[tuple[str, Any]]:
    return [(c.name, json.loads(c.arguments)) for c in parsed.calls]
