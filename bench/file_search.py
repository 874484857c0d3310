"""Retrieval quality of file_search's ranker on a small eval (bench/data/file_search_eval.json).

    .venv/bin/python bench/file_search.py            # lexical (BM25) only
    .venv/bin/python bench/file_search.py --minilm   # also semantic and hybrid (fetches MiniLM once)

For each ranking: hit@1 (the right document first), MRR, and whether the answer's phrase is in
the excerpt the model would read. Documents are chunked as the server chunks them (auto).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from midtier.tools.documents import chunk_text, extract_text
from midtier.tools.search_index import SearchIndex, excerpt

DATA = Path(__file__).parent / "data" / "file_search_eval.json"


def load() -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """(chunk texts, the document of each chunk, questions)."""
    data = json.loads(DATA.read_text())
    texts, owners = [], []
    for name, text in data["documents"].items():
        for chunk in chunk_text(extract_text(text.encode(), name)):
            texts.append(chunk)
            owners.append(name)
    return texts, owners, data["questions"]


def evaluate(index: SearchIndex, owners: list[str], questions: list[dict[str, Any]], weights: tuple[float, float],
             ) -> dict[str, Any]:
    hits = rr = in_excerpt = 0
    misses = []
    start = time.perf_counter()
    for q in questions:
        ranked = index.search(q["q"], limit=len(owners), text_weight=weights[0], embedding_weight=weights[1])
        docs = list(dict.fromkeys(owners[h.index] for h in ranked))
        rank = docs.index(q["doc"]) + 1 if q["doc"] in docs else None
        hits += rank == 1
        rr += 1 / rank if rank else 0
        if ranked and q["phrase"] in excerpt(index.texts[ranked[0].index], q["q"]):
            in_excerpt += 1
        if rank != 1:
            misses.append((q["q"], docs[:2]))
    n = len(questions)
    return {"hit@1": round(hits / n, 3), "mrr": round(rr / n, 3), "phrase_in_excerpt": round(in_excerpt / n, 3),
            "ms_per_query": round((time.perf_counter() - start) * 1000 / n, 1), "misses": misses}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minilm", action="store_true", help="also rank with the MiniLM embeddings")
    parser.add_argument("--verbose", action="store_true", help="list the misses")
    args = parser.parse_args()
    texts, owners, questions = load()
    runs: list[tuple[str, SearchIndex, tuple[float, float]]] = [("bm25", SearchIndex(texts), (1.0, 0.0))]
    if args.minilm:
        from midtier.tools.embeddings import load_embedder

        start = time.perf_counter()
        index = SearchIndex(texts, embedder=load_embedder("minilm"))
        print(f"embedded {len(texts)} chunks in {time.perf_counter() - start:.1f}s")
        runs += [("minilm", index, (0.0, 1.0)), ("hybrid", index, (1.0, 1.0))]
    print(f"{len(questions)} questions, {len(texts)} chunks")
    for name, index, weights in runs:
        result = evaluate(index, owners, questions, weights)
        misses = result.pop("misses")
        print(name, json.dumps(result))
        if args.verbose:
            for q, docs in misses:
                print("   miss:", q, "->", docs)


if __name__ == "__main__":
    main()
