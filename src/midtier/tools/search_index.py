"""The ranker behind file_search: BM25 over analysed words, optionally fused with embeddings.

A ``SearchIndex`` is built once per vector store content (the caller caches it) from the chunks'
texts. ``search(query)`` ranks chunks:

- lexically, always: BM25 (k1 1.2, b 0.75) over ``analyze``'d terms: NFKC, lower case, Unicode
  words, identifiers split at ``snake_case``/``camelCase`` boundaries (the whole identifier is
  kept too), English stop words dropped, a light suffix stemmer (plural, -ing, -ed, -ly...);
- semantically, when an ``Embedder`` is given (``midtier.tools.embeddings``): cosine similarity
  of normalised vectors; the two rankings are fused by weighted reciprocal rank fusion (RRF,
  k 60), with OpenAI's ``ranking_options.hybrid_search`` weights.

Scores are in [0, 1]. Lexical: ``1 - exp(-s)`` where ``s`` is the BM25 score over the score a
chunk of average length holding every query term once would get (so about 0.63 means "every
term once"; unknown terms count as the rarest). Hybrid: the fused score over the best possible
(first in both rankings = 1).

``excerpt(text, query, max_chars)`` picks the sentences of a chunk that match the query best,
for a small model that should not read 800 tokens per result.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np

_WORD = re.compile(r"\w+", re.UNICODE)
_CAMEL = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")

_STOP = """
a about above after again against all am an and any are as at be because been before being below between
both but by can could did do does doing down during each few for from further had has have having he her here
hers herself him himself his how i if in into is it its itself just me more most my myself no nor not
now of off on once only or other our ours ourselves out over own same she should so some such than that the their
theirs them themselves then there these they this those through to too under until up very was we were what when
where which while who whom why will with would you your yours yourself yourselves s t don
"""
STOP_WORDS = frozenset(_STOP.split())

# suffix, replacement, minimum stem length left; the first that applies wins
_SUFFIXES: tuple[tuple[str, str, int], ...] = (
    ("ational", "ate", 3), ("fulness", "ful", 3), ("iveness", "ive", 3), ("ization", "ize", 3),
    ("ousness", "ous", 3), ("biliti", "ble", 3), ("ations", "", 4), ("ation", "", 4),
    ("ments", "ment", 3), ("nesses", "ness", 3), ("ies", "y", 2), ("ied", "y", 2), ("sses", "ss", 2),
    ("ings", "", 3), ("ing", "", 3), ("edly", "", 3), ("ed", "", 3), ("ly", "", 3), ("es", "", 3),
    ("s", "", 3),
)


def stem(word: str) -> str:
    """A light English stemmer: enough to match plural and inflected forms to their base."""
    if len(word) <= 3 or not word.isalpha():
        return word
    for suffix, repl, keep in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= keep:
            if suffix == "s" and word.endswith(("ss", "us", "is")):
                return word
            if suffix == "es" and not word.endswith(("ches", "shes", "xes", "zes", "sses")):
                return _final_e(word[:-1])  # "houses" -> "house" -> "hous", like "house"
            base = word[: -len(suffix)] + repl
            if suffix in ("ing", "ed", "ings") and len(base) > 2 and base[-1] == base[-2] and base[-1] not in "lsz":
                base = base[:-1]  # "running" -> "run"
            return _final_e(base)
    return _final_e(word)


def _final_e(word: str) -> str:
    """"configure", "configured" and "configuration" meet at "configur"."""
    return word[:-1] if len(word) > 4 and word.endswith("e") else word


def analyze(text: str) -> list[str]:
    """The index terms of ``text``, in order (a term may repeat)."""
    text = unicodedata.normalize("NFKC", text)
    terms: list[str] = []
    for raw in _WORD.findall(text):
        parts = [p for p in raw.split("_") if p]
        split = len(parts) > 1 or (raw.isascii() and not raw.islower())
        pieces = [w for p in parts for w in (_CAMEL.findall(p) if p.isascii() else [p])] if split else parts
        word = raw.lower()
        if len(pieces) > 1:
            terms.append(word)
        for piece in pieces or [raw]:
            low = piece.lower()
            if low in STOP_WORDS:
                continue
            terms.append(stem(low))
    return terms


class Embedder(Protocol):
    """A text embedding model: ``embed`` returns one L2-normalised float32 row per text."""

    name: str

    def embed(self, texts: Sequence[str], *, query: bool = False) -> np.ndarray: ...


@dataclass(frozen=True)
class Hit:
    index: int  # the chunk's position in the texts the index was built from
    score: float  # in [0, 1]


class Bm25:
    """Okapi BM25 over term lists, scored sparsely through postings."""

    def __init__(self, docs: Sequence[Sequence[str]], k1: float = 1.2, b: float = 0.75) -> None:
        self.k1, self.b = k1, b
        self.n = len(docs)
        self.lengths = [len(d) for d in docs]
        self.avg = (sum(self.lengths) / self.n) if self.n else 0.0
        self.postings: dict[str, list[tuple[int, int]]] = {}
        for i, doc in enumerate(docs):
            for term, tf in Counter(doc).items():
                self.postings.setdefault(term, []).append((i, tf))

    def idf(self, term: str) -> float:
        df = len(self.postings.get(term, ()))
        return math.log(1 + (self.n - df + 0.5) / (df + 0.5))

    def scores(self, terms: Sequence[str]) -> dict[int, float]:
        out: dict[int, float] = {}
        k1, b, avg = self.k1, self.b, self.avg or 1.0
        for term, qtf in Counter(terms).items():
            idf = self.idf(term)
            for i, tf in self.postings.get(term, ()):
                norm = k1 * (1 - b + b * self.lengths[i] / avg)
                out[i] = out.get(i, 0.0) + qtf * idf * tf * (k1 + 1) / (tf + norm)
        return out

    def reference(self, terms: Sequence[str]) -> float:
        """The score of a chunk of average length holding every query term once."""
        return sum(qtf * self.idf(t) for t, qtf in Counter(terms).items())


class SearchIndex:
    """The chunks of one vector store, ranked lexically and, with vectors, semantically."""

    RRF_K = 60

    def __init__(self, texts: Sequence[str], *, embedder: Embedder | None = None,
                 vectors: tuple[np.ndarray, Sequence[int]] | None = None) -> None:
        """``vectors``: the windows' vectors and how many windows each chunk has (as
        ``embed_windows`` gives them); made here with ``embedder`` when not given."""
        self.texts = list(texts)
        self.bm25 = Bm25([analyze(t) for t in self.texts])
        self.embedder = embedder
        self.vectors: np.ndarray | None = None
        if embedder is not None and vectors is None and self.texts:
            vectors = embed_windows(embedder, self.texts)
        if vectors is not None:
            import numpy as np

            self.vectors = vectors[0]
            self.window_of = np.repeat(np.arange(len(vectors[1])), vectors[1])

    def __len__(self) -> int:
        return len(self.texts)

    def lexical(self, query: str) -> list[Hit]:
        terms = analyze(query)
        raw = self.bm25.scores(terms)
        ref = self.bm25.reference(terms) or 1.0
        hits = [Hit(i, 1.0 - math.exp(-s / ref)) for i, s in raw.items() if s > 0]
        hits.sort(key=lambda h: (-h.score, h.index))
        return hits

    def semantic(self, query: str) -> list[Hit]:
        if self.embedder is None or self.vectors is None or not len(self.texts):
            return []
        import numpy as np

        q = self.embedder.embed([query], query=True)[0]
        sims = np.full(len(self.texts), -1.0, dtype=np.float32)
        np.maximum.at(sims, self.window_of, self.vectors @ q)  # a chunk is as close as its closest window
        order = sims.argsort(kind="stable")[::-1]
        return [Hit(int(i), max(0.0, min(1.0, float(sims[i])))) for i in order]

    def search(self, query: str, *, limit: int = 10, allowed: Collection[int] | None = None,
               text_weight: float = 1.0, embedding_weight: float = 1.0) -> list[Hit]:
        """The best ``limit`` chunks for ``query`` (among ``allowed`` when given), best first."""
        lexical = self.lexical(query)
        semantic = self.semantic(query) if embedding_weight > 0 else []
        if allowed is not None:
            lexical = [h for h in lexical if h.index in allowed]
            semantic = [h for h in semantic if h.index in allowed]
        if not semantic:
            return lexical[:limit]
        if text_weight <= 0:
            return semantic[:limit]
        depth = max(50, limit * 5)
        fused: dict[int, float] = {}
        for weight, hits in ((text_weight, lexical[:depth]), (embedding_weight, semantic[:depth])):
            for rank, hit in enumerate(hits):
                fused[hit.index] = fused.get(hit.index, 0.0) + weight / (self.RRF_K + rank + 1)
        best = (text_weight + embedding_weight) / (self.RRF_K + 1)
        out = [Hit(i, s / best) for i, s in fused.items()]
        out.sort(key=lambda h: (-h.score, h.index))
        return out[:limit]


_SENTENCE = re.compile(r"(?<=[.!?。])\s+|\n\s*\n|\n(?=\s*(?:[-*#>|]|\d+[.)]))")


def windows(text: str, max_words: int = 60) -> list[str]:
    """A chunk cut into runs of whole sentences of about ``max_words`` words: what is embedded
    (an encoder sees a few hundred word pieces at most, and one vector for a whole chunk blurs
    its topics)."""
    out: list[str] = []
    current: list[str] = []
    size = 0
    for sentence in (s.strip() for s in _SENTENCE.split(text)):
        if not sentence:
            continue
        words = len(sentence.split())
        if current and size + words > max_words:
            out.append(" ".join(current))
            current, size = [], 0
        current.append(sentence)
        size += words
    if current:
        out.append(" ".join(current))
    return out or [text]


def embed_windows(embedder: Embedder, texts: Sequence[str]) -> tuple[np.ndarray, list[int]]:
    """The vectors of every chunk's windows, and each chunk's window count."""
    per_chunk = [windows(t) for t in texts]
    vectors = embedder.embed([w for ws in per_chunk for w in ws])
    return vectors, [len(ws) for ws in per_chunk]


def excerpt(text: str, query: str, max_chars: int = 700) -> str:
    """The part of ``text`` that best answers ``query``: its best matching sentence with its
    neighbours, up to ``max_chars``; the whole text when it is short enough."""
    text = text.strip()
    if len(text) <= max_chars:
        return text
    sentences = [s.strip() for s in _SENTENCE.split(text) if s and s.strip()]
    if not sentences:
        return text[:max_chars]
    wanted = set(analyze(query))
    scored = [len(wanted & set(analyze(s))) for s in sentences]
    best = max(range(len(sentences)), key=lambda i: (scored[i], -i))
    lo = hi = best
    size = len(sentences[best])
    while True:  # grow towards the better-matching neighbour while it fits
        options = [j for j in (lo - 1, hi + 1) if 0 <= j < len(sentences) and size + 1 + len(sentences[j]) <= max_chars]
        if not options:
            break
        j = max(options, key=lambda k: (scored[k], -abs(k - best), k < best))
        size += 1 + len(sentences[j])
        lo, hi = min(lo, j), max(hi, j)
    out = " ".join(sentences[lo: hi + 1])
    if len(out) > max_chars:
        out = out[: max_chars - 1].rstrip() + "…"
    return ("…" if lo > 0 else "") + out + ("…" if hi < len(sentences) - 1 and not out.endswith("…") else "")


__all__ = ["STOP_WORDS", "Bm25", "Embedder", "Hit", "SearchIndex", "analyze", "embed_windows", "excerpt", "stem",
           "windows"]
