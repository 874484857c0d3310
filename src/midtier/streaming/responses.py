"""Internal events -> the Responses API: its stream events, and the one ``Response`` object.

``ResponseStream`` folds a turn's events into output items and renders OpenAI's event
sequence on the way (``sequence_number`` from 0, +1 per event). A non-streamed request
folds the same events with the same object and discards the events, so the
``response.completed`` event carries exactly the object a non-streamed request returns.

Output items open one at a time: an event of another kind (text after reasoning, a call
after text) closes the open item and opens the next, so every item's ``done`` events come
before the next item's ``added``. ``replay`` renders a finished (stored) response as the
same kind of sequence, for ``GET /v1/responses/{id}?stream=true`` when no recorded events
are at hand.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from midtier.core.events import (
    Finish,
    ItemDone,
    ItemProgress,
    ItemStart,
    ReasoningDelta,
    StreamEvent,
    TextAnnotation,
    TextDelta,
    ToolCallArgsDelta,
    ToolCallDone,
    ToolCallStart,
)
from midtier.core.messages import Usage, new_id

log = logging.getLogger(__name__)

Kind = Literal["message", "reasoning", "function_call", "custom_tool_call"]
TERMINAL_STATUSES = ("completed", "incomplete", "failed", "cancelled")
_PREFIX = {"message": "msg_", "reasoning": "rs_", "function_call": "fc_", "custom_tool_call": "ctc_"}
# per kind: the delta and done event types, and the field the done event carries the whole text in
_TEXT_EVENTS = {
    "message": ("response.output_text.delta", "response.output_text.done", "text"),
    "reasoning": ("response.reasoning_text.delta", "response.reasoning_text.done", "text"),
    "function_call": ("response.function_call_arguments.delta", "response.function_call_arguments.done",
                      "arguments"),
    "custom_tool_call": ("response.custom_tool_call_input.delta", "response.custom_tool_call_input.done", "input"),
}


def usage_dict(usage: Usage, reasoning_tokens: int = 0) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": min(reasoning_tokens, usage.completion_tokens)},
        "total_tokens": usage.total_tokens,
    }


def _text_part(kind: Kind, text: str) -> dict[str, Any]:
    if kind == "message":
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {"type": "reasoning_text", "text": text}


@dataclass
class _Open:
    """The output item being written: its index, kind and text so far."""

    index: int
    kind: Kind
    text: str = ""
    call: int | None = None  # the turn's call index, for calls


class ResponseStream:
    """Folds internal events into a ``Response`` object; ``feed`` returns the stream events."""

    def __init__(self, response: dict[str, Any], count_tokens: Callable[[str], int] | None = None) -> None:
        # ``response``: the Response object to fill (id, model, the request's echoed parameters);
        # its status, output, usage... are this class's to set
        self.response = response
        # usage is absent (not null) until the turn ends: the spec's Response has no null usage
        self.response.pop("usage", None)
        self.response.update(output=[], error=None, incomplete_details=None, completed_at=None)
        self.count_tokens = count_tokens
        self.sequence_number = 0
        self._open: _Open | None = None
        self._calls: dict[int, int] = {}  # a call's index in the turn -> its output index
        self._items: dict[str, int] = {}  # a built-in tool's item id -> its output index
        self._reasoning = ""

    # -- events -------------------------------------------------------------------------------------
    def _event(self, type_: str, **fields: Any) -> dict[str, Any]:
        event = {"type": type_, **fields, "sequence_number": self.sequence_number}
        self.sequence_number += 1
        return event

    def _lifecycle(self, type_: str) -> dict[str, Any]:
        return self._event(type_, response=self.snapshot())

    def snapshot(self) -> dict[str, Any]:
        """The Response object as it stands (a copy)."""
        return copy.deepcopy(self.response)

    @property
    def status(self) -> str:
        return str(self.response.get("status"))

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def created(self, status: Literal["queued", "in_progress"] = "in_progress") -> list[dict[str, Any]]:
        self.response["status"] = status
        return [self._lifecycle("response.created")]

    def in_progress(self) -> list[dict[str, Any]]:
        self.response["status"] = "in_progress"
        return [self._lifecycle("response.in_progress")]

    # -- output items -------------------------------------------------------------------------------
    @property
    def output(self) -> list[dict[str, Any]]:
        output: list[dict[str, Any]] = self.response["output"]
        return output

    def _add(self, kind: Kind, item: dict[str, Any], call: int | None = None) -> list[dict[str, Any]]:
        out = self._close("completed")
        index = len(self.output)
        self.output.append(item)
        self._open = _Open(index, kind, call=call)
        out.append(self._event("response.output_item.added", output_index=index, item=copy.deepcopy(item)))
        if kind in ("message", "reasoning"):
            item["content"].append(_text_part(kind, ""))
            out.append(self._event("response.content_part.added", item_id=item["id"], output_index=index,
                                   content_index=0, part=_text_part(kind, "")))
        return out

    def _open_item(self, kind: Kind, call: ToolCallStart | None = None) -> list[dict[str, Any]]:
        item_id = new_id(_PREFIX[kind])
        if kind == "message":
            item = {"id": item_id, "type": "message", "status": "in_progress", "content": [], "role": "assistant"}
        elif kind == "reasoning":
            item = {"id": item_id, "type": "reasoning", "summary": [], "content": []}
        elif kind == "function_call":
            assert call is not None
            item = {"id": item_id, "type": "function_call", "status": "in_progress", "arguments": "",
                    "call_id": call.id, "name": call.name}
        else:
            assert call is not None
            item = {"id": item_id, "type": "custom_tool_call", "call_id": call.id, "name": call.name, "input": ""}
        return self._add(kind, item, call.index if call is not None else None)

    def _delta(self, delta: str) -> list[dict[str, Any]]:
        assert self._open is not None
        o = self._open
        o.text += delta
        item = self.output[o.index]
        delta_type, _, field = _TEXT_EVENTS[o.kind]
        fields: dict[str, Any] = {"item_id": item["id"], "output_index": o.index}
        if o.kind in ("message", "reasoning"):
            item["content"][0]["text"] = o.text
            fields["content_index"] = 0
        else:
            item[field] = o.text
        if o.kind == "message":
            fields["logprobs"] = []
        return [self._event(delta_type, **fields, delta=delta)]

    def _close(self, status: Literal["completed", "incomplete"]) -> list[dict[str, Any]]:
        """The done events of the open item, if any."""
        o, self._open = self._open, None
        if o is None:
            return []
        item = self.output[o.index]
        _, done_type, field = _TEXT_EVENTS[o.kind]
        ids = {"item_id": item["id"], "output_index": o.index}
        out = []
        if o.kind in ("message", "reasoning"):
            extra: dict[str, Any] = {"logprobs": []} if o.kind == "message" else {}
            out.append(self._event(done_type, **ids, content_index=0, text=o.text, **extra))
            out.append(self._event("response.content_part.done", **ids, content_index=0,
                                   part=copy.deepcopy(item["content"][0])))
        elif o.kind == "function_call":
            out.append(self._event(done_type, **ids, name=item["name"], arguments=o.text))
        else:
            out.append(self._event(done_type, **ids, input=o.text))
        if o.kind in ("message", "function_call"):
            item["status"] = status
        out.append(self._event("response.output_item.done", output_index=o.index, item=copy.deepcopy(item)))
        return out

    # -- the fold -----------------------------------------------------------------------------------
    def feed(self, event: StreamEvent) -> list[dict[str, Any]]:
        """The stream events for one internal event."""
        o = self._open
        if isinstance(event, TextDelta):
            out = [] if o is not None and o.kind == "message" else self._open_item("message")
            return out + self._delta(event.text)
        if isinstance(event, ReasoningDelta):
            self._reasoning += event.text
            out = [] if o is not None and o.kind == "reasoning" else self._open_item("reasoning")
            return out + self._delta(event.text)
        if isinstance(event, ToolCallStart):
            out = self._open_item("custom_tool_call" if event.type == "custom" else "function_call", event)
            self._calls[event.index] = len(self.output) - 1
            return out
        if isinstance(event, ToolCallArgsDelta):
            if o is None or o.call != event.index:
                log.warning("arguments for call %d after its item closed: dropped", event.index)
                return []
            return self._delta(event.delta)
        if isinstance(event, ToolCallDone):
            if o is not None and o.call == event.index and event.arguments != o.text:
                log.warning("call %d: final arguments differ from their deltas", event.index)
            return []  # the item closes when the next one opens, or at the end
        if isinstance(event, Finish):
            return self.finish(event)
        if isinstance(event, ItemStart):
            out = self._close("completed")
            self._items[event.item["id"]] = len(self.output)
            self.output.append(copy.deepcopy(event.item))
            return [*out, self._event("response.output_item.added", output_index=len(self.output) - 1,
                                      item=copy.deepcopy(event.item))]
        if isinstance(event, ItemProgress):
            return [self._event(event.type, item_id=event.item_id, output_index=self._items[event.item_id],
                                **event.fields)]
        if isinstance(event, ItemDone):
            out = []
            if event.item["id"] not in self._items:
                out = self.feed(ItemStart(event.item))
            index = self._items[event.item["id"]]
            self.output[index] = copy.deepcopy(event.item)
            return [*out, self._event("response.output_item.done", output_index=index, item=copy.deepcopy(event.item))]
        if isinstance(event, TextAnnotation):
            return self._annotate(event.annotation)
        raise TypeError(f"unknown event {event!r}")

    def _annotate(self, annotation: dict[str, Any]) -> list[dict[str, Any]]:
        """A citation on the message being written, or the last one written."""
        index = next((i for i in range(len(self.output) - 1, -1, -1) if self.output[i]["type"] == "message"), None)
        if index is None:
            log.warning("a citation with no message to carry it: dropped")
            return []
        item = self.output[index]
        annotations = item["content"][0].setdefault("annotations", [])
        annotations.append(copy.deepcopy(annotation))
        return [self._event("response.output_text.annotation.added", item_id=item["id"], output_index=index,
                            content_index=0, annotation_index=len(annotations) - 1, annotation=copy.deepcopy(annotation))]

    def finish(self, event: Finish) -> list[dict[str, Any]]:
        out = self._close("incomplete" if event.reason == "length" else "completed")
        reasoning = self.count_tokens(self._reasoning) if self.count_tokens and self._reasoning else 0
        self.response["usage"] = usage_dict(event.usage, reasoning)
        if event.reason == "cancelled":
            self.response["status"] = "cancelled"
            return out
        if event.reason in ("length", "content_filter"):
            reason = "max_output_tokens" if event.reason == "length" else "content_filter"
            self.response.update(status="incomplete", incomplete_details={"reason": reason})
            return [*out, self._lifecycle("response.incomplete")]
        self.response.update(status="completed", completed_at=int(time.time()))
        return [*out, self._lifecycle("response.completed")]

    def fail(self, message: str, code: str = "server_error") -> list[dict[str, Any]]:
        out = self._close("incomplete")
        self.response.update(status="failed", error={"code": code, "message": message})
        return [*out, self._lifecycle("response.failed")]

    def cancel(self) -> list[dict[str, Any]]:
        """Stop here: the open item closes as incomplete; a cancelled response has no terminal event."""
        out = self._close("incomplete")
        self.response["status"] = "cancelled"
        return out

    def error(self, message: str, code: str | None = None, param: str | None = None) -> list[dict[str, Any]]:
        """An ``error`` event: a failure that is not the response's own (it has no status to carry it)."""
        return [self._event("error", code=code, message=message, param=param)]


def replay(response: dict[str, Any]) -> list[dict[str, Any]]:
    """The stream events of a stored response, rebuilt: one delta per item, and the stored
    object itself in the terminal event, so a client folding them gets exactly that object."""
    skeleton = {k: copy.deepcopy(v) for k, v in response.items()
                if k not in ("output", "usage", "error", "incomplete_details", "completed_at")}
    state = ResponseStream(skeleton)
    status = response.get("status")
    events = state.created("queued" if status == "queued" else "in_progress")
    if status != "queued":
        events += state.in_progress()
    for item in response.get("output", []):
        kind: Kind = item["type"]
        if kind not in _PREFIX:  # a built-in tool's item: added and done, as it ended
            events += state.feed(ItemDone(copy.deepcopy(item)))
            continue
        empty = {**copy.deepcopy(item), "content": []} if kind in ("message", "reasoning") else copy.deepcopy(item)
        if kind == "function_call":
            empty.update(arguments="", status="in_progress")
        elif kind == "custom_tool_call":
            empty["input"] = ""
        elif kind == "message":
            empty["status"] = "in_progress"
        events += state._add(kind, empty)
        text = _item_text(item)
        if text:
            events += state._delta(text)
        if kind == "message":
            for annotation in (item.get("content") or [{}])[0].get("annotations") or []:
                events += state._annotate(annotation)
        events += state._close(item.get("status", "completed"))
    if status in ("completed", "incomplete", "failed"):
        state.response = copy.deepcopy(response)
        events.append(state._lifecycle(f"response.{status}"))
    return events


def _item_text(item: dict[str, Any]) -> str:
    if item["type"] == "function_call":
        return str(item["arguments"])
    if item["type"] == "custom_tool_call":
        return str(item["input"])
    return "".join(str(part.get("text", "")) for part in item.get("content") or [])
