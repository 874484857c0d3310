"""Raw token access and a view of every layer.

- ``POST /v1/completions``: the legacy Completions API (prompts as text or token ids, echo,
  logprobs, stop, streaming), with vLLM's ``structured_outputs`` to constrain the output
  and ``return_token_ids`` to get the output's token ids;
- ``POST /tokenize`` and ``POST /detokenize``, shaped like vLLM's;
- ``POST /v1/chat/completions/render``: what a chat request turns into before generation
  (the prompt, its tokens, the format and the grammar), by the code path the turn uses.

Every handler goes through the served model and its engine, so an engine that cannot do
something (no local tokenizer) refuses it with its own error.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from midtier.constrain import output_grammar
from midtier.core.errors import ContextLengthExceeded, InvalidRequest
from midtier.core.messages import Sampling
from midtier.engines.base import GenerateOptions
from midtier.loop import ServedModel
from midtier.loop.completion import Piece, complete
from midtier.server.app import _sse_error, parse, read_json
from midtier.server.chat import check_schema, conversation_from_request
from midtier.server.sse import EventStreamResponse, run_unless_disconnected, sse_data
from midtier.streaming.completions import CompletionStream
from midtier.types.chat import ChatCompletionRequest
from midtier.types.completions import (
    CompletionRequest,
    DetokenizeRequest,
    StructuredOutputs,
    TokenizeTextRequest,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for legacy completions


@dataclass
class _Prompt:
    ids: list[int]
    text: str  # what echo shows: the prompt as written, or its token ids' text


def _local(request: Request, name: str, what: str) -> ServedModel:
    """The model ``name`` if midtier runs it (it has a tokenizer and a template here)."""
    model = request.app.state.models.get(name)
    if not isinstance(model, ServedModel):
        raise InvalidRequest(f"{what} is not supported for the model {name!r}: it runs on an upstream server",
                             param="model", code="unsupported_model")
    return model


# -- prompts ----------------------------------------------------------------------------------

def _vocab_size(model: ServedModel) -> int:
    spec = model.engine.tokenizer_spec()
    return min(len(spec.tokens), spec.n_vocab)


def _check_ids(model: ServedModel, ids: list[int], param: str) -> list[int]:
    if not ids:
        raise InvalidRequest("prompt must not be empty", param=param, code="empty_prompt")
    size = _vocab_size(model)
    for i, token in enumerate(ids):
        if not 0 <= token < size:
            raise InvalidRequest(f"token id {token} is out of this model's vocabulary (0 to {size - 1})",
                                 param=f"{param}[{i}]", code="invalid_token_id")
    return ids


def _text_prompt(model: ServedModel, text: str, param: str) -> _Prompt:
    """Text is tokenized as is, special tokens written out included; nothing is added (no BOS)."""
    if not text:
        raise InvalidRequest("prompt must not be empty", param=param, code="empty_prompt")
    return _Prompt(model.engine.tokenize(text, special=True), text)


def _prompts(model: ServedModel, prompt: Any) -> list[_Prompt]:
    if isinstance(prompt, str):
        prompts = [_text_prompt(model, prompt, "prompt")]
    elif not prompt:
        raise InvalidRequest("prompt must not be empty", param="prompt", code="empty_prompt")
    elif isinstance(prompt[0], int):
        prompts = [_Prompt(_check_ids(model, prompt, "prompt"), "")]
    elif isinstance(prompt[0], str):
        prompts = [_text_prompt(model, p, f"prompt[{i}]") for i, p in enumerate(prompt)]
    else:
        prompts = [_Prompt(_check_ids(model, p, f"prompt[{i}]"), "") for i, p in enumerate(prompt)]
    for i, p in enumerate(prompts):
        if len(p.ids) >= model.engine.context_length:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {model.engine.context_length} tokens, but the "
                f"prompt has {len(p.ids)} tokens.", param="prompt" if len(prompts) == 1 else f"prompt[{i}]")
        if not p.text:
            p.text = model.engine.detokenize(p.ids)
    return prompts


# -- constraints ------------------------------------------------------------------------------

def _grammar(model: ServedModel, so: StructuredOutputs | None) -> str | None:
    """The Lark grammar of ``structured_outputs`` (exactly one kind), checked to compile."""
    if so is None:
        return None
    given = {k: v for k, v in (("grammar", so.grammar), ("regex", so.regex), ("json", so.json_),
                               ("choice", so.choice)) if v is not None}
    if len(given) != 1:
        raise InvalidRequest("structured_outputs takes exactly one of grammar, regex, json and choice",
                             param="structured_outputs", code="invalid_value")
    (kind, spec), = given.items()
    param = f"structured_outputs.{kind}"
    if kind == "json":
        if isinstance(spec, str):
            try:
                spec = json.loads(spec)
            except ValueError:
                raise InvalidRequest("structured_outputs.json is not valid JSON", param=param,
                                     code="invalid_schema") from None
        check_schema(spec, param)
    if kind == "choice" and not spec:
        raise InvalidRequest("structured_outputs.choice needs at least one string", param=param,
                             code="invalid_value")
    lark = output_grammar(kind, spec)
    model.constrainer.validate(lark, param=param)
    return lark


def _refuse_unsupported(req: CompletionRequest) -> None:
    if (req.n or 1) > 1 or (req.best_of or 1) > 1:
        param = "n" if (req.n or 1) > 1 else "best_of"
        raise InvalidRequest(f"{param} > 1 is not supported: send the prompt once per completion wanted",
                             param=param, code="unsupported_value")
    if req.logit_bias:
        raise InvalidRequest("logit_bias is not supported", param="logit_bias", code="unsupported_parameter")
    if req.suffix:
        raise InvalidRequest("suffix (insertion) is not supported", param="suffix", code="unsupported_parameter")
    stop = [req.stop] if isinstance(req.stop, str) else req.stop or []
    if len(stop) > 4:
        raise InvalidRequest("stop takes at most 4 sequences", param="stop", code="invalid_value")


# -- the routes -------------------------------------------------------------------------------

async def create_completion(request: Request) -> Response | EventStreamResponse:
    req: CompletionRequest = parse(CompletionRequest, await read_json(request))
    model = _local(request, req.model, "/v1/completions")
    _refuse_unsupported(req)
    prompts = _prompts(model, req.prompt)
    grammar = _grammar(model, req.structured_outputs)
    include_usage = bool(req.stream and req.stream_options and req.stream_options.include_usage)
    as_ids = bool(req.return_tokens_as_token_ids)
    state = CompletionStream(req.model, lambda t: f"token_id:{t}" if as_ids else model.engine.detokenize([t]),
                             include_usage=include_usage, token_ids=bool(req.return_token_ids))
    for i, p in enumerate(prompts):
        state.start(i, p.ids)
    events = _pieces(model, req, prompts, grammar)
    if req.stream:
        # errors found before the first piece are still plain HTTP errors
        finished, first = await run_unless_disconnected(request.receive, anext(events))
        if not finished:
            await events.aclose()
            return Response(status_code=499)
        assert first is not None
        return EventStreamResponse(_sse(state, first, events), on_error=_sse_error)

    async def fold() -> dict[str, Any]:
        try:
            async for index, piece in events:
                state.feed(index, piece)
        finally:
            await events.aclose()
        return state.completion()

    finished, completion = await run_unless_disconnected(request.receive, fold())
    if not finished:
        return Response(status_code=499)
    return JSONResponse(completion)


async def _pieces(model: ServedModel, req: CompletionRequest, prompts: list[_Prompt],
                  grammar: str | None) -> AsyncGenerator[tuple[int, Piece], None]:
    """Every choice's pieces, one prompt after the other."""
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    asked = DEFAULT_MAX_TOKENS if req.max_tokens is None else req.max_tokens
    for index, p in enumerate(prompts):
        max_tokens = min(asked, model.engine.context_length - len(p.ids))
        sampling = Sampling(
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p, max_tokens=max_tokens, stop=stop, seed=req.seed,
            presence_penalty=req.presence_penalty or 0.0, frequency_penalty=req.frequency_penalty or 0.0)
        constraint = model.constrainer.start(grammar) if grammar is not None else None
        options = GenerateOptions(sampling, max_tokens, constraint, logprobs=req.logprobs,
                                  prompt_logprobs=bool(req.echo) and req.logprobs is not None, grammar=grammar)
        gen = complete(model.engine, p.ids, options, stop, echo=p.text if req.echo else None)
        try:
            async for piece in gen:
                yield index, piece
        finally:
            await gen.aclose()


async def _sse(state: CompletionStream, first: tuple[int, Piece],
               events: AsyncGenerator[tuple[int, Piece], None]) -> AsyncIterator[bytes]:
    try:
        yield sse_data(state.feed(*first))
        async for index, piece in events:
            yield sse_data(state.feed(index, piece))
        usage = state.usage_chunk()
        if usage is not None:
            yield sse_data(usage)
        yield b"data: [DONE]\n\n"
    finally:
        await events.aclose()


async def tokenize(request: Request) -> Response:
    """``{"model", "prompt"}``, or a chat request's body (``messages``...): its prompt's tokens."""
    data = await read_json(request)
    if "messages" in data:
        strs = data.pop("return_token_strs", None)
        req: ChatCompletionRequest = parse(ChatCompletionRequest, data)
        model = _local(request, req.model, "/tokenize")
        ids = model.plan(conversation_from_request(req)).rendered.ids
    else:
        text_req: TokenizeTextRequest = parse(TokenizeTextRequest, data)
        model = _local(request, text_req.model, "/tokenize")
        ids, strs = model.engine.tokenize(text_req.prompt, special=True), text_req.return_token_strs
    out: dict[str, Any] = {"count": len(ids), "max_model_len": model.engine.context_length, "tokens": ids}
    if strs:
        out["token_strs"] = [model.engine.detokenize([t]) for t in ids]
    return JSONResponse(out)


async def detokenize(request: Request) -> Response:
    req: DetokenizeRequest = parse(DetokenizeRequest, await read_json(request))
    model = _local(request, req.model, "/detokenize")
    size = _vocab_size(model)
    for i, token in enumerate(req.tokens):
        if not 0 <= token < size:
            raise InvalidRequest(f"token id {token} is out of this model's vocabulary (0 to {size - 1})",
                                 param=f"tokens[{i}]", code="invalid_token_id")
    return JSONResponse({"prompt": model.engine.detokenize(req.tokens)})


async def render_chat(request: Request) -> Response:
    """A chat request as the turn would start it: prompt, tokens, format and grammar, not generated.

    ``draft_grammar``: for a model whose format has no tool training, auto mode first drafts a
    call under this grammar (``ServedModel.draft``) and falls back to ``grammar``."""
    req: ChatCompletionRequest = parse(ChatCompletionRequest, await read_json(request))
    model = _local(request, req.model, "rendering")
    conv = conversation_from_request(req)
    plan = model.plan(conv)
    forced = model.draft(conv)
    return JSONResponse({
        "object": "chat.completion.render", "model": req.model,
        "prompt": plan.rendered.text, "prompt_token_ids": plan.rendered.ids, "count": len(plan.rendered.ids),
        "max_model_len": model.engine.context_length,
        "format": plan.fmt.key, "format_reason": model.format_reason,
        "grammar": plan.grammar, "draft_grammar": model.plan(forced).grammar if forced is not None else None,
    })


def routes() -> list[Route]:
    return [
        Route("/v1/completions", create_completion, methods=["POST"]),
        Route("/v1/chat/completions/render", render_chat, methods=["POST"]),
        Route("/tokenize", tokenize, methods=["POST"]),
        Route("/detokenize", detokenize, methods=["POST"]),
    ]
