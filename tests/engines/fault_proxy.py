"""HTTP peers for upstream tests, each on a free port with its own event loop in a thread
(so sync tests, ``asyncio.run`` tests and server subprocesses can all reach them):

- ``FakeUpstream``: a scripted OpenAI-compatible Chat Completions server (``Reply``);
- ``FaultProxy``: forwards to a real upstream and injects faults (``Fault``) into its
  Server-Sent Events: a connection reset, a stall, a malformed chunk.

Both speak HTTP/1.1 with keep-alive and chunked bodies, so a reset mid-body is a broken
response to the client (not a short one), and both notice a client that goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.watch: asyncio.Future[bytes] | None = None

    async def request(self) -> Request | None:
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return Request(method, path, headers, body)

    def watch_disconnect(self) -> None:
        self.watch = asyncio.ensure_future(self.reader.read(1))

    @property
    def gone(self) -> bool:
        return self.watch is not None and self.watch.done()

    async def wait_gone(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` (None: for ever) for the client to leave; True if it did."""
        assert self.watch is not None
        await asyncio.wait({self.watch}, timeout=timeout)
        return self.watch.done()

    async def unwatch(self) -> None:
        if self.watch is not None and not self.watch.done():
            self.watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.watch
        self.watch = None

    async def head(self, status: int, content_type: str, length: int | None = None) -> None:
        framing = f"content-length: {length}" if length is not None else "transfer-encoding: chunked"
        self.writer.write(f"HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\n{framing}\r\n\r\n".encode())
        await self.writer.drain()

    async def chunk(self, data: bytes) -> None:
        self.writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        await self.writer.drain()

    async def end(self) -> None:
        self.writer.write(b"0\r\n\r\n")
        await self.writer.drain()

    async def body(self, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        await self.head(status, "application/json", len(data))
        self.writer.write(data)
        await self.writer.drain()

    def reset(self) -> None:
        """Close with a TCP RST, as a crashed peer or a middlebox does."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


class _Server:
    """A raw HTTP/1.1 server in a thread of its own; ``handle`` answers one request and says
    whether the connection may serve another."""

    def __init__(self) -> None:
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._tasks: set[asyncio.Task[None]] = set()
        self.disconnects = 0  # clients that left while a response was under way
        self.connections = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> _Server:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self.loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.shutdown()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    async def shutdown(self) -> None:
        pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        conn = _Conn(reader, writer)
        try:
            while (request := await conn.request()) is not None:
                conn.watch_disconnect()
                try:
                    keep = await self.handle(request, conn)
                finally:
                    if conn.gone:
                        self.disconnects += 1
                    await conn.unwatch()
                if not keep:
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            if not writer.transport.is_closing():
                writer.close()

    async def handle(self, request: Request, conn: _Conn) -> bool:
        raise NotImplementedError


# -- a scripted upstream -------------------------------------------------------------------------
@dataclass
class Reply:
    """One scripted answer. ``events``: dicts are sent as ``data: <json>``, strings as they are
    (``"data: [DONE]"`` ends the stream when ``done``); ``json`` instead: a whole JSON body."""

    events: list[Any] = field(default_factory=list)
    status: int = 200
    json: Any = None
    delay: float = 0.0  # before each event
    done: bool = True
    reset_after: int | None = None  # reset the connection after this many events (0: before the headers)
    stall_after: int | None = None  # send nothing more after this many events, until the client leaves


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, usage: dict[str, Any] | None = None,
          choices: bool = True) -> dict[str, Any]:
    """A chat.completion.chunk."""
    out: dict[str, Any] = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "up",
                           "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}] if choices else []}
    if usage is not None:
        out["usage"] = usage
    return out


def text_reply(*texts: str, finish: str = "stop", usage: dict[str, Any] | None = None, **kw: Any) -> Reply:
    events: list[Any] = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": t}) for t in texts]
    events.append(chunk(finish=finish))
    if usage is not None:
        events.append(chunk(usage=usage, choices=False))
    return Reply(events, **kw)


def call_delta(index: int, *, id: str | None = None, name: str | None = None, args: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"index": index, "function": {}}
    if id is not None:
        entry.update(id=id, type="function")
    if name is not None:
        entry["function"]["name"] = name
    if args is not None:
        entry["function"]["arguments"] = args
    return chunk({"tool_calls": [entry]})


class FakeUpstream(_Server):
    def __init__(self) -> None:
        super().__init__()
        self.replies: deque[Reply] = deque()
        self.requests: list[Request] = []
        self.finished = 0  # replies sent whole

    def enqueue(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    async def handle(self, request: Request, conn: _Conn) -> bool:
        self.requests.append(request)
        if not self.replies:
            await conn.body(500, {"error": {"message": "no reply scripted", "type": "server_error"}})
            return True
        reply = self.replies.popleft()
        if reply.reset_after == 0:
            conn.reset()
            return False
        if reply.json is not None:
            await conn.body(reply.status, reply.json)
            self.finished += 1
            return True
        await conn.head(reply.status, "text/event-stream")
        events = [e if isinstance(e, str) else "data: " + json.dumps(e) for e in reply.events]
        if reply.done:
            events.append("data: [DONE]")
        for n, event in enumerate(events):
            if reply.reset_after == n:
                conn.reset()
                return False
            if reply.stall_after == n:
                await conn.wait_gone()
                return False
            if reply.delay and await conn.wait_gone(reply.delay):
                return False
            if conn.gone:
                return False
            await conn.chunk(event.encode() + b"\n\n")
        await conn.end()
        self.finished += 1
        return True


# -- a proxy that breaks things ------------------------------------------------------------------
@dataclass
class Fault:
    mode: Literal["reset", "stall", "malformed"]
    after: int = 0  # events forwarded before the fault (reset with 0: before the response's headers)


MALFORMED = b'data: {"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"content": "tru\n\n'


class FaultProxy(_Server):
    """Forwards every request to ``target`` (a base URL like ``http://host:port/v1``); the next
    request after ``inject`` gets that fault. A client that leaves closes the upstream request."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target.rstrip("/")
        self.faults: deque[Fault] = deque()
        self.forwarded = 0  # requests passed on to the target

    def inject(self, *faults: Fault) -> None:
        self.faults.extend(faults)

    async def shutdown(self) -> None:
        if hasattr(self, "_client"):
            await self._client.aclose()

    async def handle(self, request: Request, conn: _Conn) -> bool:
        fault = self.faults.popleft() if self.faults else None
        if fault is not None and fault.mode == "reset" and fault.after == 0:
            conn.reset()
            return False
        if not hasattr(self, "_client"):
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(600, connect=10))
        path = request.path[len("/v1"):] if request.path.startswith("/v1") else request.path
        headers = {k: v for k, v in request.headers.items() if k in ("content-type", "authorization", "accept")}
        self.forwarded += 1
        async with contextlib.AsyncExitStack() as stack:
            req = self._client.build_request(request.method, self.target + path, content=request.body, headers=headers)
            send = asyncio.ensure_future(self._client.send(req, stream=True))
            assert conn.watch is not None
            await asyncio.wait({send, conn.watch}, return_when=asyncio.FIRST_COMPLETED)
            if not send.done():  # the client left before the upstream answered
                send.cancel()
                with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                    await send
                return False
            resp = send.result()
            stack.push_async_callback(resp.aclose)
            ctype = resp.headers.get("content-type", "application/octet-stream")
            if "text/event-stream" not in ctype:
                data = await resp.aread()
                await conn.head(resp.status_code, ctype, len(data))
                conn.writer.write(data)
                await conn.writer.drain()
                return True
            await conn.head(resp.status_code, ctype)
            n = 0
            event: list[str] = []
            lines = resp.aiter_lines().__aiter__()
            while True:
                line_task = asyncio.ensure_future(anext(lines))
                await asyncio.wait({line_task, conn.watch}, return_when=asyncio.FIRST_COMPLETED)
                if not line_task.done():  # the client left: closing resp stops the upstream
                    line_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, httpx.HTTPError):
                        await line_task
                    return False
                try:
                    line = line_task.result()
                except StopAsyncIteration:
                    break
                if line:
                    event.append(line)
                    continue
                if not event:
                    continue
                if fault is not None and n == fault.after:
                    if fault.mode == "reset":
                        conn.reset()
                        return False
                    if fault.mode == "stall":
                        await conn.wait_gone()
                        return False
                    await conn.chunk(MALFORMED)
                    fault = None
                await conn.chunk("\n".join(event).encode() + b"\n\n")
                event = []
                n += 1
            if event:
                await conn.chunk("\n".join(event).encode() + b"\n\n")
            await conn.end()
        return True
