"""Vector stores: files indexed for file_search, kept in the store's records.

One ``VectorStores`` per server (``toolbox.service("vector_stores", VectorStores)``); the routes
(``midtier.server.vector_stores``) and the file_search tool both go through it.

Records (kind, id, owner: data):

- ``vector_store``, ``vs_…``, none: ``{id, object, created_at, name, description, metadata,
  expires_after, last_active_at}`` (``file_counts``, ``usage_bytes``, ``status`` and
  ``expires_at`` are computed when it is shown);
- ``vector_store_file``, ``"{vs id}:{file id}"``, the vector store: the API's ``VectorStoreFile``
  (its ``id`` is the file id) plus ``filename``, ``batch_id`` and ``index_version`` (a new value
  each time its chunks are written), which are not shown;
- ``vs_chunks``, ``"{vs id}:{file id}"``, the vector store: ``{vector_store_id, file_id, filename,
  chunks: [text...], embedder}``: one record per indexed file (one write per file, and a file's
  chunks go with it); with embeddings on, blob ``"vs_vectors:{vs id}:{file id}"`` holds the
  vectors of the chunks' windows (float32, row-major; ``windows`` in the record: how many rows
  each chunk has);
- ``vector_store_file_batch``, ``vsfb_…``, the vector store: the API's ``VectorStoreFileBatch``
  without ``file_counts`` (computed from the files that carry its id).

Indexing runs in the background (two files at a time); a file reads ``in_progress`` until its
chunks are written, then ``completed`` (or ``failed`` with ``last_error``). A file left
``in_progress`` by a stopped server is indexed again when it is next read. The search index of a
vector store is cached in memory and rebuilt when its files' index versions change.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from midtier.core.errors import InvalidRequest, NotFound
from midtier.core.messages import new_id
from midtier.store.base import Order, Page, Store
from midtier.tools import files
from midtier.tools.documents import UnsupportedFile, chunk_text, chunking_strategy, extract_text
from midtier.tools.search_index import Embedder, SearchIndex, embed_windows

if TYPE_CHECKING:
    from midtier.tools import Toolbox

log = logging.getLogger(__name__)

VS_KIND, FILE_KIND, CHUNKS_KIND, BATCH_KIND = "vector_store", "vector_store_file", "vs_chunks", "vector_store_file_batch"
_HIDDEN = ("filename", "batch_id", "index_version")
STATUSES = ("in_progress", "completed", "failed", "cancelled")
COMPARISONS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "nin")


# -- request checks ------------------------------------------------------------------------------

def check_metadata(value: Any, param: str = "metadata") -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > 16:
        raise InvalidRequest(f"Invalid '{param}': expected an object of at most 16 string pairs.", param=param,
                             code="invalid_value")
    for k, v in value.items():
        if not isinstance(v, str) or len(k) > 64 or len(v) > 512:
            raise InvalidRequest(f"Invalid '{param}.{k}': keys are strings of at most 64 characters, values strings "
                                 "of at most 512.", param=f"{param}.{k}", code="invalid_value")
    return dict(value)


def check_attributes(value: Any, param: str = "attributes") -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > 16:
        raise InvalidRequest(f"Invalid '{param}': expected an object of at most 16 pairs.", param=param,
                             code="invalid_value")
    for k, v in value.items():
        if len(k) > 64 or not isinstance(v, str | int | float | bool) or (isinstance(v, str) and len(v) > 512):
            raise InvalidRequest(f"Invalid '{param}.{k}': values are strings (at most 512 characters), numbers or "
                                 "booleans.", param=f"{param}.{k}", code="invalid_value")
    return dict(value)


def check_filter(value: Any, param: str = "filters") -> dict[str, Any]:
    """A comparison ``{type, key, value}`` or a compound ``{type: and|or, filters}`` filter."""
    if not isinstance(value, dict):
        raise InvalidRequest(f"Invalid '{param}': expected a filter object.", param=param, code="invalid_value")
    kind = value.get("type")
    if kind in ("and", "or"):
        subs = value.get("filters")
        if not isinstance(subs, list) or not subs:
            raise InvalidRequest(f"Invalid '{param}.filters': expected a non-empty list of filters.",
                                 param=f"{param}.filters", code="invalid_value")
        for i, sub in enumerate(subs):
            check_filter(sub, f"{param}.filters[{i}]")
        return value
    if kind not in COMPARISONS:
        raise InvalidRequest(f"Invalid '{param}.type': expected one of {', '.join(COMPARISONS)}, and, or.",
                             param=f"{param}.type", code="invalid_value")
    if not isinstance(value.get("key"), str):
        raise InvalidRequest(f"Missing required parameter: '{param}.key'.", param=f"{param}.key",
                             code="missing_required_parameter")
    target = value.get("value")
    if kind in ("in", "nin"):
        if not isinstance(target, list):
            raise InvalidRequest(f"Invalid '{param}.value': '{kind}' compares with a list.", param=f"{param}.value",
                                 code="invalid_value")
    elif not isinstance(target, str | int | float | bool):
        raise InvalidRequest(f"Invalid '{param}.value': expected a string, number or boolean.",
                             param=f"{param}.value", code="invalid_value")
    return value


def matches(flt: dict[str, Any] | None, attributes: dict[str, Any] | None) -> bool:
    """Whether a file's attributes pass a (checked) filter. A missing key fails every comparison
    but ``ne`` and ``nin``; values of different kinds are never equal nor ordered."""
    if flt is None:
        return True
    kind = flt["type"]
    if kind == "and":
        return all(matches(f, attributes) for f in flt["filters"])
    if kind == "or":
        return any(matches(f, attributes) for f in flt["filters"])
    attrs = attributes or {}
    if flt["key"] not in attrs:
        return kind in ("ne", "nin")
    have, want = attrs[flt["key"]], flt["value"]
    if kind in ("in", "nin"):
        return any(_same(have, w) for w in want) == (kind == "in")
    if kind in ("eq", "ne"):
        return _same(have, want) == (kind == "eq")
    if isinstance(have, bool) or isinstance(want, bool) or isinstance(have, str) != isinstance(want, str):
        return False
    return {"gt": have > want, "gte": have >= want, "lt": have < want, "lte": have <= want}[kind]


def _same(a: Any, b: Any) -> bool:
    return isinstance(a, bool) == isinstance(b, bool) and isinstance(a, str) == isinstance(b, str) and a == b


def check_expires_after(value: Any, param: str = "expires_after") -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("anchor") != "last_active_at":
        raise InvalidRequest(f"Invalid '{param}': expected {{'anchor': 'last_active_at', 'days': N}}.",
                             param=f"{param}.anchor", code="invalid_value")
    days = value.get("days")
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= 365:
        raise InvalidRequest(f"Invalid '{param}.days': must be an integer between 1 and 365.", param=f"{param}.days",
                             code="invalid_value")
    return {"anchor": "last_active_at", "days": days}


# -- the service -----------------------------------------------------------------------------------

@dataclass
class _Cached:
    signature: tuple[tuple[str, str], ...]
    index: SearchIndex
    owners: list[tuple[str, str]]  # per chunk: (file id, filename)


class VectorStores:
    """Vector stores, their files and batches, indexing and search."""

    def __init__(self, toolbox: Toolbox) -> None:
        self.toolbox = toolbox
        self.settings = toolbox.settings("file_search")
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._workers = asyncio.Semaphore(int(self.settings.get("index_workers", 2)))
        self._cache: dict[str, _Cached] = {}
        self._embedder: Embedder | None = None
        self._embedder_loaded = False
        self._embedder_lock = asyncio.Lock()

    @property
    def store(self) -> Store:
        return self.toolbox.store

    async def embedder(self) -> Embedder | None:
        """The embedding model (``settings["file_search"]["embeddings"]``: ``"minilm"``; off by
        default), loaded (and fetched) on first use; lexical ranking alone when it cannot be."""
        async with self._embedder_lock:
            if not self._embedder_loaded:
                choice = self.settings.get("embeddings")
                if choice and choice != "off":
                    from midtier.tools.embeddings import load_embedder

                    try:
                        self._embedder = await asyncio.to_thread(load_embedder, str(choice))
                    except Exception:
                        log.exception("the embedding model %r is unavailable: file_search ranks lexically", choice)
                self._embedder_loaded = True
        return self._embedder

    # -- vector stores ------------------------------------------------------------------------------
    async def create(self, *, name: str | None = None, description: str | None = None,
                     metadata: dict[str, str] | None = None, expires_after: dict[str, Any] | None = None,
                     file_ids: Iterable[str] = (), chunking: dict[str, Any] | None = None) -> dict[str, Any]:
        ids = list(file_ids)
        for i, file_id in enumerate(ids):
            await files.require_file(self.store, file_id, f"file_ids[{i}]")
        now = int(time.time())
        record: dict[str, Any] = {"id": new_id("vs_"), "object": "vector_store", "created_at": now, "name": name or "",
                  "description": description, "metadata": metadata or {}, "expires_after": expires_after,
                  "last_active_at": now}
        await self.store.put_record(VS_KIND, record["id"], record, created_at=now)
        for file_id in dict.fromkeys(ids):
            await self.add_file(record["id"], file_id, chunking=chunking)
        return await self.show(record)

    async def _record(self, vs_id: str) -> dict[str, Any]:
        record = await self.store.get_record(VS_KIND, vs_id)
        if record is None:
            raise NotFound(f"No vector store found with id '{vs_id}'.", param="vector_store_id")
        return record

    async def get(self, vs_id: str) -> dict[str, Any]:
        return await self.show(await self._record(vs_id))

    async def show(self, record: dict[str, Any]) -> dict[str, Any]:
        """The API's ``VectorStore`` for a record."""
        vs_files = await self.store.all_records(FILE_KIND, record["id"])
        counts = {s: sum(1 for f in vs_files if f["status"] == s) for s in STATUSES}
        out = {k: v for k, v in record.items() if k != "description"}
        out["file_counts"] = {**counts, "total": len(vs_files)}
        out["usage_bytes"] = sum(int(f.get("usage_bytes") or 0) for f in vs_files)
        out["expires_at"] = _expires_at(record)
        out["status"] = ("expired" if _expired(record) else "in_progress" if counts["in_progress"] else "completed")
        return out

    async def list_stores(self, *, after: str | None = None, before: str | None = None, limit: int = 20,
                   order: Order = "desc") -> Page:
        page = await _page(self.store, VS_KIND, None, after=after, before=before, limit=limit, order=order)
        page.data = [await self.show(r) for r in page.data]
        return page

    async def update(self, vs_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        record = await self._record(vs_id)
        record.update(changes)
        await self.store.put_record(VS_KIND, vs_id, record)
        return await self.show(record)

    async def delete(self, vs_id: str) -> None:
        await self._record(vs_id)
        for key in [k for k in self._tasks if k[0] == vs_id]:
            self._tasks.pop(key).cancel()
        await self.store.delete_record(VS_KIND, vs_id)
        for chunks in await self.store.all_records(CHUNKS_KIND, vs_id):
            await self.store.delete_blob(f"vs_vectors:{vs_id}:{chunks['file_id']}")
        for kind in (FILE_KIND, CHUNKS_KIND, BATCH_KIND):
            await self.store.delete_owned(kind, vs_id)
        self._cache.pop(vs_id, None)

    # -- files of a vector store ----------------------------------------------------------------------
    async def add_file(self, vs_id: str, file_id: str, *, attributes: dict[str, Any] | None = None,
                       chunking: dict[str, Any] | None = None, batch_id: str | None = None,
                       param: str = "file_id") -> dict[str, Any]:
        """Attach a file (again: re-index it) and start indexing it; its ``VectorStoreFile``."""
        await self._record(vs_id)
        meta = await files.require_file(self.store, file_id, param)
        key = (vs_id, file_id)
        async with self._lock(key):
            if (task := self._tasks.pop(key, None)) is not None:
                task.cancel()
            record = {"id": file_id, "object": "vector_store.file", "created_at": int(time.time()),
                      "vector_store_id": vs_id, "status": "in_progress", "last_error": None, "usage_bytes": 0,
                      "attributes": attributes or {}, "chunking_strategy": chunking or chunking_strategy(None),
                      "filename": meta["filename"], "batch_id": batch_id, "index_version": None}
            await self.store.put_record(FILE_KIND, _fid(vs_id, file_id), record, owner=vs_id)
        self._start(vs_id, file_id)
        return show_file(record)

    def _lock(self, key: tuple[str, str]) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    def _start(self, vs_id: str, file_id: str) -> None:
        key = (vs_id, file_id)
        task = asyncio.get_running_loop().create_task(self._index(vs_id, file_id), name=f"index {vs_id}/{file_id}")
        self._tasks[key] = task
        task.add_done_callback(lambda t: self._tasks.pop(key, None) if self._tasks.get(key) is t else None)

    async def _file_record(self, vs_id: str, file_id: str) -> dict[str, Any]:
        record = await self.store.get_record(FILE_KIND, _fid(vs_id, file_id))
        if record is None:
            raise NotFound(f"No file found with id '{file_id}' in vector store '{vs_id}'.", param="file_id")
        if record["status"] == "in_progress" and (vs_id, file_id) not in self._tasks:
            self._start(vs_id, file_id)  # left in progress by a server that stopped
        return record

    async def get_file(self, vs_id: str, file_id: str) -> dict[str, Any]:
        await self._record(vs_id)
        return show_file(await self._file_record(vs_id, file_id))

    async def list_files(self, vs_id: str, *, status: str | None = None, batch_id: str | None = None,
                         after: str | None = None, before: str | None = None, limit: int = 20,
                         order: Order = "desc") -> Page:
        await self._record(vs_id)
        page = await _page(self.store, FILE_KIND, vs_id, after=after, before=before, limit=limit, order=order,
                           keep=lambda f: (status is None or f["status"] == status)
                           and (batch_id is None or f.get("batch_id") == batch_id),
                           id_of=lambda d: _fid(vs_id, d["id"]))
        page.data = [show_file(f) for f in page.data]
        return page

    async def update_file(self, vs_id: str, file_id: str, attributes: dict[str, Any] | None) -> dict[str, Any]:
        await self._record(vs_id)
        async with self._lock((vs_id, file_id)):
            record = await self._file_record(vs_id, file_id)
            record["attributes"] = attributes or {}
            await self.store.put_record(FILE_KIND, _fid(vs_id, file_id), record, owner=vs_id)
        return show_file(record)

    async def delete_file(self, vs_id: str, file_id: str) -> None:
        await self._record(vs_id)
        await self._file_record(vs_id, file_id)
        async with self._lock((vs_id, file_id)):
            if (task := self._tasks.pop((vs_id, file_id), None)) is not None:
                task.cancel()
            await self.store.delete_record(FILE_KIND, _fid(vs_id, file_id))
            await self.store.delete_record(CHUNKS_KIND, _fid(vs_id, file_id))
            await self.store.delete_blob(f"vs_vectors:{vs_id}:{file_id}")

    async def file_content(self, vs_id: str, file_id: str) -> list[dict[str, Any]]:
        """The parsed text of a file, as ``[{"type": "text", "text"}]`` (its chunks, without overlap
        when it was cut with none; the extracted text otherwise)."""
        await self._record(vs_id)
        await self._file_record(vs_id, file_id)
        data = await files.get_file_bytes(self.store, file_id)
        chunks = await self.store.get_record(CHUNKS_KIND, _fid(vs_id, file_id))
        if data is not None and chunks is not None:
            try:
                text = await asyncio.to_thread(extract_text, data, chunks["filename"])
                return [{"type": "text", "text": text}]
            except UnsupportedFile:
                pass
        return [{"type": "text", "text": t} for t in (chunks or {}).get("chunks", [])]

    async def _index(self, vs_id: str, file_id: str) -> None:
        try:
            async with self._workers:
                record = await self.store.get_record(FILE_KIND, _fid(vs_id, file_id))
                if record is None or record["status"] != "in_progress":
                    return
                data = await files.get_file_bytes(self.store, file_id)
                if data is None:
                    raise UnsupportedFile(f"The file {file_id} no longer exists.", code="invalid_file")
                static = record["chunking_strategy"]["static"]
                text = await asyncio.to_thread(extract_text, data, record["filename"])
                chunks = await asyncio.to_thread(chunk_text, text, static["max_chunk_size_tokens"],
                                                 static["chunk_overlap_tokens"])
                chunks_record = {"vector_store_id": vs_id, "file_id": file_id, "filename": record["filename"],
                                 "chunks": chunks, "embedder": None, "windows": []}
                embedder = await self.embedder()
                if embedder is not None:
                    await self._embed(vs_id, file_id, chunks_record, embedder)  # writes the record
                else:
                    await self.store.put_record(CHUNKS_KIND, _fid(vs_id, file_id), chunks_record, owner=vs_id)
                await self._finish(vs_id, file_id, "completed", None, len(text.encode()))
        except asyncio.CancelledError:
            raise
        except UnsupportedFile as exc:
            await self._finish(vs_id, file_id, "failed", {"code": exc.code, "message": str(exc)}, 0)
        except Exception as exc:
            log.exception("indexing %s in %s failed", file_id, vs_id)
            await self._finish(vs_id, file_id, "failed", {"code": "server_error", "message": str(exc)}, 0)

    async def _finish(self, vs_id: str, file_id: str, status: str, error: dict[str, Any] | None, usage: int) -> None:
        async with self._lock((vs_id, file_id)):
            record = await self.store.get_record(FILE_KIND, _fid(vs_id, file_id))
            if record is None or record["status"] != "in_progress":
                return  # deleted or cancelled meanwhile
            record.update(status=status, last_error=error, usage_bytes=usage, index_version=new_id("", 6))
            await self.store.put_record(FILE_KIND, _fid(vs_id, file_id), record, owner=vs_id)

    # -- batches ---------------------------------------------------------------------------------------
    async def create_batch(self, vs_id: str, entries: list[tuple[str, dict[str, Any] | None, dict[str, Any]]],
                           ) -> dict[str, Any]:
        """``entries``: (file id, attributes, chunking strategy) per file, checked."""
        await self._record(vs_id)
        for i, (file_id, _, _) in enumerate(entries):
            await files.require_file(self.store, file_id, f"files[{i}].file_id")
        batch: dict[str, Any] = {"id": new_id("vsfb_"), "object": "vector_store.files_batch", "created_at": int(time.time()),
                 "vector_store_id": vs_id, "status": "in_progress"}
        await self.store.put_record(BATCH_KIND, batch["id"], batch, owner=vs_id)
        for file_id, attributes, chunking in entries:
            await self.add_file(vs_id, file_id, attributes=attributes, chunking=chunking, batch_id=batch["id"])
        return await self.get_batch(vs_id, batch["id"])

    async def get_batch(self, vs_id: str, batch_id: str) -> dict[str, Any]:
        await self._record(vs_id)
        batch = await self.store.get_record(BATCH_KIND, batch_id)
        if batch is None or batch["vector_store_id"] != vs_id:
            raise NotFound(f"No file batch found with id '{batch_id}' in vector store '{vs_id}'.", param="batch_id")
        members = [f for f in await self.store.all_records(FILE_KIND, vs_id) if f.get("batch_id") == batch_id]
        counts = {s: sum(1 for f in members if f["status"] == s) for s in STATUSES}
        out = dict(batch)
        out["file_counts"] = {**counts, "total": len(members)}
        if batch["status"] == "in_progress" and not counts["in_progress"]:
            out["status"] = "completed"
        return out

    async def cancel_batch(self, vs_id: str, batch_id: str) -> dict[str, Any]:
        batch = await self.get_batch(vs_id, batch_id)
        if batch["status"] == "in_progress":
            for record in await self.store.all_records(FILE_KIND, vs_id):
                if record.get("batch_id") != batch_id or record["status"] != "in_progress":
                    continue
                async with self._lock((vs_id, record["id"])):
                    if (task := self._tasks.pop((vs_id, record["id"]), None)) is not None:
                        task.cancel()
                    record["status"] = "cancelled"
                    await self.store.put_record(FILE_KIND, _fid(vs_id, record["id"]), record, owner=vs_id)
            stored = {k: v for k, v in batch.items() if k != "file_counts"}
            stored["status"] = "cancelled"
            await self.store.put_record(BATCH_KIND, batch_id, stored, owner=vs_id)
        return await self.get_batch(vs_id, batch_id)

    # -- search ------------------------------------------------------------------------------------------
    async def search(self, vs_ids: list[str], queries: list[str], *, max_num_results: int = 10,
                     filters: dict[str, Any] | None = None, score_threshold: float = 0.0,
                     weights: tuple[float, float] = (1.0, 1.0)) -> list[dict[str, Any]]:
        """The best chunks for ``queries`` across vector stores, best first, as the search
        endpoint's results (``file_id, filename, score, attributes, content``). A chunk's score
        is its best over the queries; ``weights``: (text, embedding) for the hybrid fusion."""
        results: list[dict[str, Any]] = []
        for vs_id in dict.fromkeys(vs_ids):
            record = await self._record(vs_id)
            if _expired(record):
                raise InvalidRequest(f"Vector store '{vs_id}' has expired.", param="vector_store_id",
                                     code="vector_store_expired")
            vs_files = await self.store.all_records(FILE_KIND, vs_id)
            cached = await self._index_of(vs_id, vs_files)
            attributes = {f["id"]: f.get("attributes") or {} for f in vs_files}
            allowed = {i for i, (fid, _) in enumerate(cached.owners) if matches(filters, attributes.get(fid))}
            best: dict[int, float] = {}
            for query in queries:
                for hit in cached.index.search(query, limit=max_num_results, allowed=allowed,
                                               text_weight=weights[0], embedding_weight=weights[1]):
                    best[hit.index] = max(best.get(hit.index, 0.0), hit.score)
            for i, score in best.items():
                if score >= score_threshold:
                    fid, filename = cached.owners[i]
                    results.append({"file_id": fid, "filename": filename, "score": round(score, 6),
                                    "attributes": attributes.get(fid) or {},
                                    "content": [{"type": "text", "text": cached.index.texts[i]}]})
            if time.time() - int(record.get("last_active_at") or 0) > 60:
                record["last_active_at"] = int(time.time())
                await self.store.put_record(VS_KIND, vs_id, record)
        results.sort(key=lambda r: -r["score"])
        return results[:max_num_results]

    async def _index_of(self, vs_id: str, vs_files: list[dict[str, Any]]) -> _Cached:
        done = sorted((f["id"], str(f.get("index_version"))) for f in vs_files if f["status"] == "completed")
        signature = tuple(done)
        cached = self._cache.get(vs_id)
        if cached is not None and cached.signature == signature:
            return cached
        texts: list[str] = []
        owners: list[tuple[str, str]] = []
        vectors: list[Any] = []
        windows: list[int] = []
        embedder = await self.embedder()
        for file_id, _ in done:
            chunks = await self.store.get_record(CHUNKS_KIND, _fid(vs_id, file_id))
            if chunks is None:
                continue
            texts.extend(chunks["chunks"])
            owners.extend((file_id, chunks["filename"]) for _ in chunks["chunks"])
            if embedder is not None:
                matrix, counts = await self._vectors(vs_id, file_id, chunks, embedder)
                vectors.append(matrix)
                windows.extend(counts)
        given = None
        if embedder is not None and texts:
            import numpy as np

            given = (np.concatenate(vectors), windows)
        index = await asyncio.to_thread(SearchIndex, texts, embedder=embedder, vectors=given)
        cached = _Cached(signature, index, owners)
        self._cache[vs_id] = cached
        return cached

    async def _vectors(self, vs_id: str, file_id: str, chunks: dict[str, Any], embedder: Embedder,
                       ) -> tuple[Any, list[int]]:
        """The stored window vectors of a file's chunks (made when missing or from another model)."""
        import numpy as np

        counts = list(chunks.get("windows") or [])
        if chunks.get("embedder") == embedder.name and len(counts) == len(chunks["chunks"]):
            raw = await self.store.get_blob(f"vs_vectors:{vs_id}:{file_id}")
            if raw is not None and sum(counts) and len(raw) % (4 * sum(counts)) == 0:
                return np.frombuffer(raw, dtype=np.float32).reshape(sum(counts), -1), counts
        return await self._embed(vs_id, file_id, chunks, embedder)

    async def _embed(self, vs_id: str, file_id: str, chunks: dict[str, Any], embedder: Embedder,
                     ) -> tuple[Any, list[int]]:
        """Embed a file's chunks' windows; store the vectors, then the chunks record naming them."""
        import numpy as np

        if chunks["chunks"]:
            matrix, counts = await asyncio.to_thread(embed_windows, embedder, chunks["chunks"])
        else:
            matrix, counts = np.zeros((0, 1), dtype=np.float32), []
        await self.store.put_blob(f"vs_vectors:{vs_id}:{file_id}", matrix.astype(np.float32).tobytes())
        await self.store.put_record(CHUNKS_KIND, _fid(vs_id, file_id),
                                    {**chunks, "embedder": embedder.name, "windows": counts}, owner=vs_id)
        return matrix, counts

    async def wait_idle(self) -> None:
        """Until no file is being indexed (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()


def vector_stores(toolbox: Toolbox) -> VectorStores:
    """The server's ``VectorStores``."""
    service: VectorStores = toolbox.service("vector_stores", VectorStores)
    return service


def show_file(record: dict[str, Any]) -> dict[str, Any]:
    """The API's ``VectorStoreFile`` for a record."""
    return {k: v for k, v in record.items() if k not in _HIDDEN}


def _fid(vs_id: str, file_id: str) -> str:
    return f"{vs_id}:{file_id}"


def _expires_at(record: dict[str, Any]) -> int | None:
    policy = record.get("expires_after")
    if not policy:
        return None
    return int(record.get("last_active_at") or record["created_at"]) + int(policy["days"]) * 86400


def _expired(record: dict[str, Any]) -> bool:
    at = _expires_at(record)
    return at is not None and at <= time.time()


async def _page(store: Store, kind: str, owner: str | None, *, after: str | None, before: str | None, limit: int,
                order: Order, keep: Any = None, id_of: Any = None) -> Page:
    """A page by ``after`` or ``before`` (a page read backwards from ``before``, then turned)."""
    if not 1 <= limit <= 100:
        raise InvalidRequest("limit must be between 1 and 100", param="limit", code="invalid_value")
    accept = keep or (lambda d: True)
    if before is None:
        return await files.filtered_page(store, kind, owner, after=after, limit=limit, order=order, keep=accept,
                                         id_of=id_of)
    back: Order = "asc" if order == "desc" else "desc"
    page = await files.filtered_page(store, kind, owner, after=before, limit=limit, order=back, keep=accept,
                                     id_of=id_of)
    data = page.data[::-1]
    return Page(data, page.has_more, data[0]["id"] if data else None, data[-1]["id"] if data else None)


__all__ = ["BATCH_KIND", "CHUNKS_KIND", "FILE_KIND", "VS_KIND", "VectorStores", "check_attributes",
           "check_expires_after", "check_filter", "check_metadata", "matches", "show_file", "vector_stores"]
