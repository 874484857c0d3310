"""A fast, deterministic fake OpenAI-compatible Chat Completions server, for ``bench/gateway.py``.

Every chat completion answers the same text, ``TOKENS`` content chunks ("w0 w1 ... "), so the
time a proxy adds in front of it is not hidden by any real generation. Streamed (SSE over
chunked transfer encoding) or whole, with a usage chunk when ``stream_options.include_usage``
asks for one, and ``[DONE]`` last. Plain asyncio streams, HTTP/1.1 with keep-alive: the server
itself costs tens of microseconds a request.

    .venv/bin/python bench/fake_upstream.py --port 8081 [--chunks 20] [--chunk-delay-ms 0]

Routes: ``POST .../chat/completions``, ``GET .../models``, ``GET /health``. It prints
``listening on PORT`` once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("fake_upstream")

MODEL = "fake-model"
CREATED = 1_700_000_000
MAX_BODY = 16 * 1024 * 1024


def words(n: int) -> list[str]:
    """The content of each of the ``n`` chunks; their concatenation is what every answer says."""
    return [f"w{i} " for i in range(n)]


@dataclass(frozen=True)
class Answer:
    chunks: int = 20
    chunk_delay: float = 0.0  # seconds between two content chunks

    def events(self, model: str, usage: bool) -> list[bytes]:
        """The SSE events of one streamed answer, each as one HTTP chunk."""
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": CREATED, "model": model,
                "system_fingerprint": None}

        def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            data = json.dumps({**base, "choices": choices, **extra}, separators=(",", ":"))
            return _chunk(f"data: {data}\n\n".encode())

        out = [event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                       "finish_reason": None}])]
        out += [event([{"index": 0, "delta": {"content": w}, "logprobs": None, "finish_reason": None}])
                for w in words(self.chunks)]
        out.append(event([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]))
        if usage:
            out.append(event([], usage=self.usage()))
        out.append(_chunk(b"data: [DONE]\n\n"))
        return out

    def whole(self, model: str) -> bytes:
        return json.dumps({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": CREATED, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(words(self.chunks))},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": self.usage()}).encode()

    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": 10, "completion_tokens": self.chunks, "total_tokens": 10 + self.chunks}


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


STREAM_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
               b"transfer-encoding: chunked\r\n\r\n")


def _response(status: str, body: bytes, content_type: str = "application/json") -> bytes:
    return (f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {len(body)}\r\n\r\n".encode()
            + body)


def _error(status: str, message: str) -> bytes:
    return _response(status, json.dumps({"error": {"message": message, "type": "invalid_request_error",
                                                   "param": None, "code": None}}).encode())


class Server:
    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self._cache: dict[tuple[str, bool], list[bytes]] = {}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False once the connection is to be closed."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        lines = head.decode("latin-1").split("\r\n")
        method, target, _version = (lines[0].split(" ") + ["", ""])[:3]
        headers = {}
        for line in lines[1:]:
            key, sep, value = line.partition(":")
            if sep:
                headers[key.strip().lower()] = value.strip()
        body = await self._body(reader, headers)
        keep = headers.get("connection", "").lower() != "close"
        path = target.split("?", 1)[0].rstrip("/")
        if method == "POST" and path.endswith("/chat/completions"):
            await self._chat(body, writer)
        elif method == "GET" and path.endswith("/models"):
            writer.write(_response("200 OK", json.dumps({"object": "list", "data": [
                {"id": MODEL, "object": "model", "created": CREATED, "owned_by": "bench"}]}).encode()))
        elif method == "GET" and path == "/health":
            writer.write(_response("200 OK", b"{}"))
        else:
            writer.write(_error("404 Not Found", f"no route {method} {path}"))
        await writer.drain()
        return keep

    async def _body(self, reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
        if headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    return b"".join(parts)
                parts.append((await reader.readexactly(size + 2))[:-2])
        length = int(headers.get("content-length", "0") or 0)
        if length > MAX_BODY:
            raise ConnectionError("request body too large")
        return await reader.readexactly(length) if length else b""

    async def _chat(self, raw: bytes, writer: asyncio.StreamWriter) -> None:
        try:
            request = json.loads(raw)
            model = str(request.get("model") or MODEL)
        except (ValueError, AttributeError):
            writer.write(_error("400 Bad Request", "the body is not a JSON object"))
            return
        if not request.get("stream"):
            writer.write(_response("200 OK", self.answer.whole(model)))
            return
        usage = bool((request.get("stream_options") or {}).get("include_usage"))
        key = (model, usage)
        events = self._cache.get(key)
        if events is None:
            events = self._cache[key] = self.answer.events(model, usage)
        if self.answer.chunk_delay <= 0:
            writer.write(STREAM_HEAD + b"".join(events) + b"0\r\n\r\n")
            return
        writer.write(STREAM_HEAD + events[0])
        await writer.drain()
        for event in events[1:]:
            await asyncio.sleep(self.answer.chunk_delay)
            writer.write(event)
            await writer.drain()
        writer.write(b"0\r\n\r\n")


async def serve(host: str, port: int, answer: Answer) -> None:
    server = await asyncio.start_server(Server(answer).handle, host, port, backlog=1024)
    print(f"listening on {port}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--chunks", type=int, default=20, help="content chunks per answer (default: %(default)s)")
    ap.add_argument("--chunk-delay-ms", type=float, default=0.0,
                    help="pause between two chunks of a stream (default: none, the whole answer at once)")
    args = ap.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port, Answer(args.chunks, args.chunk_delay_ms / 1000)))


if __name__ == "__main__":
    main()
