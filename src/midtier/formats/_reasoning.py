"""Reasoning that output opens with: ``<think>...</think>``, or a family's own tags.

Shared by the families that think first (qwen3, qwen3_coder, deepseek, kimi_k2, glm45,
minimax_m2, granite, command_r): where reasoning ends (``reasoning_span``), the base class
that splits it off a parse and settles it (``ReasoningFormat``), and the grammar pieces for
it, in the two shapes these families' grammars take (``assemble_grammar``, and
``think_rules`` with ``reply_text``).

Where output starts is a ``Thinking`` state: ``open`` inside reasoning (the prompt opened
it), ``off`` after it (the prompt closed it, or a resumed parse is past it), ``auto`` either
(the output may open it, at its very start).
"""

from __future__ import annotations

import json
from typing import ClassVar, Literal, TypeVar

from midtier.core.messages import Message, ResponseFormat, ToolChoice, ToolSpec
from midtier.formats._json import skip_ws
from midtier.formats.base import (
    STRAY_JSON_START,
    Format,
    Markers,
    Parsed,
    Run,
    Settled,
    answer_rule,
    empty_content,
    find_first,
    free_text,
    held_any,
    resumed,
    strip_after,
)

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
THINK_TAGS = (THINK_OPEN, THINK_CLOSE)

#: where output starts: ``open`` inside reasoning, ``off`` after it, ``auto`` either
Thinking = Literal["auto", "open", "off"]

T = TypeVar("T", bound="ThinkThenCalls")

_ANY = "/(?s:.*)/"
_WS = "/[ \\t\\r\\n]*/"


# -- where reasoning ends ----------------------------------------------------------------------
def thinking_after(prompt: str, tags: tuple[str, str] = THINK_TAGS, *, closing: bool = True) -> Thinking:
    """How output that follows ``prompt`` starts, judged from the prompt's last tag: inside
    reasoning after the opening tag; after the closing tag (when ``closing``: the family's
    templates close an empty reasoning to turn it off), after reasoning."""
    tail = prompt.rstrip()
    if tail.endswith(tags[0]):
        return "open"
    if closing and tail.endswith(tags[1]):
        return "off"
    return "auto"


def reasoning_span(text: str, partial: bool, thinking: Thinking, tags: tuple[str, str] = THINK_TAGS,
                   ends: tuple[str, ...] = ()) -> tuple[int, int, int | None]:
    """The reasoning ``text`` starts with, as offsets: it is ``text[start:end]`` (not stripped),
    and the rest begins at ``rest`` (None: not known yet, or the output never left reasoning).

    In ``auto`` only the opening tag at the very start (after whitespace) opens reasoning.
    Reasoning runs to the closing tag, or to the first of ``ends``, which end it without
    being consumed. Nothing inside reasoning is ever a call."""
    if thinking == "off":
        return 0, 0, 0
    opening, closing = tags
    start = 0
    if thinking == "auto":
        i = skip_ws(text, 0)
        if text.startswith(opening, i):
            start = i + len(opening)
        elif partial and opening.startswith(text[i:]):
            return 0, 0, None  # nothing yet, or the start of the opening tag
        else:
            return 0, 0, 0
    ends = (closing, *ends)
    j, which = find_first(text, ends, start)
    if j >= 0:
        return start, j, (j + len(which) if which == closing else j)
    end = len(text)
    if partial:
        end -= held_any(text[start:], ends)
    return start, end, None


def split_reasoning(text: str, partial: bool, thinking: Thinking, tags: tuple[str, str] = THINK_TAGS,
                    ends: tuple[str, ...] = ()) -> tuple[str, int | None]:
    """``reasoning_span`` as the reasoning, stripped, and where the rest begins."""
    start, end, rest = reasoning_span(text, partial, thinking, tags, ends)
    return text[start:end].strip(), rest


class ReasoningFormat(Format):
    """A format whose output may open with reasoning: ``parse`` splits it off and reads the
    rest with ``parse_rest``, and settles (see ``Settled``) inside reasoning or after it."""

    #: the reasoning's tags; markers that end it too, without being consumed
    think_tags: ClassVar[tuple[str, str]] = THINK_TAGS
    think_ends: ClassVar[tuple[str, ...]] = ()
    #: where output starts (set per prompt; ``off`` for a resumed parse past reasoning)
    thinking: Thinking = "auto"
    #: a resumed parse comes after reasoning that is not blank
    thought_before = False

    def parse(self, text: str, partial: bool) -> Parsed:
        start, end, rest = reasoning_span(text, partial, self.thinking, self.think_tags, self.think_ends)
        out = Parsed() if rest is None else self.parse_rest(text, rest, partial)
        out.reasoning = strip_after(text[start:end], self.thought_before)
        if not partial:
            return out
        thought = text[start:end]
        if rest is None:
            # inside reasoning: all of it so far is final
            if end > start:
                before = self.thought_before or bool(thought.strip())
                out.settled = Settled(end, resumed(self, thought_before=before, thinking="open"), reasoning=thought)
                if end == len(text) and before:  # nothing held back: it runs on to its end tag
                    out.run = Run("reasoning", (self.think_tags[1], *self.think_ends))
        elif out.settled is not None:
            # after it: where the rest settled, which gets the reasoning
            s = out.settled
            out.settled = Settled(s.offset, resumed(s.resume, thinking="off"), s.content, thought, s.calls)
        return out

    def parse_rest(self, text: str, pos: int, partial: bool) -> Parsed:
        """The parse of the output from ``pos``, where its reasoning is over; its settled offset
        (if any) counts from the start of ``text``."""
        raise NotImplementedError

    # -- grammar: a ``think`` rule beside the format's own (kimi_k2, glm45, minimax_m2, ...) ------
    def think_grammar(self, markers: Markers, *forbidden: str, ban_stray_json: bool) -> tuple[str, list[str]]:
        """What starts each alternative of the grammar (the ``think`` rule, optional unless
        the prompt opened reasoning), and the Lark lines for it and for ``TEXT``, free text
        after it without ``forbidden`` (see ``reply``)."""
        opened = self.thinking == "open"
        lines = [f"TEXT: {self.reply(markers, *forbidden, ban_stray_json=ban_stray_json)}",
                 *think_rules(markers, opened, self.think_tags)]
        return ("think " if opened else "think? "), lines

    def reply(self, markers: Markers, *forbidden: str, ban_stray_json: bool) -> str:
        """``reply_text`` after this format's reasoning."""
        return reply_text(markers, self.thinking == "open", *forbidden, ban_stray_json=ban_stray_json,
                          tags=self.think_tags)


class ThinkThenCalls(ReasoningFormat):
    """The families whose prompt may open reasoning or close it (``for_prompt``) and whose
    grammar is ``assemble_grammar``'s: reasoning, then an answer, or calls that ``opener``
    starts (qwen3, qwen3_coder, deepseek). Their templates test and split a past turn's
    content as a string (``'</think>' in message.content``): ``prepare`` makes it one."""

    #: the marker that starts the calls; the markers free text may not hold (the opener among them)
    opener: ClassVar[str]
    forbidden: ClassVar[tuple[str, ...]]

    def __init__(self, thinking: Thinking = "auto") -> None:
        self.thinking = thinking

    def for_prompt(self: T, prompt: str) -> T:
        return resumed(self, thinking=thinking_after(prompt))

    def prepare(self, messages: list[Message], tools: list[ToolSpec]) -> tuple[list[Message], list[ToolSpec]]:
        return empty_content(messages, "assistant"), tools

    def grammar(self, tools: list[ToolSpec], choice: ToolChoice, response_format: ResponseFormat,
                markers: Markers, *, ban_stray_json: bool = False) -> str | None:
        callable_tools = choice.callable_tools(tools)
        rest, rules = self.calls_grammar(callable_tools, choice, markers) if callable_tools else (None, [])
        return assemble_grammar(markers, choice, response_format, ban_stray_json=ban_stray_json,
                                thinking=self.thinking, opener=self.opener, forbidden=self.forbidden,
                                tools_rest=rest, rules=rules)

    def calls_grammar(self, tools: list[ToolSpec], choice: ToolChoice, markers: Markers) -> tuple[str, list[str]]:
        """The Lark expression for what follows the opener when ``tools`` may be called, and
        the rules it uses."""
        raise NotImplementedError


# -- grammar: reasoning, then a whole grammar after it (qwen3, qwen3_coder, deepseek) -----------
def lark_until(end: str, *forbidden: str) -> str:
    """A Lark terminal body: text that ends with the plain string ``end`` and holds neither
    another ``end`` nor any of ``forbidden``. One terminal, because llguidance's lexer is
    greedy: free text followed by a separate plain-text terminator never lets it end."""
    body = f"({_ANY} {json.dumps(end)}) & ~({_ANY} {json.dumps(end)} /(?s:.+)/)"
    if forbidden:
        banned = " | ".join(f"{_ANY} {json.dumps(m)} {_ANY}" for m in forbidden)
        body += f" & ~({banned})"
    return body


def reasoning_rules(markers: Markers, thinking: Thinking) -> tuple[str, list[str]]:
    """The Lark expression for the reasoning output starts with (free text up to the close
    tag; optional in ``auto``), and the rules it needs."""
    if thinking == "off":
        return "", []
    opening = f"{markers.lit(THINK_OPEN)} " if thinking == "auto" else ""
    if markers.token(THINK_CLOSE):
        rules = [f"THINK: {_ANY}", f"reasoning: {opening}THINK {markers.lit(THINK_CLOSE)}"]
    else:
        rules = [f"THINK: {lark_until(THINK_CLOSE)}", f"reasoning: {opening}THINK"]
    return ("reasoning?" if thinking == "auto" else "reasoning"), rules


def assemble_grammar(markers: Markers, choice: ToolChoice, response_format: ResponseFormat, *,
                     ban_stray_json: bool, thinking: Thinking, opener: str, forbidden: tuple[str, ...],
                     tools_rest: str | None, rules: list[str]) -> str:
    """A whole grammar: reasoning (free), then an answer, calls, or text then calls.

    ``opener`` starts the tool part; ``tools_rest`` is the Lark expression for everything
    after it (None when no tool may be called), using ``rules``; ``forbidden`` are the
    markers free text may not hold (the opener among them).
    """
    prefix, lines = reasoning_rules(markers, thinking)
    # in auto, output that starts with <think> is reasoning, never text
    not_think = ""
    if thinking == "auto" and not markers.token(THINK_OPEN):
        not_think = f" & ~({_WS} {json.dumps(THINK_OPEN)} {_ANY})"
    lines.append(f"TEXT: ({free_text(markers, *forbidden, ban_stray_json=ban_stray_json)}){not_think}")
    lines.append(f"WS: {_WS}")
    answer = answer_rule(response_format, "TEXT")
    text_answer = answer == "TEXT"
    alternatives = [_seq(prefix, "TEXT") if text_answer else _seq(prefix, "WS", answer)]
    if tools_rest is not None:
        lines += rules
        calls = _seq(prefix, "WS", markers.lit(opener), tools_rest)
        if choice.mode == "required":
            alternatives = [calls]
        elif not text_answer:
            alternatives.append(calls)
        elif markers.token(opener):
            alternatives.append(_seq(prefix, "TEXT", markers.lit(opener), tools_rest))
        else:
            # text and the plain-text opener after it are one terminal (see lark_until)
            others = [m for m in forbidden if m != opener and not markers.token(m)]
            body = lark_until(opener, *others)
            if ban_stray_json:
                body = f"({body}) & ~/{STRAY_JSON_START}/"
            lines.append(f"TEXT_OPEN: ({body}){not_think}")
            alternatives.append(_seq(prefix, "TEXT_OPEN", tools_rest))
    start = f"start: {' | '.join(alternatives)}"
    used = set(" ".join([start, *rules]).split())
    lines = [line for line in lines if line.split(":")[0] not in ("TEXT", "WS") or line.split(":")[0] in used]
    return "\n".join([start, *lines]) + "\n"


def _seq(*parts: str) -> str:
    return " ".join(p for p in parts if p)


# -- grammar: a reasoning rule beside the format's own (kimi_k2, glm45, minimax_m2, granite, command_r)
def think_rules(markers: Markers, opened: bool, tags: tuple[str, str] = THINK_TAGS) -> list[str]:
    """The rule ``think``: reasoning, free, up to the closing tag; after the opening tag (and
    any whitespace) unless the prompt opened it."""
    opening, closing = tags
    rules = [markers.text_then("think_body", "THINK_BODY_TEXT", closing), f"THINK_BODY_TEXT: {_ANY}"]
    if opened:
        return ["think: think_body", *rules]
    if markers.token(opening):
        return [f"think: THINK_LEAD {markers.lit(opening)} think_body", f"THINK_LEAD: {_WS}", *rules]
    # one lexeme for whitespace and tag: see reply_text
    return ["think: THINK_OPENING think_body", f"THINK_OPENING: {_WS} {json.dumps(opening)}", *rules]


def reply_text(markers: Markers, opened: bool, *forbidden: str, ban_stray_json: bool = False,
               tags: tuple[str, str] = THINK_TAGS) -> str:
    """The Lark body of free text that may follow an optional ``think`` (see ``free_text``).

    Where a plain-text opening tag may open the output, the text must not start like it:
    llguidance's lexer follows the longest match and does not back out of it, so text that
    could also start with the tag would swallow the reasoning block."""
    body = free_text(markers, *forbidden, ban_stray_json=ban_stray_json)
    if opened or markers.token(tags[0]):
        return body
    return f"({body}) & ~({_WS} {json.dumps(tags[0])} {_ANY})"
