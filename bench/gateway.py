"""The latency midtier adds in front of an upstream Chat Completions server, side by side
with LiteLLM's proxy in front of the same upstream, at 1, 16 and 64 concurrent streams.

The upstream is ``bench/fake_upstream.py``: it streams a fixed answer (20 content chunks, all
at once by default) in tens of microseconds, so what is measured is the proxies' own work:
parsing the request, opening the upstream request, relaying every chunk. Three targets get
the same streamed requests from the same client (plain asyncio, one keep-alive connection
per stream, every answer checked whole):

- ``direct``: the fake upstream itself (the baseline);
- ``midtier``: ``midtier serve --config`` with one ``openai_chat`` model on the upstream;
- ``litellm``: ``litellm --config`` with one ``openai/`` model on the upstream, from its own
  venv (``make bench-gateway`` creates ``.venv-bench``), with its extras off (see
  ``LITELLM_CONFIG``).

Per request: TTFT (time to the first non-empty content delta) and total (time to the end of
the response). **Added latency** at a percentile is the proxied percentile minus the direct
one (p50 and p99, per concurrency level). The targets are on total, which holds all of a
proxy's work on a request (TTFT holds only the part before the first chunk); TTFT is
reported beside it. Levels are run in rounds, and within a round the targets take turns in
a rotating order, so they share the machine's noise. With 2 or more CPUs the proxies are
pinned to the last CPU and the upstream and client to the others (``--no-pin``: not).

    make bench-gateway                                   # creates .venv-bench, then runs this
    .venv/bin/python bench/gateway.py [--levels 1,16,64] [--requests 400,1600,3200] [--rounds 10]
    .venv/bin/python bench/gateway.py --no-litellm       # midtier only
Last line: {"bench": "gateway", "p50_added_ms_c1": ..., "worst_ratio_vs_litellm": ..., "levels": {...}}
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import emit
from fake_upstream import words

ROOT = Path(__file__).resolve().parents[1]
BENCH_VENV = ROOT / ".venv-bench"
FAKE_UPSTREAM = Path(__file__).resolve().parent / "fake_upstream.py"
MODEL = "fake-model"
PROXIES = ("midtier", "litellm")

MIDTIER_CONFIG = """\
[models.{model}]
engine = "openai_chat"
base_url = "{upstream}/v1"
"""

#: LiteLLM as a bare proxy: no database (so no spend logs), no master key (no auth, as midtier
#: here), no callbacks, no telemetry, no verbose or JSON logging, the model cost map read from
#: the package instead of fetched, no admin UI.
LITELLM_CONFIG = """\
model_list:
  - model_name: {model}
    litellm_params:
      model: openai/{model}
      api_base: {upstream}/v1
      api_key: unused
litellm_settings:
  telemetry: false
  set_verbose: false
  json_logs: false
  callbacks: []
  success_callback: []
  failure_callback: []
  service_callback: []
general_settings:
  disable_spend_logs: true
  disable_error_logs: true
"""
LITELLM_ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False",
               "DISABLE_ADMIN_UI": "True",
               # no key, as midtier here: LiteLLM refuses to start without one unless told
               "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true"}


# -- the servers ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    name: str
    url: str  # the base URL, without /v1
    proc: subprocess.Popen[bytes]
    log: Path


def _get(url: str, timeout: float = 2.0) -> int:
    """The status of a GET, 0 when nothing answers (stdlib only: no client library's cost here)."""
    import http.client
    import urllib.parse

    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.request("GET", u.path or "/")
        return conn.getresponse().status
    except OSError:
        return 0
    finally:
        conn.close()


@contextlib.contextmanager
def started(name: str, cmd: list[str], port: int, health: str, workdir: Path, *, cpus: set[int] | None,
            env: dict[str, str] | None = None, timeout: float = 180.0) -> Iterator[Server]:
    """Run ``cmd`` until the block ends; yield once ``health`` answers 200."""
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=workdir,
                                env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        if cpus:
            os.sched_setaffinity(proc.pid, cpus)
        deadline = time.monotonic() + timeout
        while _get(url + health) != 200:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited ({proc.returncode}):\n{log.read_text(errors='replace')[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not answer {health} in {timeout:g} s; see {log}")
            time.sleep(0.2)
        yield Server(name, url, proc, log)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def litellm_version(exe: Path) -> str:
    python = exe.parent / "python"
    try:
        out = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                             capture_output=True, text=True, timeout=60)
    except OSError:
        return "?"
    return out.stdout.strip() or "?"


# -- the client ----------------------------------------------------------------------------------
class BadResponse(Exception):
    pass


@dataclass
class Sample:
    ttft: float  # seconds
    total: float


class Stream:
    """One keep-alive HTTP/1.1 connection that sends streamed chat requests and times them."""

    def __init__(self, host: str, port: int, expected: str) -> None:
        self.host, self.port, self.expected = host, port, expected
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None

    async def request(self, head: bytes, body: bytes) -> Sample:
        if self.reader is not None and self.reader.at_eof():  # the server closed it while idle
            await self.close()
        reused = self.writer is not None
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
        reader = self.reader
        assert reader is not None
        t0 = time.perf_counter()
        self.writer.write(head + body)
        try:
            return await self._response(reader, t0)
        except asyncio.IncompleteReadError as exc:
            await self.close()
            if reused and not exc.partial:  # closed by the server as the request left: as a client retries
                return await self.request(head, body)
            raise
        except BaseException:
            await self.close()
            raise

    async def _response(self, reader: asyncio.StreamReader, t0: float) -> Sample:
        status_line, *lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            key, sep, value = line.partition(":")
            if sep:
                headers[key.strip().lower()] = value.strip().lower()
        status = int(status_line.split(" ", 2)[1])
        ttft: float | None = None
        text: list[str] = []
        buf = b""
        done = False

        def events(data: bytes) -> None:
            nonlocal buf, ttft, done
            buf = (buf + data).replace(b"\r\n", b"\n")
            *whole, buf = buf.split(b"\n\n")
            for event in whole:
                for line in event.split(b"\n"):
                    if not line.startswith(b"data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        done = True
                        continue
                    chunk = json.loads(payload)
                    for choice in chunk.get("choices") or ():
                        piece = (choice.get("delta") or {}).get("content")
                        if piece:
                            if ttft is None:
                                ttft = time.perf_counter() - t0
                            text.append(piece)

        if headers.get("transfer-encoding") == "chunked":
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")  # no trailers are expected
                    break
                data = (await reader.readexactly(size + 2))[:-2]
                if status == 200:
                    events(data)
        else:
            length = headers.get("content-length")
            data = await (reader.readexactly(int(length)) if length is not None else reader.read())
            if status == 200:
                events(data)
        total = time.perf_counter() - t0
        if headers.get("connection") == "close" or "content-length" not in headers and \
                headers.get("transfer-encoding") != "chunked":
            await self.close()
        if status != 200:
            raise BadResponse(f"status {status}")
        if not done or "".join(text) != self.expected or ttft is None:
            raise BadResponse(f"incomplete or wrong answer: {''.join(text)[:80]!r} (done={done})")
        return Sample(ttft, total)


def request_head(host: str, port: int, body: bytes) -> bytes:
    return (f"POST /v1/chat/completions HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
            f"accept: text/event-stream\r\nauthorization: Bearer unused\r\ncontent-length: {len(body)}\r\n\r\n"
            ).encode()


def cpu_seconds(pid: int | None) -> float:
    """CPU time of all threads of process ``pid`` so far, to the nanosecond from schedstat
    (0 where /proc is not there)."""
    if pid is None:
        return 0.0
    total = 0
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


@dataclass
class Target:
    name: str
    port: int
    expected: str
    pid: int | None = None  # the server's process, whose CPU time is counted
    body: bytes = field(init=False)
    head: bytes = field(init=False)
    streams: list[Stream] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    cpu: float = 0.0  # seconds of the server's CPU time over the recorded bursts

    def __post_init__(self) -> None:
        self.body = json.dumps({"model": MODEL, "stream": True, "max_tokens": 64, "temperature": 0,
                                "messages": [{"role": "user", "content": "Say twenty words."}]}).encode()
        self.head = request_head("127.0.0.1", self.port, self.body)

    async def open(self, n: int) -> None:
        while len(self.streams) < n:
            self.streams.append(Stream("127.0.0.1", self.port, self.expected))

    async def close(self) -> None:
        for s in self.streams:
            await s.close()
        self.streams.clear()

    async def burst(self, concurrency: int, n: int, record: bool = True) -> None:
        """``n`` requests by ``concurrency`` streams, each sending its next as its last ends."""
        left = n

        async def worker(stream: Stream) -> None:
            nonlocal left
            while left > 0:
                left -= 1
                try:
                    sample = await stream.request(self.head, self.body)
                except (BadResponse, OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                if record:
                    self.samples.append(sample)

        await self.open(concurrency)
        before = cpu_seconds(self.pid)
        await asyncio.gather(*(worker(s) for s in self.streams[:concurrency]))
        if record:
            self.cpu += cpu_seconds(self.pid) - before


# -- the statistics ------------------------------------------------------------------------------
def percentile(xs: list[float], q: float) -> float:
    """Linear interpolation between the closest ranks (q in 0..100)."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = (len(s) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def latencies(samples: list[Sample]) -> dict[str, float]:
    ttft = [s.ttft * 1000 for s in samples]
    total = [s.total * 1000 for s in samples]
    return {"ttft_p50_ms": percentile(ttft, 50), "ttft_p99_ms": percentile(ttft, 99),
            "total_p50_ms": percentile(total, 50), "total_p99_ms": percentile(total, 99)}


def cpu_per_request(t: Target) -> float:
    """Milliseconds of the server's CPU per request (noise from other work barely moves it)."""
    return t.cpu * 1000 / len(t.samples) if t.samples else float("nan")


def added(proxied: dict[str, float], direct: dict[str, float]) -> dict[str, float]:
    return {f"added_{k}": proxied[k] - direct[k] for k in direct}


def ratio(a: float, b: float) -> float | None:
    """midtier's added latency over LiteLLM's (None when LiteLLM added nothing measurable)."""
    return a / b if b > 0 else None


def rounded(d: dict[str, Any], digits: int = 3) -> dict[str, Any]:
    return {k: round(v, digits) if isinstance(v, float) else v for k, v in d.items()}


# -- the run -------------------------------------------------------------------------------------
async def measure_level(targets: list[Target], concurrency: int, requests: int, rounds: int) -> None:
    for t in targets:
        t.samples, t.errors, t.cpu = [], [], 0.0
        await t.burst(concurrency, max(2 * concurrency, 20), record=False)  # warm-up: connections, caches
    per_round = max(1, requests // rounds)
    for r in range(rounds):
        for i in range(len(targets)):
            await targets[(r + i) % len(targets)].burst(concurrency, per_round)


def level_report(targets: list[Target], concurrency: int) -> dict[str, Any]:
    by = {t.name: t for t in targets}
    direct = latencies(by["direct"].samples)
    out: dict[str, Any] = {"requests": len(by["direct"].samples), "direct": rounded(direct)}
    for name in PROXIES:
        if name in by:
            lat = latencies(by[name].samples)
            out[name] = rounded({**lat, **added(lat, direct), "cpu_ms_per_request": cpu_per_request(by[name]),
                                 "errors": len(by[name].errors)})
    if "midtier" in out and "litellm" in out:
        for p in ("p50", "p99"):
            for metric in ("total", "ttft"):
                r = ratio(out["midtier"][f"added_{metric}_{p}_ms"], out["litellm"][f"added_{metric}_{p}_ms"])
                out[f"ratio_{metric}_{p}"] = None if r is None else round(r, 3)
    return out


def print_level(concurrency: int, rep: dict[str, Any], out: Any = sys.stdout) -> None:
    cols = ("total_p50_ms", "total_p99_ms", "ttft_p50_ms", "ttft_p99_ms")
    print(f"\nconcurrency {concurrency}: {rep['requests']} requests per target", file=out)
    print(f"{'':<18}{'total p50':>10}{'total p99':>10}{'ttft p50':>10}{'ttft p99':>10}{'CPU/req':>10}   (ms)",
          file=out)
    for name in ("direct", *PROXIES):
        if name in rep:
            cpu = rep[name].get("cpu_ms_per_request")  # the upstream serves the proxies too: not its own
            print(f"{name:<18}" + "".join(f"{rep[name][c]:>10.3f}" for c in cols)
                  + (f"{cpu:>10.3f}" if cpu is not None else f"{'-':>10}"), file=out)
    for name in PROXIES:
        if name in rep:
            errors = f"   {rep[name]['errors']} errors" if rep[name]["errors"] else ""
            print(f"{name + ' added':<18}" + "".join(f"{rep[name]['added_' + c]:>10.3f}" for c in cols) + errors,
                  file=out)
    if "ratio_total_p50" in rep:
        keys = ("ratio_total_p50", "ratio_total_p99", "ratio_ttft_p50", "ratio_ttft_p99")
        print(f"{'midtier/litellm':<18}" + "".join(f"{'-' if rep[k] is None else format(rep[k], '.3f'):>10}"
                                                   for k in keys), file=out)


def cpu_info() -> dict[str, Any]:
    model = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"model": model, "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)}


def pinning(enabled: bool) -> tuple[set[int] | None, set[int] | None]:
    """(CPUs of the proxies, CPUs of the upstream and the client), or (None, None)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not enabled or len(cpus) < 2:
        return None, None
    return {cpus[-1]}, set(cpus[:-1])


async def bench(levels: list[int], requests: list[int], rounds: int, *, chunks: int = 20, chunk_delay_ms: float = 0,
                litellm: Path | None = None, pin: bool = True, out: Any = sys.stdout) -> dict[str, Any]:
    """Start the servers, measure every level, print the tables; the result line's dict."""
    proxy_cpus, client_cpus = pinning(pin)
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)
    expected = "".join(words(chunks))
    cpu_before = cpu_info()
    with tempfile.TemporaryDirectory(prefix="midtier-gateway-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        up_port = free_port()
        upstream = stack.enter_context(started(
            "upstream", [sys.executable, str(FAKE_UPSTREAM), "--port", str(up_port), "--chunks", str(chunks),
                         "--chunk-delay-ms", str(chunk_delay_ms)], up_port, "/health", work, cpus=client_cpus))
        targets = [Target("direct", up_port, expected)]
        mt_port = free_port()
        (work / "midtier.toml").write_text(MIDTIER_CONFIG.format(model=MODEL, upstream=upstream.url))
        midtier = stack.enter_context(started(
            "midtier", [sys.executable, "-m", "midtier.cli.main", "serve", "--config", str(work / "midtier.toml"),
                        "--port", str(mt_port), "--log-level", "warning"], mt_port, "/health", work, cpus=proxy_cpus))
        targets.append(Target("midtier", mt_port, expected, midtier.proc.pid))
        version = None
        if litellm is not None:
            ll_port = free_port()
            (work / "litellm.yaml").write_text(LITELLM_CONFIG.format(model=MODEL, upstream=upstream.url))
            proxy = stack.enter_context(started(
                "litellm", [str(litellm), "--config", str(work / "litellm.yaml"), "--host", "127.0.0.1",
                            "--port", str(ll_port), "--num_workers", "1"], ll_port, "/health/liveliness", work,
                cpus=proxy_cpus, env=LITELLM_ENV))
            targets.append(Target("litellm", ll_port, expected, proxy.proc.pid))
            version = litellm_version(litellm)
        print(f"cpu: {cpu_before['model']}, {cpu_before['cpus']} CPUs, load {cpu_before['load_avg_1m']}; "
              f"proxies on CPUs {sorted(proxy_cpus) if proxy_cpus else 'any'}, upstream and client on "
              f"{sorted(client_cpus) if client_cpus else 'any'}", file=out)
        print(f"upstream: {chunks} content chunks, {chunk_delay_ms:g} ms apart"
              + (f"; litellm {version}" if version else ""), file=out)
        reports: dict[str, Any] = {}
        try:
            for c, n in zip(levels, requests, strict=True):
                await measure_level(targets, c, n, rounds)
                reports[str(c)] = rep = level_report(targets, c)
                print_level(c, rep, out)
                for t in targets:
                    if t.errors:
                        print(f"  {t.name}: {len(t.errors)} failed requests, e.g. {t.errors[0]}", file=out)
        finally:
            for t in targets:
                await t.close()
    first = reports[str(levels[0])]
    result: dict[str, Any] = {
        "bench": "gateway", "metric": "total",
        "p50_added_ms_c1": first["midtier"]["added_total_p50_ms"] if levels[0] == 1 else None,
        "p50_added_ttft_ms_c1": first["midtier"]["added_ttft_p50_ms"] if levels[0] == 1 else None,
        "worst_ratio_vs_litellm": None, "levels": reports, "chunks": chunks, "chunk_delay_ms": chunk_delay_ms,
        "rounds": rounds, "litellm": version, "cpu": {**cpu_before, "load_avg_1m_after": round(os.getloadavg()[0], 2)},
        "pinned": proxy_cpus is not None,
    }
    if litellm is not None:
        ratios = [rep[f"ratio_total_{p}"] for rep in reports.values() for p in ("p50", "p99")]
        result["worst_ratio_vs_litellm"] = None if None in ratios else max(ratios)
        print(f"\nworst midtier/litellm ratio of added total latency (p50 and p99, all levels): "
              f"{result['worst_ratio_vs_litellm']}", file=out)
    print(f"midtier p50 added at concurrency 1: {result['p50_added_ms_c1']} ms total, "
          f"{result['p50_added_ttft_ms_c1']} ms TTFT", file=out)
    return result


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", type=_ints, default=[1, 16, 64], help="concurrent streams (default: 1,16,64)")
    ap.add_argument("--requests", type=_ints, default=[400, 1600, 3200],
                    help="requests per target at each level (default: 400,1600,3200)")
    ap.add_argument("--rounds", type=int, default=10, help="turns the targets take at each level")
    ap.add_argument("--chunks", type=int, default=20, help="content chunks in every answer")
    ap.add_argument("--chunk-delay-ms", type=float, default=0.0, help="the upstream's pause between two chunks")
    ap.add_argument("--litellm", type=Path, default=BENCH_VENV / "bin" / "litellm",
                    help="LiteLLM's executable (default: %(default)s, made by `make bench-gateway`)")
    ap.add_argument("--no-litellm", action="store_true", help="measure midtier only")
    ap.add_argument("--no-pin", action="store_true", help="do not pin the servers and the client to CPUs")
    args = ap.parse_args()
    if len(args.requests) != len(args.levels):
        ap.error("--requests needs one count per level")
    litellm = None if args.no_litellm else args.litellm.absolute()  # the servers run in a temporary folder
    if litellm is not None and not litellm.exists():
        ap.error(f"{litellm} not found: run `make bench-gateway` (it creates {BENCH_VENV}) or pass --no-litellm")
    result = asyncio.run(bench(args.levels, args.requests, args.rounds, chunks=args.chunks,
                               chunk_delay_ms=args.chunk_delay_ms, litellm=litellm, pin=not args.no_pin))
    emit(result)


if __name__ == "__main__":
    main()
