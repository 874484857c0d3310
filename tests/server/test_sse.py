"""The event-stream response: events that are ready together go out in one write, an event
alone goes out at once, an error after the start is an event, and a client that leaves
stops the producer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from midtier.server.sse import EventStreamResponse, sse_data, sse_event

SCOPE: dict[str, Any] = {"type": "http", "method": "GET", "path": "/"}


async def _serve(events: AsyncIterator[bytes], *, on_error: Any = None,
                 leave_after: float | None = None) -> list[tuple[float, dict[str, Any]]]:
    """The messages the response sends, each with the time it was sent (from the start)."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    sent: list[tuple[float, dict[str, Any]]] = []

    async def receive() -> dict[str, Any]:
        if leave_after is None:
            await asyncio.Event().wait()
        await asyncio.sleep(leave_after or 0)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append((loop.time() - t0, message))

    await asyncio.wait_for(EventStreamResponse(events, on_error=on_error)(SCOPE, receive, send), 5)
    return sent


def _bodies(sent: list[tuple[float, dict[str, Any]]]) -> list[tuple[bytes, bool]]:
    return [(m["body"], m["more_body"]) for _, m in sent if m["type"] == "http.response.body"]


def test_events_ready_together_share_one_write_with_the_end() -> None:
    async def events() -> AsyncIterator[bytes]:
        for i in range(5):
            yield sse_data({"i": i})
        yield b"data: [DONE]\n\n"

    sent = asyncio.run(_serve(events()))
    assert sent[0][1]["type"] == "http.response.start"
    whole = b"".join(sse_data({"i": i}) for i in range(5)) + b"data: [DONE]\n\n"
    assert _bodies(sent) == [(whole, False)]


def test_an_event_alone_goes_out_at_once() -> None:
    async def events() -> AsyncIterator[bytes]:
        yield b"data: 1\n\n"
        await asyncio.sleep(0.3)  # the next one is not ready: the first must not wait for it
        yield b"data: 2\n\n"
        yield b"data: 3\n\n"

    sent = asyncio.run(_serve(events()))
    bodies = [(t, m["body"], m["more_body"]) for t, m in sent if m["type"] == "http.response.body"]
    assert [(b, more) for _, b, more in bodies] == [(b"data: 1\n\n", True), (b"data: 2\n\ndata: 3\n\n", False)]
    assert bodies[0][0] < 0.2 <= bodies[1][0]


def test_a_producer_far_ahead_is_bounded_by_the_queue() -> None:
    n = EventStreamResponse.QUEUE * 3

    async def events() -> AsyncIterator[bytes]:
        for i in range(n):
            yield b"data: %d\n\n" % i

    bodies = _bodies(asyncio.run(_serve(events())))
    assert len(bodies) >= 3 and all(b.count(b"data:") <= EventStreamResponse.QUEUE + 1 for b, _ in bodies)
    assert b"".join(b for b, _ in bodies) == b"".join(b"data: %d\n\n" % i for i in range(n))
    assert [more for _, more in bodies] == [True] * (len(bodies) - 1) + [False]


def test_an_error_after_the_start_is_an_event_then_the_end() -> None:
    async def events() -> AsyncIterator[bytes]:
        yield sse_event("a", {"x": 1})
        raise RuntimeError("boom")

    sent = asyncio.run(_serve(events(), on_error=lambda exc: sse_data({"error": {"message": str(exc)}})))
    body = b"".join(b for b, _ in _bodies(sent))
    assert body == b'event: a\ndata: {"x":1}\n\ndata: {"error":{"message":"boom"}}\n\n'
    assert _bodies(sent)[-1][1] is False


def test_a_client_that_leaves_stops_the_producer() -> None:
    closed = asyncio.Event()

    async def events() -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"data: tick\n\n"
                await asyncio.sleep(0.02)
        finally:
            closed.set()

    async def go() -> list[tuple[float, dict[str, Any]]]:
        sent = await _serve(events(), leave_after=0.2)
        assert closed.is_set()
        return sent

    sent = asyncio.run(go())
    bodies = _bodies(sent)
    assert bodies and all(more for _, more in bodies)  # no end is sent to a client that left
    assert sent[-1][0] < 1


def test_sse_data_falls_back_to_json_for_what_orjson_refuses() -> None:
    assert sse_data({"n": 2**70, 1: "x", "t": "\u00e9"}) == f'data: {{"n":{2**70},"1":"x","t":"\u00e9"}}\n\n'.encode()
