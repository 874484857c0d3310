"""The embedded engine: llama.cpp through llama-cpp-python's low-level bindings.

One model, one context, one sequence. Requests take turns on a FIFO lock; the token loop
runs in a worker thread so the event loop stays free, and stops at once when the request
is cancelled. The KV cache keeps the tokens of the previous request, so the next one only
evaluates what comes after their common prefix.
"""

from __future__ import annotations

import asyncio
import codecs
import ctypes
import logging
import os
import threading
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import llama_cpp as llc
import numpy as np

from midtier.core.errors import ContextLengthExceeded, EngineError
from midtier.engines.base import GenChunk, GenerateOptions, TokenizerSpec, TokenLogprob
from midtier.engines.sampling import log_softmax, sample, token_logprob

log = logging.getLogger(__name__)

_log_callback: Any = None


def _silence_llama_logs() -> None:
    """Route llama.cpp's own logging (very chatty on load) to nowhere unless debugging."""
    global _log_callback
    if _log_callback is not None or log.isEnabledFor(logging.DEBUG):
        return

    @llc.llama_log_callback
    def _quiet(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        return None

    _log_callback = _quiet
    llc.llama_log_set(_log_callback, ctypes.c_void_p(0))


class LlamaCppEngine:
    """``vocab_only``: load the tokenizer and metadata but no weights and no context (a
    tokenizer and chat template for a model that runs elsewhere); such an engine cannot generate."""

    def __init__(self, model_path: str | Path, *, name: str | None = None, n_ctx: int | None = None,
                 n_threads: int | None = None, n_batch: int = 512, extra_buffers: bool = True,
                 vocab_only: bool = False) -> None:
        _silence_llama_logs()
        llc.llama_backend_init()
        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"model file not found: {path}")
        self.name = name or path.stem
        mparams = llc.llama_model_default_params()
        # weight repacking into extra buffer types (AMX among them) can be turned off
        mparams.use_extra_bufts = extra_buffers
        mparams.vocab_only = vocab_only
        self._model = llc.llama_model_load_from_file(str(path).encode(), mparams)
        if not self._model:
            raise EngineError(f"llama.cpp could not load {path}")
        self._vocab = llc.llama_model_get_vocab(self._model)
        self.n_vocab = llc.llama_vocab_n_tokens(self._vocab)
        self._piece_buf = ctypes.create_string_buffer(256)
        self.chat_template = self._meta("tokenizer.chat_template")
        self.bos_token = self._piece(llc.llama_vocab_bos(self._vocab)) if llc.llama_vocab_bos(self._vocab) >= 0 else ""
        self.eos_token = self._piece(llc.llama_vocab_eos(self._vocab)) if llc.llama_vocab_eos(self._vocab) >= 0 else ""
        self.add_bos = bool(llc.llama_vocab_get_add_bos(self._vocab))
        self._spec: TokenizerSpec | None = None
        self._ctx: Any = None
        self._lock = asyncio.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")
        if vocab_only:
            # no hyperparameters are loaded: the trained context comes from the metadata
            self.train_context_length = int(self._meta(f"{self._meta('general.architecture')}.context_length") or 0)
            self.context_length = n_ctx or self.train_context_length or 4096
            return
        train_ctx = llc.llama_model_n_ctx_train(self._model)
        self.train_context_length = train_ctx
        self.context_length = min(n_ctx or 16384, train_ctx) if train_ctx > 0 else (n_ctx or 4096)
        threads = n_threads or max(1, os.cpu_count() or 1)
        cparams = llc.llama_context_default_params()
        cparams.n_ctx = self.context_length
        cparams.n_batch = n_batch
        cparams.n_ubatch = n_batch
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.no_perf = True
        self._ctx = llc.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            raise EngineError("llama.cpp could not create a context")
        self._n_batch = n_batch
        self._mem = llc.llama_get_memory(self._ctx)
        self._cached: list[int] = []  # the tokens whose keys and values are in the cache

    # -- metadata and tokens ---------------------------------------------------------------
    def _meta(self, key: str) -> str | None:
        size = 1 << 16
        buf = ctypes.create_string_buffer(size)
        n = llc.llama_model_meta_val_str(self._model, key.encode(), buf, size)
        if n < 0:
            return None
        if n >= size:
            buf = ctypes.create_string_buffer(n + 1)
            llc.llama_model_meta_val_str(self._model, key.encode(), buf, n + 1)
        return buf.value.decode("utf-8", errors="replace")

    def _piece_bytes(self, token: int, special: bool = True) -> bytes:
        n = llc.llama_token_to_piece(self._vocab, token, self._piece_buf, len(self._piece_buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llc.llama_token_to_piece(self._vocab, token, buf, -n, 0, special)
            return bytes(buf.raw[:n])
        return bytes(self._piece_buf.raw[:n])

    def _piece(self, token: int) -> str:
        return self._piece_bytes(token).decode("utf-8", errors="replace")

    def _tokenize_bytes(self, data: bytes, special: bool) -> list[int]:
        cap = len(data) + 8
        arr = (llc.llama_token * cap)()
        n = llc.llama_tokenize(self._vocab, data, len(data), arr, cap, False, special)
        if n < 0:
            cap = -n
            arr = (llc.llama_token * cap)()
            n = llc.llama_tokenize(self._vocab, data, len(data), arr, cap, False, special)
        return list(arr[:n])

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        return self._tokenize_bytes(text.encode("utf-8"), special)

    def detokenize(self, ids: list[int]) -> str:
        return b"".join(self._piece_bytes(t) for t in ids).decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        return bool(llc.llama_vocab_is_eog(self._vocab, token))

    def tokenizer_spec(self) -> TokenizerSpec:
        if self._spec is None:
            tokens: list[bytes] = []
            special: list[int] = []
            eos: list[int] = []
            for t in range(self.n_vocab):
                piece = self._piece_bytes(t)
                attr = llc.llama_vocab_get_attr(self._vocab, t)
                looks_special = piece.startswith(b"<") and piece.endswith(b">")
                if attr & llc.LLAMA_TOKEN_ATTR_CONTROL or (attr & llc.LLAMA_TOKEN_ATTR_USER_DEFINED and looks_special):
                    piece = b"\xff" + piece
                    special.append(t)
                if self.is_eog(t):
                    eos.append(t)
                tokens.append(piece)
            bos = llc.llama_vocab_bos(self._vocab)
            self._spec = TokenizerSpec(
                tokens=tokens, special_ids=special, eos_ids=eos or [llc.llama_vocab_eos(self._vocab)],
                bos_id=bos if bos >= 0 else None,
                encode=lambda b: self._tokenize_bytes(b, False), n_vocab=self.n_vocab,
            )
        return self._spec

    # -- generation ------------------------------------------------------------------------
    async def generate(self, prompt: list[int], options: GenerateOptions) -> AsyncGenerator[GenChunk, None]:
        if self._ctx is None:
            raise EngineError(f"{self.name} was loaded for its vocabulary only: it cannot generate")
        if len(prompt) >= self.context_length:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {self.context_length} tokens, but the prompt has "
                f"{len(prompt)} tokens.", param="messages")
        async with self._lock:
            loop = asyncio.get_running_loop()
            queue: asyncio.Queue[GenChunk | BaseException] = asyncio.Queue()
            cancel = threading.Event()

            def put(item: GenChunk | BaseException) -> None:
                loop.call_soon_threadsafe(queue.put_nowait, item)

            job = loop.run_in_executor(self._executor, self._run, prompt, options, put, cancel)
            try:
                while True:
                    item = await queue.get()
                    if isinstance(item, BaseException):
                        raise item
                    yield item
                    if item.finish is not None:
                        break
            finally:
                cancel.set()
                # the lock is released only once the worker has stopped touching the context
                await asyncio.shield(job)

    def _eval(self, tokens: list[int], cancel: threading.Event | None = None) -> None:
        for start in range(0, len(tokens), self._n_batch):
            if cancel is not None and cancel.is_set():
                return
            part = tokens[start:start + self._n_batch]
            arr = (llc.llama_token * len(part))(*part)
            rc = llc.llama_decode(self._ctx, llc.llama_batch_get_one(arr, len(part)))
            if rc != 0:
                # the cache now holds an unknown part of this batch: start clean next time
                llc.llama_memory_clear(self._mem, True)
                self._cached = []
                raise EngineError(f"llama_decode failed with code {rc}")
            self._cached.extend(part)

    def _eval_scored(self, tokens: list[int], top: int, cancel: threading.Event) -> list[TokenLogprob | None]:
        """Evaluate ``tokens`` into an empty cache with logits at every position: each token's
        logprob given those before it (None for the first)."""
        out: list[TokenLogprob | None] = [None]
        for start in range(0, len(tokens), self._n_batch):
            if cancel.is_set():
                return out
            part = tokens[start:start + self._n_batch]
            batch = llc.llama_batch_init(len(part), 0, 1)
            try:
                for i, token in enumerate(part):
                    batch.token[i] = token
                    batch.pos[i] = start + i
                    batch.n_seq_id[i] = 1
                    batch.seq_id[i][0] = 0
                    batch.logits[i] = 1
                batch.n_tokens = len(part)
                rc = llc.llama_decode(self._ctx, batch)
                if rc != 0:
                    llc.llama_memory_clear(self._mem, True)
                    self._cached = []
                    raise EngineError(f"llama_decode failed with code {rc}")
                self._cached.extend(part)
                for i in range(min(len(part), len(tokens) - start - 1)):
                    logits = np.ctypeslib.as_array(llc.llama_get_logits_ith(self._ctx, i), shape=(self.n_vocab,))
                    out.append(token_logprob(log_softmax(logits), tokens[start + i + 1], top))
            finally:
                llc.llama_batch_free(batch)
        return out

    def _run(self, prompt: list[int], options: GenerateOptions, put: Callable[[GenChunk | BaseException], None],
             cancel: threading.Event) -> None:
        try:
            self._generate_sync(prompt, options, put, cancel)
        except BaseException as exc:  # handed to the awaiting request, which raises it
            put(exc)

    def _generate_sync(self, prompt: list[int], options: GenerateOptions,
                       put: Callable[[GenChunk | BaseException], None], cancel: threading.Event) -> None:
        keep = 0
        # the last prompt token is always evaluated; scoring the prompt evaluates all of it
        limit = 0 if options.prompt_logprobs else min(len(prompt) - 1, len(self._cached))
        while keep < limit and self._cached[keep] == prompt[keep]:
            keep += 1
        if not llc.llama_memory_seq_rm(self._mem, 0, keep, -1):
            llc.llama_memory_clear(self._mem, True)
            keep = 0
        self._cached = self._cached[:keep]
        log.debug("prompt of %d tokens: %d in the cache, %d to evaluate", len(prompt), keep, len(prompt) - keep)
        top = options.logprobs or 0
        prompt_lps = None
        if options.prompt_logprobs:
            prompt_lps = self._eval_scored(prompt, top, cancel)
        else:
            self._eval(prompt[keep:], cancel)
        if cancel.is_set():
            put(GenChunk([], "", finish="stop", prompt_tokens=len(prompt), cached_tokens=keep))
            return
        sampling = options.sampling
        rng = np.random.default_rng(sampling.seed)
        constraint = options.constraint
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        max_tokens = min(options.max_tokens, self.context_length - len(prompt))
        generated = 0
        finish: str = "length"
        counts: dict[int, int] = {}
        penalize = bool(sampling.presence_penalty or sampling.frequency_penalty)
        while generated < max_tokens:
            if cancel.is_set():
                finish = "stop"
                break
            ptr = llc.llama_get_logits_ith(self._ctx, -1)
            logits = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()
            raw = log_softmax(logits) if options.logprobs is not None else None
            if penalize and counts:
                ids = np.fromiter(counts.keys(), dtype=np.int64)
                n = np.fromiter(counts.values(), dtype=np.float32)
                logits[ids] -= sampling.presence_penalty + sampling.frequency_penalty * n
            if constraint is not None:
                constraint.apply(logits)
            token = sample(logits, sampling.temperature, sampling.top_p, rng)
            if self.is_eog(token):
                finish = "stop"
                break
            if constraint is not None:
                constraint.commit(token)
            counts[token] = counts.get(token, 0) + 1
            generated += 1
            text = decoder.decode(self._piece_bytes(token))
            done = constraint is not None and constraint.is_finished()
            chunk = GenChunk([token], text, prompt_logprobs=prompt_lps, cached_tokens=keep,
                             logprobs=None if raw is None else [token_logprob(raw, token, top)])
            prompt_lps = None
            if done or generated >= max_tokens:
                finish = "stop" if done else "length"
                put(chunk)
                break
            put(chunk)
            self._eval([token])
        tail = decoder.decode(b"", final=True)
        put(GenChunk([], tail, finish=finish,  # type: ignore[arg-type]
                     prompt_tokens=len(prompt), cached_tokens=keep, completion_tokens=generated,
                     prompt_logprobs=prompt_lps, logprobs=[] if options.logprobs is not None else None))

    async def reset_cache(self) -> None:
        """Forget the cached prefix (benchmarks compare against a full prefill)."""
        async with self._lock:
            llc.llama_memory_clear(self._mem, True)
            self._cached = []

    async def close(self) -> None:
        async with self._lock:
            self._executor.shutdown(wait=True)
            if self._ctx:
                llc.llama_free(self._ctx)
                self._ctx = None
            if self._model:
                llc.llama_model_free(self._model)
                self._model = None
