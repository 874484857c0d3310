"""The internal stream: what formats emit and what the APIs' streaming layers translate.

A generation is a sequence of events; its final result is their fold, so streamed and
non-streamed output are the same by construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from midtier.core.messages import Usage

FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "cancelled"]


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class ReasoningDelta:
    text: str


@dataclass(frozen=True)
class ToolCallStart:
    index: int
    id: str
    name: str
    type: Literal["function", "custom"] = "function"  # custom: the "arguments" are the raw input


@dataclass(frozen=True)
class ToolCallArgsDelta:
    index: int
    delta: str


@dataclass(frozen=True)
class ToolCallDone:
    index: int
    arguments: str


@dataclass(frozen=True)
class Finish:
    reason: FinishReason
    usage: Usage


# -- the server-side tool loop (Responses API only) -------------------------------------------------
@dataclass(frozen=True)
class ItemStart:
    """A built-in tool's output item opens (``item`` as it stands: id, type, status in_progress)."""

    item: dict[str, Any]


@dataclass(frozen=True)
class ItemProgress:
    """One of an open item's own stream events (``response.code_interpreter_call.interpreting``...):
    its type and fields but item_id, output_index and sequence_number."""

    item_id: str
    type: str
    fields: dict[str, Any]


@dataclass(frozen=True)
class ItemDone:
    """An item (opened by ``ItemStart``, or a whole new one) is final."""

    item: dict[str, Any]


@dataclass(frozen=True)
class TextAnnotation:
    """A citation on the text of the message being written (or the last one)."""

    annotation: dict[str, Any]


StreamEvent = (TextDelta | ReasoningDelta | ToolCallStart | ToolCallArgsDelta | ToolCallDone | Finish
               | ItemStart | ItemProgress | ItemDone | TextAnnotation)
