"""Streaming a format's output: ``StreamParser`` feeds chunks and yields internal events.

The events are what ``diff`` computes between the parses of successive snapshots of the
output (``Format.parse``, one function for streamed and final output); what the parser adds
is speed, never a result of its own:

- **settling**: a format reports in a partial parse where it is final (``Parsed.settled``,
  see ``Settled``); the parser keeps what lies before that point and parses only the rest;
- **runs**: a format reports how its parse goes on for text that cannot change its
  structure (``Parsed.run``, see ``Run``): plain text, a string argument. While chunks fit
  the run, the parser takes them without parsing, in ``O(chunk)``: a chunk of content
  is settled as it is, a chunk of a string argument is the arguments' next delta.

So streaming costs ``O(chunk)`` per chunk inside runs and a parse of the unsettled text
elsewhere. ``StreamParser(fmt, runs=False)`` parses every chunk: the tests check that both
emit the same events.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Callable

from midtier.core.events import (
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    ToolCallArgsDelta,
    ToolCallDone,
    ToolCallStart,
)
from midtier.formats._json import JsonState, json_run
from midtier.formats.base import Format, Parsed, ParsedCall, Run, Settled, held_any

log = logging.getLogger(__name__)


class StreamParser:
    """Feeds a format text chunks and yields the internal events; ``finish`` flushes.

    Streaming is linear: a format may report in its partial result where it has *settled*
    (``Parsed.settled``, see ``Settled``); the parser then keeps what lies before that point
    and parses only the text after it, with the format copy the result names. A format that
    never settles is parsed whole on every chunk. Inside a run (``Parsed.run``) chunks are
    taken without parsing.
    """

    def __init__(self, fmt: Format, make_id: Callable[[], str] | None = None, *, runs: bool = True) -> None:
        self.fmt = fmt
        self.ids: list[str] = []
        #: how many chunks were parsed (the others were taken by a run)
        self.parses = 0
        self._make_id = make_id or fmt.new_call_id
        self._runs = runs
        self._resumed = fmt  # parses the text from the settled point on
        self._chunks: list[str] = []  # the text before the settled point
        self._tail = ""  # the text from the settled point on, as last parsed
        self._more: list[str] = []  # text a run took after ``_tail``
        self._pending = ""  # then what a run held back: the start of a marker
        self._content = _Channel()
        self._reasoning = _Channel()
        self._done: list[ParsedCall] = []  # settled calls: emitted whole and done
        self._calls: list[ParsedCall] = []  # the tail's calls as last parsed
        self._grown = 0  # what a run added to the last of ``_calls``'s arguments since
        self._finished = False
        # the run chunks go to (see ``_arm``)
        self._run: Run | None = None
        self._take: Callable[[str], list[StreamEvent] | None] | None = None
        self._hits: Callable[[str], object] = _never  # whether a chunk holds a stop or a marker's start
        self._hit: str | None = None  # the one character ``_hits`` looks for, when it is one
        self._longest = 0  # the length of its longest marker
        self._json: JsonState = (0, False, False)  # a JSON run: where the text stands (see json_run)
        self._held = ""  # an args run: what it holds back (a newline that may end the value)
        self._room = -1  # how many more characters the run may take (-1: no bound)
        self._careful = False  # whether every chunk needs the whole check (a bound, an open escape)
        self._index = 0  # an args run: the index of its call
        self._channel = self._content  # a text run: its channel, and the event of a delta
        self._delta: type[TextDelta] | type[ReasoningDelta] = TextDelta

    @property
    def text(self) -> str:
        """The text fed so far."""
        return "".join(self._chunks) + self.tail

    @property
    def tail(self) -> str:
        """The text after the settled point: what the next parsed chunk parses again."""
        return self._tail + "".join(self._more) + self._pending

    @property
    def parsed(self) -> Parsed:
        """The parse of the text fed so far (final once ``finish`` was called), rebuilt from
        the settled part and a parse of the rest."""
        tail = self._resumed.parse(self.tail, partial=not self._finished)
        return Parsed(self._content.joined(tail.content), self._reasoning.joined(tail.reasoning),
                      self._done + tail.calls)

    def feed(self, chunk: str) -> list[StreamEvent]:
        if not chunk:
            return []
        if self._take is not None:
            events = self._take(chunk)
            if events is not None:
                return events
        return self._parse(chunk)

    def finish(self) -> list[StreamEvent]:
        self._finished = True
        self._disarm()
        tail = self._tail = self.tail
        self._more, self._pending = [], ""
        final = self._resumed.parse(tail, partial=False)
        events = self._advance(final)
        # a call cut short (length, stop) is closed with the arguments it got
        for i, call in enumerate(final.calls):
            if not call.done:
                call.done = True
                events.append(ToolCallDone(len(self._done) + i, call.arguments))
        return events

    # -- parsing ---------------------------------------------------------------------------------
    def _parse(self, chunk: str) -> list[StreamEvent]:
        self.parses += 1
        if self._more or self._pending:
            chunk = "".join(self._more) + self._pending + chunk
            self._more, self._pending = [], ""
        self._tail += chunk
        new = self._resumed.parse(self._tail, partial=True)
        events = self._advance(new)
        if new.settled is not None:
            self._settle(new.settled)
        self._arm(new.run)
        return events

    def _advance(self, new: Parsed) -> list[StreamEvent]:
        """The events from what was emitted to the settled part followed by ``new`` (as
        ``diff`` computes them, touching only the unsettled part)."""
        events: list[StreamEvent] = []
        delta = self._reasoning.advance(new.reasoning, "reasoning")
        if delta:
            events.append(ReasoningDelta(delta))
        delta = self._content.advance(new.content, "content")
        if delta:
            events.append(TextDelta(delta))
        base = len(self._done)
        last = len(self._calls) - 1
        for i, call in enumerate(new.calls):
            if i > last:
                self.ids.append(call.id or self._make_id())
                events.append(ToolCallStart(base + i, self.ids[base + i], call.name,
                                            "custom" if call.custom else "function"))
                before, was_done = 0, False
            else:
                before, was_done = len(self._calls[i].arguments), self._calls[i].done
                if i == last:
                    before += self._grown
            if len(call.arguments) > before:
                events.append(ToolCallArgsDelta(base + i, call.arguments[before:]))
            if call.done and not was_done:
                events.append(ToolCallDone(base + i, call.arguments))
        self._calls = new.calls
        self._grown = 0
        return events

    def _settle(self, settled: Settled) -> None:
        """Keep what lies before ``settled.offset``; parse from there on with ``settled.resume``."""
        if settled.offset <= 0 and settled.resume is self._resumed:
            return
        self._chunks.append(self._tail[:settled.offset])
        self._tail = self._tail[settled.offset:]
        self._content.settle(settled.content)
        self._reasoning.settle(settled.reasoning)
        k = settled.calls
        if k:
            if not all(c.done for c in self._calls[:k]):
                log.error("format settled calls that are not done: %r", self._calls[:k])
            self._done += self._calls[:k]
            self._calls = self._calls[k:]
        self._resumed = settled.resume

    # -- runs: chunks taken without parsing ---------------------------------------------------------
    def _disarm(self) -> None:
        self._run = self._take = None

    def _arm(self, run: Run | None) -> None:
        """Take the next chunks into ``run`` (the last parse's) while they fit it."""
        self._disarm()
        if run is None or not self._runs:
            return
        take: Callable[[str], list[StreamEvent] | None]
        if run.kind in ("content", "reasoning"):
            channel = self._content if run.kind == "content" else self._reasoning
            if channel.sent or (self._tail and not (run.rstrip and self._tail.isspace())):
                log.error("format reported a %s run it did not settle: %r", run.kind, self._tail)
                return
            take = self._take_text if not run.rstrip else self._take_body
            self._channel = channel
            self._delta = TextDelta if run.kind == "content" else ReasoningDelta
        elif run.kind == "args":
            if not self._calls or self._calls[-1].done:
                log.error("format reported an args run with no open call")
                return
            take = self._take_args
        else:
            take = self._take_silent
        self._longest = max(map(len, run.markers), default=0)
        if run.markers and held_any(self._recent(self._longest - 1), run.markers):
            return  # the text ends with a start of a marker: the run starts after it
        self._run, self._take = run, take
        self._hits = _finder(run.stops, run.markers, bool(run.json))
        chars = {*run.stops, *(m[0] for m in run.markers)}
        self._hit = chars.pop() if len(chars) == 1 and not run.json else None
        self._json = (run.depth, run.string, run.escaped)
        self._held = run.held
        self._room = run.room
        self._careful = run.room >= 0 or run.escaped
        self._index = len(self._done) + len(self._calls) - 1

    def _piece(self, chunk: str) -> str | None:
        """What the run takes of the text held back before ``chunk`` and ``chunk`` (None: it
        does not fit, the chunk is parsed): no stop, no marker occurs, the JSON value goes
        on; a start of a marker at its end is held back, as formats hold it."""
        if not (self._pending or self._careful or self._hits(chunk)):
            return chunk  # none of the characters that matter
        run = self._run
        assert run is not None
        for c in run.stops:
            if c in chunk:
                return None
        if self._room >= 0:
            if len(chunk) > self._room:
                return None
            self._room -= len(chunk)
        pending = self._pending
        piece = pending + chunk if pending else chunk
        held = ""
        if pending or self._hits(chunk):
            before = self._recent(self._longest - 1)
            window = before + piece
            for m in run.markers:
                if m in window:
                    return None
            h = held_any(window, run.markers)
            if h:
                if h > len(piece):
                    return None
                piece, held = piece[:-h], piece[-h:]
                if held_any(before + piece, run.markers):
                    return None
        if run.json and piece:
            state = json_run(piece, 0, self._json, run.json)
            if state is None:
                return None
            self._json = state
            self._careful = self._room >= 0 or state[2]
        self._pending = held
        return piece

    def _recent(self, n: int) -> str:
        """The last ``n`` characters a run took or the parser parsed (fewer at the start)."""
        out = ""
        for piece in reversed(self._more):
            out = piece + out
            if len(out) >= n:
                return out[-n:]
        out = self._tail + out
        for piece in reversed(self._chunks):
            if len(out) >= n:
                break
            out = piece + out
        return out[-n:] if n else ""

    def _take_text(self, chunk: str) -> list[StreamEvent] | None:
        """A content or reasoning run: the piece is settled as it is."""
        hit = self._hit
        if self._pending or (hit in chunk if hit is not None else self._hits(chunk)):
            piece = self._piece(chunk)
            if not piece:
                return None if piece is None else []
        else:
            piece = chunk
        self._chunks.append(piece)
        channel = self._channel
        if channel.unsent or piece[-1].isspace() or not channel.pieces:
            delta = channel.take(piece)
            return [self._delta(delta)] if delta else []
        channel.pieces.append(piece)
        return [self._delta(piece)]

    def _take_body(self, chunk: str) -> list[StreamEvent] | None:
        """A text run whose trailing blanks stay unsettled (``Run.rstrip``)."""
        piece = self._piece(chunk)
        if not piece:
            return None if piece is None else []
        if self._tail or piece[-1].isspace():
            text = self._tail + piece
            piece = text.rstrip()
            if not piece:
                self._tail = text
                return []
            self._tail = text[len(piece):]
        self._chunks.append(piece)
        delta = self._channel.take(piece)
        return [self._delta(delta)] if delta else []

    def _take_args(self, chunk: str) -> list[StreamEvent] | None:
        """An args run: the piece (escaped, with ``Run.escape``) goes on the last call's arguments."""
        piece = self._piece(chunk)
        if not piece:
            return None if piece is None else []
        self._more.append(piece)
        run = self._run
        assert run is not None
        if run.newline:
            piece = self._held + piece
            self._held = "\n" if piece.endswith("\n") else ""
            if self._held:
                piece = piece[:-1]
        if run.escape and (not piece.isprintable() or '"' in piece or "\\" in piece):
            piece = json.dumps(piece, ensure_ascii=False)[1:-1]
        if not piece:
            return []
        self._grown += len(piece)
        return [ToolCallArgsDelta(self._index, piece)]

    def _take_silent(self, chunk: str) -> list[StreamEvent] | None:
        """A silent run: the piece changes nothing yet."""
        piece = self._piece(chunk)
        if piece is None:
            return None
        if piece:
            self._more.append(piece)
        return []


_JSON_CHARS = '"\\{}[]'


def _never(chunk: str) -> bool:
    return False


@functools.cache
def _finder(stops: str, markers: tuple[str, ...], json: bool) -> Callable[[str], object]:
    """A test of whether a text holds a character that matters to a run: one of ``stops``,
    a marker's first one, (``json``) one of JSON's brackets, quote and backslash."""
    chars = {*stops, *(m[0] for m in markers), *(_JSON_CHARS if json else "")}
    if not chars:
        return _never
    if len(chars) == 1:
        char = next(iter(chars))
        return lambda chunk: char in chunk
    return re.compile("[" + "".join(map(re.escape, sorted(chars))) + "]").search


class _Channel:
    """One text channel (content or reasoning) of a ``StreamParser``: its settled text and
    what of it has been emitted, without holding the whole text.

    The channel's text is ``settled + tail`` when the tail's text is not empty, else
    ``settled.rstrip()``; ``settled`` is the settled pieces joined, leading whitespace
    dropped. (Formats strip their text: a resumed parse strips only the right side when
    text came before it, see ``Settled``.)"""

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.unsent = ""  # settled[emitted:], when emitted < size
        self.sent = ""  # what was emitted beyond settled

    def joined(self, tail: str) -> str:
        settled = "".join(self.pieces)
        return settled + tail if tail else settled.rstrip()

    def advance(self, tail: str, what: str) -> str:
        """The delta that takes what was emitted to ``settled`` + ``tail``."""
        if tail:
            if not tail.startswith(self.sent):
                log.error("format is not monotone in %s: %r -> %r", what, self.sent, tail)
            delta = self.unsent + tail[len(self.sent):]
            self.unsent, self.sent = "", tail
        else:
            if self.sent:
                log.error("format is not monotone in %s: %r -> ''", what, self.sent)
            delta = self.unsent.rstrip()
            self.unsent, self.sent = self.unsent[len(delta):], ""
        return delta

    def settle(self, piece: str) -> None:
        if not self.pieces:
            piece = piece.lstrip()
        if not piece:
            return
        self.pieces.append(piece)
        if len(self.sent) >= len(piece):
            self.sent = self.sent[len(piece):]
        else:
            self.unsent += piece[len(self.sent):]
            self.sent = ""

    def take(self, piece: str) -> str:
        """``settle(piece)`` then ``advance("")`` (nothing is emitted beyond the settled text):
        the delta a run's piece adds."""
        if not self.pieces:
            piece = piece.lstrip()
            if not piece:
                return ""
        self.pieces.append(piece)
        text = self.unsent + piece if self.unsent else piece
        delta = text.rstrip()
        self.unsent = text[len(delta):]
        return delta


__all__ = ["StreamParser"]
