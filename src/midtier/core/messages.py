"""The conversation model: what both APIs are translated into before any layer below sees them."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "developer", "user", "assistant", "tool"]


def new_id(prefix: str, nbytes: int = 12) -> str:
    """A random id in OpenAI's shape: ``call_…``, ``chatcmpl-…``, ``resp_…``."""
    return prefix + secrets.token_hex(nbytes)


@dataclass
class ToolCall:
    """A call the model made; ``arguments`` is the JSON text, exactly as on the wire."""

    id: str
    name: str
    arguments: str
    type: Literal["function", "custom"] = "function"

    def arguments_object(self) -> Any:
        """The arguments as a value (what chat templates expect); the raw string if not JSON."""
        try:
            return json.loads(self.arguments)
        except (TypeError, ValueError):
            return self.arguments


@dataclass
class Message:
    role: Role
    content: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str | None = None
    name: str | None = None
    reasoning: str | None = None


@dataclass(frozen=True)
class ToolSpec:
    """A tool the model may call. ``parameters`` is a JSON schema (functions only)."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool = False
    kind: Literal["function", "custom"] = "function"
    # custom tools: None (free text) or (syntax, definition) with syntax "lark" or "regex"
    grammar: tuple[str, str] | None = None
    # whether parallel calls may be asked of the model as a list of values (loop/fanout.py); a
    # search tool says no: a small model fills a list with synonyms of one query
    fan_out: bool = True
    # a built-in tool in the form a model family was trained on (gpt-oss's "browser", "python"):
    # the template shows the namespace itself, not a function, and the model calls it by ``name``
    # as its full recipient (``browser.search``); None for every other tool
    namespace: str | None = None

    def to_openai(self) -> dict[str, Any]:
        """The Chat Completions shape chat templates are written for. A custom tool shows as a
        function of one string, its raw input."""
        if self.kind == "custom":
            how = "free text" if self.grammar is None else f"text matching this {self.grammar[0]} grammar:\n{self.grammar[1]}"
            fn: dict[str, Any] = {
                "name": self.name, "description": f"{self.description}\nIts input is {how}".strip(),
                "parameters": {"type": "object", "properties": {"input": {"type": "string"}}, "required": ["input"]}}
        else:
            fn = {"name": self.name, "description": self.description, "parameters": self.parameters}
        return {"type": "function", "function": fn}


@dataclass(frozen=True)
class ToolChoice:
    """``tool_choice`` and ``parallel_tool_calls`` reduced to what constrains generation.

    ``mode`` none: no call possible; auto: text or calls; required: at least one call.
    ``allowed``: the tool names that may be called (None: all). A named tool is
    ``required`` with one allowed name.
    """

    mode: Literal["none", "auto", "required"] = "auto"
    allowed: tuple[str, ...] | None = None
    parallel: bool = True

    def callable_tools(self, tools: list[ToolSpec]) -> list[ToolSpec]:
        if self.mode == "none":
            return []
        if self.allowed is None:
            return list(tools)
        return [t for t in tools if t.name in self.allowed]


@dataclass(frozen=True)
class ResponseFormat:
    type: Literal["text", "json_object", "json_schema"] = "text"
    schema: dict[str, Any] | None = None
    strict: bool = False
    name: str | None = None


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Conversation:
    """One generation request, API-independent."""

    messages: list[Message]
    tools: list[ToolSpec] = field(default_factory=list)
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    response_format: ResponseFormat = field(default_factory=ResponseFormat)
    sampling: Sampling = field(default_factory=Sampling)
    template_kwargs: dict[str, Any] = field(default_factory=dict)
