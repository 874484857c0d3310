"""The Engine protocol: one async generator of token chunks.

An engine turns prompt token ids into generated tokens. Everything above it (templates,
constraints, parsing) is shared; an engine only tokenizes, decodes and samples, applying
the constraint it is handed to the logits of every step.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from midtier.core.messages import Sampling


@dataclass(frozen=True)
class TokenizerSpec:
    """What a constraint library needs to know about a tokenizer."""

    tokens: list[bytes]  # by id; special tokens carry a leading b"\xff"
    special_ids: list[int]
    eos_ids: list[int]
    bos_id: int | None
    encode: Callable[[bytes], list[int]]  # plain text, no special-token parsing
    n_vocab: int  # the size of the logits vector (may exceed len(tokens))


class LogitsConstraint(Protocol):
    """A per-request constraint an engine applies at every step (see midtier.constrain)."""

    def apply(self, logits: np.ndarray) -> None:
        """Set the logits of forbidden tokens to -inf, in place."""

    def commit(self, token: int) -> None:
        """Advance past the sampled token."""

    def is_finished(self) -> bool:
        """Nothing but end-of-sequence can follow."""


@dataclass(frozen=True)
class TokenLogprob:
    """A token's log-probability under the model's raw distribution (before penalties,
    constraint and temperature), and the ``top`` most likely tokens there, best first."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass
class GenChunk:
    """Tokens generated since the last chunk and their text."""

    token_ids: list[int]
    text: str
    finish: Literal["stop", "length"] | None = None
    prompt_tokens: int = 0  # set on the final chunk
    cached_tokens: int = 0  # prompt tokens served from the prefix cache
    completion_tokens: int = 0
    # with GenerateOptions.logprobs: one per token of ``token_ids``
    logprobs: list[TokenLogprob] | None = None
    # with GenerateOptions.prompt_logprobs, on the first chunk: one per prompt token, None for the first
    prompt_logprobs: list[TokenLogprob | None] | None = None


@dataclass
class GenerateOptions:
    sampling: Sampling = field(default_factory=Sampling)
    max_tokens: int = 1024  # 0 evaluates the prompt only
    constraint: LogitsConstraint | None = None
    logprobs: int | None = None  # None: none; N: each token's logprob and the N most likely tokens
    prompt_logprobs: bool = False  # the prompt tokens' logprobs too (with ``logprobs`` of them on top)
    # the Lark source of ``constraint``, for an engine that constrains elsewhere (engines.token
    # sends it to its upstream); engines that apply ``constraint`` themselves ignore it
    grammar: str | None = None


@runtime_checkable
class Engine(Protocol):
    name: str
    context_length: int
    chat_template: str | None
    bos_token: str
    eos_token: str

    def tokenize(self, text: str, *, special: bool = True) -> list[int]: ...

    def detokenize(self, ids: list[int]) -> str: ...

    def tokenizer_spec(self) -> TokenizerSpec: ...

    def generate(self, prompt: list[int], options: GenerateOptions) -> AsyncGenerator[GenChunk, None]:
        """Stream chunks; the last one has ``finish`` set. Closing the iterator cancels at once."""
        ...

    async def close(self) -> None: ...
