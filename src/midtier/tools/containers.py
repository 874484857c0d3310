"""Containers: a folder and a sandbox each, with their files. The model of the Containers API,
shared by code_interpreter and shell (``toolbox.service("containers", Containers)``).

Records (in the store, so every store backend keeps them):

- kind ``container``, id ``cntr_…``: the API object (``id, object, created_at, status, name,
  expires_after {anchor: last_active_at, minutes}, last_active_at, memory_limit, network_policy``);
  ``status`` is ``running``, or ``expired`` once idle past ``expires_after`` (its files are
  deleted then, and the record stays so that a retrieve says why);
- kind ``container_file``, id ``cfile_…``, owned by its container: the API object (``id, object,
  container_id, created_at, bytes, path, source``) with private keys starting with ``_`` (the
  size and mtime last seen, the Files API file it was copied from) that ``public`` drops;
- kind ``container_scope``, id = a conversation or the first response of a chain:
  ``{"container_id"}``, the ``auto`` container that conversation reuses.

The bytes live on disk: ``<data_dir>/containers/<container id>/<name>``, seen by the code as
``/mnt/data/<name>``. After every run the folder is compared with the records (``sync``): the
files the code wrote get records (``source: assistant``), deleted ones lose theirs. Only regular
files count (a symlink the code made is never followed by the server).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import stat
import time
from collections import OrderedDict
from collections.abc import Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from midtier.core.errors import InvalidRequest, NotFound
from midtier.core.messages import new_id
from midtier.store.base import Order, Page
from midtier.tools.files import get_file_bytes, require_file
from midtier.tools.sandbox import CommandResult, Limits, PythonResult, Sandbox, open_sandbox

if TYPE_CHECKING:
    from midtier.store.base import Store
    from midtier.tools import Toolbox

log = logging.getLogger(__name__)

CONTAINER, FILE, SCOPE = "container", "container_file", "container_scope"
DATA = "/mnt/data"
MEMORY_MB = {"1g": 1024, "4g": 4096, "16g": 16384, "64g": 65536}
DEFAULT_MINUTES = 20
MAX_MINUTES = 7 * 24 * 60
MAX_FILES = 1000  # files of one container that sync records; more are left unlisted
MIB = 1024 * 1024
T = TypeVar("T")
DISK_MB = 1024  # what a container's files may take together (setting max_disk_mb)
DISK_POLL = 0.5  # seconds between looks at a running call's folder (how far past the limit it may write)
SWEEP_EVERY = 60.0  # seconds between expiry sweeps


def public(record: dict[str, Any]) -> dict[str, Any]:
    """The API object of a record (without its private ``_`` keys)."""
    return {k: v for k, v in record.items() if not k.startswith("_")}


def check_name(filename: str, param: str = "file") -> str:
    """A file name the folder can hold: the last part of ``filename``, not empty, not ``..``."""
    name = filename.replace("\\", "/").rsplit("/", 1)[-1].strip()
    if name in ("", ".", "..") or "\x00" in name or len(name.encode()) > 255:
        raise InvalidRequest(f"Invalid file name {filename!r}.", param=param, code="invalid_value")
    return name


class Containers:
    """Every container of a server: records, folders, sandboxes (started on first use, at most
    ``max_sandboxes`` at once: the least recently used one is stopped for a new one) and the sweep."""

    def __init__(self, toolbox: Toolbox) -> None:
        self.toolbox = toolbox
        self.settings = toolbox.settings("code_interpreter")
        self.root = toolbox.data_dir / "containers"
        self.backend = str(self.settings.get("sandbox", "subprocess"))
        self.max_sandboxes = int(self.settings.get("max_sandboxes", 16))
        self.max_disk = int(self.settings.get("max_disk_mb", DISK_MB)) * MIB
        self._sandboxes: OrderedDict[str, Sandbox] = OrderedDict()
        self._last_sweep = 0.0
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def store(self) -> Store:
        return self.toolbox.store

    def folder(self, container_id: str) -> Path:
        return self.root / container_id

    # -- containers ------------------------------------------------------------------------------------
    async def create(self, name: str, *, minutes: int = DEFAULT_MINUTES, memory_limit: str = "1g",
                     file_ids: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
        now = int(time.time())
        record: dict[str, Any] = {"id": new_id("cntr_", 16), "object": "container", "created_at": now, "status": "running",
                  "name": name, "expires_after": {"anchor": "last_active_at", "minutes": minutes},
                  "last_active_at": now, "memory_limit": memory_limit, "network_policy": {"type": "disabled"}}
        self.folder(record["id"]).mkdir(parents=True, exist_ok=True)
        await self.store.put_record(CONTAINER, record["id"], record, created_at=now)
        try:
            for i, file_id in enumerate(file_ids):
                await self.add_file_id(record["id"], file_id, param=f"file_ids[{i}]")
        except Exception:
            await self.delete(record["id"])
            raise
        await self._maybe_sweep()
        return record

    async def get(self, container_id: str) -> dict[str, Any] | None:
        """The container's record (``expired`` once idle too long); None when unknown."""
        record = await self.store.get_record(CONTAINER, container_id)
        if record is not None and record["status"] == "running" and self._idle_out(record, time.time()):
            record = await self._expire(record)
        return record

    async def require(self, container_id: str, param: str = "container_id", *, running: bool = False
                      ) -> dict[str, Any]:
        record = await self.get(container_id)
        if record is None:
            raise NotFound(f"Container with id '{container_id}' not found.", param=param)
        if running and record["status"] != "running":
            raise InvalidRequest(f"Container '{container_id}' is {record['status']}: create a new one.",
                                 param=param, code="container_expired")
        return record

    async def list_containers(self, *, after: str | None = None, limit: int = 20, order: Order = "desc",
                   name: str | None = None) -> Page:
        await self._maybe_sweep()
        if name is None:
            return await self.store.list_records(CONTAINER, after=after, limit=limit, order=order)
        found: list[dict[str, Any]] = []
        cursor = after
        while len(found) <= limit:
            page = await self.store.list_records(CONTAINER, after=cursor, limit=100, order=order)
            found += [r for r in page.data if r.get("name") == name]
            if not page.has_more or not page.data:
                break
            cursor = page.data[-1]["id"]
        data = found[:limit]
        return Page(data, len(found) > limit, data[0]["id"] if data else None, data[-1]["id"] if data else None)

    async def delete(self, container_id: str) -> bool:
        await self._close_sandbox(container_id)
        await self.store.delete_owned(FILE, container_id)
        await asyncio.to_thread(shutil.rmtree, self.folder(container_id), True)
        return await self.store.delete_record(CONTAINER, container_id)

    async def for_scope(self, scope: str, auto: dict[str, Any]) -> dict[str, Any]:
        """The ``auto`` container of a conversation (``scope``), made on first use, with the
        request's ``file_ids`` in it."""
        link = await self.store.get_record(SCOPE, scope)
        record = await self.get(link["container_id"]) if link else None
        memory = auto.get("memory_limit") or "1g"
        if record is None or record["status"] != "running":
            record = await self.create(f"auto {scope}", memory_limit=memory)
            await self.store.put_record(SCOPE, scope, {"container_id": record["id"]})
        copied = {f.get("_file_id") for f in await self.store.all_records(FILE, record["id"])}
        for i, file_id in enumerate(auto.get("file_ids") or []):
            if file_id not in copied:
                await self.add_file_id(record["id"], file_id, param=f"container.file_ids[{i}]")
        return record

    async def touch(self, record: dict[str, Any]) -> None:
        record["last_active_at"] = int(time.time())
        await self.store.put_record(CONTAINER, record["id"], record)

    @staticmethod
    def _idle_out(record: dict[str, Any], now: float) -> bool:
        minutes = (record.get("expires_after") or {}).get("minutes") or DEFAULT_MINUTES
        return bool(now > record["last_active_at"] + minutes * 60)

    async def _expire(self, record: dict[str, Any]) -> dict[str, Any]:
        log.info("container %s expired (idle since %s)", record["id"], record["last_active_at"])
        await self._close_sandbox(record["id"])
        await self.store.delete_owned(FILE, record["id"])
        await asyncio.to_thread(shutil.rmtree, self.folder(record["id"]), True)
        record = {**record, "status": "expired"}
        await self.store.put_record(CONTAINER, record["id"], record)
        return record

    async def sweep(self) -> int:
        """Expire every container idle past its time; how many."""
        self._last_sweep = time.monotonic()
        now, count, cursor = time.time(), 0, None
        while True:
            page = await self.store.list_records(CONTAINER, after=cursor, limit=100, order="asc")
            for record in page.data:
                if record["status"] == "running" and self._idle_out(record, now):
                    await self._expire(record)
                    count += 1
            if not page.has_more or not page.data:
                return count
            cursor = page.data[-1]["id"]

    async def _maybe_sweep(self) -> None:
        if self._sweeper is None or self._sweeper.done():  # a background sweep while this event loop runs
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())
        if time.monotonic() - self._last_sweep >= SWEEP_EVERY:
            await self.sweep()

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_EVERY)
            try:
                await self.sweep()
            except Exception:
                log.exception("the container sweep failed")

    # -- files -------------------------------------------------------------------------------------------
    async def add_file(self, container_id: str, filename: str, data: bytes, *, source: str = "user",
                       file_id: str | None = None) -> dict[str, Any]:
        """Write ``data`` as ``/mnt/data/<name>`` (replacing a file of that name) and record it."""
        name = check_name(filename)
        path = self.folder(container_id) / name
        if path.is_symlink() or path.is_dir():
            raise InvalidRequest(f"'{name}' is a folder or a link in the container.", param="file", code="invalid_value")
        records = await self.store.all_records(FILE, container_id)
        kept = sum(int(r.get("bytes") or 0) for r in records if r["path"] != f"{DATA}/{name}")
        if kept + len(data) > self.max_disk:
            raise InvalidRequest(f"The container's files would take more than its {self.max_disk // MIB} MB "
                                 f"({kept} bytes are there): delete some first.", param="file", code="container_full")
        for old in records:
            if old["path"] == f"{DATA}/{name}":
                await self.store.delete_record(FILE, old["id"])
        await asyncio.to_thread(path.write_bytes, data)
        container = await self.store.get_record(CONTAINER, container_id)
        self.sandbox(container_id, (container or {}).get("memory_limit")).claim(path)
        st = path.stat()
        now = int(time.time())
        record: dict[str, Any] = {"id": new_id("cfile_", 16), "object": "container.file", "container_id": container_id,
                  "created_at": now, "bytes": len(data), "path": f"{DATA}/{name}", "source": source,
                  "_size": st.st_size, "_mtime": st.st_mtime_ns, "_file_id": file_id}
        await self.store.put_record(FILE, record["id"], record, owner=container_id, created_at=now)
        return record

    async def add_file_id(self, container_id: str, file_id: str, *, param: str = "file_id") -> dict[str, Any]:
        """Copy a file of the Files API into the container."""
        meta = await require_file(self.store, file_id, param)
        data = await get_file_bytes(self.store, file_id)
        if data is None:
            raise NotFound(f"No such File object: {file_id}", param=param)
        return await self.add_file(container_id, meta["filename"], data, file_id=file_id)

    async def get_file(self, container_id: str, file_id: str) -> dict[str, Any] | None:
        record = await self.store.get_record(FILE, file_id)
        return record if record is not None and record["container_id"] == container_id else None

    async def list_files(self, container_id: str, *, after: str | None = None, limit: int = 20,
                         order: Order = "desc") -> Page:
        return await self.store.list_records(FILE, owner=container_id, after=after, limit=limit, order=order)

    async def delete_file(self, container_id: str, file_id: str) -> bool:
        record = await self.get_file(container_id, file_id)
        if record is None:
            return False
        path = self._path(container_id, record)
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        return await self.store.delete_record(FILE, file_id)

    def _path(self, container_id: str, record: dict[str, Any]) -> Path | None:
        """The file's place on disk, if it is still a regular file inside the folder."""
        folder = self.folder(container_id).resolve()
        relative = str(record["path"]).removeprefix(DATA + "/")
        path = folder / relative
        try:
            if path.resolve().is_relative_to(folder) and stat.S_ISREG(path.lstat().st_mode):
                return path
        except OSError:
            return None
        return None

    async def read_file(self, container_id: str, record: dict[str, Any]) -> bytes | None:
        """The file's bytes as they are now (None when the code deleted it)."""
        path = self._path(container_id, record)
        if path is None:
            return None

        def read() -> bytes:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as f:
                return f.read()

        try:
            return await asyncio.to_thread(read)
        except OSError:
            return None

    async def sync(self, container_id: str) -> list[dict[str, Any]]:
        """Records for what the folder holds now; returns the files that are new or changed."""
        folder = self.folder(container_id)
        seen = await asyncio.to_thread(_scan, folder)
        records = {r["path"]: r for r in await self.store.all_records(FILE, container_id)}
        changed: list[dict[str, Any]] = []
        now = int(time.time())
        for path, record in records.items():
            if path not in seen:
                await self.store.delete_record(FILE, record["id"])
        for path, (size, mtime) in seen.items():
            old = records.get(path)
            if old is not None and (old.get("_size"), old.get("_mtime")) == (size, mtime):
                continue
            record = {**(old or {"id": new_id("cfile_", 16), "object": "container.file",
                                 "container_id": container_id, "created_at": now, "source": "assistant",
                                 "_file_id": None}),
                      "bytes": size, "path": path, "_size": size, "_mtime": mtime}
            await self.store.put_record(FILE, record["id"], record, owner=container_id, created_at=now)
            changed.append(record)
        return changed

    # -- running code ----------------------------------------------------------------------------------
    def sandbox(self, container_id: str, memory_limit: str | None = None) -> Sandbox:
        """The container's sandbox (made on first use; not started until it runs something). Its
        memory is the container's ``memory_limit``, at most ``max_memory_mb`` (setting, 4096)."""
        sandbox = self._sandboxes.get(container_id)
        if sandbox is None:
            memory = min(MEMORY_MB.get(memory_limit or "1g", 1024), int(self.settings.get("max_memory_mb", 4096)))
            sandbox = open_sandbox(self.backend, self.folder(container_id),
                                   Limits.from_settings(self.settings, memory_mb=memory),
                                   {"mountpoint": self.root / ".mnt", **self.settings})
            self._sandboxes[container_id] = sandbox
        self._sandboxes.move_to_end(container_id)
        return sandbox

    async def run_python(self, record: dict[str, Any], code: str, timeout: float
                         ) -> tuple[PythonResult, list[dict[str, Any]]]:
        """Run ``code`` in the container; the result and the files it wrote or changed."""
        sandbox = await self._open(record)
        try:
            result, full = await self._bounded(record["id"], sandbox.run_python(code, timeout))
        finally:
            await self.touch(record)
        if result is None or full:
            result = PythonResult("", self._stopped_note(), outcome="killed")
        changed = await self.sync(record["id"])
        removed = await self._within_disk(record["id"], changed)
        if removed:
            note = self._disk_note(removed)
            result.error = f"{result.error}\n{note}" if result.error else note
        return result, [f for f in changed if f["path"] not in removed]

    async def run_shell(self, record: dict[str, Any], commands: list[str], timeout: float, max_output: int
                        ) -> tuple[list[CommandResult], list[dict[str, Any]]]:
        sandbox = await self._open(record)
        try:
            ran, full = await self._bounded(record["id"], sandbox.run_shell(commands, timeout, max_output))
        finally:
            await self.touch(record)
        results = ran if ran is not None and not full else [CommandResult("", self._stopped_note(), 137)]
        changed = await self.sync(record["id"])
        removed = await self._within_disk(record["id"], changed)
        if removed and results:
            last = results[-1]
            last.stderr = f"{last.stderr}\n{self._disk_note(removed)}".lstrip("\n")
        return results, [f for f in changed if f["path"] not in removed]

    async def _bounded(self, container_id: str, run: Awaitable[T]) -> tuple[T | None, bool]:
        """Await ``run`` while looking at the container's folder every ``DISK_POLL`` s: past
        ``max_disk_mb`` the call is stopped (its sandbox killed) and (None, True) returned."""
        task = asyncio.ensure_future(run)
        folder = self.folder(container_id)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=DISK_POLL)
                if done:
                    return task.result(), False
                if await asyncio.to_thread(_folder_bytes, folder) > self.max_disk:
                    log.warning("container %s: a call wrote past its disk limit and was stopped", container_id)
                    return None, True
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    def _stopped_note(self) -> str:
        return (f"DiskFull: the call wrote more than the container's {self.max_disk // MIB} MB and was stopped; "
                f"the sandbox restarts. Write less, or delete files first.")

    async def _within_disk(self, container_id: str, changed: list[dict[str, Any]]) -> list[str]:
        """Hold the container to ``max_disk_mb``: when its files take more, the files this call
        wrote go, the largest first, until they fit. The paths removed."""
        records = await self.store.all_records(FILE, container_id)
        total = sum(int(r.get("bytes") or 0) for r in records)
        removed: list[str] = []
        for record in sorted(changed, key=lambda r: -int(r.get("bytes") or 0)):
            if total <= self.max_disk:
                break
            path = self.folder(container_id) / record["path"][len(DATA) + 1:]
            with contextlib.suppress(OSError):
                await asyncio.to_thread(path.unlink)
            await self.store.delete_record(FILE, record["id"])
            total -= int(record.get("bytes") or 0)
            removed.append(record["path"])
        if removed:
            log.info("container %s: over its disk limit, removed %s", container_id, ", ".join(removed))
        return removed

    def _disk_note(self, removed: list[str]) -> str:
        return (f"DiskFull: the container's files took more than its {self.max_disk // MIB} MB; the files this "
                f"call wrote were removed: {', '.join(removed)}")

    async def _open(self, record: dict[str, Any]) -> Sandbox:
        await self._maybe_sweep()
        sandbox = self.sandbox(record["id"], record.get("memory_limit"))
        while len(self._sandboxes) > self.max_sandboxes:
            oldest = next(iter(self._sandboxes))
            await self._close_sandbox(oldest)
        return sandbox

    async def _close_sandbox(self, container_id: str) -> None:
        sandbox = self._sandboxes.pop(container_id, None)
        if sandbox is not None:
            await sandbox.close()

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await self._sweeper
            self._sweeper = None
        for container_id in list(self._sandboxes):
            await self._close_sandbox(container_id)


def _folder_bytes(folder: Path) -> int:
    """What the regular files under ``folder`` take (their sizes; links not followed)."""
    total = 0
    for top, _, names in os.walk(folder, followlinks=False):
        for name in names:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(top, name))
                if stat.S_ISREG(st.st_mode):
                    total += st.st_size
    return total


def _scan(folder: Path) -> dict[str, tuple[int, int]]:
    """``/mnt/data/<relative path>`` -> (size, mtime ns) of every regular file (links not followed)."""
    found: dict[str, tuple[int, int]] = {}
    for top, dirs, names in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            path = os.path.join(top, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                found[f"{DATA}/{os.path.relpath(path, folder)}"] = (st.st_size, st.st_mtime_ns)
                if len(found) >= MAX_FILES:
                    log.warning("container folder %s holds more than %d files; the rest are not listed", folder,
                                MAX_FILES)
                    return found
    return found
