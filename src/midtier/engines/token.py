"""The token engine: a model served by vLLM, SGLang or another midtier, driven through the
legacy ``/v1/completions`` route with token ids.

midtier keeps layers 2 to 4: it renders the chat template and tokenizes with a local
vocabulary (a GGUF file loaded without its weights), sends the prompt as token ids with
the turn's grammar for the upstream's structured-output backend, and reads the output's
token ids back, so formats parse exactly what the model wrote, special tokens included.

- ``request_body``: one streamed completion request, in the upstream's ``dialect``:

  ========  =======================================  ============================  ===============
  dialect   grammar field                            output token ids              stop tokens
  ========  =======================================  ============================  ===============
  vllm      ``structured_outputs: {"grammar": G}``   ``return_token_ids``          ``stop_token_ids``
  sglang    ``ebnf: "%llguidance {}\\n" + G``         (none: text is re-tokenized)  ``stop_token_ids``
  midtier   ``structured_outputs: {"grammar": G}``   ``return_token_ids``          (its own: every EOG)
  ========  =======================================  ============================  ===============

  G is llguidance's Lark: vLLM must run the ``guidance`` structured-output backend
  (``--structured-outputs-config.backend guidance``), SGLang ``--grammar-backend llguidance``.
- ``CompletionTranslator``: the upstream's chunks as ``GenChunk``s. Text is decoded here
  from the token ids (the upstream's own text may skip special tokens); end-of-generation
  tokens the upstream includes are dropped, as the embedded engine never emits them.
- ``TokenEngine``: the ``Engine`` protocol over one pooled ``httpx`` client (``HttpxUpstream``;
  a ``transport`` may replace its network). Errors are ``UpstreamError``s as in
  ``engines.openai_chat`` (whose error mapping and SSE parser it shares); failures before
  the first chunk are retried; closing the generator closes the upstream response, so the
  upstream stops generating.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import logging
import re
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from midtier.core.errors import (
    ContextLengthExceeded,
    EngineError,
    InvalidRequest,
    UpstreamError,
    UpstreamTimeout,
)
from midtier.engines.base import Engine, GenChunk, GenerateOptions, TokenizerSpec, TokenLogprob
from midtier.engines.openai_chat import (
    DRAIN_SECONDS,
    MAX_ERROR_BODY,
    Timeouts,
    error_from_body,
    sse_payloads,
)

log = logging.getLogger(__name__)

Dialect = Literal["vllm", "sglang", "midtier"]
DIALECTS: tuple[str, ...] = ("vllm", "sglang", "midtier")
_TOKEN_ID = re.compile(r"token_id:(-?\d+)")
# a reference to a custom tool's own grammar: a subgrammar only midtier's constrainer has
_SUBGRAMMAR = re.compile(r"(?:^|[\s:|(])@custom_\w+")


def request_body(prompt: list[int], options: GenerateOptions, *, model: str, dialect: Dialect = "vllm",
                 stop_token_ids: list[int] | None = None, extra_body: dict[str, Any] | None = None) -> dict[str, Any]:
    """The streamed ``/v1/completions`` request generating from ``prompt`` under ``options``."""
    s = options.sampling
    body: dict[str, Any] = {"model": model, "prompt": list(prompt), "max_tokens": options.max_tokens,
                            "temperature": s.temperature, "top_p": s.top_p, "stream": True,
                            "stream_options": {"include_usage": True}}
    if s.seed is not None:
        body["seed"] = s.seed
    if s.presence_penalty:
        body["presence_penalty"] = s.presence_penalty
    if s.frequency_penalty:
        body["frequency_penalty"] = s.frequency_penalty
    if dialect != "sglang":
        body["return_token_ids"] = True
    if options.logprobs is not None:
        body["logprobs"] = options.logprobs
        if dialect != "sglang":
            body["return_tokens_as_token_ids"] = True
    if dialect != "midtier":
        # midtier's own route takes no parameter beyond vLLM's documented ones
        body["skip_special_tokens"] = False
        if stop_token_ids:
            body["stop_token_ids"] = list(stop_token_ids)
    if options.grammar is not None:
        if dialect == "sglang":
            body["ebnf"] = "%llguidance {}\n" + options.grammar
        else:
            body["structured_outputs"] = {"grammar": options.grammar}
    body.update(extra_body or {})
    return body


@dataclass
class CompletionTranslator:
    """Streamed ``text_completion`` chunks -> ``GenChunk``s, decoding text from token ids.

    ``feed`` returns the chunk of one upstream chunk (None when it carries no output); ``end``
    the last one, with the finish reason and usage (the upstream's, else counted here)."""

    spec: TokenizerSpec
    tokenize: Callable[[str], list[int]]  # for an upstream that sends text, no token ids
    name: str = "upstream"
    prompt_tokens: int = 0
    with_logprobs: bool = False
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    generated: int = 0
    stopped: bool = False  # an end-of-generation token was seen: nothing after it counts
    _special: frozenset[int] = field(default_factory=frozenset)
    _eos: frozenset[int] = field(default_factory=frozenset)
    _decoder: Any = None

    def __post_init__(self) -> None:
        self._special = frozenset(self.spec.special_ids)
        self._eos = frozenset(self.spec.eos_ids)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def token_bytes(self, token: int) -> bytes:
        if not 0 <= token < len(self.spec.tokens):
            return b""
        piece = self.spec.tokens[token]
        return piece[1:] if token in self._special else piece

    def feed(self, chunk: Any) -> GenChunk | None:
        if not isinstance(chunk, dict):
            raise self.malformed(chunk)
        if chunk.get("error") is not None:
            raise error_from_body(self.name, chunk, None)
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        choices = chunk.get("choices") or []
        if not isinstance(choices, list):
            raise self.malformed(chunk)
        out: GenChunk | None = None
        for choice in choices:
            if not isinstance(choice, dict):
                raise self.malformed(chunk)
            if choice.get("index", 0) != 0:
                continue  # one completion is asked for
            out = self._choice(choice, chunk)
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
        return out

    def _choice(self, choice: dict[str, Any], chunk: Any) -> GenChunk | None:
        ids = choice.get("token_ids")
        text = choice.get("text")
        if ids is not None and (not isinstance(ids, list) or not all(isinstance(t, int) for t in ids)):
            raise self.malformed(chunk)
        if text is not None and not isinstance(text, str):
            raise self.malformed(chunk)
        lps = self._logprobs(choice.get("logprobs"), chunk) if self.with_logprobs else None
        if ids is None:
            if not text:
                return None
            ids = self.tokenize(text)  # the upstream's text is the output: its tokens are counted
        elif lps is not None and len(lps) != len(ids):
            lps = None  # not one per token: they cannot be matched to the tokens
        if self.stopped:
            return None
        kept: list[int] = []
        kept_lps: list[TokenLogprob] = []
        for i, token in enumerate(ids):
            if token in self._eos:
                self.stopped = True
                break
            kept.append(token)
            if lps is not None and i < len(lps):
                kept_lps.append(lps[i])
        if choice.get("token_ids") is not None:
            text = "".join(self._decoder.decode(self.token_bytes(t)) for t in kept)
        elif self.stopped:
            text = self._decoder.decode(b"".join(self.token_bytes(t) for t in kept))
        if not kept and not text:
            return None
        self.generated += len(kept)
        return GenChunk(kept, text or "", logprobs=kept_lps if self.with_logprobs else None)

    def _logprobs(self, raw: Any, chunk: Any) -> list[TokenLogprob] | None:
        """vLLM's completion logprobs with tokens written as ``token_id:N``."""
        if raw is None:
            return None
        if not isinstance(raw, dict):
            raise self.malformed(chunk)
        tokens = raw.get("tokens") or []
        values = raw.get("token_logprobs") or []
        tops = raw.get("top_logprobs") or []
        out: list[TokenLogprob] = []
        for i, name in enumerate(tokens):
            token = _token_id(name)
            value = values[i] if i < len(values) else None
            if token is None or not isinstance(value, (int, float)):
                return None
            top_raw = tops[i] if i < len(tops) and isinstance(tops[i], dict) else {}
            top = [(t, float(v)) for k, v in top_raw.items()
                   if (t := _token_id(k)) is not None and isinstance(v, (int, float))]
            top.sort(key=lambda p: -p[1])
            out.append(TokenLogprob(token, float(value), tuple(top)))
        return out

    def end(self) -> GenChunk:
        tail = self._decoder.decode(b"", final=True)
        finish: Literal["stop", "length"] = "length" if self.finish_reason == "length" and not self.stopped else "stop"
        usage = self.usage or {}
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
        prompt = usage.get("prompt_tokens")
        completion = usage.get("completion_tokens")
        return GenChunk([], tail, finish=finish,
                        prompt_tokens=prompt if isinstance(prompt, int) else self.prompt_tokens,
                        cached_tokens=cached if isinstance(cached, int) else 0,
                        completion_tokens=completion if isinstance(completion, int) else self.generated,
                        logprobs=[] if self.with_logprobs else None)

    def malformed(self, chunk: Any) -> UpstreamError:
        text = chunk if isinstance(chunk, str) else json.dumps(chunk)
        return UpstreamError(f"upstream {self.name} sent a malformed completion chunk: {text[:200]!r}",
                             code="upstream_malformed")


def _token_id(name: Any) -> int | None:
    m = _TOKEN_ID.fullmatch(name) if isinstance(name, str) else None
    return int(m.group(1)) if m else None


class HttpxUpstream:
    """One upstream server through one pooled ``httpx.AsyncClient`` per event loop, with its
    failures as ``UpstreamError``s (502 when the exchange broke, 504 for a timeout)."""

    def __init__(self, base_url: str, *, name: str = "upstream", api_key: str | None = None,
                 timeouts: Timeouts | None = None, headers: dict[str, str] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.name = name
        self.timeouts = timeouts or Timeouts()
        self.headers = {"accept": "text/event-stream", **(headers or {})}
        if api_key:
            self.headers["authorization"] = f"Bearer {api_key}"
        self._transport = transport
        self._http: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def client(self) -> httpx.AsyncClient:
        """The pooled client of the running event loop (a pool cannot outlive its loop)."""
        loop = asyncio.get_running_loop()
        if self._http is None or self._loop is not loop or self._http.is_closed:
            t = self.timeouts
            self._http = httpx.AsyncClient(base_url=self.base_url + "/", headers=self.headers,
                                           timeout=httpx.Timeout(connect=t.connect, read=t.read, write=t.write,
                                                                 pool=t.pool),
                                           transport=self._transport)
            self._loop = loop
        return self._http

    async def close(self) -> None:
        if self._http is not None and self._loop is asyncio.get_running_loop():
            await self._http.aclose()
        self._http = None

    async def error(self, resp: httpx.Response) -> UpstreamError:
        raw = b""
        async for part in resp.aiter_bytes():
            raw += part
            if len(raw) >= MAX_ERROR_BODY:
                break
        text = raw.decode("utf-8", "replace")
        try:
            body: Any = json.loads(text)
        except ValueError:
            body = text
        return error_from_body(self.name, body, resp.status_code)

    def transport_error(self, exc: httpx.HTTPError) -> UpstreamError:
        where = f"upstream {self.name} ({self.base_url})"
        if isinstance(exc, httpx.ConnectTimeout):
            return UpstreamTimeout(f"timed out connecting to {where} after {self.timeouts.connect:g} s",
                                   retryable=True)
        if isinstance(exc, httpx.ConnectError):
            return UpstreamError(f"could not connect to {where}: {_describe(exc)}",
                                 code="upstream_unavailable", retryable=True)
        if isinstance(exc, httpx.PoolTimeout):
            return UpstreamTimeout(f"no free connection to {where} within {self.timeouts.pool:g} s", retryable=True)
        if isinstance(exc, httpx.ReadTimeout):
            return UpstreamTimeout(f"{where} sent nothing for {self.timeouts.read:g} s (read timeout)")
        if isinstance(exc, httpx.TimeoutException):
            return UpstreamTimeout(f"timed out talking to {where} ({_describe(exc)})")
        # a reset, a connection closed mid-response, a broken chunked encoding
        return UpstreamError(f"the connection to {where} broke ({_describe(exc)})",
                             code="upstream_connection", retryable=True)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class TokenEngine:
    """An upstream completions server as an ``Engine``; ``vocab`` is the local tokenizer and
    chat template (an engine loaded for its vocabulary only: ``LlamaCppEngine(vocab_only=True)``)."""

    def __init__(self, base_url: str, vocab: Engine, *, name: str = "upstream", upstream_model: str | None = None,
                 dialect: Dialect = "vllm", api_key: str | None = None, headers: dict[str, str] | None = None,
                 timeouts: Timeouts | None = None, max_retries: int = 2, retry_backoff: float = 0.5,
                 context_length: int | None = None, extra_body: dict[str, Any] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        if dialect not in DIALECTS:
            raise ValueError(f"unknown dialect {dialect!r}; one of {', '.join(DIALECTS)}")
        self.name = name
        self.vocab = vocab
        self.upstream_model = upstream_model or name
        self.dialect = dialect
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self.extra_body = dict(extra_body or {})
        self.context_length = context_length or vocab.context_length
        self.chat_template = vocab.chat_template
        self.bos_token = vocab.bos_token
        self.eos_token = vocab.eos_token
        self.upstream = HttpxUpstream(base_url, name=name, api_key=api_key, timeouts=timeouts,
                                      headers=headers, transport=transport)
        self.base_url = self.upstream.base_url

    # -- the local vocabulary ------------------------------------------------------------------
    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        return self.vocab.tokenize(text, special=special)

    def detokenize(self, ids: list[int]) -> str:
        return self.vocab.detokenize(ids)

    def tokenizer_spec(self) -> TokenizerSpec:
        return self.vocab.tokenizer_spec()

    # -- generation --------------------------------------------------------------------------
    def request_body(self, prompt: list[int], options: GenerateOptions) -> dict[str, Any]:
        if options.prompt_logprobs:
            raise InvalidRequest("the prompt's logprobs (echo with logprobs) are not supported for a model on an "
                                 "upstream token server", param="echo", code="unsupported_parameter")
        if options.constraint is not None and options.grammar is None:
            raise EngineError("the token engine constrains through its upstream: it needs the grammar's source")
        if options.grammar is not None and _SUBGRAMMAR.search(options.grammar):
            raise InvalidRequest("custom tools with a grammar of their own are not supported for a model on an "
                                 "upstream token server", param="tools", code="unsupported_tool_type")
        return request_body(prompt, options, model=self.upstream_model, dialect=self.dialect,
                            stop_token_ids=self.tokenizer_spec().eos_ids, extra_body=self.extra_body)

    async def generate(self, prompt: list[int], options: GenerateOptions) -> AsyncGenerator[GenChunk, None]:
        if len(prompt) >= self.context_length:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {self.context_length} tokens, but the prompt has "
                f"{len(prompt)} tokens.", param="messages")
        body = self.request_body(prompt, options)
        if options.max_tokens <= 0:  # the prompt only: nothing to ask the upstream
            yield GenChunk([], "", finish="length", prompt_tokens=len(prompt),
                           logprobs=[] if options.logprobs is not None else None)
            return
        attempt = 0
        while True:
            sent = False
            try:
                async for chunk in self._exchange(body, options, len(prompt)):
                    sent = True
                    yield chunk
                return
            except UpstreamError as exc:
                if sent or not exc.retryable or attempt >= self.max_retries:
                    raise
                attempt += 1
                delay = self.retry_backoff * 2 ** (attempt - 1)
                log.warning("%s; retry %d of %d in %.1f s", exc.message, attempt, self.max_retries, delay)
                await asyncio.sleep(delay)

    async def _exchange(self, body: dict[str, Any], options: GenerateOptions,
                        n_prompt: int) -> AsyncGenerator[GenChunk, None]:
        """The chunks of one request; closing this generator closes the upstream response."""
        translator = CompletionTranslator(self.tokenizer_spec(), lambda t: self.tokenize(t, special=True),
                                          self.name, n_prompt, options.logprobs is not None)
        up = self.upstream
        try:
            async with up.client().stream("POST", "completions", json=body) as resp:
                if resp.status_code >= 400:
                    raise await up.error(resp)
                if "text/event-stream" not in resp.headers.get("content-type", ""):
                    whole = await resp.aread()  # an upstream that ignores "stream": one whole completion
                    try:
                        chunk = translator.feed(json.loads(whole))
                    except ValueError:
                        raise translator.malformed(whole.decode("utf-8", "replace")) from None
                    if chunk is not None:
                        yield chunk
                    yield translator.end()
                    return
                done = False
                payloads = sse_payloads(resp.aiter_lines())
                async for kind, data in payloads:
                    if data.strip() == "[DONE]":
                        done = True
                        with contextlib.suppress(asyncio.TimeoutError, httpx.HTTPError):
                            await asyncio.wait_for(_drain(payloads), DRAIN_SECONDS)
                        break
                    try:
                        raw = json.loads(data)
                    except ValueError:
                        raise translator.malformed(data) from None
                    if kind == "error" and isinstance(raw, dict) and "error" not in raw:
                        raw = {"error": raw}
                    chunk = translator.feed(raw)
                    if chunk is not None:
                        yield chunk
                if not done and translator.finish_reason is None:
                    raise UpstreamError(f"upstream {self.name} closed its stream before the completion was finished",
                                        code="upstream_incomplete", retryable=translator.generated == 0)
            yield translator.end()
        except httpx.HTTPError as exc:
            raise up.transport_error(exc) from exc

    async def close(self) -> None:
        await self.upstream.close()
        await self.vocab.close()


async def _drain(payloads: AsyncGenerator[tuple[str, str], None]) -> None:
    async for _ in payloads:
        pass


__all__ = ["DIALECTS", "CompletionTranslator", "Dialect", "HttpxUpstream", "TokenEngine", "request_body"]
