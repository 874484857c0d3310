"""The gateway bench on a tiny load: the fake upstream, its client, and one run through midtier
(no LiteLLM), checking the result line's shape (no timing is asserted)."""

from __future__ import annotations

import asyncio
import importlib.util
import io
import json
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str) -> ModuleType:
    if str(BENCH_DIR) not in sys.path:  # the bench imports its neighbours as scripts do
        sys.path.insert(0, str(BENCH_DIR))
    spec = importlib.util.spec_from_file_location(name, BENCH_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


upstream = _load("fake_upstream")
bench = _load("gateway")


async def _with_upstream(answer: Any, body: Any) -> Any:
    """Run ``body(port)`` against an in-process fake upstream."""
    server = await asyncio.start_server(upstream.Server(answer).handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        return await body(port)
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("delay", [0.0, 0.001])
def test_client_reads_the_fake_upstream_stream(delay: float) -> None:
    answer = upstream.Answer(chunks=5, chunk_delay=delay)
    expected = "".join(upstream.words(5))

    async def body(port: int) -> Any:
        target = bench.Target("direct", port, expected)
        await target.burst(2, 6)
        await target.close()
        return target

    target = asyncio.run(_with_upstream(answer, body))
    assert not target.errors
    assert len(target.samples) == 6
    assert all(0 < s.ttft <= s.total for s in target.samples)
    if delay:  # the first token comes before the other four pauses
        assert all(s.total - s.ttft >= 4 * delay * 0.9 for s in target.samples)


def test_a_wrong_answer_is_an_error_not_a_sample() -> None:
    async def body(port: int) -> Any:
        target = bench.Target("direct", port, "".join(upstream.words(6)))  # the upstream says 5 words
        await target.burst(1, 3)
        await target.close()
        return target

    target = asyncio.run(_with_upstream(upstream.Answer(chunks=5), body))
    assert target.samples == [] and len(target.errors) == 3
    assert "wrong answer" in target.errors[0]


def test_fake_upstream_events_are_openai_chunks() -> None:
    events = upstream.Answer(chunks=3).events("m", usage=True)
    payloads = []
    for raw in events:
        size, _, rest = raw.partition(b"\r\n")
        data = rest[:-2]
        assert int(size, 16) == len(data)
        assert data.startswith(b"data: ") and data.endswith(b"\n\n")
        payloads.append(data[6:-2])
    assert payloads[-1] == b"[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "w0 w1 w2 "
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3


def test_percentile_and_ratio() -> None:
    xs = [float(i) for i in range(1, 101)]
    assert bench.percentile(xs, 50) == pytest.approx(50.5)
    assert bench.percentile(xs, 99) == pytest.approx(99.01)
    assert bench.percentile([3.0], 99) == 3.0
    assert math.isnan(bench.percentile([], 50))
    assert bench.ratio(1.0, 4.0) == 0.25
    assert bench.ratio(1.0, 0.0) is None


def test_tiny_run_through_midtier() -> None:
    out = io.StringIO()
    result = asyncio.run(bench.bench([1, 3], [8, 9], 2, chunks=4, litellm=None, pin=False, out=out))
    line = json.loads(json.dumps(result))
    assert line["bench"] == "gateway" and line["metric"] == "total"
    assert line["worst_ratio_vs_litellm"] is None and line["litellm"] is None
    assert set(line["levels"]) == {"1", "3"}
    for level in line["levels"].values():
        assert level["requests"] >= 8
        assert "litellm" not in level
        assert level["midtier"]["errors"] == 0
        assert set(level["midtier"]) >= {"total_p50_ms", "total_p99_ms", "ttft_p50_ms", "ttft_p99_ms",
                                         "added_total_p50_ms", "added_total_p99_ms", "added_ttft_p50_ms",
                                         "added_ttft_p99_ms", "cpu_ms_per_request"}
        assert level["midtier"]["total_p50_ms"] > 0 and level["midtier"]["cpu_ms_per_request"] > 0
    assert line["p50_added_ms_c1"] == line["levels"]["1"]["midtier"]["added_total_p50_ms"]
    text = out.getvalue()
    assert "concurrency 3" in text and "midtier added" in text
