"""gpt-oss's Harmony format: messages with channels and recipients, special tokens as text.

An assistant turn is a run of messages, each ``<|start|>ROLE HEADER<|message|>BODY`` ended by
``<|end|>``, ``<|call|>`` (a tool call) or ``<|return|>`` (the turn's last word). The prompt
opens the first one (it ends ``<|start|>assistant``), so output starts inside its header::

    <|channel|>analysis<|message|>Need the weather.<|end|>
    <|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}<|call|>

How a message maps to the result:

- a recipient (``to=...``) other than ``assistant``/``user`` makes it a call: ``functions.NAME``
  is the call ``NAME``; the built-in namespaces keep their full recipient as the name
  (``browser.search``, ``browser.open``, ``python``). Arguments are the body's JSON object,
  except for ``python``, whose body is code: it becomes ``{"code": "..."}``.
- the ``analysis`` channel is reasoning; ``final``, ``commentary`` without a recipient (a
  preamble) and a message with no channel are content. Parts are joined by a blank line.
- a message from another role (a tool's reply the model wrote itself) ends the turn.

The recipient may stand in the role part (``assistant to=functions.f<|channel|>commentary``,
as gpt-oss.jinja renders past calls) or after the channel (as the model writes); the content
type may be ``<|constrain|>json``, ``json``, ``code`` or missing. A header without
``<|message|>`` (a known glitch; cut by a newline, a terminator or its length) is read as
harmony's non-strict parser does: its channel kept, the rest as body; never as a call (one
that names a recipient is dropped).

The constraint leaves analysis free, then allows a final message (``auto``, ``none``) or calls
``<|channel|>commentary to=functions.NAME <|constrain|>json<|message|>{...}`` (either header
order; arguments by the tool's schema); ``none`` allows no recipient at all, ``required``
only analysis before the calls. ``<|call|>`` and ``<|return|>`` end generation (the engine
does not emit them), so in practice a turn holds one call.

The prompt is gpt-oss.jinja rendered by our ChatTemplate; ``prepare`` splits parallel calls
into one message each (the template renders only the first call of a message), interleaving
their results, and carries reasoning on call turns as the template's analysis message.

gpt-oss was trained on two built-in tools, ``browser`` and ``python``; the server's web_search
and code_interpreter take that form (``builtin_namespaces``, ``ToolSpec.namespace``): the
template's ``builtin_tools`` shows them in the system message, the grammar lets the model write
``to=browser.search`` (JSON arguments) or ``to=python`` (code), and ``patch_template`` renders
past calls and results of those namespaces as the model was trained (``browser.search``, not
``functions.browser.search``; the result raw text authored by the tool).
``load_encoding`` gives openai-harmony's encoding offline (see ``tiktoken_dir``).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

from midtier.core.messages import Message, ResponseFormat, ToolChoice, ToolSpec
from midtier.formats._json import open_json, skip_ws, value_end
from midtier.formats.base import (
    Format,
    Markers,
    Parsed,
    ParsedCall,
    Run,
    Settled,
    answer_rule,
    find_first,
    free_text,
    held_any,
    json_args,
    json_schema_lark,
    resumed,
    strict_schema,
)

START = "<|start|>"
END = "<|end|>"
MESSAGE = "<|message|>"
CHANNEL = "<|channel|>"
CONSTRAIN = "<|constrain|>"
CALL = "<|call|>"
RETURN = "<|return|>"
MARKERS = (START, END, MESSAGE, CHANNEL, CONSTRAIN, CALL, RETURN)

#: what ends a message's body: the three terminators, and a new header that skipped them
BODY_ENDS = (END, CALL, RETURN, START, CHANNEL)
#: how a header the prompt did not open may begin
HEADER_OPENINGS = (START, CHANNEL, MESSAGE, CONSTRAIN, " to=", "to=")
#: a header longer than this (or holding a newline) is a broken one, read as body
MAX_HEADER = 256
_LONGEST = max(len(m) for m in MARKERS)
_WORD = re.compile(r"[^\s<]*")
_RECIPIENT = re.compile(r"(?:^|\s)to=([^\s<]+)")
#: recipients that are not tools
_NOT_TOOLS = ("assistant", "user", "all")

#: the generation prompt's open message: output starts in its header (""), or in its body
ANALYSIS_OPEN = f"{CHANNEL}analysis{MESSAGE}"
FINAL_OPEN = f"{CHANNEL}final{MESSAGE}"


class HarmonyFormat(Format):
    key = "harmony"
    markers: ClassVar[tuple[str, ...]] = (CHANNEL, MESSAGE, CALL)
    priority = 10
    steer_stray_json = False  # gpt-oss calls through recipients; it does not write bare JSON calls
    builtin_namespaces: ClassVar[frozenset[str]] = frozenset({"browser", "python"})

    #: where a resumed parse starts (see ``Settled``): inside a body of this channel
    #: ("content", "analysis") whose text so far is not blank, or between messages (None);
    #: after content and reasoning that are not blank
    body: str | None = None
    text_before = False
    thought_before = False

    def __init__(self, lead: str = "") -> None:
        #: what the prompt already wrote of the output's first message (see ``for_prompt``)
        self.lead = lead

    # -- per request --------------------------------------------------------------------------
    def for_prompt(self, prompt: str) -> HarmonyFormat:
        i = prompt.rfind(START)
        tail = prompt[i + len(START):] if i >= 0 else ""
        lead = tail[len("assistant"):] if tail.startswith("assistant") else ""
        if lead not in (ANALYSIS_OPEN, FINAL_OPEN):
            lead = ""
        return self if lead == self.lead else HarmonyFormat(lead)

    # -- layer 2 --------------------------------------------------------------------------------
    def patch_template(self, source: str) -> str:
        """gpt-oss.jinja names every past call ``functions.NAME`` and every result ``functions.NAME``
        with JSON-quoted text: a call of a built-in namespace the request shows (``builtin_tools``)
        is rendered as trained instead, ``to=browser.search`` (``to=python`` with its code as the
        body) and its result raw, authored by ``browser.search``. Function calls render as before."""
        for old, new in _TEMPLATE_PATCHES:
            source = source.replace(old, new)
        return source

    def template_kwargs(self, tools: Sequence[ToolSpec] = ()) -> dict[str, Any]:
        shown = sorted({t.namespace for t in tools if t.namespace in self.builtin_namespaces})
        return {"builtin_tools": shown} if shown else {}

    def prepare(self, messages: list[Message], tools: list[ToolSpec]) -> tuple[list[Message], list[ToolSpec]]:
        """Fit a conversation to gpt-oss.jinja.

        - system and developer messages become one leading message (the template keeps only
          ``messages[0]`` as instructions and drops any later one);
        - ``None`` contents become ``""`` (the template tests ``in message.content``);
        - an assistant message with several calls becomes one message per call, each followed
          by its result (the template renders one call per message and names a result after
          the latest call);
        - a call turn's reasoning (and any text) goes in ``content``, which the template
          renders as that turn's analysis message (it reads ``thinking``, which we cannot set);
        - the built-in namespaces' tools leave the functions (``template_kwargs`` shows them).
        """
        tools = [t for t in tools if t.namespace is None]
        instructions = [m.content or "" for m in messages if m.role in ("system", "developer")]
        lead = next((m for m in messages if m.role in ("system", "developer")), None)
        out: list[Message] = []
        if lead is not None:
            out.append(replace(lead, content="\n\n".join(c for c in instructions if c)))
        rest = [m for m in messages if m.role not in ("system", "developer")]
        i = 0
        while i < len(rest):
            msg = rest[i]
            i += 1
            if msg.role != "assistant" or not msg.tool_calls:
                out.append(replace(msg, content=msg.content or ""))
                continue
            results: list[Message] = []
            while i < len(rest) and rest[i].role == "tool":
                results.append(rest[i])
                i += 1
            text = "\n\n".join(t for t in (msg.reasoning, msg.content) if t)
            ids = {c.id for c in msg.tool_calls}
            for k, call in enumerate(msg.tool_calls):
                out.append(Message("assistant", text if k == 0 else "", [call]))
                result = _take_result(results, call.id, ids)
                if result is not None:
                    out.append(replace(result, content=result.content or ""))
            out.extend(replace(r, content=r.content or "") for r in results)
        return out, tools

    # -- layer 3 --------------------------------------------------------------------------------
    def grammar(self, tools: list[ToolSpec], choice: ToolChoice, response_format: ResponseFormat,
                markers: Markers, *, ban_stray_json: bool = False) -> str | None:
        lit = markers.lit
        callable_tools = choice.callable_tools(tools)
        answer = answer_rule(response_format, "TEXT")
        then = f'{lit(START)} "assistant"'
        # the engine stops on <|return|> (end of generation); written out, it may still come
        ret = f" {lit(RETURN)}?" if markers.token(RETURN) else ""
        # a JSON answer may be announced like a call's arguments: ``final <|constrain|>json``
        ctype = "" if answer == "TEXT" else " ctype?"
        lines = [
            f"THINK: {free_text(markers, *MARKERS, answer=False)}",
            f"TEXT: {free_text(markers, *MARKERS, ban_stray_json=ban_stray_json)}",
            markers.text_then("think", "THINK", END),
            f'analysis: {lit(CHANNEL)} "analysis" {lit(MESSAGE)} think {then}',
            f'final: {lit(CHANNEL)} "final"{ctype} {lit(MESSAGE)} {answer}{ret}',
            f'ctype: " "? {lit(CONSTRAIN)} "json" | " json"',
        ]
        if not callable_tools:
            rest = "analysis* final"
        else:
            lines.append(f'preamble: {lit(CHANNEL)} "commentary" {lit(MESSAGE)} think {then}')
            alternatives = []
            if any(t.namespace is not None for t in callable_tools):
                lines.append('code: " code"')
            for k, tool in enumerate(callable_tools):
                if tool.namespace is None:
                    to, channel, kind = json.dumps(f" to=functions.{tool.name}"), '"commentary"', "ctype?"
                else:  # a built-in: its own recipient, on either channel, its body code or JSON
                    to, channel = json.dumps(f" to={tool.name}"), '("commentary" | "analysis")'
                    kind = "code?" if tool.namespace == "python" else "(ctype | code)?"
                # the model writes the recipient after the channel; the template before it
                lines.append(f"call{k}: ({lit(CHANNEL)} {channel} {to} | {to} {lit(CHANNEL)} {channel}) "
                             f"{kind} {lit(MESSAGE)} args{k}")
                if tool.namespace == "python":
                    lines.append(f"args{k}: THINK")
                else:
                    lines.append(f"args{k}: {json_schema_lark(strict_schema(tool.parameters) or {'type': 'object'})}")
                alternatives.append(f"call{k}")
            lines.append(f"call: {' | '.join(alternatives)}")
            more = f'({lit(CALL)} {lit(START)} "assistant" call)* ' if choice.parallel else ""
            lines.append(f"calls: call {more}{lit(CALL)}?")
            if choice.mode == "required":
                rest = "analysis* calls"
            else:
                rest = "(analysis | preamble)* (final | calls)"
        if self.lead == FINAL_OPEN:
            start = f"start: {answer}{ret}"
        elif self.lead == ANALYSIS_OPEN:
            start = f"start: think {then} {rest}"
        else:
            start = f"start: {rest}"
        return "\n".join([start, *lines]) + "\n"

    # -- layer 4 --------------------------------------------------------------------------------
    def parse(self, text: str, partial: bool) -> Parsed:
        shift = len(self.lead)
        text = self.lead + text
        parts: dict[str, list[str]] = {"content": [], "analysis": []}
        calls: list[ParsedCall] = []
        pos, n = 0, len(text)
        rest: tuple[str, str] | None = None  # the body a resumed parse starts inside: channel, text
        settled: _Point | None = None  # where a later parse may resume (see Settled)
        open_body: str | None = None  # the text channel of a body that runs on to the end, nothing held
        open_call: Run | None = None  # the run of a call's body that runs on to the end
        header: Run | None = None  # the run of a header that runs on to the end
        if self.body is not None:
            body, pos, closed = _read_body(text, 0, partial)
            rest = (self.body, body)
            if closed:
                settled = _Point(pos, 0, 0, 0)
            elif body.strip():
                settled = _Point(len(body.rstrip()), 0, 0, 0, (self.body, body.rstrip()), goes_on=True)
                open_body = self.body if len(body) == n else None
        while pos < n:
            head = _read_header(text, pos, partial)
            if head is None:
                if partial:
                    header = _header_run(text, pos)
                break  # undecided (held back), or a cut-off header at the end
            if head.role != "assistant":
                break  # a message the model wrote for someone else: the turn is over
            body, pos, closed = _read_body(text, head.body_start, partial)
            channel = "analysis" if head.channel == "analysis" else "content"
            before = (len(calls), len(parts["content"]), len(parts["analysis"]))
            if head.dropped:
                pass
            elif head.recipient is not None:
                calls.append(_call(head.recipient, body, closed or not partial, closed))
                if partial and not closed and head.body_start + len(body) == n:
                    open_call = _args_run(head.recipient, body)
            else:
                parts[channel].append(body)
            if closed:
                settled = _Point(pos, len(calls), len(parts["content"]), len(parts["analysis"]))
            elif head.recipient is None and not head.dropped and body.strip():
                # inside a body still arriving: up to its last character that is not blank
                # (parts are stripped and joined: what follows may still end this one)
                settled = _Point(head.body_start + len(body.rstrip()), *before, (channel, body.rstrip()))
                open_body = channel if head.body_start + len(body) == n else None
        out = Parsed(content=_text(parts["content"], self.text_before, rest, "content"),
                     reasoning=_text(parts["analysis"], self.thought_before, rest, "analysis"), calls=calls)
        if partial:
            out.run = open_call if pos >= n else header
        if partial and settled is not None:
            out.settled = point = self._settled(settled, parts, rest, shift)
            if open_body is not None and settled.inside is not None and pos >= n \
                    and isinstance(point.resume, HarmonyFormat):
                # the body goes on: text without markers adds to it (its trailing blanks unsettled)
                after = point.resume.text_before if open_body == "content" else point.resume.thought_before
                if after and point.resume.body == open_body and not point.resume.lead:
                    out.run = Run("content" if open_body == "content" else "reasoning", BODY_ENDS, rstrip=True)
        return out

    def _settled(self, point: _Point, parts: dict[str, list[str]], rest: tuple[str, str] | None,
                 shift: int) -> Settled:
        piece = {"content": "", "analysis": ""}
        if point.goes_on and point.inside is not None:
            # still inside the body this parse resumed in: its text goes on the text before it
            piece[point.inside[0]] = point.inside[1]
        else:
            for channel, before in (("content", self.text_before), ("analysis", self.thought_before)):
                done = parts[channel][:point.content if channel == "content" else point.analysis]
                if point.inside is not None and point.inside[0] == channel:
                    done.append(point.inside[1])
                piece[channel] = _text(done, before, rest, channel)
        resume = resumed(self, lead="", body=point.inside[0] if point.inside is not None else None,
                         text_before=self.text_before or bool(piece["content"]),
                         thought_before=self.thought_before or bool(piece["analysis"]))
        return Settled(point.offset - shift, resume, content=piece["content"], reasoning=piece["analysis"],
                       calls=point.calls)


# gpt-oss.jinja's past call and its result, as ``patch_template`` mends them (the lines kept as
# they are, inside a branch for the built-in namespaces the request shows)
_CALL_LINES = """\
            {{- "functions." + tool_call.name + "<|channel|>commentary " }}
            {{- (tool_call.content_type if tool_call.content_type is defined else "json") + "<|message|>" }}
            {{- tool_call.arguments|tojson }}
"""
_BUILTIN_CALL = """\
            {%- if builtin_tools and tool_call.name.split(".")[0] in builtin_tools %}
            {{- tool_call.name + "<|channel|>commentary code<|message|>" }}
            {{- tool_call.arguments.code if tool_call.name == "python" and tool_call.arguments.code is string
                else tool_call.arguments|tojson }}
            {%- else %}
""" + _CALL_LINES + """\
            {%- endif %}
"""
_RESULT_LINES = """\
        {{- "<|start|>functions." + last_tool_call.name }}
        {{- " to=assistant<|channel|>commentary<|message|>" + message.content|tojson + "<|end|>" }}
"""
_BUILTIN_RESULT = """\
        {%- if builtin_tools and last_tool_call.name.split(".")[0] in builtin_tools %}
        {{- "<|start|>" + last_tool_call.name + " to=assistant<|channel|>commentary<|message|>" }}
        {{- message.content + "<|end|>" }}
        {%- else %}
""" + _RESULT_LINES + """\
        {%- endif %}
"""
_TEMPLATE_PATCHES = ((_CALL_LINES, _BUILTIN_CALL), (_RESULT_LINES, _BUILTIN_RESULT))


@dataclass
class _Point:
    """A point where a parse may resume (see ``HarmonyFormat.parse``)."""

    offset: int
    calls: int  # calls before it
    content: int  # content parts before it
    analysis: int  # analysis parts before it
    inside: tuple[str, str] | None = None  # the body it lies inside: channel, the body's text before it
    goes_on: bool = False  # that body is the one the parse resumed inside


def _text(parts: list[str], before: bool, rest: tuple[str, str] | None, channel: str) -> str:
    """One channel's text: its parts stripped and joined by a blank line. In a resumed parse
    (see ``Settled``), after text that is not blank (``before``), with a blank line ahead;
    when it resumed inside a body of this channel (``rest``), that body's text goes on the
    text before it."""
    joined = _join(parts)
    if rest is not None and rest[0] == channel:
        head = rest[1].rstrip()
        return head + ("\n\n" + joined if joined else "")
    return "\n\n" + joined if before and joined else joined


# -- the parser's pieces -------------------------------------------------------------------------

@dataclass
class _Header:
    role: str
    channel: str | None
    recipient: str | None  # a tool, never "assistant" or "user"
    body_start: int
    dropped: bool = False  # a broken header that named a recipient: neither text nor a call


def _read_header(text: str, pos: int, partial: bool) -> _Header | None:
    """The header of the message at ``pos``; None when it is still arriving (or, when final,
    was cut off: what it would have been is unknown)."""
    explicit = text.startswith(START, pos)
    hs = pos + len(START) if explicit else pos
    if not explicit:
        rest = text[pos:pos + _LONGEST]
        if not any(rest.startswith(o) for o in HEADER_OPENINGS):
            if any(o.startswith(rest) for o in HEADER_OPENINGS) and partial:
                return None
            return _Header("assistant", None, None, pos)  # plain text, no header at all
    kind, he = _header_end(text, hs)
    if kind == "pending":
        return None
    header = text[hs:he]
    role = _WORD.match(header).group() if explicit else "assistant"  # type: ignore[union-attr]
    c = header.find(CHANNEL)
    channel = _WORD.match(header, c + len(CHANNEL)).group() if c >= 0 else None  # type: ignore[union-attr]
    m = _RECIPIENT.search(header, len(role) if explicit else 0)
    recipient = m.group(1) if m else None
    if recipient is not None and recipient.startswith("functions."):
        recipient = recipient[len("functions."):]
    if recipient in _NOT_TOOLS or recipient == "":
        recipient = None
    if kind == "complete":
        return _Header(role, channel, recipient, he + len(MESSAGE))
    # broken: no <|message|>. Keep the channel, read what follows its name as the body.
    start = c + len(CHANNEL) + len(channel or "") if c >= 0 else (len(role) if explicit else 0)
    if header[start:start + 1] == " ":
        start += 1
    return _Header(role, channel, None, hs + start, dropped=recipient is not None)


def _header_run(text: str, pos: int) -> Run | None:
    """The run (see ``Run``) of a partial parse that ends in the header at ``pos``, once it is
    known to be one: nothing changes until what ends it (``_header_end``)."""
    explicit = text.startswith(START, pos)
    hs = pos + len(START) if explicit else pos
    if not explicit and not any(text.startswith(o, pos) for o in HEADER_OPENINGS):
        return None
    kind, _ = _header_end(text, hs)
    room = hs + MAX_HEADER + _LONGEST - 2 - len(text)  # then the header counts as broken
    return Run("silent", _HEADER_ENDS, stops="\n", room=room) if kind == "pending" and room > 0 else None


_HEADER_ENDS = (MESSAGE, END, CALL, RETURN, START)


def _header_end(text: str, hs: int) -> tuple[str, int]:
    """Where the header starting at ``hs`` ends: ("complete", index of <|message|>), ("broken",
    index of what cut it), or ("pending", -1). Each answer stays true as the text grows."""
    limit = hs + MAX_HEADER
    best, kind = -1, "pending"
    for marker in _HEADER_ENDS:
        i = text.find(marker, hs, limit + len(marker) - 1)
        if i >= 0 and (best < 0 or i < best):
            best, kind = i, "complete" if marker == MESSAGE else "broken"
    nl = text.find("\n", hs, limit)
    if nl >= 0 and (best < 0 or nl < best):
        best, kind = nl, "broken"
    if best < 0 and len(text) >= limit + _LONGEST - 1:
        best, kind = limit, "broken"
    return kind, best


def _read_body(text: str, bs: int, partial: bool) -> tuple[str, int, bool]:
    """(body, where the next message starts, whether a marker closed it)."""
    best, marker = find_first(text, BODY_ENDS, bs)
    if best < 0:
        body = text[bs:]
        if partial:
            body = body[: len(body) - held_any(body, BODY_ENDS)]
        return body, len(text), False
    nxt = best + len(marker) if marker in (END, CALL, RETURN) else best
    return text[bs:best], nxt, True


def _call(name: str, body: str, done: bool, closed: bool) -> ParsedCall:
    if not closed:
        body = body[: len(body) - held_any(body, BODY_ENDS)]  # a marker may be arriving, even in a final parse
    if name == "python":  # the body is code: arguments {"code": "..."} built as it streams
        code = json.dumps(body.strip(), ensure_ascii=False)[1:-1]
        return ParsedCall(name, '{"code": "' + code + ('"}' if done else ""), done)
    i = skip_ws(body, 0)
    if i < len(body) and body[i] == "{":
        end, _ = value_end(body, i)
        arguments = body[i:end] if end is not None else body[i:]
    else:
        arguments = body.strip()
        if closed and not arguments:
            arguments = "{}"
    return ParsedCall(name, arguments, done)


def _args_run(name: str, body: str) -> Run | None:
    """The run (see ``Run``) of a call whose body, JSON arguments, is still arriving."""
    i = skip_ws(body, 0)
    if name == "python" or i >= len(body) or body[i] != "{":
        return None
    return json_args(open_json(body, i), BODY_ENDS)


def _join(parts: list[str]) -> str:
    return "\n\n".join(p for p in (part.strip() for part in parts) if p)


def _take_result(results: list[Message], call_id: str, ids: set[str]) -> Message | None:
    """The result of one call of a batch: the one with its id, else the first whose id names
    no call of the batch (results in call order)."""
    for j, r in enumerate(results):
        if r.tool_call_id == call_id:
            return results.pop(j)
    for j, r in enumerate(results):
        if r.tool_call_id not in ids:
            return results.pop(j)
    return None


# -- openai-harmony, offline ---------------------------------------------------------------------

#: sha256 of o200k_base.tiktoken (the BPE ranks under gpt-oss's o200k_harmony)
O200K_BASE_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"


def tiktoken_dir() -> Path:
    """``${MIDTIER_CACHE:-~/.cache/midtier}/tiktoken``, holding a verified o200k_base.tiktoken.

    openai-harmony downloads the BPE file unless ``TIKTOKEN_ENCODINGS_BASE`` names a folder
    that has it. The MIT package ``bpe-openai`` ships it gzipped: it is unpacked here once
    (atomically), its hash checked every time this runs. Never downloads.
    """
    root = Path(os.environ.get("MIDTIER_CACHE") or Path.home() / ".cache" / "midtier").expanduser()
    folder = root / "tiktoken"
    target = folder / "o200k_base.tiktoken"
    if target.is_file() and _sha256(target.read_bytes()) == O200K_BASE_SHA256:
        return folder
    data = gzip.decompress(_bpe_openai_file("o200k_base.tiktoken.gz").read_bytes())
    digest = _sha256(data)
    if digest != O200K_BASE_SHA256:
        raise RuntimeError(f"bpe-openai's o200k_base.tiktoken has sha256 {digest}, expected {O200K_BASE_SHA256}")
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".o200k_base.")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, target)
    return folder


def _bpe_openai_file(name: str) -> Path:
    """A data file of the installed ``bpe-openai``, found without importing it (its import
    loads a tokenizer)."""
    spec = importlib.util.find_spec("bpe_openai")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the package bpe-openai is not installed: it ships the o200k_base BPE file")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / name


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@cache
def load_encoding() -> Any:
    """openai-harmony's ``HarmonyGptOss`` encoding (its renderer, parser and tokenizer), loaded
    from the local BPE file: ``TIKTOKEN_ENCODINGS_BASE`` is pointed at ``tiktoken_dir()``."""
    os.environ["TIKTOKEN_ENCODINGS_BASE"] = str(tiktoken_dir())
    import openai_harmony

    return openai_harmony.load_harmony_encoding(openai_harmony.HarmonyEncodingName.HARMONY_GPT_OSS)


__all__ = ["HarmonyFormat", "load_encoding", "tiktoken_dir"]
