"""What every format is: template markers, prompt-side quirks, a constraint, and one parser.

A format's ``parse(text, partial)`` is a pure function of the output so far. Streaming
parses each new snapshot and emits ``diff(previous, new)``; the final result is the
same parse with ``partial=False``. Parsers must be *monotone*: for a snapshot and any
extension of it, content, reasoning and each call's arguments of the first are prefixes
of those of the second, and calls only get added. Text that may still turn out to be a
call is held back, never emitted and taken back.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

from midtier.core.events import (
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    ToolCallArgsDelta,
    ToolCallDone,
    ToolCallStart,
)
from midtier.core.messages import Message, ResponseFormat, ToolChoice, ToolSpec, new_id
from midtier.formats._json import Field, JsonState, open_json, scan_object, skip_ws

if TYPE_CHECKING:
    from midtier.templates import ChatTemplate

log = logging.getLogger(__name__)

F = TypeVar("F", bound="Format")


@dataclass
class ParsedCall:
    name: str
    arguments: str  # the JSON text so far; only ever grows
    done: bool = False
    id: str | None = None  # the id the model wrote, for families whose syntax carries one
    custom: bool = False  # a call of a custom tool: ``arguments`` is its raw input text
    #: how its arguments go on (see ``Run``) when the text read ends inside them
    run: Run | None = field(default=None, compare=False, repr=False)


@dataclass
class Parsed:
    content: str = ""
    reasoning: str = ""
    calls: list[ParsedCall] = field(default_factory=list)
    #: how far this (partial) parse is final, for ``StreamParser``; None: nowhere yet
    settled: Settled | None = field(default=None, compare=False, repr=False)
    #: how this (partial) parse goes on for text that cannot change its structure (see ``Run``)
    run: Run | None = field(default=None, compare=False, repr=False)


@dataclass
class Settled:
    """Where a partial parse of ``text`` is final: nothing before ``offset`` can change.

    For any continuation ``more`` (none too) and either ``partial``, parsing ``text + more``
    gives what ``text[:offset]`` settled followed by ``resume.parse(text[offset:] + more)``:

    - ``content`` and ``reasoning``: the text ``text[:offset]`` adds to each, *not* stripped.
      Joined to all settled before (leading whitespace dropped), then the resumed parse's
      text, or, when that is empty, the joined text right-stripped. So ``resume`` strips its
      text on the right only once something not blank was settled before it (see
      ``strip_after``).
    - ``calls``: the first ``calls`` calls of the parse are done and lie before ``offset``;
      the resumed parse's calls follow them.
    - ``resume``: the format that reads on from ``offset`` (a copy that knows where it
      resumes: inside reasoning or not, what came before; or the format itself).

    ``StreamParser`` keeps the settled part and parses only the rest, which keeps streaming
    linear. A format reports the furthest such point it knows cheaply, or none.
    """

    offset: int
    resume: Format
    content: str = ""
    reasoning: str = ""
    calls: int = 0


RunKind = Literal["content", "reasoning", "args", "silent"]


@dataclass(slots=True)
class Run:
    """How a partial parse of ``text`` goes on for more text that cannot change its structure.

    A format reports it when ``text`` ends inside a run whose next characters are taken as
    they are (plain text, arguments). For any ``more`` that neither holds one of ``stops``
    nor makes one of ``markers`` occur in ``text + more``, nor (``json``) leaves the JSON
    value the run is in, and when neither ``text`` nor ``text + more`` ends with a start of
    one of ``markers`` (the parse holds such a start back: the run goes on with what comes
    before it, ``StreamParser`` checks both):

    - ``content`` / ``reasoning``: the parse settled all of ``text`` (with ``rstrip``, all
      but its trailing blanks), and the state it resumes in parses ``more`` as text of that
      channel, all of it settled (with ``rstrip``: but its trailing blanks) into the same
      state, or emits what it would had it been;
    - ``args``: ``parse(text + more)`` is ``parse(text)`` with ``more`` added to the last
      call's arguments: JSON-string-escaped with ``escape``; with ``newline``, a newline
      that ends the value is held back (``held`` is what is held now);
    - ``silent``: ``parse(text + more)`` is ``parse(text)``.

    ``json``: ``text`` ends inside JSON text (see ``_json.json_run``) whose state is ``depth``
    brackets open, inside a string (``string``), after an open escape (``escaped``); the run
    ends where, outside strings, fewer than ``json`` brackets are open. ``room``: the run
    takes at most that many more characters (-1: no bound).

    ``StreamParser`` takes such chunks without parsing (``O(chunk)``): the partial parse
    defines what a run does. Every format's tests check that streaming with runs emits what
    diffing whole snapshots emits, event for event.
    """

    kind: RunKind
    markers: tuple[str, ...] = ()
    stops: str = ""
    json: int = 0
    depth: int = 0
    string: bool = False
    escaped: bool = False
    escape: bool = False
    newline: bool = False
    held: str = ""
    rstrip: bool = False
    room: int = -1


def object_run(text: str, start: int, field: Field | None, markers: tuple[str, ...], call: bool) -> Run | None:
    """The run of a partial parse that ends inside the JSON object at ``text[start]``, a call
    written as JSON whose arguments (``field``) are shown as written: inside the arguments
    (an object or a list) they stream, once the object is a ``call`` (its name known; before,
    nothing changes until they end); inside a string of the object itself nothing changes
    until it ends (a string being the arguments counts once whole)."""
    if field is not None and field.end is None and field.start >= 0 and text[field.start] in "{[":
        run = json_args(open_json(text, field.start), markers)
        if run is not None and not call:
            run.kind = "silent"
        return run
    state = open_json(text, start)
    if state is not None and state[0] == 1 and state[1]:
        return Run("silent", markers, json=2, depth=1, string=True, escaped=state[2])
    return None


def json_args(state: JsonState | None, markers: tuple[str, ...], floor: int = 1) -> Run | None:
    """The args run of arguments written as JSON and shown as written, when the text ends
    inside them in ``state`` (None: it does not)."""
    if state is None:
        return None
    depth, string, escaped = state
    return Run("args", markers, json=floor, depth=depth, string=string, escaped=escaped)


def resumed(fmt: F, **state: Any) -> F:
    """``fmt`` with ``state`` set (a copy), or ``fmt`` itself when it already is in that state."""
    for k, v in state.items():
        now = getattr(fmt, k)
        if now is not v and now != v:
            break
    else:
        return fmt
    other = copy.copy(fmt)
    for k, v in state.items():
        setattr(other, k, v)
    return other


def strip_after(text: str, before: bool) -> str:
    """``text`` stripped, or only on the right when text was settled ``before`` it."""
    return text.rstrip() if before else text.strip()


def unsettled(text: str, markers: tuple[str, ...], ends: tuple[str, ...] = ()) -> int:
    """How many of the last characters of ``text``, a run of content, may still change: a
    start of one of ``markers``, or one of ``ends`` (end-of-turn markers, dropped when they
    end the output) and the blanks after it."""
    n = held_any(text, markers)
    body = text.rstrip()
    for end in ends:
        if body.endswith(end):
            n = max(n, len(text) - len(body) + len(end))
    return n


def shown(text: str, partial: bool, markers: tuple[str, ...], ends: tuple[str, ...] = ()) -> str:
    """A run of content as it is shown: without one of ``ends`` (end-of-turn markers the
    engine normally stops on) that ends it, nor, while more output may follow, a trailing
    start of one of ``markers``."""
    body = text.rstrip()
    for end in ends:
        if body.endswith(end):
            return body[: -len(end)]
    if not partial:
        return text
    return text[: len(text) - held_any(text, markers)]


def held_prefix(text: str, marker: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``marker``."""
    n = len(text)
    i = text.find(marker[0], max(0, n - len(marker) + 1))
    while i >= 0:
        if marker.startswith(text[i:]):
            return n - i
        i = text.find(marker[0], i + 1)
    return 0


def held_any(text: str, markers: tuple[str, ...]) -> int:
    """``held_prefix`` for the one of ``markers`` that ``text`` ends with the longest start of."""
    best = 0
    for m in markers:
        k = held_prefix(text, m)
        if k > best:
            best = k
    return best


def find_first(text: str, markers: tuple[str, ...], start: int = 0) -> tuple[int, str]:
    """The earliest occurrence of any of ``markers`` from ``start``: (index, marker) or (-1, "");
    of two at the same place, the one listed first. (One pass: finding each marker on its
    own would read to the end for every one that does not come.)"""
    if len(markers) == 1:
        i = text.find(markers[0], start)
        return (i, markers[0]) if i >= 0 else (-1, "")
    m = _alternation(markers).search(text, start)
    return (m.start(), m.group()) if m is not None else (-1, "")


@functools.cache
def _alternation(markers: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("|".join(map(re.escape, markers)))


class Markers:
    """How a format's literal markers are written in a grammar for one tokenizer.

    A marker that is one special token (``<tool_call>`` in Qwen's vocabulary) is written as
    that token: by id when known (``<[151657]>``), else by name, which llguidance reads only
    in the ``<...>`` form. Any other marker, and a special token llguidance cannot name
    (Mistral's ``[TOOL_CALLS]`` without an id), is a quoted string. The constrain layer
    builds this from the tokenizer, with ids; tests may build it from a set of names.
    """

    def __init__(self, special: set[str] | frozenset[str] = frozenset(), ids: dict[str, int] | None = None) -> None:
        self.ids = dict(ids or {})
        self.special = frozenset(special) | frozenset(self.ids)

    def token(self, marker: str) -> bool:
        """Whether ``marker`` is written as one special token (else it is spelled as text)."""
        return marker in self.ids or (marker in self.special and marker.startswith("<") and marker.endswith(">"))

    def lit(self, marker: str) -> str:
        if marker in self.ids:
            return f"<[{self.ids[marker]}]>"
        if self.token(marker):
            return marker
        if marker in self.special:
            log.debug("special token %s has no id to reference it by: spelling it as text", marker)
        return json.dumps(marker)

    def text_then(self, rule: str, terminal: str, marker: str) -> str:
        """The Lark rule ``rule``: free text (the terminal ``terminal``) up to ``marker``.

        A marker that is one special token simply follows the text. A marker written as text
        cannot: llguidance's lexer is greedy, so the text would eat the marker's first
        characters; the rule is lazy instead and ends at the marker's first occurrence."""
        if self.token(marker):
            return f"{rule}: {terminal} {self.lit(marker)}"
        return f"{rule}[lazy]: {terminal} {json.dumps(marker)}"

    def text_without(self, *markers: str) -> str:
        """A Lark terminal body for free text that cannot contain any of ``markers``."""
        plain = [m for m in markers if not self.token(m)]
        if not plain:
            return "/(?s:.*)/"
        banned = " | ".join(f"/(?s:.*)/ {json.dumps(m)} /(?s:.*)/" for m in plain)
        return f"/(?s:.*)/ & ~({banned})"


def json_schema_lark(schema: dict[str, Any]) -> str:
    """Inline a JSON schema in Lark, written the way chat templates write JSON (``, `` and ``: ``)."""
    s = dict(schema)
    s.setdefault("x-guidance", {"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": False})
    return "%json " + json.dumps(s)


def strict_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """``strict: true``: no property beyond the declared ones, at any depth."""
    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            out = {k: walk(v) for k, v in node.items()}
            if out.get("type") == "object" or "properties" in out:
                out.setdefault("additionalProperties", False)
            return out
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node
    return walk(schema)


def call_schema(tool: ToolSpec, args_key: str = "arguments", name_key: str = "name") -> dict[str, Any]:
    """The JSON object ``{"name": ..., "arguments": {...}}`` one tool call is.

    Arguments never get properties the tool does not declare, strict or not: an invented
    argument is a hallucination, not a call. What ``strict`` adds is checked up front (an
    unsupported schema is an error rather than a looser constraint).
    """
    params = strict_schema(tool.parameters)
    return {
        "type": "object",
        "properties": {name_key: {"const": tool.name}, args_key: params or {"type": "object"}},
        "required": [name_key, args_key],
        "additionalProperties": False,
    }


#: output that begins like a JSON call written as text: ``{``, ``[{``, a ```json fence, or
#: a JSON object in a fence of any other language (small models write ```xml {"name": ...}),
#: or a tag that opens tools or a function (``<tools>``, ``<tools/>``, ``<tools]``,
#: ``<toolsFunction name=...>`` were all seen; ``<tool_call>``, ``<tool_response>`` are not one)
STRAY_JSON_START = (r"[ \t\r\n]*(\{|\[[ \t\r\n]*\{|```[ \t]*json|```[ \t]*[A-Za-z]*[ \t\r\n]*\{"
                    r"|```[ \t]*[A-Za-z]*[ \t\r\n]*\[[ \t\r\n]*\{"
                    r"|(```[ \t]*[A-Za-z]*[ \t\r\n]*)?<(tools?|function)[^_])(?s:.*)")
#: anywhere in text that is meant to be an answer: a call written as JSON, or the model
#: echoing its tool definitions (``{"type": "function", "function": {"name": ...``)
_WS = r"[ \t\r\n]*"
_Q = "[\"']"  # small models quote keys either way
# (the quotes around a key may be mangled: ``"arguments**:``, ``"arguments}:`` were seen, so a
# second key that starts as arguments or parameters is enough)
_CALL_SHAPE = (rf"(\{{{_WS}{_Q}(name|function|tool)([^:\n]([^:\n][^:\n]?)?)?:{_WS}{_Q}[^\"'\n]*{_Q}{_WS},{_WS}{_Q}?(arg|param)"
               rf"|\"function\"{_WS}:{_WS}\{{{_WS}\"name|<tools?[ \t\r\n>\/]|<function=)")
CALL_SHAPED_JSON = rf"(?s:.*){_CALL_SHAPE}(?s:.*)"
#: an answer that starts as prose (not as JSON, a fence or a tag, which auto mode's probe reads
#: and redirects) and goes on to write a call as text: banned in every answer where tools exist
PROSE_THEN_CALL = rf"[ \t\r\n]*[^ \t\r\n{{\[`<](?s:.*){_CALL_SHAPE}(?s:.*)"


def free_text(markers: Markers, *forbidden: str, ban_stray_json: bool = False, answer: bool = True) -> str:
    """The Lark body of free text that cannot contain ``forbidden`` markers nor, once it has
    started as prose, a call written as text (call-shaped JSON, the tool definitions, an
    XML-ish call); when ``ban_stray_json``, it cannot start like a call written as bare or
    fenced JSON either, nor hold one anywhere: an answer leaks no call. Reasoning
    (``answer`` False) is free: nothing in it is constrained as a call."""
    body = markers.text_without(*forbidden)
    if not answer:
        return body
    if ban_stray_json:
        return f"({body}) & ~/{STRAY_JSON_START}/ & ~/{CALL_SHAPED_JSON}/"
    return f"({body}) & ~/{PROSE_THEN_CALL}/"


def _stray_object_start(text: str) -> int | None:
    """Where the JSON object of a stray call starts (after a fence and a bracket), -1 if
    ``text`` cannot be one, None if that is not known yet."""
    i = len(text) - len(text.lstrip())
    if len(text) - i < 3 and "```".startswith(text[i:]) and i < len(text):
        return None  # a fence may be starting
    if text.startswith("```", i):
        line_end = text.find("\n", i)
        lang = (text[i + 3:] if line_end < 0 else text[i + 3:line_end]).strip()
        if line_end < 0:
            return None if lang.isalnum() or not lang else -1
        i = line_end + 1
    i = skip_ws(text, i)
    if text.startswith("[", i):
        i = skip_ws(text, i + 1)
    if i >= len(text):
        return None
    return i if text[i] == "{" else -1


def stray_json_call(text: str) -> tuple[str, Any] | None:
    """The (name, arguments) of a complete stray JSON call at the start of ``text``."""
    i = _stray_object_start(text)
    if i is None or i < 0:
        return None
    scan = scan_object(text, i)
    if scan.end is None:
        return None
    name = next((n for n in (scan.complete_string(text, k) for k in _NAME_KEYS) if n is not None), None)
    field = scan.fields.get("arguments") or scan.fields.get("parameters")
    if name is None:
        return None
    try:
        args = json.loads(field.raw(text)) if field is not None else {}
    except ValueError:
        return None
    return name, args


def stray_json_intent(text: str, names: list[str]) -> bool | None:
    """See ``Format.call_intent``: is ``text`` the start of ``{"name": "<one of names>"``,
    bare, in a list, or in a ```json fence?"""
    i = _stray_object_start(text)
    if i is None:
        return None
    if i < 0:
        return False
    scan = scan_object(text, i)
    if scan.error is not None:
        return False
    if not scan.fields:
        rest = text[skip_ws(text, i + 1):]
        return None if scan.end is None and ('"name"'.startswith(rest[:6]) or rest[:1] == '"') else False
    key, field = next(iter(scan.fields.items()))
    if key not in _NAME_KEYS:
        return False
    name = scan.complete_string(text, key)
    if name is not None:
        return name in names
    raw = field.raw(text)
    if raw and (raw[0] != '"' or not any(n.startswith(raw[1:]) for n in names)):
        return False
    return None


_NAME_KEYS = ("name", "function", "tool", "tool_name")


def custom_grammar_name(tool: ToolSpec) -> str:
    """The name a custom tool's own grammar is registered under beside the format's grammar."""
    return "custom_" + "".join(ch if ch.isalnum() else "_" for ch in tool.name)


def custom_input(tool: ToolSpec) -> str | None:
    """The Lark reference to a custom tool's input grammar (``@name``), None for free text."""
    return None if tool.grammar is None else "@" + custom_grammar_name(tool)


def empty_content(messages: list[Message], role: str | None = None) -> list[Message]:
    """``messages`` with ``""`` for a content of None (of ``role``'s messages, or all), for
    templates that print it as ``None`` or test and split it as a string."""
    return [replace(m, content="") if m.content is None and role in (None, m.role) else m for m in messages]


def answer_rule(response_format: ResponseFormat, text_terminal: str) -> str:
    """The Lark body of a plain answer: free text, or JSON when ``response_format`` asks."""
    if response_format.type == "json_schema" and response_format.schema is not None:
        schema = strict_schema(response_format.schema) if response_format.strict else response_format.schema
        return json_schema_lark(schema)
    if response_format.type in ("json_schema", "json_object"):
        return json_schema_lark({"type": "object"})
    return text_terminal


def tools_start(markers: Markers, choice: ToolChoice, answer: str, opener: str, rest: str, pre_text: str,
                head: str = "", gap: str = "") -> tuple[str, list[str]]:
    """The ``start`` rule of a grammar whose calls are the marker ``opener`` then ``rest``, and
    the rules it adds. The output is an answer (``answer``: the terminal ``TEXT`` or a JSON
    answer) or calls, or with a text answer, text (``pre_text``, a Lark body) then calls;
    ``required`` allows only calls. ``head`` comes first in each (reasoning); ``gap`` comes
    before an opener that does not follow text."""
    calls = f"{gap}{markers.lit(opener)} {rest}"
    if choice.mode == "required":
        return f"start: {head}{calls}", []
    if answer == "TEXT":
        return f"start: {head}TEXT | {head}pre {rest}", [markers.text_then("pre", "PRE_TEXT", opener),
                                                         f"PRE_TEXT: {pre_text}"]
    return f"start: {head}{answer} | {head}{calls}", []


def lark(start: str, *lines: str) -> str:
    """A grammar's text: the start rule, then the other lines."""
    return "\n".join([start, *lines]) + "\n"


# -- parsing text with blocks in it ---------------------------------------------------------------

#: where a resumed parse may start (see ``Settled``): its offset, how many content pieces and
#: how many calls lie before it; the markers of a content run when the text ends in one
#: (nothing held back: the offset is the text's end), else None
Cut = tuple[int, int, int, tuple[str, ...] | None]


def read_blocks(text: str, pos: int, partial: bool, openers: tuple[str, ...],
                block: Callable[[int, str], int | None], content: list[str], calls: list[ParsedCall]) -> Cut:
    """Read ``text`` from ``pos``: text up to the first of ``openers`` is content, then
    ``block(index, opener)`` reads the block the opener starts (into ``calls``, or ``content``
    what is not a call) and returns where text resumes after it, None when nothing after it is
    text yet. A trailing start of an opener is held back. Returns the last cut before a block
    or at the end of the text read."""
    while True:
        i, opener = find_first(text, openers, pos)
        if i < 0:
            tail = text[pos:]
            held = held_any(tail, openers) if partial else 0
            if held:
                tail = tail[:-held]
            content.append(tail)
            return pos + len(tail), len(content), len(calls), (None if held else openers)
        content.append(text[pos:i])
        cut = (i, len(content), len(calls), None)  # all before this block is final
        resume = block(i, opener)
        if resume is None:
            return cut
        pos = resume


def block_body(text: str, start: int, partial: bool, close: str) -> tuple[str, int | None]:
    """The body of a block from ``start`` to ``close`` (while it may be arriving, short of a
    start of it), and one past ``close`` (None: not closed)."""
    j = text.find(close, start)
    if j >= 0:
        return text[start:j], j + len(close)
    body = text[start:]
    return (body[: len(body) - held_prefix(body, close)] if partial else body), None


def keep_call(text: str, i: int, partial: bool, call: ParsedCall | None, end: int | None,
              content: list[str], calls: list[ParsedCall]) -> int | None:
    """Keep what the block at ``i`` is: ``call``, or, when it is no call and it ended (at
    ``end``, or with the output), its text as content. Returns ``end`` (see ``read_blocks``)."""
    if call is not None:
        calls.append(call)
    elif end is not None or not partial:
        content.append(text[i: end if end is not None else len(text)])
    return end


def settled_text(fmt: F, offset: int, content: str, calls: int = 0, **state: Any) -> Settled:
    """Settled at ``offset`` after ``content`` and ``calls`` calls; ``fmt`` resumes knowing
    whether content that is not blank came before, and in ``state``."""
    resume = resumed(fmt, text_before=fmt.text_before or bool(content.strip()), **state)
    return Settled(offset, resume, content=content, calls=calls)


def text_and_blocks(fmt: F, out: Parsed, content: list[str], cut: Cut, partial: bool, **state: Any) -> Parsed:
    """``out`` with the content ``read_blocks`` read, and settled at its cut."""
    out.content = strip_after("".join(content), fmt.text_before)
    if partial:
        offset, pieces, calls, markers = cut
        out.settled = settled_text(fmt, offset, "".join(content[:pieces]), calls, **state)
        if markers is not None:  # (else a block may have set the run it ends in)
            out.run = text_run(out.settled, markers)
    return out


def text_run(settled: Settled, markers: tuple[str, ...] | None, stops: str = "") -> Run | None:
    """The content run of a parse ``settled`` at the end of its text, which ends in text
    that only ``markers`` (or ``stops``) would end (None: it does not end in such text),
    once the state it resumes in no longer changes with more text (content that is not
    blank came before)."""
    if markers is None or not settled.resume.text_before:
        return None
    return Run("content", markers, stops)


class Format:
    """Base class of a model family's tool-calling dialect."""

    key: ClassVar[str]
    #: every one of these must occur in a chat template for it to be detected as this format
    markers: ClassVar[tuple[str, ...]] = ()
    #: among formats whose markers all match, the highest priority wins
    priority: ClassVar[int] = 0
    #: the model's own tool-calling syntax is in its template (False: midtier injects it)
    native_tools: ClassVar[bool] = True
    #: whether parallel calls may be asked of the model as a list of values (loop/fanout.py)
    list_fanout: ClassVar[bool] = False
    #: whether this format can write calls of custom tools (raw input, optionally a grammar)
    supports_custom_tools: ClassVar[bool] = False
    #: whether small models of this family write calls as bare or fenced JSON instead of the
    #: real syntax; ``auto`` then watches the start of the output and steers (see call_intent)
    steer_stray_json: ClassVar[bool] = True
    #: the built-in tool namespaces this family was trained on (gpt-oss: "browser", "python"):
    #: a built-in tool that has that form (``BuiltinTool.native_functions``) is shown and called
    #: that way (``ToolSpec.namespace``) instead of as functions
    builtin_namespaces: ClassVar[frozenset[str]] = frozenset()
    #: a resumed parse (see ``Settled``) comes after content that is not blank
    text_before = False

    # -- per model and per request ------------------------------------------------------------
    def patch_template(self, source: str) -> str:
        """The chat template with this family's known bugs mended (it is the model's own
        template otherwise); the default changes nothing."""
        return source

    def for_template(self, template: ChatTemplate) -> Format:
        """This format configured for the model's chat template; formats that inject their own
        syntax probe what the template renders. The default is the format itself."""
        return self

    def for_prompt(self, prompt: str) -> Format:
        """This format as it applies to output that follows ``prompt``; formats whose prompt
        decides how the output starts (a generation prompt that opens ``<think>``) return a
        configured copy. The default is the format itself."""
        return self

    def with_tools(self, tools: list[ToolSpec]) -> Format:
        """This format for output that may call ``tools``: syntaxes whose parser needs the tools'
        schemas to type values (XML parameters) return a copy that knows them. The default is
        the format itself."""
        return self

    def for_request(self, prompt: str, tools: list[ToolSpec]) -> Format:
        """This format for one request: ``for_prompt``, then ``with_tools``."""
        return self.for_prompt(prompt).with_tools(tools)

    def new_call_id(self) -> str:
        """An id for a call the model made, in the shape this family's template accepts."""
        return new_id("call_")

    # -- layer 2: prompt-side quirks -------------------------------------------------------
    def prepare(self, messages: list[Message], tools: list[ToolSpec]) -> tuple[list[Message], list[ToolSpec]]:
        """Adapt a conversation to what the template expects (ids, roles, injected instructions)."""
        return messages, tools

    def template_kwargs(self, tools: Sequence[ToolSpec] = ()) -> dict[str, Any]:
        """Extra variables for the template, given the tools of the request (before ``prepare``)."""
        return {}

    # -- layer 3: the constraint -----------------------------------------------------------
    def grammar(self, tools: list[ToolSpec], choice: ToolChoice, response_format: ResponseFormat,
                markers: Markers, *, ban_stray_json: bool = False) -> str | None:
        """A Lark grammar (llguidance dialect) for the output, or None for no constraint.

        ``ban_stray_json``: free text may not start like a call written as JSON (see
        ``free_text``); used for ``none`` and once ``auto`` has decided on text.
        """
        raise NotImplementedError

    def call_intent(self, text: str, names: list[str]) -> bool | None:
        """Does output that starts like ``text`` mean to call one of ``names``?

        True: it is writing a call to a callable tool in the wrong syntax (bare JSON, a
        fenced JSON block); False: it is not (text, or a tool that does not exist); None:
        not known yet. Only asked while the output could still be such a stray call.
        """
        if not self.steer_stray_json:
            return False
        return stray_json_intent(text, names)

    def stray_call(self, text: str) -> tuple[str, Any] | None:
        """The whole call in output that ``call_intent`` said means one: (name, arguments)."""
        return stray_json_call(text) if self.steer_stray_json else None

    # -- layer 4: the parser ---------------------------------------------------------------
    def parse(self, text: str, partial: bool) -> Parsed:
        raise NotImplementedError


def diff(prev: Parsed, new: Parsed, ids: list[str], make_id: Callable[[], str]) -> list[StreamEvent]:
    """The events that turn ``prev`` into ``new``; ``ids`` holds the ids of calls seen so far
    (the model's own id when its syntax carries one, else a new one)."""
    events: list[StreamEvent] = []
    if len(new.reasoning) > len(prev.reasoning):
        if not new.reasoning.startswith(prev.reasoning):
            log.error("format is not monotone in reasoning: %r -> %r", prev.reasoning, new.reasoning)
        events.append(ReasoningDelta(new.reasoning[len(prev.reasoning):]))
    if len(new.content) > len(prev.content):
        if not new.content.startswith(prev.content):
            log.error("format is not monotone in content: %r -> %r", prev.content, new.content)
        events.append(TextDelta(new.content[len(prev.content):]))
    for i, call in enumerate(new.calls):
        if i >= len(prev.calls):
            ids.append(call.id or make_id())
            events.append(ToolCallStart(i, ids[i], call.name, "custom" if call.custom else "function"))
            before, was_done = "", False
        else:
            before, was_done = prev.calls[i].arguments, prev.calls[i].done
        if len(call.arguments) > len(before):
            events.append(ToolCallArgsDelta(i, call.arguments[len(before):]))
        if call.done and not was_done:
            events.append(ToolCallDone(i, call.arguments))
    return events


# the streaming parser lives in its own module; importable from here as it always was
from midtier.formats.stream import StreamParser  # noqa: E402, F401
