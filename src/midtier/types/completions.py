"""Validation of legacy Completions requests and of the token routes (``/tokenize``, ``/detokenize``).

Responses use the official ``openai`` types' shapes (``openai.types.Completion``). Beyond
OpenAI's fields, a request may carry vLLM's extensions of the same names: a constraint in
``structured_outputs``, and the token ids of the output in ``return_token_ids``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from midtier.types.chat import StreamOptions


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StructuredOutputs(_Strict):
    """vLLM's ``structured_outputs``: exactly one of these constrains the whole output."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    grammar: str | None = None  # a Lark grammar, llguidance's dialect
    regex: str | None = None
    json_: dict[str, Any] | str | None = Field(default=None, alias="json")  # a JSON schema (or its text)
    choice: list[str] | None = None


Prompt = str | list[str] | list[int] | list[list[int]]


class CompletionRequest(_Strict):
    model: str
    prompt: Prompt
    best_of: int | None = Field(default=None, ge=1)
    echo: bool | None = None
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, int] | None = None
    logprobs: int | None = Field(default=None, ge=0, le=20)
    max_tokens: int | None = Field(default=None, ge=0)
    n: int | None = Field(default=None, ge=1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    suffix: str | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    user: str | None = None
    # vLLM's extensions
    structured_outputs: StructuredOutputs | None = None
    return_token_ids: bool | None = None
    return_tokens_as_token_ids: bool | None = None


class TokenizeTextRequest(_Strict):
    model: str
    prompt: str
    return_token_strs: bool | None = None


class DetokenizeRequest(_Strict):
    model: str
    tokens: list[int]
