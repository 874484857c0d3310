"""Raw completion pieces -> legacy Completions: streamed chunks, or the one non-streamed object.

The non-streamed object is the fold of the chunks (texts, logprobs and token ids joined),
so streaming and not streaming give the same result.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from midtier.core.messages import Usage, new_id
from midtier.engines.base import TokenLogprob
from midtier.loop.completion import Piece
from midtier.streaming.chat import usage_dict


@dataclass
class _Choice:
    text: str = ""
    finish_reason: str | None = None
    logprobs: dict[str, list[Any]] | None = None
    token_ids: list[int] = field(default_factory=list)
    prompt_token_ids: list[int] | None = None
    started: bool = False  # its first chunk (with prompt_token_ids) was made


@dataclass
class CompletionStream:
    """Folds the pieces of every choice into a completion and renders them as chunks on the way.

    ``token_str`` names a token in logprobs; ``token_ids`` adds vLLM's ``prompt_token_ids``
    (on a choice's first chunk) and ``token_ids`` (the output's) to each choice."""

    model: str
    token_str: Callable[[int], str]
    include_usage: bool = False
    token_ids: bool = False
    id: str = field(default_factory=lambda: new_id("cmpl-"))
    created: int = field(default_factory=lambda: int(time.time()))
    choices: dict[int, _Choice] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)

    def _logprobs(self, piece: Piece) -> dict[str, list[Any]]:
        lps: list[TokenLogprob | None] = list(piece.logprobs or [])
        tops: list[dict[str, float] | None] = []
        for lp in lps:
            if lp is None:
                tops.append(None)
                continue
            top: dict[str, float] = {}
            for token, logprob in (*lp.top, (lp.token, lp.logprob)):
                top.setdefault(self.token_str(token), logprob)
            tops.append(top)
        return {"tokens": [self.token_str(t) for t in piece.tokens],
                "token_logprobs": [None if lp is None else lp.logprob for lp in lps],
                "top_logprobs": tops, "text_offset": list(piece.offsets)}

    def _choice(self, index: int, text: str, logprobs: dict[str, list[Any]] | None, finish: str | None,
                token_ids: list[int], prompt_token_ids: list[int] | None) -> dict[str, Any]:
        out: dict[str, Any] = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
        if self.token_ids:
            if prompt_token_ids is not None:
                out["prompt_token_ids"] = prompt_token_ids
            out["token_ids"] = token_ids
        return out

    def _object(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "system_fingerprint": None, "choices": choices}

    def start(self, index: int, prompt: list[int]) -> None:
        self.choices[index] = _Choice(prompt_token_ids=list(prompt))

    def feed(self, index: int, piece: Piece) -> dict[str, Any]:
        """The chunk for one piece of choice ``index`` (``start`` it first)."""
        choice = self.choices[index]
        logprobs = self._logprobs(piece) if piece.logprobs is not None else None
        if logprobs is not None:
            if choice.logprobs is None:
                choice.logprobs = {k: [] for k in logprobs}
            for key, values in logprobs.items():
                choice.logprobs[key] += values
        choice.text += piece.text
        out_ids = [] if piece.prompt else list(piece.tokens)
        choice.token_ids += out_ids
        if piece.finish is not None:
            choice.finish_reason = piece.finish
        if piece.usage is not None:
            self.usage = Usage(self.usage.prompt_tokens + piece.usage.prompt_tokens,
                               self.usage.completion_tokens + piece.usage.completion_tokens,
                               self.usage.cached_tokens + piece.usage.cached_tokens)
        first = None if choice.started else choice.prompt_token_ids
        choice.started = True
        chunk = self._object([self._choice(index, piece.text, logprobs, piece.finish, out_ids, first)])
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def usage_chunk(self) -> dict[str, Any] | None:
        """The last chunk, with the usage of every choice, when the request asked for it."""
        if not self.include_usage:
            return None
        return {**self._object([]), "usage": usage_dict(self.usage)}

    def completion(self) -> dict[str, Any]:
        """The non-streamed ``text_completion`` object."""
        choices = [self._choice(i, c.text, c.logprobs, c.finish_reason, c.token_ids, c.prompt_token_ids)
                   for i, c in sorted(self.choices.items())]
        return {**self._object(choices), "usage": usage_dict(self.usage)}
