"""Choosing the next token from logits (greedy, temperature and nucleus top_p), and their log-probabilities."""

from __future__ import annotations

import numpy as np

from midtier.engines.base import TokenLogprob

_TOP_K_FIRST = 1024  # nucleus sampling sorts only this many candidates unless they hold too little mass


def sample(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    if temperature <= 1e-5:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / temperature
    scaled -= scaled.max()
    probs = np.exp(scaled)
    probs /= probs.sum()
    if top_p >= 1.0:
        return int(rng.choice(probs.size, p=probs))
    k = min(_TOP_K_FIRST, probs.size - 1)
    cand = np.argpartition(-probs, k)[:k]
    cand = cand[np.argsort(-probs[cand])]
    cum = np.cumsum(probs[cand])
    if cum[-1] < top_p:
        cand = np.argsort(-probs)
        cum = np.cumsum(probs[cand])
    cut = int(np.searchsorted(cum, top_p)) + 1
    keep = cand[:cut]
    p = probs[keep] / probs[keep].sum()
    return int(keep[rng.choice(keep.size, p=p)])


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max()
    return x - np.log(np.exp(x).sum())


def token_logprob(logprobs: np.ndarray, token: int, top: int) -> TokenLogprob:
    """``token``'s entry in a log-softmaxed distribution, with its ``top`` best tokens."""
    best: tuple[tuple[int, float], ...] = ()
    if top > 0:
        k = min(top, logprobs.size)
        cand = np.argpartition(-logprobs, k - 1)[:k]
        cand = cand[np.argsort(-logprobs[cand], kind="stable")]
        best = tuple((int(t), float(logprobs[t])) for t in cand)
    return TokenLogprob(token, float(logprobs[token]), best)
