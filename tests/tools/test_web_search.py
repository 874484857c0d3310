"""web_search: pages read from HTML/Markdown/text, the offline corpus ranked, the tool's items,
events and citations, the SearXNG provider (on a mock transport), and the request checks."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, cast

import httpx
import openai
import pytest
from openai.types.responses import ResponseFunctionWebSearch
from openai.types.responses.response_output_text import AnnotationURLCitation

from midtier.core.errors import InvalidRequest
from midtier.core.messages import ToolCall
from midtier.engines.mock import MockEngine
from midtier.loop.turn import ServedModel
from midtier.server import create_app
from midtier.tools import Toolbox, ToolContext, ToolError, ToolResult, ToolsConfig
from midtier.tools.web_corpus import CorpusIndex, html_to_page, markdown_to_page, passages, read_corpus
from midtier.tools.web_search import SearxngProvider, WebSearchTool

FACT = "The Zorblat festival of Kelvara is held every year on the ninth of Brumaire, with lanterns of blue glass."

PAGES = {
    "kelvara.html": f"""<!doctype html><html><head><title>Kelvara travel notes</title>
        <link rel="canonical" href="https://kelvara.example/notes">
        <style>body {{ color: red }}</style><script>var festival = "wrong";</script></head>
        <body><nav>Home | About</nav><h1>Travel notes</h1>
        <p>Kelvara is a small town in the hills. Its bakery sells rye bread.</p>
        <p>{FACT}</p><p>Trains run twice a day.</p></body></html>""",
    "guide/cooking.md": "---\nauthor: x\n---\n# Cooking rice\n\nRinse the rice, then boil it for twelve minutes.\n\n"
                        "Let it rest with the lid on.\n",
    "weather.txt": "Weather in Kelvara\n\nKelvara has cold winters and mild summers; it rains in spring.\n",
    "ogpage.htm": """<html><head><meta property="og:url" content="https://og.example/page"></head>
        <body><h2>Open graph page</h2><p>Owls hunt at night in the forest.</p></body></html>""",
    ".hidden/secret.txt": "Zorblat secret hidden page",
    "image.png": "not a page",
}


def write_corpus(root: Path) -> Path:
    for name, text in PAGES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "web")


def toolbox(tmp_path: Path, **settings: Any) -> Toolbox:
    return Toolbox(ToolsConfig(settings={"web_search": settings}), cast(Any, None), tmp_path)


def context(box: Toolbox, param: dict[str, Any], events: list[str], include: frozenset[str] = frozenset()) -> ToolContext:
    return ToolContext("resp_test", param, cast(Any, None), box, "scope", lambda t, f: events.append(t), include)


def call(name: str, **args: Any) -> ToolCall:
    return ToolCall("call_1", name, json.dumps(args))


def run(tool: WebSearchTool, c: ToolCall, ctx: ToolContext) -> tuple[dict[str, Any], ToolResult]:
    item = tool.start(c, ctx.param)
    result = asyncio.run(tool.run(item, c, ctx))
    return item, result


# -- pages -----------------------------------------------------------------------------------------
def test_html_page_text_title_and_canonical_url() -> None:
    page = html_to_page(PAGES["kelvara.html"], "file:///x/kelvara.html")
    assert page.title == "Kelvara travel notes"
    assert page.url == "https://kelvara.example/notes"
    assert FACT in page.text
    assert "wrong" not in page.text and "color" not in page.text
    assert [line for line in page.text.splitlines() if line] == [  # blocks are paragraphs
        "Home | About", "Travel notes", "Kelvara is a small town in the hills. Its bakery sells rye bread.", FACT,
        "Trains run twice a day."]


def test_html_page_falls_back_to_heading_og_url_and_relative_canonical() -> None:
    page = html_to_page(PAGES["ogpage.htm"], "file:///x/ogpage.htm")
    assert (page.title, page.url) == ("Open graph page", "https://og.example/page")
    page = html_to_page('<link rel="canonical" href="/a/b"><p>x</p>', "https://site.example/c/d")
    assert page.url == "https://site.example/a/b"
    assert html_to_page("<p>no title &amp; no url", "u").title == ""
    assert html_to_page("<p>broken <b>html", "u").text == "broken html"


def test_markdown_front_matter_and_heading() -> None:
    page = markdown_to_page(PAGES["guide/cooking.md"], "u")
    assert page.title == "Cooking rice"
    assert "author" not in page.text and page.text.startswith("# Cooking rice")


def test_corpus_urls_titles_and_skipped_files(corpus: Path) -> None:
    pages = {Path(p.path).name: p for p in read_corpus(corpus)}
    assert sorted(pages) == ["cooking.md", "kelvara.html", "ogpage.htm", "weather.txt"]
    assert pages["cooking.md"].url == (corpus / "guide" / "cooking.md").resolve().as_uri()
    assert pages["weather.txt"].title == "Weather in Kelvara"
    assert pages["kelvara.html"].url == "https://kelvara.example/notes"
    based = {Path(p.path).name: p for p in read_corpus(corpus, "https://docs.example/base/")}
    assert based["cooking.md"].url == "https://docs.example/base/guide/cooking.md"
    assert based["kelvara.html"].url == "https://kelvara.example/notes"  # its own URL wins


def test_passages_gather_paragraphs_and_cut_long_ones() -> None:
    assert passages("a\n\nb\n\nc", size=600) == ["a\nb\nc"]
    long = " ".join(f"Sentence number {i} is here." for i in range(100))
    parts = passages(long, size=200)
    assert len(parts) > 5 and all(len(p) <= 400 for p in parts)
    assert " ".join(parts).split() == long.split()


def test_index_ranks_the_page_holding_the_fact_first(corpus: Path) -> None:
    index = CorpusIndex(read_corpus(corpus))
    hits = index.search("When is the Zorblat festival held?", limit=3)
    assert hits[0][0].url == "https://kelvara.example/notes"
    assert "ninth of Brumaire" in hits[0][1]
    assert index.search("rice boil minutes", limit=1)[0][0].title == "Cooking rice"
    assert index.search("the of and", limit=3) == []


# -- the tool --------------------------------------------------------------------------------------
def test_functions_and_browse_setting(tmp_path: Path, corpus: Path) -> None:
    tool = WebSearchTool(toolbox(tmp_path, corpus=str(corpus)))
    names = [s.name for s in asyncio.run(tool.functions({"type": "web_search"}, cast(Any, None)))]
    assert names == ["web_search", "open_page", "find_in_page"]
    tool = WebSearchTool(toolbox(tmp_path, corpus=str(corpus), browse=False))
    specs = asyncio.run(tool.functions({"type": "web_search"}, cast(Any, None)))
    assert [s.name for s in specs] == ["web_search"] and specs[0].parameters["required"] == ["query"]


def test_registry_gives_both_types_the_same_tool(tmp_path: Path, corpus: Path) -> None:
    box = toolbox(tmp_path, corpus=str(corpus))
    assert isinstance(box.tool("web_search"), WebSearchTool) and box.tool("web_search").type == "web_search"
    preview = box.tool("web_search_preview")
    assert isinstance(preview, WebSearchTool) and preview.type == "web_search_preview"
    for dated in ("web_search_2025_08_26", "web_search_preview_2025_03_11"):  # the SDK's dated names
        assert isinstance(box.tool(dated), WebSearchTool) and box.tool(dated).type == dated


def test_search_item_events_output_and_citations(tmp_path: Path, corpus: Path) -> None:
    box = toolbox(tmp_path, corpus=str(corpus))
    tool = WebSearchTool(box)
    events: list[str] = []
    param = {"type": "web_search_preview"}
    item, result = run(tool, call("web_search", query="Zorblat festival date"), context(box, param, events))
    checked = ResponseFunctionWebSearch.model_validate(item)
    assert checked.status == "completed" and checked.action.type == "search"
    assert item["action"] == {"type": "search", "query": "Zorblat festival date", "queries": ["Zorblat festival date"]}
    assert events == ["response.web_search_call.in_progress", "response.web_search_call.searching",
                      "response.web_search_call.completed"]
    assert "ninth of Brumaire" in result.output
    assert result.output.index("https://kelvara.example/notes") < result.output.index("ninth of Brumaire")
    lines = result.output.splitlines()  # the shape the 0.5B model answers from (see ANSWER_NOW)
    assert lines[0] == 'Search results for "Zorblat festival date":'
    assert lines[1] == "1. Kelvara travel notes - https://kelvara.example/notes"
    assert lines[2].startswith("   ") and lines[-1] == "Now answer the question in one sentence, using these results."
    first = result.citations[0]
    assert first == {"type": "url_citation", "url": "https://kelvara.example/notes", "title": "Kelvara travel notes"}
    AnnotationURLCitation.model_validate({**first, "start_index": 0, "end_index": 1})


def test_sources_when_included_and_context_size(tmp_path: Path, corpus: Path) -> None:
    box = toolbox(tmp_path, corpus=str(corpus))
    tool = WebSearchTool(box)
    param = {"type": "web_search", "search_context_size": "low"}
    item, result = run(tool, call("web_search", query="Kelvara"), context(box, param, [],
                                                                          frozenset({"web_search_call.action.sources"})))
    sources = item["action"]["sources"]
    assert 1 <= len(sources) <= 3 and all(s["type"] == "url" for s in sources)
    assert {s["url"] for s in sources} == {c["url"] for c in result.citations}
    ResponseFunctionWebSearch.model_validate(item)


def test_allowed_domains_filter_results_and_pages(tmp_path: Path, corpus: Path) -> None:
    box = toolbox(tmp_path, corpus=str(corpus))
    tool = WebSearchTool(box)
    param = {"type": "web_search", "filters": {"allowed_domains": ["og.example"]}}
    _, result = run(tool, call("web_search", query="Kelvara festival owls"), context(box, param, []))
    assert [c["url"] for c in result.citations] == ["https://og.example/page"]
    with pytest.raises(ToolError, match="outside the domains"):
        run(tool, call("open_page", url="https://kelvara.example/notes"), context(box, param, []))
    param = {"type": "web_search", "filters": {"allowed_domains": ["example"]}}  # subdomains pass
    _, result = run(tool, call("web_search", query="Kelvara festival"), context(box, param, []))
    assert "https://kelvara.example/notes" in [c["url"] for c in result.citations]


def test_no_results_and_empty_query(tmp_path: Path, corpus: Path) -> None:
    box = toolbox(tmp_path, corpus=str(corpus))
    tool = WebSearchTool(box)
    item, result = run(tool, call("web_search", query="quantum chromodynamics"), context(box, {}, []))
    assert result.output.startswith('No results for "quantum chromodynamics"') and result.citations == []
    assert item["status"] == "completed"
    with pytest.raises(ToolError, match="query is empty"):
        run(tool, call("web_search", query="  "), context(box, {}, []))
    with pytest.raises(ToolError, match="JSON object"):
        run(tool, ToolCall("c", "web_search", "[1]"), context(box, {}, []))


def test_open_page_and_find_in_page(tmp_path: Path, corpus: Path) -> None:
    box = toolbox(tmp_path, corpus=str(corpus))
    tool = WebSearchTool(box)
    events: list[str] = []
    item, result = run(tool, call("open_page", url="https://kelvara.example/notes/"), context(box, {}, events))
    assert item["action"] == {"type": "open_page", "url": "https://kelvara.example/notes/"}
    ResponseFunctionWebSearch.model_validate(item)
    assert FACT in result.output and result.citations[0]["url"] == "https://kelvara.example/notes"
    assert events[-1] == "response.web_search_call.completed"

    item, result = run(tool, call("find_in_page", url="https://kelvara.example/notes", pattern="BLUE GLASS"),
                       context(box, {}, []))
    assert item["action"] == {"type": "find_in_page", "url": "https://kelvara.example/notes", "pattern": "BLUE GLASS"}
    ResponseFunctionWebSearch.model_validate(item)
    assert "lanterns of blue glass" in result.output and len(result.citations) == 1
    _, result = run(tool, call("find_in_page", url="https://kelvara.example/notes", pattern="trains schedule"),
                    context(box, {}, []))
    assert "Trains run twice a day" in result.output  # the words, when the phrase is not there
    _, result = run(tool, call("find_in_page", url="https://kelvara.example/notes", pattern="submarine"),
                    context(box, {}, []))
    assert result.output == '"submarine" is not on https://kelvara.example/notes.' and not result.citations
    with pytest.raises(ToolError, match="no page at"):
        run(tool, call("open_page", url="https://nowhere.example/"), context(box, {}, []))


def test_long_page_is_cut_for_the_model(tmp_path: Path) -> None:
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "long.txt").write_text("Long page\n\n" + "word " * 5000)
    box = toolbox(tmp_path, corpus=str(tmp_path / "web"))
    tool = WebSearchTool(box)
    url = (tmp_path / "web" / "long.txt").resolve().as_uri()
    _, result = run(tool, call("open_page", url=url), context(box, {"search_context_size": "low"}, []))
    assert len(result.output) < 2400 and "use find_in_page to look for a word]" in result.output
    assert result.output.endswith("\n\nNow answer the question in one sentence, using these results.")


def test_history_reads_items_back(tmp_path: Path, corpus: Path) -> None:
    tool = WebSearchTool(toolbox(tmp_path, corpus=str(corpus)))
    for name, args in (("web_search", {"query": "q"}), ("open_page", {"url": "u"}),
                       ("find_in_page", {"url": "u", "pattern": "p"})):
        item = tool.start(call(name, **args), {})
        back = tool.as_call(item)
        assert back is not None and (back.id, back.name, json.loads(back.arguments)) == (item["id"], name, args)
    item = {"id": "ws_1", "type": "web_search_call", "status": "completed",
            "action": {"type": "search", "query": "q", "sources": [{"type": "url", "url": "https://a.example/"}]}}
    assert tool.as_output(item) == ("ws_1", "Pages found:\nURL: https://a.example/")
    assert tool.as_output({**item, "status": "failed"}) == ("ws_1", "The web search did not complete (failed).")


def test_check_needs_a_provider_and_valid_fields(tmp_path: Path, corpus: Path) -> None:
    with pytest.raises(InvalidRequest, match="--web-corpus") as info:
        WebSearchTool(toolbox(tmp_path)).check({"type": "web_search"}, "tools[0]")
    assert info.value.param == "tools[0].type"
    with pytest.raises(InvalidRequest, match="no url"):
        WebSearchTool(toolbox(tmp_path, provider="searxng")).check({"type": "web_search"}, "tools[0]")
    with pytest.raises(InvalidRequest, match="unknown"):
        WebSearchTool(toolbox(tmp_path, provider="bing")).check({"type": "web_search"}, "tools[0]")
    tool = WebSearchTool(toolbox(tmp_path, corpus=str(corpus)))
    tool.check({"type": "web_search", "search_context_size": "high", "filters": {"allowed_domains": ["a.b"]}}, "t")
    with pytest.raises(InvalidRequest) as info:
        tool.check({"type": "web_search", "search_context_size": "huge"}, "tools[1]")
    assert info.value.param == "tools[1].search_context_size"
    with pytest.raises(InvalidRequest) as info:
        tool.check({"type": "web_search", "filters": {"allowed_domains": "a.b"}}, "tools[1]")
    assert info.value.param == "tools[1].filters.allowed_domains"


def test_missing_corpus_folder_is_a_tool_error(tmp_path: Path) -> None:
    box = toolbox(tmp_path, corpus=str(tmp_path / "missing"))
    with pytest.raises(ToolError, match="does not exist"):
        run(WebSearchTool(box), call("web_search", query="x"), context(box, {}, []))


# -- SearXNG ---------------------------------------------------------------------------------------
def searxng(handler: Any) -> SearxngProvider:
    return SearxngProvider("http://searx.test/", transport=httpx.MockTransport(handler))


def test_searxng_search_and_open(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/search":
            return httpx.Response(200, json={"results": [
                {"url": "https://a.example/x", "title": "A  page", "content": "Alpha beta gamma."},
                {"title": "no url"},
                {"url": "https://b.example/y", "title": "B", "content": "Delta."}]})
        if request.url.host == "a.example":
            return httpx.Response(200, html="<html><title>A full</title><body><p>Alpha in full.</p></body></html>")
        return httpx.Response(404)

    provider = searxng(handler)

    async def go() -> None:
        hits = await provider.search("alpha", 5)
        assert [(p.url, p.title, s) for p, s in hits] == [
            ("https://a.example/x", "A page", "Alpha beta gamma."), ("https://b.example/y", "B", "Delta.")]
        assert seen[0].url.params["q"] == "alpha" and seen[0].url.params["format"] == "json"
        page = await provider.open("https://a.example/x")
        assert page is not None and (page.title, page.text) == ("A full", "Alpha in full.")
        assert len(seen) == 2
        assert await provider.open("https://a.example/x") is page  # kept
        with pytest.raises(ToolError, match="HTTP 404"):
            await provider.open("https://c.example/")
        with pytest.raises(ToolError, match="only http"):
            await provider.open("file:///etc/passwd")
        await provider.close()

    asyncio.run(go())


def test_searxng_errors_are_tool_errors() -> None:
    async def go(handler: Any, match: str) -> None:
        provider = searxng(handler)
        with pytest.raises(ToolError, match=match):
            await provider.search("x", 3)
        await provider.close()

    asyncio.run(go(lambda r: httpx.Response(500), "HTTP 500"))
    asyncio.run(go(lambda r: httpx.Response(200, text="<html>"), "not JSON"))
    asyncio.run(go(lambda r: httpx.Response(200, json={"answers": []}), "no results list"))

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    asyncio.run(go(refuse, "could not be reached"))


def test_tool_on_searxng_provider(tmp_path: Path) -> None:
    box = toolbox(tmp_path, provider="searxng", url="http://searx.test")
    provider = searxng(lambda r: httpx.Response(200, json={"results": [
        {"url": "https://news.example/a", "title": "News", "content": "The mayor opened the new bridge today."}]}))
    box._services["web_search:searxng"] = provider  # the provider the server would make, on a mock transport
    tool = WebSearchTool(box)
    item, result = run(tool, call("web_search", query="bridge"), context(box, {"type": "web_search"}, []))
    assert "The mayor opened the new bridge today." in result.output
    assert result.citations == [{"type": "url_citation", "url": "https://news.example/a", "title": "News"}]
    with pytest.raises(ToolError, match="external_web_access"):
        run(tool, call("web_search", query="bridge"),
            context(box, {"type": "web_search", "external_web_access": False}, []))
    asyncio.run(box.close())


def test_queries_as_a_small_model_writes_them(tmp_path: Path, corpus: Path) -> None:
    box = toolbox(tmp_path, corpus=str(corpus))
    tool = WebSearchTool(box)
    item, result = run(tool, call("web_search", query=["rice boil", "Zorblat festival", "rice boil", "a", "b"]),
                       context(box, {}, []))
    assert item["action"]["query"] == "rice boil"
    assert item["action"]["queries"] == ["rice boil", "Zorblat festival", "a"]  # each once, at most three
    ResponseFunctionWebSearch.model_validate(item)
    urls = [c["url"] for c in result.citations]
    assert urls[:2] == [(corpus / "guide" / "cooking.md").resolve().as_uri(), "https://kelvara.example/notes"]
    assert len(urls) == len(set(urls))
    item, result = run(tool, call("web_search", q="Zorblat"), context(box, {}, []))
    assert item["action"]["query"] == "Zorblat" and "ninth of Brumaire" in result.output


# -- through the Responses API, on the mock engine -----------------------------------------------------
def search_call(query: str) -> str:
    return "<tool_call>\n" + json.dumps({"name": "web_search", "arguments": {"query": query}}) + "\n</tool_call>"


def test_a_response_searches_and_its_answer_cites_the_page(served: ServedModel, engine: MockEngine, tmp_path: Path,
                                                           corpus: Path) -> None:
    app = create_app([served], tools=ToolsConfig(settings={"web_search": {"corpus": str(corpus)}}), data_dir=tmp_path)
    from starlette.testclient import TestClient

    with TestClient(app) as http:
        client = openai.OpenAI(base_url="http://testserver/v1", api_key="t", http_client=http, max_retries=0)
        engine.enqueue(search_call("Zorblat festival"), "It is held on the ninth of Brumaire (Kelvara travel notes).")
        with client.responses.stream(model="mock", input="When is the Zorblat festival?",
                                     tools=[{"type": "web_search_preview"}],
                                     tool_choice={"type": "web_search_preview"}) as stream:
            events = [e.type for e in stream]
            r = stream.get_final_response()
        assert [o.type for o in r.output] == ["web_search_call", "message"]
        search = r.output[0]
        assert search.type == "web_search_call" and search.status == "completed"
        assert search.action.type == "search" and search.action.query == "Zorblat festival"
        start = events.index("response.output_item.added")
        assert events[start:start + 5] == [
            "response.output_item.added", "response.web_search_call.in_progress",
            "response.web_search_call.searching", "response.web_search_call.completed", "response.output_item.done"]
        assert "ninth of Brumaire" in engine.detokenize(engine.prompts[-1])  # the model read the results
        message = r.output[1]
        assert message.type == "message" and message.content[0].type == "output_text"
        cited = message.content[0].annotations[0]
        assert cited.type == "url_citation" and cited.url == "https://kelvara.example/notes"
        text = message.content[0].text
        assert text[cited.start_index:cited.end_index] == "Kelvara travel notes"  # placed on the title it names


def test_a_server_without_a_corpus_refuses_web_search(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="--web-corpus") as info:
        client.responses.create(model="mock", input="hi", tools=[{"type": "web_search"}])
    assert info.value.body["param"] == "tools[0].type"  # type: ignore[index]
