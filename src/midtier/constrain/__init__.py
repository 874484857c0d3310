"""Layer 3: constrained decoding with llguidance. The only package that imports it.

Formats write Lark grammars (llguidance's dialect, with inline ``%json`` schemas and
special tokens as ``<name>``); this package compiles them for one tokenizer and applies
them to logits at every step.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import llguidance
import numpy as np

from midtier.core.errors import InvalidGrammar
from midtier.core.messages import ToolSpec
from midtier.engines.base import TokenizerSpec
from midtier.formats.base import Markers, custom_grammar_name

log = logging.getLogger(__name__)


class _Vocab:
    """The object shape ``llguidance.TokenizerWrapper`` reads a tokenizer from."""

    def __init__(self, spec: TokenizerSpec) -> None:
        self.eos_token_id = spec.eos_ids[0]
        self.bos_token_id = spec.bos_id
        self.tokens = spec.tokens
        self.special_token_ids = spec.special_ids
        self._encode = spec.encode

    def __call__(self, data: bytes) -> list[int]:
        return self._encode(data)


class Constrainer:
    """Compiles grammars for one tokenizer (building it takes about a second: keep one per model)."""

    def __init__(self, spec: TokenizerSpec) -> None:
        self.n_vocab = spec.n_vocab
        self.tokenizer = llguidance.LLTokenizer(
            llguidance.TokenizerWrapper(_Vocab(spec)), n_vocab=spec.n_vocab, eos_token=list(spec.eos_ids))
        self.markers = Markers(ids={spec.tokens[i][1:].decode("utf-8", "replace"): i for i in spec.special_ids})

    def validate(self, lark: str, tools: list[ToolSpec] | None = None, *, param: str | None = None) -> None:
        """Raise InvalidGrammar with llguidance's message if the grammar does not compile."""
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(
            _top_level(lark, tools or []), self.tokenizer)
        if is_error:
            raise InvalidGrammar(f"invalid grammar: {messages[0] if messages else 'unknown error'}", param=param)

    def validate_custom(self, tool: ToolSpec, param: str | None = None) -> None:
        """A custom tool's own grammar (Lark or regex) must compile on its own."""
        if tool.grammar is not None:
            self.validate(f"start: @{custom_grammar_name(tool)}\n", [tool], param=param)

    def start(self, lark: str, tools: list[ToolSpec] | None = None) -> GrammarConstraint:
        """A constraint for one request; ``tools``' custom grammars are added as named
        subgrammars the format's grammar refers to (``@custom_NAME``)."""
        matcher = llguidance.LLMatcher(self.tokenizer, _top_level(lark, tools or []), log_level=0)
        if matcher.is_error():
            raise InvalidGrammar(f"invalid grammar: {matcher.get_error()}")
        return GrammarConstraint(matcher, self.n_vocab)

    def accepts(self, lark: str, tokens: list[int], tools: list[ToolSpec] | None = None) -> bool:
        """Whether the grammar accepts these tokens as a complete output."""
        c = self.start(lark, tools)
        return bool(c.matcher.consume_tokens(tokens)) and c.is_accepting()


def output_grammar(kind: str, spec: Any) -> str:
    """A Lark grammar for a whole output given as vLLM's ``structured_outputs`` do: ``grammar``
    (Lark text, as is), ``regex`` (a pattern), ``json`` (a JSON schema) or ``choice`` (strings)."""
    if kind == "grammar":
        return str(spec)
    if kind == "regex":
        return f"start: /{llguidance.regex_to_lark(spec)}/\n"
    if kind == "json":
        return "start: %json " + json.dumps(spec) + "\n"
    if kind == "choice":
        return "start: " + " | ".join(json.dumps(c) for c in spec) + "\n"
    raise ValueError(f"unknown output grammar kind {kind!r}")


def _top_level(lark: str, tools: list[ToolSpec]) -> str:
    """The grammar llguidance takes: the format's Lark grammar first, then one named
    subgrammar per custom tool that has its own (a regex becomes a one-rule Lark grammar)."""
    grammars: list[dict[str, Any]] = [{"lark_grammar": lark}]
    for tool in tools:
        if tool.kind != "custom" or tool.grammar is None:
            continue
        syntax, definition = tool.grammar
        body = definition if syntax == "lark" else f"start: /{llguidance.regex_to_lark(definition)}/\n"
        grammars.append({"name": custom_grammar_name(tool), "lark_grammar": body})
    return json.dumps({"grammars": grammars})


class GrammarConstraint:
    """One request's grammar state; implements ``engines.base.LogitsConstraint``."""

    def __init__(self, matcher: Any, n_vocab: int) -> None:
        self.matcher = matcher
        self.n_vocab = n_vocab

    def apply(self, logits: np.ndarray) -> None:
        mask = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
        allowed = np.unpackbits(mask, bitorder="little")[: logits.shape[0]]
        if allowed.shape[0] < logits.shape[0]:
            allowed = np.concatenate([allowed, np.zeros(logits.shape[0] - allowed.shape[0], np.uint8)])
        logits[allowed == 0] = -np.inf

    def commit(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            log.error("constraint rejected token %d: %s", token, self.matcher.get_error())

    def is_finished(self) -> bool:
        return bool(self.matcher.is_stopped())

    def is_accepting(self) -> bool:
        return bool(self.matcher.is_accepting())


__all__ = ["Constrainer", "GrammarConstraint", "output_grammar"]
