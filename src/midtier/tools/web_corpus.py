"""The offline web: a folder of HTML, Markdown and text pages, indexed once, searched with BM25.

This is web_search's default provider (``midtier.tools.web_search``), so the tool works with no
internet. The operator points the server at a folder (``midtier serve --web-corpus DIR`` or
``settings["web_search"]["corpus"]``); the first search reads every ``.html``/``.htm``,
``.md``/``.markdown`` and ``.txt`` file under it (hidden files and folders skipped, files over
``MAX_FILE_BYTES`` skipped) and builds the index in a worker thread; later searches reuse it
(a changed folder needs a restart).

A page's **title**: HTML ``<title>``, else its first ``<h1>``-``<h6>``; Markdown's first heading;
a text file's first non-empty line; else the file name.
A page's **URL**: an HTML page's ``<link rel="canonical" href>`` or ``<meta property="og:url">``
when it has one; else ``base_url`` + its path relative to the folder (with ``/`` separators,
percent-quoted) when the operator configured ``settings["web_search"]["base_url"]``; else the
file's ``file://`` URI.

Ranking: each page is cut into passages of a few paragraphs; the passages, each with its page's
title, are ranked by file_search's ranker (``midtier.tools.search_index``: BM25 over analysed
words); a page ranks by its best passage, which is the snippet shown.
"""

from __future__ import annotations

import asyncio
import html
import logging
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote, urljoin

from midtier.tools.search_index import SearchIndex

log = logging.getLogger(__name__)

SUFFIXES = {".html": "html", ".htm": "html", ".md": "markdown", ".markdown": "markdown", ".txt": "text"}
MAX_FILE_BYTES = 5_000_000
PASSAGE_CHARS = 600  # a passage gathers paragraphs up to about this size

@dataclass
class Page:
    """One document of the web: its URL, title and plain text."""

    url: str
    title: str
    text: str
    path: str = ""  # the file it was read from (corpus pages)


# -- reading pages -------------------------------------------------------------------------------
_BLOCKS = ("address article aside blockquote br dd div dl dt fieldset figcaption figure footer form h1 h2 h3 "
           "h4 h5 h6 header hr li main nav ol p pre section table tbody td th thead tr ul")
_BLOCK = frozenset(_BLOCKS.split())
_SKIP = frozenset(("script", "style", "noscript", "template", "svg", "head"))


class _TextParser(HTMLParser):
    """HTML to text: block elements break lines, scripts and styles are dropped; it keeps the
    title, the first heading and the canonical URL."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title = ""
        self.heading = ""
        self.canonical = ""
        self.og_url = ""
        self._skip = 0
        self._in_title = False
        self._in_heading = False
        self._heading_parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k.lower(): (v or "") for k, v in attrs}
        if tag == "link" and "canonical" in a.get("rel", "").lower().split() and a.get("href"):
            self.canonical = self.canonical or a["href"].strip()
        elif tag == "meta" and a.get("property", "").lower() == "og:url" and a.get("content"):
            self.og_url = self.og_url or a["content"].strip()
        if tag == "title":
            self._in_title = True
        elif tag in _SKIP:
            self._skip += 1
        if tag in _BLOCK:
            self.parts.append("\n")
        if tag in ("h1", "h2", "h3", "h4", "h5", "h6") and not self.heading:
            self._in_heading, self._heading_parts = True, []

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in _SKIP and self._skip:
            self._skip -= 1
        if tag in _BLOCK:
            self.parts.append("\n")
        if self._in_heading and tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
            self._in_heading = False
            self.heading = " ".join("".join(self._heading_parts).split())

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in ("link", "meta"):
            self.handle_endtag(tag)

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
            return
        if self._skip:
            return
        if self._in_heading:
            self._heading_parts.append(data)
        self.parts.append(data)


def _tidy(text: str) -> str:
    """Runs of spaces as one, at most one empty line between paragraphs."""
    lines = [" ".join(line.split()) for line in text.splitlines()]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip()


def html_to_page(source: str, url: str = "") -> Page:
    """An HTML document as a page: its text, title (``<title>`` or first heading) and URL
    (canonical link or ``og:url``, resolved against ``url``; else ``url``)."""
    parser = _TextParser()
    try:
        parser.feed(source)
        parser.close()
    except Exception:  # html.parser is lenient; keep whatever was read
        log.warning("could not parse all of %s", url or "an HTML page", exc_info=True)
    text = _tidy("".join(parser.parts))
    title = " ".join(parser.title.split()) or parser.heading
    own = parser.canonical or parser.og_url
    if own:
        own = urljoin(url, own) if url else own
    return Page(url=own or url, title=title, text=text)


_MD_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$")


def markdown_to_page(source: str, url: str = "") -> Page:
    """A Markdown document as a page: the text as written (minus front matter), the first heading
    as title."""
    if source.startswith("---\n"):
        end = source.find("\n---", 4)
        if end != -1:
            source = source[end + 4:]
    title = ""
    for line in source.splitlines():
        m = _MD_HEADING.match(line)
        if m:
            title = m.group(1).strip()
            break
    text = _tidy(html.unescape(source))
    return Page(url=url, title=title, text=text)


def text_to_page(source: str, url: str = "") -> Page:
    text = _tidy(source)
    return Page(url=url, title=next((line for line in text.splitlines() if line), "")[:200], text=text)


def read_page(path: Path, root: Path, base_url: str | None = None) -> Page | None:
    """The page of a corpus file (None for a file of another kind, too large or unreadable)."""
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        return None
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            log.warning("web corpus: %s skipped (over %d bytes)", path, MAX_FILE_BYTES)
            return None
        source = path.read_bytes().decode("utf-8", errors="replace")
    except OSError as exc:
        log.warning("web corpus: %s skipped (%s)", path, exc)
        return None
    relative = path.relative_to(root).as_posix()
    default_url = (base_url.rstrip("/") + "/" + quote(relative)) if base_url else path.resolve().as_uri()
    read = {"html": html_to_page, "markdown": markdown_to_page, "text": text_to_page}[kind]
    page = read(source, default_url)
    page.path = str(path)
    page.title = page.title or path.stem.replace("_", " ").replace("-", " ")
    return page


def read_corpus(folder: Path, base_url: str | None = None) -> list[Page]:
    """Every page under ``folder``, in path order (hidden files and folders skipped)."""
    root = folder.resolve()
    pages = []
    for path in sorted(root.rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(root).parts) or not path.is_file():
            continue
        page = read_page(path, root, base_url)
        if page is not None and page.text:
            pages.append(page)
    return pages


# -- the index -----------------------------------------------------------------------------------
def passages(text: str, size: int = PASSAGE_CHARS) -> list[str]:
    """``text`` in passages: paragraphs gathered up to about ``size`` characters; a longer
    paragraph is cut at sentence ends (or hard at ``2 * size``)."""
    out: list[str] = []
    current = ""
    for para in (p.strip() for p in re.split(r"\n\s*\n|\n(?=\s*[-*#>])", text)):
        if not para:
            continue
        pieces = [para]
        if len(para) > size:
            pieces = []
            piece = ""
            for sentence in re.split(r"(?<=[.!?])\s+", para):
                while len(sentence) > 2 * size:
                    pieces.append(sentence[: 2 * size])
                    sentence = sentence[2 * size:]
                if piece and len(piece) + len(sentence) > size:
                    pieces.append(piece)
                    piece = ""
                piece = f"{piece} {sentence}".strip()
            if piece:
                pieces.append(piece)
        for piece in pieces:
            if current and len(current) + len(piece) > size:
                out.append(current)
                current = ""
            current = f"{current}\n{piece}".strip()
    if current:
        out.append(current)
    return out


class CorpusIndex:
    """The passages of a set of pages, ranked by ``search_index.SearchIndex`` (BM25); a passage
    is indexed with its page's title."""

    def __init__(self, pages: list[Page]) -> None:
        self.pages = pages
        self.by_url = {page.url: page for page in pages}
        self.passages: list[tuple[Page, str]] = [(page, text) for page in pages for text in passages(page.text)]
        self.index = SearchIndex([f"{page.title}\n{text}" for page, text in self.passages])

    def search(self, query: str, limit: int = 5) -> list[tuple[Page, str, float]]:
        """The best ``limit`` pages for ``query``, each with its best passage and score."""
        best: dict[str, tuple[Page, str, float]] = {}
        for hit in self.index.search(query, limit=max(limit * 8, 50)):
            page, text = self.passages[hit.index]
            if page.url not in best:
                best[page.url] = (page, text, hit.score)
                if len(best) == limit:
                    break
        return list(best.values())


class CorpusProvider:
    """web_search over a local folder (see the module docstring); the index is built on first use."""

    name = "corpus"

    def __init__(self, folder: str | Path, base_url: str | None = None) -> None:
        self.folder = Path(folder).expanduser()
        self.base_url = base_url
        self._index: CorpusIndex | None = None
        self._lock = asyncio.Lock()

    async def index(self) -> CorpusIndex:
        async with self._lock:
            if self._index is None:
                if not self.folder.is_dir():
                    from midtier.tools.base import ToolError

                    raise ToolError(f"the web corpus folder {str(self.folder)!r} does not exist")
                pages = await asyncio.to_thread(read_corpus, self.folder, self.base_url)
                self._index = await asyncio.to_thread(CorpusIndex, pages)
                log.info("web corpus %s: %d pages, %d passages", self.folder, len(pages), len(self._index.passages))
            return self._index

    async def search(self, query: str, limit: int) -> list[tuple[Page, str]]:
        index = await self.index()
        return [(page, snippet) for page, snippet, _ in index.search(query, limit)]

    async def open(self, url: str) -> Page | None:
        index = await self.index()
        page = index.by_url.get(url)
        if page is None:  # the model may drop a trailing slash, or quote differently
            wanted = url.rstrip("/")
            page = next((p for p in index.pages if p.url.rstrip("/") == wanted), None)
        return page

    async def close(self) -> None:
        self._index = None
