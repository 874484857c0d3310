"""web_search on the real embedded model: one response searches an offline corpus this test
writes and answers with a fact only that corpus holds, citing its page.

The module's server is started with ``--web-corpus`` (the session server has no corpus)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from .conftest import running_server

pytestmark = pytest.mark.e2e

FACT_URL = "https://harrowgate-chess.example/about"
PAGES = {
    "chess-club.html": f"""<!doctype html><html><head><title>Harrowgate Chess Club</title>
<link rel="canonical" href="{FACT_URL}"></head>
<body><h1>About the Harrowgate Chess Club</h1>
<p>The Harrowgate Chess Club meets every Thursday evening in the old library.</p>
<p>The official mascot of the Harrowgate Chess Club is a blue heron named Pemberton.</p>
<p>New members pay no fee for their first month.</p></body></html>""",
    "herons.md": "# Herons\n\nHerons are long-legged freshwater birds. The grey heron is common in Europe.\n"
                 "They hunt fish in shallow water and nest in colonies called heronries.\n",
    "chess-rules.txt": "Basic chess rules\n\nEach player starts with sixteen pieces. The king moves one square in any "
                       "direction.\nCheckmate ends the game. A club tournament usually uses a clock.\n",
    "town/harrowgate.html": "<html><head><title>Harrowgate</title></head><body><h1>Harrowgate</h1><p>Harrowgate is a "
                            "market town with a stone bridge and a weekly fair.</p></body></html>",
}


@pytest.fixture(scope="module")
def web_client(tmp_path_factory: pytest.TempPathFactory, model: str) -> Iterator[openai.OpenAI]:
    corpus = tmp_path_factory.mktemp("web")
    for name, text in PAGES.items():
        (corpus / name).parent.mkdir(parents=True, exist_ok=True)
        (corpus / name).write_text(text)
    with running_server(model, tmp_path_factory.mktemp("web_server") / "server.log", "--data-dir",
                        str(tmp_path_factory.mktemp("web_data")), "--web-corpus", str(corpus)) as base:
        yield openai.OpenAI(base_url=base + "/v1", api_key="none", timeout=900, max_retries=0)


def test_web_search_answers_from_the_corpus_with_a_url_citation(web_client: openai.OpenAI, model: str) -> None:
    # the SDK's tool_choice names web search by its preview type; both types are the same tool here
    tools: Any = [{"type": "web_search_preview"}]
    with web_client.responses.stream(model=model, input="What is the name of the Harrowgate Chess Club's mascot?",
                                     tools=tools, tool_choice={"type": "web_search_preview"}, temperature=0,
                                     # one search: with parallel calls, the query may be a list and the
                                     # 0.5B model repeats its items until max_output_tokens
                                     parallel_tool_calls=False, max_output_tokens=120,
                                     include=["web_search_call.action.sources"]) as stream:
        events = [e.type for e in stream]
        r = stream.get_final_response()
    assert r.status == "completed", r.output
    searches = [o for o in r.output if o.type == "web_search_call"]
    assert searches and searches[0].status == "completed" and searches[0].action.type == "search", r.output
    assert searches[0].action.sources and FACT_URL in [s.url for s in searches[0].action.sources]
    for name in ("in_progress", "searching", "completed"):
        assert f"response.web_search_call.{name}" in events
    assert r.output[-1].type == "message"
    assert "Pemberton" in r.output_text, r.output_text
    annotations = [a for o in r.output if o.type == "message" for c in o.content if c.type == "output_text"
                   for a in c.annotations]
    cited = [a for a in annotations if a.type == "url_citation"]
    assert FACT_URL in [a.url for a in cited], annotations
    assert "response.output_text.annotation.added" in events
