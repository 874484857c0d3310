"""The file_search ranker: analysis, BM25, excerpts, hybrid fusion, and quality on a small eval."""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from midtier.tools.documents import chunk_text, count_tokens, extract_text
from midtier.tools.embeddings import MiniLM, WordPiece, read_safetensors
from midtier.tools.search_index import SearchIndex, analyze, excerpt, stem, windows

EVAL = Path(__file__).resolve().parents[2] / "bench" / "data" / "file_search_eval.json"


@pytest.mark.parametrize(("words", "same"), [
    (["house", "houses"], True), (["run", "running", "runs"], True), (["city", "cities"], True),
    (["configure", "configured", "configuration"], True), (["box", "boxes"], True), (["glass", "glasses"], True),
    (["status"], True), (["bus"], True), (["cat", "car"], False),
])
def test_stem_meets_inflections(words: list[str], same: bool) -> None:
    assert (len({stem(w) for w in words}) == 1) == same


def test_analyze_splits_identifiers_and_drops_stop_words() -> None:
    assert analyze("The parseHTTPResponse in my_module") == ["parsehttpresponse", "pars", "http", "respons",
                                                              "my_module", "modul"]
    assert analyze("Bücher über ÄRGER") == ["bücher", "über", "ärger"]
    assert analyze("what is it") == []


def test_bm25_ranks_the_matching_chunk_first_with_scores_in_0_1() -> None:
    index = SearchIndex(["The capital of France is Paris.", "Bananas are yellow and rich in potassium.",
                         "The Eiffel tower, in Paris, was built in 1889."])
    hits = index.search("when was the Eiffel tower built")
    assert hits[0].index == 2 and all(0 < h.score < 1 for h in hits)
    assert [h.index for h in index.search("capital of France")][:1] == [0]
    assert index.search("zebra") == []
    assert [h.index for h in index.search("Paris", allowed={0})] == [0]
    # every query term once in a chunk of average length scores about 1 - 1/e
    assert 0.4 < index.search("bananas potassium")[0].score < 0.8


def test_excerpt_keeps_the_answering_sentences() -> None:
    filler = " ".join(f"Sentence {i} talks about nothing in particular at all." for i in range(40))
    text = f"{filler} The gate code for visitors is 7391. {filler}"
    cut = excerpt(text, "visitor gate code", max_chars=200)
    assert "7391" in cut and len(cut) <= 202 and cut.startswith("…") and cut.endswith("…")
    assert excerpt("Short text.", "anything") == "Short text."


def test_windows_group_whole_sentences() -> None:
    text = " ".join(f"Sentence number {i} has six words." for i in range(30))
    parts = windows(text, max_words=20)
    assert len(parts) == 10 and all(p.endswith(".") for p in parts)
    assert " ".join(parts) == text


class Trigrams:
    """A stand-in embedder: hashed character trigrams (close for shared spelling, not meaning)."""

    name = "trigrams"

    def embed(self, texts: Sequence[str], *, query: bool = False) -> np.ndarray:
        out = np.zeros((len(texts), 256), dtype=np.float32)
        for i, text in enumerate(texts):
            t = f"  {text.lower()}  "
            for j in range(len(t) - 2):
                out[i, zlib.crc32(t[j: j + 3].encode()) % 256] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def test_hybrid_fusion_uses_both_rankings() -> None:
    texts = ["Configuration of the frobnicator happens in settings.toml.", "Unrelated text about lunch menus.",
             "The frobnicatr (sic) is configured by hand."]
    index = SearchIndex(texts, embedder=Trigrams())
    assert index.vectors is not None and index.vectors.shape == (3, 256)
    lexical = index.search("frobnicator configuration", embedding_weight=0)
    semantic = index.search("frobnicator configuration", text_weight=0)
    fused = index.search("frobnicator configuration")
    assert lexical[0].index == 0 and semantic[0].index == 0 and fused[0].index == 0
    assert 2 in {h.index for h in semantic[:2]}  # the misspelling is close in trigrams
    assert fused[0].score == pytest.approx(1.0)  # first in both rankings
    assert all(0 < h.score <= 1 for h in fused)
    assert [h.index for h in index.search("frobnicator", allowed={2})] == [2]


def test_chunking_counts_o200k_tokens() -> None:
    text = " ".join(f"word{i}" for i in range(2000))
    chunks = chunk_text(text, max_tokens=200, overlap=50)
    assert all(count_tokens(c) <= 200 for c in chunks) and len(chunks) > 5
    assert chunks[0].split()[-1] in chunks[1]  # consecutive chunks overlap
    assert chunk_text("  ") == [] and chunk_text("short") == ["short"]


def test_long_texts_are_encoded_in_pieces_like_whole() -> None:
    from midtier.tools.documents import _encoding, encode

    text = " ".join(f"token{i % 977} naïve café, 東京." for i in range(20_000))  # 500k characters
    assert encode(text) == _encoding().encode_ordinary(text)
    assert len(chunk_text(text * 3, 800, 400)) > 100  # three million characters: past bpe-openai's own limit


def test_html_extraction_drops_scripts_and_styles() -> None:
    html = b"<html><head><style>p{}</style></head><body><h1>Title</h1><p>A &amp; B</p><script>x()</script></body></html>"
    assert extract_text(html, "page.html") == "Title\n\nA & B"


def test_lexical_quality_on_the_eval() -> None:
    """BM25 on paraphrased questions (bench/file_search.py prints the same numbers): hit@1 0.77,
    MRR 0.81 when written; a regression below these floors is a ranking bug."""
    data = json.loads(EVAL.read_text())
    names = list(data["documents"])
    index = SearchIndex([extract_text(t.encode(), n) for n, t in data["documents"].items()])
    hit = rr = 0.0
    for q in data["questions"]:
        ranked = [names[h.index] for h in index.search(q["q"], limit=len(names))]
        rank = ranked.index(q["doc"]) + 1 if q["doc"] in ranked else None
        hit += rank == 1
        rr += 1 / rank if rank else 0
    n = len(data["questions"])
    assert hit / n >= 0.76 and rr / n >= 0.80


# -- the MiniLM code on a tiny random model (the real weights are checked in tests/e2e) ------------

def test_wordpiece_splits_like_bert() -> None:
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "un", "##aff", "##able", "hello", ",",
                                         "cafe", "東"])}
    tok = WordPiece(vocab)
    assert tok.words("Hello, Café 東x") == ["hello", ",", "cafe", "東", "x"]
    assert tok.encode("unaffable hello, zzz", 16) == [2, 4, 5, 6, 7, 8, 1, 3]
    assert tok.encode("hello " * 50, 5) == [2, 7, 7, 7, 3]


def _tiny_model(folder: Path, layers: int = 2, d: int = 24, vocab: int = 12) -> None:
    rng = np.random.default_rng(0)
    shapes = {"embeddings.word_embeddings.weight": (vocab, d), "embeddings.position_embeddings.weight": (64, d),
              "embeddings.token_type_embeddings.weight": (2, d), "embeddings.LayerNorm.weight": (d,),
              "embeddings.LayerNorm.bias": (d,)}
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for m in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            shapes[p + m + ".weight"], shapes[p + m + ".bias"] = (d, d), (d,)
        shapes[p + "intermediate.dense.weight"], shapes[p + "intermediate.dense.bias"] = (4 * d, d), (4 * d,)
        shapes[p + "output.dense.weight"], shapes[p + "output.dense.bias"] = (d, 4 * d), (d,)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes[p + ln + ".weight"], shapes[p + ln + ".bias"] = (d,), (d,)
    header, blobs, offset = {}, [], 0
    for name, shape in shapes.items():
        data = rng.standard_normal(shape).astype(np.float32).tobytes()
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "b", "c", "d", "e", "f", "g", "h"]
    (folder / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {t: i for i, t in enumerate(tokens)}}}))


def test_minilm_forward_pass_shapes_padding_and_norm(tmp_path: Path) -> None:
    _tiny_model(tmp_path)
    weights = read_safetensors(tmp_path / "model.safetensors")
    assert weights["encoder.layer.1.intermediate.dense.weight"].shape == (96, 24)
    model = MiniLM(tmp_path)
    model.heads = 4
    vectors = model.embed(["a b c", "d", "a b c d e f g h a b c"])
    assert vectors.shape == (3, 24) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    alone = model.embed(["d"])
    assert np.allclose(alone[0], vectors[1], atol=1e-5)  # padding in a batch changes nothing
