"""A raw completion: prompt token ids in, text out, with no template, format or parsing.

The legacy Completions API runs one per prompt. Text passes through the request's stop
sequences; each token is released with the text it starts in, so the tokens, their
logprobs and their offsets always describe exactly the text sent.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from midtier.core.messages import Usage
from midtier.engines.base import Engine, GenChunk, GenerateOptions, TokenLogprob
from midtier.loop.stops import StopFilter


@dataclass
class Piece:
    """Text of a completion's choice and the tokens that start in it.

    ``offsets`` are where each token starts in the choice's text (which, with echo, begins
    with the prompt); ``logprobs`` (when asked) is one per token, None for the first prompt
    token. The last piece has ``finish`` and ``usage``."""

    text: str
    tokens: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob | None] | None = None
    finish: str | None = None
    usage: Usage | None = None
    prompt: bool = False  # the echoed prompt


def token_texts(engine: Engine, ids: list[int]) -> list[str]:
    return [engine.detokenize([t]) for t in ids]


def _offsets(start: int, texts: list[str], end: int) -> list[int]:
    """Where each of consecutive tokens starts, from their own texts, never beyond ``end``."""
    out = []
    pos = start
    for text in texts:
        out.append(min(pos, end))
        pos += len(text)
    return out


async def complete(engine: Engine, prompt: list[int], options: GenerateOptions, stop: tuple[str, ...] = (),
                   echo: str | None = None) -> AsyncGenerator[Piece, None]:
    """Generate from ``prompt``; ``echo`` (the prompt's text) comes first when given.

    Closing the generator cancels the generation."""
    with_logprobs = options.logprobs is not None
    gen = engine.generate(prompt, options)
    try:
        chunk = await anext(gen)
        base = 0
        if echo is not None:
            lps = chunk.prompt_logprobs if with_logprobs else None
            if with_logprobs and lps is None:
                lps = [None] * len(prompt)
            yield Piece(echo, list(prompt), _offsets(0, token_texts(engine, prompt), len(echo)), lps, prompt=True)
            base = len(echo)
        async for piece in _generated(engine, chunk, gen, stop, base, with_logprobs, len(prompt)):
            yield piece
    finally:
        await gen.aclose()


async def _generated(engine: Engine, chunk: GenChunk, gen: AsyncGenerator[GenChunk, None], stop: tuple[str, ...],
                     base: int, with_logprobs: bool, n_prompt: int) -> AsyncGenerator[Piece, None]:
    stops = StopFilter(stop)
    raw = ""
    held: list[tuple[int, int, TokenLogprob | None]] = []  # (token, offset in raw, logprob) not yet sent
    generated = 0

    def release(upto: int) -> tuple[list[int], list[int], list[TokenLogprob | None] | None]:
        nonlocal held
        out = [h for h in held if h[1] < upto]
        held = [h for h in held if h[1] >= upto]
        return ([t for t, _, _ in out], [base + o for _, o, _ in out],
                [lp for _, _, lp in out] if with_logprobs else None)

    while True:
        generated += len(chunk.token_ids)
        lps: list[TokenLogprob | None] = list(chunk.logprobs or [])
        lps += [None] * (len(chunk.token_ids) - len(lps))
        starts = _offsets(len(raw), token_texts(engine, chunk.token_ids), len(raw) + len(chunk.text))
        held += zip(chunk.token_ids, starts, lps, strict=True)
        raw += chunk.text
        text = stops.push(chunk.text)
        if stops.stopped:
            yield Piece(text, *release(stops.sent), finish="stop", usage=Usage(n_prompt, generated, 0))
            return
        if chunk.finish is not None:
            text += stops.flush()
            usage = Usage(chunk.prompt_tokens, chunk.completion_tokens, chunk.cached_tokens)
            yield Piece(text, *release(len(raw) + 1), finish=chunk.finish, usage=usage)
            return
        if text or held:
            tokens, offsets, logprobs = release(stops.sent)
            if text or tokens:
                yield Piece(text, tokens, offsets, logprobs)
        chunk = await anext(gen)
