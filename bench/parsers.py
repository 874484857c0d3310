"""Streamed parsing cost per token, for every format, beside the non-streamed parse, in one run.

For each registered format, a realistic output written in that format's own syntax (mostly
text, tool calls interleaved, reasoning first for the families that reason) is built at
1k, 10k and 100k tokens. A token is a piece of 4 characters of it (a fixed split, so every
format sees the same kind of cuts, markers cut too). The output is streamed through
``StreamParser`` in chunks of 1 and of 8 tokens, and parsed once whole (``partial=False``),
and the streamed result is checked against that parse.

Reported per format, size and chunk: µs per token streamed and of the final parse, and

- ``linearity``: per-token streamed cost at the largest size / at the smallest (1 is linear;
  quadratic parsing grows it with the size), the worst over chunk sizes;
- ``stream_vs_final``: what streaming costs beyond delivering the chunks, over one
  non-streamed parse of the same output: (streamed - floor) / final, where the floor is
  the same loop over the same chunks feeding a parser that does nothing. The loop (slicing
  the token list, joining each chunk, one call per chunk) is this bench's way of handing
  out chunks, which the non-streamed side, given the whole text, is not charged for; so it
  is taken off the streamed side, measured for the same size and chunking. What the
  parser does is all counted, the event objects it builds (the streamed output) included;
- ``stream_vs_final_raw``: streamed / final with the loop left in (the figure before the
  floor was taken off);
- ``floor``: that loop's cost, per token and beside the non-streamed parse (the hermes
  output): no streaming parser can go below it.

Times are CPU seconds (``time.process_time``), the least of 5 rounds that interleave the
sizes, so that other processes on the machine disturb the ratios as little as they can.

    .venv/bin/python bench/parsers.py [--sizes 1000,10000,100000] [--chunks 1,8] [--formats hermes,qwen3]
                                      [--max-seconds 60] [--long-call]
Last line: {"bench": "parsers", "linearity": worst, "stream_vs_final": worst, "stream_vs_final_raw": worst,
            "floor": {...}, "formats": {...}, "long_call": {...} (with --long-call)}

``--max-seconds`` skips a size whose run, extrapolated quadratically from the size before,
would take longer (its figures are then null). ``--long-call`` adds, per format, one output
that is a single call with a long string argument, at every size, in chunks of 8 tokens
(reported apart: ``long_call``, its linearity and how many chunks were parsed).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from midtier.core.events import ReasoningDelta, StreamEvent, TextDelta, ToolCallArgsDelta, ToolCallStart
from midtier.core.messages import ToolSpec
from midtier.formats import REGISTRY, get_format
from midtier.formats.base import Format, StreamParser

TOKEN_CHARS = 4
SIZES = (1_000, 10_000, 100_000)
CHUNKS = (1, 8)

TOOLS = [
    ToolSpec("get_weather", "Get the weather for a city", {
        "type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]},
                                         "days": {"type": "integer"}},
        "required": ["city"]}),
    ToolSpec("send_email", "Send an email", {
        "type": "object", "properties": {"to": {"type": "string"}, "subject": {"type": "string"},
                                         "body": {"type": "string"}},
        "required": ["to", "body"]}),
]

# -- realistic outputs -------------------------------------------------------------------------------

_PROSE = ("the weather in the city is mild today and the forecast for the week shows rain on "
          "Tuesday while the rest of it stays dry with a light wind from the west so a coat "
          "will do; I will check the numbers again, compare them with last year's records and "
          "write a short summary for you: temperatures of 12 to 18 °C, humidity near 70% and "
          "a chance of showers (about 40%) in the afternoon. Note that a < b holds here, that "
          "`x = {1, 2}` is a set, and that naïve estimates — as usual — are off by a bit")
_WORDS = _PROSE.split()
_CITIES = ("Paris", "Tokyo", "Oslo", "Lima", "Cairo", "Perth", "Québec", "São Paulo")


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(6, 18))]
    return " ".join(words).capitalize().rstrip(",;:") + "."


def prose(rng: random.Random, chars: int) -> str:
    """Paragraphs of text, about ``chars`` long."""
    parts: list[str] = []
    size = 0
    while size < chars:
        para = " ".join(_sentence(rng) for _ in range(rng.randint(2, 6)))
        parts.append(para)
        size += len(para) + 2
    return "\n\n".join(parts)


def random_call(rng: random.Random) -> tuple[str, dict[str, Any]]:
    if rng.random() < 0.6:
        args: dict[str, Any] = {"city": rng.choice(_CITIES)}
        if rng.random() < 0.5:
            args["unit"] = rng.choice("cf")
        if rng.random() < 0.3:
            args["days"] = rng.randint(1, 7)
        return "get_weather", args
    return "send_email", {"to": "ana@example.com", "subject": "Weather", "body": _sentence(rng)}


@dataclass
class Syntax:
    """How one family writes an output: reasoning, text, calls (see ``build``)."""

    call: Callable[[str, dict[str, Any], int], str]  # (name, arguments, index) -> the call as written
    text: Callable[[str], str] = lambda t: t  # a paragraph of text as written between calls
    think: Callable[[str], str] | None = None  # the reasoning the output opens with
    #: calls come in one run (after ``opener``, joined by ``sep``, then ``closer``), text
    #: before and after it; None: every call stands alone, between paragraphs
    region: tuple[str, str, str] | None = None
    prompt: str = ""  # the end of the prompt the output follows (for ``for_request``)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _xml_value(value: Any) -> str:
    return value if isinstance(value, str) else _json(value)


def _py(value: Any) -> str:
    return repr(value) if not isinstance(value, str) else _json(value)


def _harmony_call(name: str, args: dict[str, Any], i: int) -> str:
    return (f"<|start|>assistant<|channel|>commentary to=functions.{name} <|constrain|>json<|message|>"
            f"{_json(args)}<|call|>")


def _kimi_call(name: str, args: dict[str, Any], i: int) -> str:
    return (f"<|tool_calls_section_begin|><|tool_call_begin|>functions.{name}:{i}<|tool_call_argument_begin|>"
            f"{_json(args)}<|tool_call_end|><|tool_calls_section_end|>")


def _deepseek_call(name: str, args: dict[str, Any], i: int) -> str:
    return ("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>"
            f"{name}\n```json\n{_json(args)}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>")


def _deepseek_v31_call(name: str, args: dict[str, Any], i: int) -> str:
    return f"<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>{name}<｜tool▁sep｜>{_json(args)}<｜tool▁call▁end｜><｜tool▁calls▁end｜>"


def _think(text: str) -> str:
    return f"<think>\n{text}\n</think>\n\n"


_HERMES = Syntax(lambda n, a, i: f'\n<tool_call>\n{_json({"name": n, "arguments": a})}\n</tool_call>\n')
_QWEN3_CODER_CALL = Syntax(lambda n, a, i: "\n<tool_call>\n<function=" + n + ">\n" + "".join(
    f"<parameter={k}>\n{_xml_value(v)}\n</parameter>\n" for k, v in a.items()) + "</function>\n</tool_call>\n")

SYNTAXES: dict[str, Syntax] = {
    "hermes": _HERMES,
    "generic": _HERMES,
    "qwen3": Syntax(_HERMES.call, think=_think),
    "qwen3_coder": Syntax(_QWEN3_CODER_CALL.call, think=_think),
    "llama3_json": Syntax(lambda n, a, i: _json({"name": n, "parameters": a}),
                          region=("<|python_tag|>", "; ", "\n\n")),
    "pythonic": Syntax(lambda n, a, i: f"{n}(" + ", ".join(f"{k}={_py(v)}" for k, v in a.items()) + ")",
                       region=("<|python_start|>[", ", ", "]<|python_end|>\n\n")),
    "mistral": Syntax(lambda n, a, i: f"[TOOL_CALLS]{n}[ARGS]{_json(a)}", think=lambda t: f"[THINK]{t}[/THINK]",
                      region=("", "", "\n\n")),
    "deepseek": Syntax(_deepseek_call, think=_think),
    "deepseek_r1": Syntax(_deepseek_call, think=_think),
    "deepseek_v31": Syntax(_deepseek_v31_call, think=_think),
    "harmony": Syntax(_harmony_call,
                      text=lambda t: f"<|start|>assistant<|channel|>commentary<|message|>{t}<|end|>",
                      think=lambda t: f"<|channel|>analysis<|message|>{t}<|end|>", prompt="<|start|>assistant"),
    "kimi_k2": Syntax(_kimi_call, think=_think),
    "glm45": Syntax(lambda n, a, i: f"<tool_call>{n}\n" + "".join(
        f"<arg_key>{k}</arg_key>\n<arg_value>{_xml_value(v)}</arg_value>\n" for k, v in a.items()) + "</tool_call>",
                    think=_think),
    "minimax_m2": Syntax(lambda n, a, i: f'<minimax:tool_call>\n<invoke name="{n}">\n' + "".join(
        f'<parameter name="{k}">{_xml_value(v)}</parameter>\n' for k, v in a.items())
        + "</invoke>\n</minimax:tool_call>", think=lambda t: f"{t}\n</think>\n\n", prompt="<think>\n"),
    "granite": Syntax(lambda n, a, i: _json({"name": n, "arguments": a}), think=lambda t: f"<think>{t}</think>",
                      text=lambda t: f"<response>{t}</response>", region=("<|tool_call|>[", ", ", "]\n\n")),
    "functiongemma": Syntax(lambda n, a, i: "<start_function_call>call:" + n + "{" + ",".join(
        f"{k}:<escape>{v}<escape>" if isinstance(v, str) else f"{k}:{_json(v)}" for k, v in a.items())
        + "}<end_function_call>"),
    "command_r": Syntax(lambda n, a, i: "<|START_ACTION|>[\n    " + _json(
        {"tool_call_id": str(i), "tool_name": n, "parameters": a}) + "\n]<|END_ACTION|>",
                        text=lambda t: f"<|START_RESPONSE|>{t}<|END_RESPONSE|>",
                        think=lambda t: f"<|START_THINKING|>{t}<|END_THINKING|>"),
}


def build(key: str, tokens: int, seed: int = 0) -> str:
    """An output of about ``tokens`` tokens in ``key``'s syntax.

    Interleaved families: reasoning (15%) for those that reason, then paragraphs, about
    three calls per two paragraphs between them. Families whose calls come in one run
    (a list, a tag then calls): reasoning (15%), text (45%), the calls (25%), text (15%).
    """
    syntax = SYNTAXES[key]
    rng = random.Random(seed)
    chars = tokens * TOKEN_CHARS
    parts: list[str] = []
    if syntax.think is not None:
        parts.append(syntax.think(prose(rng, chars * 15 // 100)))
    size = sum(map(len, parts))
    if syntax.region is None:
        i = 0
        while size < chars:
            parts.append(syntax.text(prose(rng, rng.randint(200, 800))))
            for _ in range(rng.choice((0, 1, 1, 2))):
                parts.append(syntax.call(*random_call(rng), i))
                i += 1
            size = sum(map(len, parts))
        return "".join(parts)
    opener, sep, closer = syntax.region
    parts.append(syntax.text(prose(rng, chars * 45 // 100)))
    calls: list[str] = []
    size = sum(map(len, parts))
    while size + sum(map(len, calls)) < chars * 85 // 100:
        calls.append(syntax.call(*random_call(rng), len(calls)) + sep)
    parts.append(opener + "".join(calls)[: len("".join(calls)) - len(sep)] + closer)
    parts.append(syntax.text(prose(rng, chars * 15 // 100)))
    return "".join(parts)


def long_call(key: str, tokens: int) -> str:
    """A whole output that is one call whose ``body`` argument is about ``tokens`` tokens of text."""
    syntax = SYNTAXES[key]
    body = prose(random.Random(1), tokens * TOKEN_CHARS).replace("\n\n", " ")
    call = syntax.call("send_email", {"to": "ana@example.com", "body": body}, 0).strip()
    if syntax.region is not None:
        call = syntax.region[0] + call + syntax.region[2]
    return (syntax.think("Send it.") if syntax.think is not None else "") + call


def configured(key: str) -> Format:
    """The format as a request configures it: after its prompt, knowing the tools."""
    return get_format(key).for_request(SYNTAXES[key].prompt, TOOLS)


def split_tokens(text: str) -> list[str]:
    """The output as tokens: pieces of ``TOKEN_CHARS`` characters."""
    return [text[i:i + TOKEN_CHARS] for i in range(0, len(text), TOKEN_CHARS)]


# -- the core: stream, parse whole, compare ---------------------------------------------------------

Result = tuple[str, str, list[tuple[str, str]]]


def fold(events: list[StreamEvent]) -> Result:
    """The (content, reasoning, calls) a client rebuilds from the events."""
    content: list[str] = []
    reasoning: list[str] = []
    calls: list[tuple[str, list[str]]] = []
    for e in events:
        if isinstance(e, TextDelta):
            content.append(e.text)
        elif isinstance(e, ReasoningDelta):
            reasoning.append(e.text)
        elif isinstance(e, ToolCallStart):
            calls.append((e.name, []))
        elif isinstance(e, ToolCallArgsDelta):
            calls[e.index][1].append(e.delta)
    return "".join(content), "".join(reasoning), [(n, "".join(a)) for n, a in calls]


def stream(fmt: Format, tokens: list[str], chunk: int) -> list[StreamEvent]:
    """All events of streaming ``tokens`` through a ``StreamParser``, ``chunk`` tokens at a time."""
    parser = StreamParser(fmt, make_id=lambda: "call")
    events: list[StreamEvent] = []
    for i in range(0, len(tokens), chunk):
        events += parser.feed("".join(tokens[i:i + chunk]))
    return events + parser.finish()


def final(fmt: Format, text: str) -> Result:
    parsed = fmt.parse(text, partial=False)
    return parsed.content, parsed.reasoning, [(c.name, c.arguments) for c in parsed.calls]


def check(fmt: Format, text: str, chunk: int) -> None:
    """The streamed result must equal the non-streamed parse."""
    got, want = fold(stream(fmt, split_tokens(text), chunk)), final(fmt, text)
    if got != want:
        raise AssertionError(f"{type(fmt).__name__}: streamed in chunks of {chunk} != final parse\n"
                             f"streamed: {str(got)[:300]}\nfinal:    {str(want)[:300]}")


class _Idle:
    """A parser that does nothing with its chunks (see ``floor``)."""

    def feed(self, chunk: str) -> list[StreamEvent]:
        return []


def floor(tokens: list[str], chunk: int) -> None:
    """The loop ``drain`` runs, feeding a parser that does nothing: what any streaming parser
    in Python pays per chunk before it parses anything."""
    parser = _Idle()
    for i in range(0, len(tokens), chunk):
        parser.feed("".join(tokens[i:i + chunk]))


def drain(fmt: Format, tokens: list[str], chunk: int) -> None:
    """``stream`` without keeping the events: what is timed."""
    parser = StreamParser(fmt, make_id=lambda: "call")
    for i in range(0, len(tokens), chunk):
        parser.feed("".join(tokens[i:i + chunk]))
    parser.finish()


def cpu_seconds(fn: Callable[[], object], budget: float) -> float:
    """CPU seconds one call of ``fn`` takes: the least of as many repetitions as fit ``budget``
    (CPU time and the least: other processes on the machine only ever slow a run down)."""
    best = float("inf")
    spent = 0.0
    while best == float("inf") or spent < budget:
        t0 = time.process_time()
        fn()
        dt = time.process_time() - t0
        best, spent = min(best, dt), spent + max(dt, 1e-6)
    return max(best, 1e-9)


@dataclass
class Run:
    key: str
    tokens: int
    chunk: int
    stream_s: float | None  # None: skipped
    final_s: float
    floor_s: float  # the same loop feeding a parser that does nothing

    @property
    def us_stream(self) -> float | None:
        return None if self.stream_s is None else self.stream_s / self.tokens * 1e6

    @property
    def us_final(self) -> float:
        return self.final_s / self.tokens * 1e6

    @property
    def us_floor(self) -> float:
        return self.floor_s / self.tokens * 1e6

    @property
    def ratio(self) -> float | None:
        """Streaming beyond delivering the chunks, over the non-streamed parse."""
        return None if self.stream_s is None else max(self.stream_s - self.floor_s, 0.0) / self.final_s

    @property
    def raw_ratio(self) -> float | None:
        return None if self.stream_s is None else self.stream_s / self.final_s


def measure(key: str, sizes: tuple[int, ...], chunks: tuple[int, ...], max_seconds: float, rounds: int = 5,
            budget: float = 0.05) -> list[Run]:
    """Check, then time streaming (every chunk size) and parsing whole the output of every size.

    The sizes are timed in ``rounds`` interleaved rounds and the least time kept, so that a
    slow moment of the machine does not land on one size only. A size whose first run,
    extrapolated quadratically from the size before, would exceed ``max_seconds`` is skipped."""
    fmt = configured(key)
    texts = {size: build(key, size) for size in sizes}
    tokens = {size: split_tokens(text) for size, text in texts.items()}
    finals: dict[int, float] = {}
    floors: dict[tuple[int, int], float] = {}
    streams: dict[tuple[int, int], float | None] = {}  # None: skipped
    for r in range(rounds):
        for k, size in enumerate(sizes):
            text = texts[size]
            parse_s = cpu_seconds(partial(fmt.parse, text, partial=False), budget)
            finals[size] = min(finals.get(size, parse_s), parse_s)
            for chunk in chunks:
                if r == 0:
                    smaller = streams[(sizes[k - 1], chunk)] if k else 0.0
                    if smaller is None or k and smaller * (size / sizes[k - 1]) ** 2 > max_seconds:
                        streams[(size, chunk)] = None
                        continue
                    check(fmt, text, chunk)
                elif streams[(size, chunk)] is None:
                    continue
                dt = cpu_seconds(partial(drain, fmt, tokens[size], chunk), budget)
                streams[(size, chunk)] = min(streams.get((size, chunk)) or dt, dt)
                idle = cpu_seconds(partial(floor, tokens[size], chunk), budget)
                floors[(size, chunk)] = min(floors.get((size, chunk), idle), idle)
    return [Run(key, len(tokens[size]), chunk, streams[(size, chunk)], finals[size], floors[(size, chunk)])
            for size in sizes for chunk in chunks]


def _fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def bench(keys: list[str], sizes: tuple[int, ...], chunks: tuple[int, ...], max_seconds: float,
          out: Any = sys.stdout, rounds: int = 5, budget: float = 0.05) -> dict[str, Any]:
    """Run every format at every size and chunk; print the table; return the summary."""
    print(f"{'format':14} {'tokens':>7} {'chunk':>5} {'µs/tok stream':>14} {'µs/tok final':>13} "
          f"{'µs/tok floor':>13} {'stream/final':>13} {'raw':>7} {'vs smallest':>12}", file=out, flush=True)
    formats: dict[str, Any] = {}
    for key in keys:
        by_chunk: dict[int, list[Run]] = {c: [] for c in chunks}
        for run in measure(key, sizes, chunks, max_seconds, rounds, budget):
            by_chunk[run.chunk].append(run)
        for size_index in range(len(sizes)):
            for chunk in chunks:
                run = by_chunk[chunk][size_index]
                first = by_chunk[chunk][0].us_stream
                growth = None if first is None or run.us_stream is None else run.us_stream / first
                print(f"{key:14} {run.tokens:>7} {run.chunk:>5} {_fmt(run.us_stream):>14} {_fmt(run.us_final, 3):>13} "
                      f"{_fmt(run.us_floor, 3):>13} {_fmt(run.ratio, 1):>13} {_fmt(run.raw_ratio, 1):>7} "
                      f"{_fmt(growth):>12}", file=out, flush=True)
        formats[key] = summarize(by_chunk)
    worst_lin = max((f["linearity"] for f in formats.values()), default=None, key=_none_last)
    worst_ratio = max((f["stream_vs_final"] for f in formats.values()), default=None, key=_none_last)
    worst_raw = max((f["stream_vs_final_raw"] for f in formats.values()), default=None, key=_none_last)
    # the floor: feeding chunks to a parser that does nothing, per token, on the largest
    # hermes output, and what that alone is of the non-streamed parse
    text = build("hermes", sizes[-1])
    tokens = split_tokens(text)
    final_s = cpu_seconds(lambda: configured("hermes").parse(text, partial=False), 4 * budget)
    idle = {}
    for c in chunks:
        idle_s = cpu_seconds(partial(floor, tokens, c), 4 * budget)
        idle[f"chunk{c}"] = {"us_per_token": _round(idle_s / len(tokens) * 1e6), "vs_final": _round(idle_s / final_s)}
    print(f"\nfloor (a parser that does nothing, hermes {len(tokens)} tokens): "
          + ", ".join(f"{k}: {v['us_per_token']} µs/token = {v['vs_final']} x final" for k, v in idle.items()),
          file=out, flush=True)
    return {"bench": "parsers", "linearity": worst_lin, "stream_vs_final": worst_ratio,
            "stream_vs_final_raw": worst_raw, "sizes": list(sizes), "chunks": list(chunks), "floor": idle,
            "formats": formats}


def _none_last(x: float | None) -> float:
    return float("inf") if x is None else x


def summarize(by_chunk: dict[int, list[Run]]) -> dict[str, Any]:
    """Per format: linearity (worst over chunks; None when a size was skipped) and the worst
    stream/final ratios, with the per-token figures behind them."""
    lin: list[float | None] = []
    ratios: list[float | None] = []
    raws: list[float | None] = []
    detail: dict[str, Any] = {}
    for chunk, runs in by_chunk.items():
        first, last = runs[0].us_stream, runs[-1].us_stream
        lin.append(None if first is None or last is None else last / first)
        ratios += [r.ratio for r in runs]
        raws += [r.raw_ratio for r in runs]
        detail[f"chunk{chunk}"] = {str(r.tokens): {"us_per_token": _round(r.us_stream), "final_us_per_token":
                                                   _round(r.us_final), "floor_us_per_token": _round(r.us_floor),
                                                   "stream_vs_final": _round(r.ratio),
                                                   "stream_vs_final_raw": _round(r.raw_ratio)}
                                   for r in runs}
    return {"linearity": _round(max(lin, key=_none_last)), "stream_vs_final": _round(max(ratios, key=_none_last)),
            "stream_vs_final_raw": _round(max(raws, key=_none_last)), **detail}


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def bench_long_call(keys: list[str], sizes: tuple[int, ...], out: Any = sys.stdout) -> dict[str, Any]:
    """Per format, one call with a long string argument, in chunks of 8 tokens: per-token
    cost at the largest size / at the smallest (``linearity``), and how many chunks were
    parsed rather than taken by a run."""
    print(f"\n{'long call':14} {'tokens':>7} {'µs/tok stream':>14} {'µs/tok final':>13} {'parsed chunks':>14}",
          file=out)
    growth: dict[str, float | None] = {}
    detail: dict[str, Any] = {}
    for key in keys:
        fmt = configured(key)
        costs = []
        detail[key] = {}
        for size in sizes:
            text = long_call(key, size)
            check(fmt, text, 8)
            tokens = split_tokens(text)
            us = cpu_seconds(partial(drain, fmt, tokens, 8), 0.2) / len(tokens) * 1e6
            us_final = cpu_seconds(partial(fmt.parse, text, partial=False), 0.2) / len(tokens) * 1e6
            parser = StreamParser(fmt, make_id=lambda: "call")
            for i in range(0, len(tokens), 8):
                parser.feed("".join(tokens[i:i + 8]))
            costs.append(us)
            chunks = (len(tokens) + 7) // 8
            detail[key][str(len(tokens))] = {"us_per_token": _round(us), "final_us_per_token": _round(us_final),
                                             "parsed_chunks": parser.parses, "chunks": chunks}
            print(f"{key:14} {len(tokens):>7} {us:>14.2f} {us_final:>13.3f} {parser.parses:>7}/{chunks:<6}",
                  file=out, flush=True)
        growth[key] = _round(costs[-1] / costs[0])
    return {"linearity": max(growth.values(), key=_none_last), "formats": growth, "detail": detail}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    ap.add_argument("--chunks", default=",".join(map(str, CHUNKS)))
    ap.add_argument("--formats", default=",".join(REGISTRY))
    ap.add_argument("--max-seconds", type=float, default=60.0)
    ap.add_argument("--long-call", action="store_true")
    args = ap.parse_args()
    keys = args.formats.split(",")
    sizes = tuple(int(s) for s in args.sizes.split(","))
    result = bench(keys, sizes, tuple(int(c) for c in args.chunks.split(",")), args.max_seconds)
    if args.long_call:
        result["long_call"] = bench_long_call(keys, sizes)
    # the one JSON line every benchmark ends with (as _common.emit, which loads the engine)
    sys.stdout.flush()
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
