"""web_search: the model searches the web, opens a page, finds text in it; answers cite URLs.

Request types ``web_search`` and ``web_search_preview`` (with their dated aliases) are the same
tool. The model sees up to three simple functions:

    web_search(query)           -> the top pages: title, URL, the passage that best matches
    open_page(url)              -> the page's text (cut to a size set by ``search_context_size``)
    find_in_page(url, pattern)  -> the passages of the page holding ``pattern``

Each call is one ``web_search_call`` item whose ``action`` is ``search`` (``query``, ``queries``
and, when ``include`` asks for ``web_search_call.action.sources``, ``sources``), ``open_page``
(``url``) or ``find_in_page`` (``url``, ``pattern``); it streams
``response.web_search_call.in_progress``, ``.searching`` and ``.completed``. The pages a call
returns are its citations (``url_citation``: url and title), which the loop places on the answer.

Where the web comes from is a **provider** (``WebProvider``), chosen by the server's settings
(``settings["web_search"]``, shared by both request types):

    provider   "corpus" (default): a local folder of HTML, Markdown and text pages, indexed once
               (``midtier.tools.web_corpus``; no internet needed); "searxng": a SearXNG-compatible
               JSON API (``GET {url}/search?q=...&format=json``)
    corpus     the folder (``midtier serve --web-corpus DIR`` sets it)
    base_url   corpus pages without a canonical URL get ``base_url`` + their relative path
               (default: their ``file://`` URI)
    url        the SearXNG base URL; ``headers`` extra headers for it; ``timeout`` seconds (10)
    open_pages whether the searxng provider may fetch a result's page for open_page/find_in_page
               (default true; http and https only, at most ``MAX_PAGE_BYTES``)
    browse     whether the model also gets open_page and find_in_page (default true)

A model trained on its own browser (gpt-oss, ``Format.builtin_namespaces``) sees the tool as that
``browser`` instead (``native_functions``): ``browser.search(query, topn?)`` is a search (at most
``topn`` results), ``browser.open(id?)`` opens a URL (``id`` a string), the result numbered ``id``
in the last search (a number), or the page last opened (no id), and ``browser.find(pattern)``
finds in the page last opened; results are numbered ``【n†title†domain】`` as it was trained. What
"last" means is kept per conversation (``ctx.scope``). The items are the same ``web_search_call``s.

A request's ``filters.allowed_domains`` keeps results (and opened pages) to those domains and
their subdomains; ``external_web_access: false`` refuses the searxng provider's live searches.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol
from urllib.parse import urlsplit

import httpx

from midtier.core.errors import InvalidRequest
from midtier.core.messages import ToolCall, ToolSpec, new_id
from midtier.tools.base import ToolContext, ToolError, ToolResult
from midtier.tools.search_index import analyze, excerpt
from midtier.tools.web_corpus import CorpusProvider, Page, html_to_page, text_to_page

if TYPE_CHECKING:
    from midtier.tools import Toolbox

log = logging.getLogger(__name__)

MAX_PAGE_BYTES = 2_000_000
SOURCES = "web_search_call.action.sources"
# per search_context_size: (results per search, snippet characters, characters of an opened page)
CONTEXT_SIZES = {"low": (3, 300, 2000), "medium": (5, 400, 4000), "high": (8, 600, 8000)}
FUNCTIONS = ("web_search", "open_page", "find_in_page")
BROWSER = ("browser.search", "browser.open", "browser.find")  # gpt-oss's browser (native_functions)
_INTEGER = {"type": "integer"}
MAX_QUERIES = 3  # queries one call may run (a model may write a list)
# Closing what the model reads: without it, Qwen2.5-Coder-0.5B answers a tool result by echoing it
# (a fenced <tool_response> block) or by searching again; with it, it answers in prose (the
# wording matters: "briefly" or without "in one sentence" it searched again).
ANSWER_NOW = "Now answer the question in one sentence, using these results."


class WebProvider(Protocol):
    """Where searches go and pages come from."""

    name: str

    async def search(self, query: str, limit: int) -> list[tuple[Page, str]]:
        """The best pages for ``query``, best first, each with the passage that matches best."""

    async def open(self, url: str) -> Page | None:
        """The page at ``url`` (None when there is none)."""


# -- the SearXNG provider ------------------------------------------------------------------------
class SearxngProvider:
    """A SearXNG-compatible JSON search API: ``GET {url}/search?q=...&format=json`` answering
    ``{"results": [{"url", "title", "content"}, ...]}``. Opening a page fetches it over HTTP(S)."""

    name = "searxng"

    def __init__(self, url: str, *, headers: dict[str, str] | None = None, timeout: float = 10.0,
                 open_pages: bool = True, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self.open_pages = open_pages
        self._client = httpx.AsyncClient(headers=headers, timeout=timeout, follow_redirects=True,
                                         transport=transport)
        self._pages: OrderedDict[str, Page] = OrderedDict()  # recently opened, and results as pages

    def _remember(self, page: Page) -> None:
        self._pages[page.url] = page
        self._pages.move_to_end(page.url)
        while len(self._pages) > 256:
            self._pages.popitem(last=False)

    async def search(self, query: str, limit: int) -> list[tuple[Page, str]]:
        try:
            reply = await self._client.get(self.url + "/search", params={"q": query, "format": "json"})
            reply.raise_for_status()
            data = reply.json()
        except httpx.HTTPStatusError as exc:
            raise ToolError(f"the search service answered HTTP {exc.response.status_code}") from exc
        except httpx.HTTPError as exc:
            raise ToolError(f"the search service could not be reached ({type(exc).__name__})") from exc
        except ValueError as exc:
            raise ToolError("the search service sent a reply that is not JSON") from exc
        results = data.get("results") if isinstance(data, dict) else None
        if not isinstance(results, list):
            raise ToolError("the search service sent no results list")
        hits: list[tuple[Page, str]] = []
        for result in results:
            if not isinstance(result, dict) or not isinstance(result.get("url"), str):
                continue
            snippet = " ".join(str(result.get("content") or "").split())
            page = Page(url=result["url"], title=" ".join(str(result.get("title") or result["url"]).split()),
                        text=snippet)
            hits.append((page, snippet))
            if len(hits) >= limit:
                break
        return hits

    async def open(self, url: str) -> Page | None:
        cached = self._pages.get(url)
        if cached is not None:
            return cached
        if not self.open_pages:
            raise ToolError("opening pages is turned off on this server")
        if urlsplit(url).scheme not in ("http", "https"):
            raise ToolError("only http and https pages can be opened")
        try:
            async with self._client.stream("GET", url) as reply:
                if reply.status_code >= 400:
                    raise ToolError(f"the page answered HTTP {reply.status_code}")
                body = b""
                async for chunk in reply.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_PAGE_BYTES:
                        break
                kind = reply.headers.get("content-type", "")
                charset = reply.charset_encoding or "utf-8"
        except httpx.HTTPError as exc:
            raise ToolError(f"the page could not be fetched ({type(exc).__name__})") from exc
        text = body[:MAX_PAGE_BYTES].decode(charset, errors="replace")
        page = html_to_page(text, url) if "html" in kind or text.lstrip()[:1] == "<" else text_to_page(text, url)
        page.url = url  # the page as asked for: the model refers to it by this URL
        page.title = page.title or url
        self._remember(page)
        return page

    async def close(self) -> None:
        await self._client.aclose()


PROVIDERS = {"corpus", "searxng"}


# -- the tool ------------------------------------------------------------------------------------
def _domain_allowed(url: str, domains: list[str] | None) -> bool:
    if not domains:
        return True
    host = (urlsplit(url).hostname or "").lower().rstrip(".")
    return any(host == d or host.endswith("." + d) for d in (x.lower().strip(".") for x in domains))


def _find(text: str, pattern: str, size: int, limit: int = 5) -> list[str]:
    """The passages of ``text`` around ``pattern`` (case-insensitive); when it never occurs as
    written, the lines holding most of its words."""
    flat = " ".join(text.split())
    lower, needle = flat.lower(), " ".join(pattern.lower().split())
    found: list[str] = []
    at = lower.find(needle) if needle else -1
    while at >= 0 and len(found) < limit:
        start, end = max(0, at - size // 2), min(len(flat), at + len(needle) + size // 2)
        found.append(("…" if start else "") + flat[start:end].strip() + ("…" if end < len(flat) else ""))
        at = lower.find(needle, end)
    if found:
        return found
    wanted = set(analyze(pattern))
    if not wanted:
        return []
    scored = []
    for line in (line.strip() for line in text.splitlines()):
        count = len(wanted & set(analyze(line)))
        if line and count:
            scored.append((count, line))
    scored.sort(key=lambda pair: -pair[0])
    best = scored[0][0] if scored else 0
    return [excerpt(line, pattern, size) for count, line in scored[:limit] if count == best]


def _queries(args: dict[str, Any]) -> list[str]:
    """The search queries of a call: ``query`` as asked, or as a small model writes it (a list of
    queries, or under another key), at most ``MAX_QUERIES``, each once."""
    value = args.get("query")
    if value is None:
        value = next((v for v in args.values() if isinstance(v, (str, list))), None)
    values = value if isinstance(value, list) else [value]
    queries = [" ".join(str(v).split()) for v in values if isinstance(v, (str, int, float))]
    return list(dict.fromkeys(q for q in queries if q))[:MAX_QUERIES]


@dataclass
class _Browsing:
    """What one conversation's browser calls refer to: the URLs of the last search's results
    (``open``'s number ids) and the page last opened (``open`` without an id, ``find``)."""

    results: list[str] = field(default_factory=list)
    page: str | None = None


class WebSearchTool:
    """The ``web_search`` built-in tool (also ``web_search_preview``)."""

    type: ClassVar[str] = "web_search"
    item_type: ClassVar[str] = "web_search_call"
    item_types: ClassVar[tuple[str, ...]] = ("web_search_call",)
    namespace: ClassVar[str] = "browser"

    def __init__(self, toolbox: Toolbox) -> None:
        self.toolbox = toolbox

    # -- configuration --
    def _settings(self) -> dict[str, Any]:
        return self.toolbox.settings("web_search")

    def provider(self) -> WebProvider:
        """The server's provider (one per server; made on first use)."""
        settings = self._settings()
        kind = settings.get("provider", "corpus")
        if kind == "searxng":
            return self.toolbox.service("web_search:searxng", lambda _: SearxngProvider(
                str(settings["url"]), headers=settings.get("headers"), timeout=float(settings.get("timeout", 10.0)),
                open_pages=bool(settings.get("open_pages", True))))
        return self.toolbox.service("web_search:corpus", lambda _: CorpusProvider(
            str(settings["corpus"]), settings.get("base_url")))

    def _configured(self) -> str | None:
        """Why the server cannot search (None when it can)."""
        settings = self._settings()
        kind = settings.get("provider", "corpus")
        if kind not in PROVIDERS:
            return f"web_search provider {kind!r} is unknown (known: {', '.join(sorted(PROVIDERS))})"
        if kind == "searxng" and not settings.get("url"):
            return "web_search uses the searxng provider but no url is configured"
        if kind == "corpus" and not settings.get("corpus"):
            return ("web_search has no corpus on this server: start it with --web-corpus DIR "
                    "(a folder of HTML, Markdown and text pages) or configure a search provider")
        return None

    def runs_on_server(self, param: dict[str, Any]) -> bool:
        return True

    def check(self, param: dict[str, Any], where: str) -> None:
        problem = self._configured()
        if problem is not None:
            raise InvalidRequest(problem, param=f"{where}.type", code="unsupported_tool_type")
        size = param.get("search_context_size")
        if size is not None and size not in CONTEXT_SIZES:
            raise InvalidRequest(f"search_context_size must be one of {', '.join(CONTEXT_SIZES)}",
                                 param=f"{where}.search_context_size", code="invalid_value")
        filters = param.get("filters")
        if filters is not None:
            domains = filters.get("allowed_domains") if isinstance(filters, dict) else None
            if not isinstance(filters, dict) or (domains is not None and (
                    not isinstance(domains, list) or not all(isinstance(d, str) and d.strip() for d in domains))):
                raise InvalidRequest("filters.allowed_domains must be a list of domain names",
                                     param=f"{where}.filters.allowed_domains", code="invalid_value")

    def _sizes(self, param: dict[str, Any]) -> tuple[int, int, int]:
        limit, snippet, page = CONTEXT_SIZES[param.get("search_context_size") or "medium"]
        limit = int(self._settings().get("max_results", limit))
        return limit, snippet, page

    async def functions(self, param: dict[str, Any], ctx: ToolContext) -> list[ToolSpec]:
        specs = [ToolSpec(
            "web_search",
            "Search the web. Returns the best pages, each with its title, URL and the passage that matches. "
            "Use it to look up facts you do not know, then answer from the results and name the URL you used.",
            {"type": "object", "properties": {"query": {"type": "string", "description": "what to search for"}},
             "required": ["query"]}, fan_out=False)]
        if self._settings().get("browse", True):
            specs += [
                ToolSpec("open_page", "Read the text of a web page, given its URL from web_search results.",
                         {"type": "object", "properties": {"url": {"type": "string"}}, "required": ["url"]}),
                ToolSpec("find_in_page", "Find the passages of a web page that contain a word or phrase.",
                         {"type": "object", "properties": {"url": {"type": "string"},
                                                           "pattern": {"type": "string", "description": "the text to find"}},
                          "required": ["url", "pattern"]}),
            ]
        return specs

    async def native_functions(self, param: dict[str, Any], ctx: ToolContext) -> list[ToolSpec]:
        """gpt-oss's ``browser``: its template describes it (these schemas are the constraint's)."""
        def spec(name: str, properties: dict[str, Any], required: list[str]) -> ToolSpec:
            return ToolSpec(f"browser.{name}", "", {"type": "object", "properties": properties, "required": required},
                            fan_out=False, namespace=self.namespace)

        specs = [spec("search", {"query": {"type": "string"}, "topn": _INTEGER, "source": {"type": "string"}},
                      ["query"])]
        if self._settings().get("browse", True):
            specs += [
                spec("open", {"id": {"anyOf": [_INTEGER, {"type": "string"}]}, "cursor": _INTEGER, "loc": _INTEGER,
                              "num_lines": _INTEGER, "view_source": {"type": "boolean"}, "source": {"type": "string"}},
                     []),
                spec("find", {"pattern": {"type": "string"}, "cursor": _INTEGER}, ["pattern"]),
            ]
        return specs

    def _browsing(self, scope: str) -> _Browsing:
        """The browser state of a conversation (the latest 256 conversations are kept)."""
        states: OrderedDict[str, _Browsing] = self.toolbox.service("web_search:browsing", lambda _: OrderedDict())
        state = states.setdefault(scope, _Browsing())
        states.move_to_end(scope)
        while len(states) > 256:
            states.popitem(last=False)
        return state

    # -- one call --
    @staticmethod
    def _arguments(call: ToolCall) -> dict[str, Any]:
        args = call.arguments_object()
        return args if isinstance(args, dict) else {}

    def start(self, call: ToolCall, param: dict[str, Any]) -> dict[str, Any]:
        args = self._arguments(call)
        action: dict[str, Any]
        if call.name == "open_page":
            action = {"type": "open_page", "url": str(args.get("url") or "")}
        elif call.name == "browser.open":  # by URL; a result's number, or the page open, is known in run
            link = _link(args.get("id"))
            action = {"type": "open_page", "url": link if isinstance(link, str) else ""}
        elif call.name == "browser.find":
            action = {"type": "find_in_page", "url": "", "pattern": str(args.get("pattern") or "")}
        elif call.name == "find_in_page":
            action = {"type": "find_in_page", "url": str(args.get("url") or ""), "pattern": str(args.get("pattern") or "")}
        else:
            queries = _queries(args)
            action = {"type": "search", "query": queries[0] if queries else "", "queries": queries or [""]}
        return {"id": new_id("ws_"), "type": "web_search_call", "status": "in_progress", "action": action}

    async def run(self, item: dict[str, Any], call: ToolCall, ctx: ToolContext) -> ToolResult:
        ctx.emit("response.web_search_call.in_progress", {})
        problem = self._configured()
        if problem is not None:
            raise ToolError(problem)
        if call.arguments.strip() and not isinstance(call.arguments_object(), dict):
            raise ToolError("the arguments must be a JSON object")
        action = item["action"]
        domains = (ctx.param.get("filters") or {}).get("allowed_domains")
        provider = self.provider()
        if provider.name == "searxng" and ctx.param.get("external_web_access") is False:
            raise ToolError("live web access is off for this request (external_web_access is false)")
        browser = self._browsing(ctx.scope) if call.name in BROWSER else None
        if browser is not None and not action.get("url") and action["type"] != "search":
            action["url"] = _browser_url(browser, call.name, self._arguments(call))
        item["status"] = "searching"
        ctx.emit("response.web_search_call.searching", {})
        if action["type"] == "search":
            topn = self._arguments(call).get("topn") if browser is not None else None
            result = await self._search(item, action, provider, domains, ctx, browser,
                                        topn if isinstance(topn, int) and topn > 0 else None)
        else:
            result = await self._page(action, provider, domains, ctx, browser)
        item["status"] = "completed"
        ctx.emit("response.web_search_call.completed", {})
        return result

    async def _search(self, item: dict[str, Any], action: dict[str, Any], provider: WebProvider,
                      domains: list[str] | None, ctx: ToolContext, browser: _Browsing | None = None,
                      topn: int | None = None) -> ToolResult:
        queries = [q for q in action.get("queries") or [action["query"]] if q.strip()]
        if not queries:
            raise ToolError("the query is empty: say what to search for")
        query = " / ".join(queries)
        limit, snippet_size, _ = self._sizes(ctx.param)
        limit = min(limit, topn or limit)
        ranked = [await provider.search(q, limit * 4 if domains else limit) for q in queries]
        hits: list[tuple[Page, str]] = []
        seen: set[str] = set()
        for rank in range(max(len(r) for r in ranked)):  # the queries' results in turn, each page once
            for results in ranked:
                if rank < len(results) and results[rank][0].url not in seen:
                    seen.add(results[rank][0].url)
                    hits.append(results[rank])
        hits = [(page, snippet) for page, snippet in hits if _domain_allowed(page.url, domains)][:limit]
        if SOURCES in ctx.include:
            action["sources"] = [{"type": "url", "url": page.url} for page, _ in hits]
        if browser is not None:
            browser.results = [page.url for page, _ in hits]
        if not hits:
            return ToolResult(f'No results for "{query}". Try other words.')
        citations = [{"type": "url_citation", "url": page.url, "title": page.title} for page, _ in hits]
        if browser is not None:  # numbered as gpt-oss's browser shows links: 【id†title†domain】
            lines = [f'Search results for "{query}":']
            for n, (page, snippet) in enumerate(hits):
                lines += [f"【{n}†{page.title}†{urlsplit(page.url).hostname or page.url}】 {page.url}",
                          " ".join(excerpt(snippet, " ".join(queries), snippet_size).split())]
            return ToolResult("\n".join(lines), citations=citations)
        lines = [f'Search results for "{query}":']
        for n, (page, snippet) in enumerate(hits, 1):
            lines += [f"{n}. {page.title} - {page.url}",
                      "   " + " ".join(excerpt(snippet, " ".join(queries), snippet_size).split())]
        lines.append(ANSWER_NOW)
        return ToolResult("\n".join(lines), citations=citations)

    async def _page(self, action: dict[str, Any], provider: WebProvider, domains: list[str] | None,
                    ctx: ToolContext, browser: _Browsing | None = None) -> ToolResult:
        url = action["url"].strip()
        if not url:
            raise ToolError("the url is empty: give the URL of a page from the search results")
        if not _domain_allowed(url, domains):
            raise ToolError(f"{url} is outside the domains this request allows")
        page = await provider.open(url)
        if page is None:
            raise ToolError(f"there is no page at {url}: use a URL from the search results")
        _, snippet_size, page_size = self._sizes(ctx.param)
        citation = {"type": "url_citation", "url": page.url, "title": page.title}
        if browser is not None:
            browser.page = url
        if action["type"] == "open_page":
            find = "browser.find" if browser is not None else "find_in_page"
            text = page.text if len(page.text) <= page_size else (
                page.text[:page_size].rsplit(" ", 1)[0] + f"\n[... the page goes on: use {find} to look for a word]")
            if browser is not None:
                return ToolResult(f"{page.title}\nURL: {page.url}\n\n{text}", citations=[citation])
            return ToolResult(f"{page.title}\nURL: {page.url}\n\n{text}\n\n{ANSWER_NOW}", citations=[citation])
        pattern = action.get("pattern", "").strip()
        if not pattern:
            raise ToolError("the pattern is empty: say what text to find")
        found = _find(page.text, pattern, snippet_size)
        if not found:
            return ToolResult(f'"{pattern}" is not on {page.url}.')
        body = "\n\n".join(f"[{n}] {passage}" for n, passage in enumerate(found, 1))
        after = "" if browser is not None else f"\n\n{ANSWER_NOW}"
        return ToolResult(f'"{pattern}" on {page.title} ({page.url}):\n\n{body}{after}', citations=[citation])

    # -- history --
    def as_call(self, item: dict[str, Any]) -> ToolCall | None:
        action = item.get("action") or {}
        kind = action.get("type")
        if kind == "open_page":
            name, args = "open_page", {"url": action.get("url") or ""}
        elif kind == "find_in_page":
            name, args = "find_in_page", {"url": action.get("url") or "", "pattern": action.get("pattern") or ""}
        else:
            query = action.get("query") or next(iter(action.get("queries") or []), "")
            name, args = "web_search", {"query": query}
        return ToolCall(str(item.get("id")), name, json.dumps(args, ensure_ascii=False))

    def as_output(self, item: dict[str, Any]) -> tuple[str, str] | None:
        """Only the call's shape survives in an item: the model reads which pages it found, if
        the item lists them, else that the results are gone."""
        action = item.get("action") or {}
        if item.get("status") not in (None, "completed"):
            return str(item.get("id")), f"The web search did not complete ({item.get('status')})."
        sources = [s.get("url") for s in action.get("sources") or [] if isinstance(s, dict)]
        if sources:
            return str(item.get("id")), "Pages found:\n" + "\n".join(f"URL: {u}" for u in sources)
        return str(item.get("id")), "(the results of this earlier web search are no longer available)"



def _link(value: Any) -> int | str | None:
    """``browser.open``'s ``id``: a result's number, a URL, or None (the page open; -1 too)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, (int, float)):
        return int(value) if value >= 0 else None
    return str(value).strip() or None


def _browser_url(browser: _Browsing, name: str, args: dict[str, Any]) -> str:
    """The page a browser call without a URL means: the last search's result ``id``, else the page
    last opened."""
    link = _link(args.get("id")) if name == "browser.open" else None
    if isinstance(link, int):
        if link >= len(browser.results):
            raise ToolError(f"there is no result {link}: open one of 0 to {len(browser.results) - 1} "
                            "from the last search, or give a URL" if browser.results else
                            f"there is no result {link}: search first, or give a URL")
        return browser.results[link]
    if browser.page is None:
        raise ToolError("no page is open: search first, then open a result")
    return browser.page


class WebSearchPreviewTool(WebSearchTool):
    """The same tool under the request type ``web_search_preview`` (the type the SDK's
    ``tool_choice`` names), so a choice of either type finds its tool."""

    type: ClassVar[str] = "web_search_preview"


class WebSearchDatedTool(WebSearchTool):
    """``web_search_2025_08_26``: the dated name of the same tool."""

    type: ClassVar[str] = "web_search_2025_08_26"


class WebSearchPreviewDatedTool(WebSearchTool):
    """``web_search_preview_2025_03_11``: the dated name of the preview tool."""

    type: ClassVar[str] = "web_search_preview_2025_03_11"
