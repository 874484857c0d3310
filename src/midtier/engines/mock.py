"""A scripted engine for tests: it "generates" the texts it was given, token by token.

Like simonw/llm's MockModel: ``enqueue`` the outputs the next requests should produce.
Its vocabulary is bytes plus the special tokens you name, so constraints apply to it for
real: a scripted output the constraint forbids is cut where the constraint refuses it.
Its "model" is sure of the scripted token (see ``_logits``), which gives logprobs to test.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator

import numpy as np

from midtier.engines.base import GenChunk, GenerateOptions, TokenizerSpec, TokenLogprob
from midtier.engines.sampling import log_softmax, token_logprob

DEFAULT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content or '' }}"
    "{% for c in m.tool_calls or [] %}<tool_call>\n{{ {'name': c.function.name, 'arguments': c.function.arguments}"
    " | tojson }}\n</tool_call>{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if tools %}<|im_start|>system\n<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools><|im_end|>\n"
    "{% endif %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class MockEngine:
    def __init__(self, path: object = None, *, name: str = "mock", specials: tuple[str, ...] = (
            "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>"), chat_template: str = DEFAULT_TEMPLATE,
                 context_length: int = 4096, delay: float = 0.0) -> None:
        self.name = name
        self.specials = list(specials)
        self.chat_template = chat_template
        self.bos_token = ""
        self.eos_token = "<|im_end|>"
        self.context_length = context_length
        self.delay = delay
        self.eos_id = 256 + self.specials.index("<|im_end|>") if "<|im_end|>" in self.specials else 256
        self.n_vocab = 256 + len(self.specials)
        self.outputs: deque[str] = deque()
        self.prompts: list[list[int]] = []
        # report a KV cache as llama.cpp does (the prompt's prefix shared with the last prompt and
        # its output), on every chunk; off by default
        self.report_cache = False
        self._last: list[int] = []
        self.cancelled = 0
        self._lock = asyncio.Lock()

    def enqueue(self, *texts: str) -> None:
        self.outputs.extend(texts)

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        out: list[int] = []
        i = 0
        while i < len(text):
            if special:
                hit = next((s for s in self.specials if text.startswith(s, i)), None)
                if hit is not None:
                    out.append(256 + self.specials.index(hit))
                    i += len(hit)
                    continue
            out.extend(text[i].encode())
            i += 1
        return out

    def _piece(self, token: int) -> bytes:
        return bytes([token]) if token < 256 else self.specials[token - 256].encode()

    def detokenize(self, ids: list[int]) -> str:
        return b"".join(self._piece(t) for t in ids).decode("utf-8", errors="replace")

    def tokenizer_spec(self) -> TokenizerSpec:
        tokens = [bytes([i]) for i in range(256)] + [b"\xff" + s.encode() for s in self.specials]
        return TokenizerSpec(tokens=tokens, special_ids=list(range(256, self.n_vocab)), eos_ids=[self.eos_id],
                             bos_id=None, encode=lambda b: list(b), n_vocab=self.n_vocab)

    def _logits(self, token: int) -> np.ndarray:
        """The mock's raw logits when ``token`` comes next: it first, the byte after it second."""
        logits = np.zeros(self.n_vocab, dtype=np.float32)
        logits[token] = 4.0
        logits[(token + 1) % 256 if token < 256 else 0] = 2.0
        return logits

    def _logprob(self, token: int, top: int) -> TokenLogprob:
        return token_logprob(log_softmax(self._logits(token)), token, top)

    async def generate(self, prompt: list[int], options: GenerateOptions) -> AsyncGenerator[GenChunk, None]:
        async with self._lock:
            self.prompts.append(list(prompt))
            keep = 0
            if self.report_cache:
                limit = min(len(prompt) - 1, len(self._last))
                while keep < limit and self._last[keep] == prompt[keep]:
                    keep += 1
            self._last = list(prompt)
            script = self.tokenize(self.outputs.popleft() if self.outputs else "") + [self.eos_id]
            constraint = options.constraint
            top = options.logprobs or 0
            prompt_lps: list[TokenLogprob | None] | None = None
            if options.prompt_logprobs:
                prompt_lps = [None, *(self._logprob(t, top) for t in prompt[1:])]
            n = 0
            finish = "length"
            pending = b""
            try:
                for token in script:
                    if n >= options.max_tokens:
                        break
                    if constraint is not None:
                        logits = np.zeros(self.n_vocab, dtype=np.float32)
                        constraint.apply(logits)
                        if not np.isfinite(logits[token]):
                            finish = "stop"  # the constraint refuses the script here
                            break
                    if token == self.eos_id:
                        finish = "stop"
                        break
                    if constraint is not None:
                        constraint.commit(token)
                    n += 1
                    pending += self._piece(token)
                    try:
                        text = pending.decode()
                        pending = b""
                    except UnicodeDecodeError:
                        text = ""
                    if self.delay:
                        await asyncio.sleep(self.delay)
                    lps = None if options.logprobs is None else [self._logprob(token, top)]
                    self._last.append(token)
                    yield GenChunk([token], text, logprobs=lps, prompt_logprobs=prompt_lps, cached_tokens=keep)
                    prompt_lps = None
                    if constraint is not None and constraint.is_finished():
                        finish = "stop"
                        break
            except (asyncio.CancelledError, GeneratorExit):
                self.cancelled += 1
                raise
            yield GenChunk([], pending.decode(errors="replace"), finish=finish,  # type: ignore[arg-type]
                           prompt_tokens=len(prompt), completion_tokens=n, prompt_logprobs=prompt_lps, cached_tokens=keep,
                           logprobs=None if options.logprobs is None else [])

    async def close(self) -> None:
        return None
