"""A model as served: what the APIs (and the built-in tool loop) need of a model, whatever runs it.

``ServedModel`` (an embedded token engine: render, constrain, generate, parse) and
``UpstreamModel`` (an OpenAI-compatible server) both satisfy ``Served``; the server holds
its models by this protocol only, so a Chat Completions or Responses request (and each
turn of the tool loop) runs through the same code for either.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol, runtime_checkable

from midtier.core.events import StreamEvent
from midtier.core.messages import Conversation, ToolSpec
from midtier.loop.turn import TurnTrace


@runtime_checkable
class Served(Protocol):
    name: str

    @property
    def context_length(self) -> int | None:
        """Tokens of prompt plus output the model takes; None when not known (an upstream not configured with it)."""
        ...

    @property
    def builtin_namespaces(self) -> frozenset[str]:
        """The built-in tool namespaces the model was trained on (``Format.builtin_namespaces``):
        the loop shows a built-in tool in that form when it has one; empty when not known."""
        ...

    def stream(self, conv: Conversation, trace: TurnTrace | None = None) -> AsyncGenerator[StreamEvent, None]:
        """One model turn as internal events, ending with ``Finish``. Closing it stops generation.
        An error before the first event is the request's error (a plain HTTP error)."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` (exact for a local model, estimated for an upstream)."""
        ...

    def prompt_tokens(self, conv: Conversation) -> int:
        """Tokens of the prompt ``conv`` makes (for ``truncation: auto``)."""
        ...

    def validate_custom(self, tool: ToolSpec, param: str | None = None) -> None:
        """Raise ``InvalidGrammar`` if a custom tool's grammar does not compile."""
        ...
