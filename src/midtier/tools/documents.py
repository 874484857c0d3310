"""From an uploaded file to the chunks a vector store indexes: text extraction and chunking.

Extraction by file name (then by content): plain text, Markdown, code, CSV, JSON (as written),
HTML/XML (tags stripped, scripts and styles dropped, with the standard library's parser), DOCX
(its paragraphs, read with zipfile), PDF when the optional ``pypdf`` is installed. Text is
UTF-8 (a BOM is honoured, UTF-16 with a BOM too); a binary file is refused with
``UnsupportedFile``.

Chunking counts o200k tokens (``bpe-openai``, offline) like OpenAI: windows of
``max_chunk_size_tokens`` that step by ``max - chunk_overlap_tokens``; ``auto`` is 800/400.
"""

from __future__ import annotations

import html.parser
import io
import re
import warnings
import zipfile
from functools import cache
from typing import Any
from xml.etree import ElementTree

from midtier.core.errors import InvalidRequest

AUTO_MAX_TOKENS, AUTO_OVERLAP_TOKENS = 800, 400


class UnsupportedFile(ValueError):
    """The file holds no text we can read (``code`` as in a vector store file's ``last_error``)."""

    def __init__(self, message: str, code: str = "unsupported_file") -> None:
        super().__init__(message)
        self.code = code


_HTML = (".html", ".htm", ".xhtml")
_XML = (".xml", ".svg")


def extract_text(data: bytes, filename: str) -> str:
    """The text of a file, for indexing."""
    name = filename.lower()
    if name.endswith(".pdf") or data.startswith(b"%PDF-"):
        return _pdf(data)
    if name.endswith(".docx"):
        return _docx(data)
    text = decode(data)
    if name.endswith(_HTML) or (not name.endswith(_XML) and re.match(r"\s*(<!doctype html|<html)", text[:200], re.I)):
        return html_to_text(text)
    if name.endswith(_XML):
        return html_to_text(text, keep_all=True)
    return text


def decode(data: bytes) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")
    if b"\x00" in data[:8192]:
        raise UnsupportedFile("The file is binary; only text, Markdown, HTML, JSON, code, DOCX and PDF are indexed.")
    text = data.decode("utf-8-sig", errors="replace")
    if text.count("\ufffd") > max(8, len(text) // 100):
        raise UnsupportedFile("The file is not UTF-8 text.")
    return text


class _TextOf(html.parser.HTMLParser):
    SKIP = frozenset({"script", "style", "noscript", "template", "head"})
    BLOCK = frozenset({"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article",
                       "header", "footer", "pre", "blockquote", "table", "ul", "ol", "dd", "dt", "title", "hr"})

    def __init__(self, keep_all: bool) -> None:
        super().__init__(convert_charrefs=True)
        self.keep_all = keep_all
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if not self.keep_all and tag in self.SKIP:
            self.skipping += 1
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if not self.keep_all and tag in self.SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.parts.append(data)


def html_to_text(text: str, keep_all: bool = False) -> str:
    parser = _TextOf(keep_all)
    parser.feed(text)
    parser.close()
    joined = "".join(parser.parts)
    joined = re.sub(r"[ \t\r\f\v]+", " ", joined)
    return re.sub(r"\s*\n\s*(\n\s*)*", lambda m: "\n\n" if m.group(0).count("\n") > 1 else "\n", joined).strip()


def _docx(data: bytes) -> str:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            root = ElementTree.fromstring(z.read("word/document.xml"))
    except (zipfile.BadZipFile, KeyError, ElementTree.ParseError):
        raise UnsupportedFile("The file is not a readable DOCX document.", code="invalid_file") from None
    w = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
    paragraphs = ["".join(t.text or "" for t in p.iter(f"{w}t")) for p in root.iter(f"{w}p")]
    return "\n".join(p for p in paragraphs if p.strip())


def _pdf(data: bytes) -> str:
    try:
        import pypdf
    except ImportError:
        raise UnsupportedFile("PDF files need the optional package pypdf on the server.") from None
    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        pages = [page.extract_text() or "" for page in reader.pages]
    except Exception as exc:  # pypdf raises many kinds on a damaged file
        raise UnsupportedFile(f"The PDF could not be read: {exc}", code="invalid_file") from None
    text = "\n\n".join(p.strip() for p in pages if p.strip())
    if not text:
        raise UnsupportedFile("The PDF holds no extractable text (a scan?).", code="invalid_file")
    return text


# -- chunking ------------------------------------------------------------------------------------

@cache
def _encoding() -> Any:
    with warnings.catch_warnings():  # bpe-openai reads its data with a deprecated importlib call
        warnings.simplefilter("ignore", DeprecationWarning)
        import bpe_openai

        return bpe_openai.get_encoding("o200k_base")


_PIECE = 100_000  # characters encoded at once (bpe-openai refuses a million)


def encode(text: str) -> list[int]:
    """o200k tokens of ``text`` of any length: encoded in pieces cut before a space, where the
    tokenizer's own pre-split cuts too."""
    enc = _encoding()
    tokens: list[int] = []
    start = 0
    while start < len(text):
        end = min(len(text), start + _PIECE)
        if end < len(text):
            cut = text.rfind(" ", start + 1, end)
            end = cut if cut > start else end
        tokens.extend(enc.encode_ordinary(text[start:end]))
        start = end
    return tokens


def count_tokens(text: str) -> int:
    return len(encode(text))


def chunk_text(text: str, max_tokens: int = AUTO_MAX_TOKENS, overlap: int = AUTO_OVERLAP_TOKENS) -> list[str]:
    """Overlapping windows of ``max_tokens`` o200k tokens; no empty chunk."""
    text = text.strip()
    if not text:
        return []
    enc = _encoding()
    tokens = encode(text)
    if len(tokens) <= max_tokens:
        return [text]
    step = max(1, max_tokens - overlap)
    chunks = []
    for start in range(0, len(tokens), step):
        window = tokens[start: start + max_tokens]
        chunk = bytes(enc.decode_bytes(window)).decode("utf-8", errors="ignore").strip()
        if chunk:
            chunks.append(chunk)
        if start + max_tokens >= len(tokens):
            break
    return chunks


def chunking_strategy(value: Any, param: str = "chunking_strategy") -> dict[str, Any]:
    """A request's ``chunking_strategy`` (None: auto), as a vector store file shows it: always
    ``{"type": "static", "static": {"max_chunk_size_tokens", "chunk_overlap_tokens"}}``."""
    if value is None:
        return _static(AUTO_MAX_TOKENS, AUTO_OVERLAP_TOKENS)
    if not isinstance(value, dict) or value.get("type") not in ("auto", "static"):
        raise InvalidRequest(f"Invalid value for '{param}': expected {{'type': 'auto'}} or {{'type': 'static', "
                             "'static': {...}}.", param=f"{param}.type", code="invalid_value")
    if value["type"] == "auto":
        if set(value) - {"type"}:
            raise InvalidRequest(f"Unknown parameter: '{param}.{sorted(set(value) - {'type'})[0]}'.",
                                 param=param, code="unknown_parameter")
        return _static(AUTO_MAX_TOKENS, AUTO_OVERLAP_TOKENS)
    static = value.get("static")
    if not isinstance(static, dict):
        raise InvalidRequest(f"Missing required parameter: '{param}.static'.", param=f"{param}.static",
                             code="missing_required_parameter")
    size, overlap = static.get("max_chunk_size_tokens"), static.get("chunk_overlap_tokens")
    for key, v in (("max_chunk_size_tokens", size), ("chunk_overlap_tokens", overlap)):
        if not isinstance(v, int) or isinstance(v, bool):
            raise InvalidRequest(f"Invalid value for '{param}.static.{key}': expected an integer.",
                                 param=f"{param}.static.{key}", code="invalid_value")
    assert isinstance(size, int) and isinstance(overlap, int)
    if not 100 <= size <= 4096:
        raise InvalidRequest(f"Invalid value for '{param}.static.max_chunk_size_tokens': must be between 100 and 4096.",
                             param=f"{param}.static.max_chunk_size_tokens", code="invalid_value")
    if not 0 <= overlap <= size // 2:
        raise InvalidRequest(f"Invalid value for '{param}.static.chunk_overlap_tokens': must be between 0 and half "
                             "of max_chunk_size_tokens.", param=f"{param}.static.chunk_overlap_tokens",
                             code="invalid_value")
    return _static(size, overlap)


def _static(size: int, overlap: int) -> dict[str, Any]:
    return {"type": "static", "static": {"max_chunk_size_tokens": size, "chunk_overlap_tokens": overlap}}


__all__ = ["AUTO_MAX_TOKENS", "AUTO_OVERLAP_TOKENS", "UnsupportedFile", "chunk_text", "chunking_strategy",
           "count_tokens", "decode", "extract_text", "html_to_text"]
