"""A three-step tool task done two ways on one server, in one run: by the server-side tool loop
(ONE ``responses.create`` with the built-in ``code_interpreter``) and by a client driving the
same steps through a function tool (the common agent pattern: a ``python`` function tool, run
locally in a fresh subprocess per call, its output sent back with ``previous_response_id``).

    .venv/bin/python bench/tool_loop.py [--rounds 2] [--engine real|mock] [--token-delay-ms 5]
Last line: {"ratio": server-side wall time / client-driven wall time (best of the rounds), ...}

The task is a chain of clues in three files: start.txt names the next file, which names the
last one, which holds the code. Each step needs the previous step's output, so a model cannot
fold the steps into one call. Both flows see the same prompt token for token: the same
instructions, the same function (name, description, schema; the client copies the
description the server gives ``python``), the same tool outputs, temperature 0, a forced
first call (``tool_choice``) and a budget of three calls (``max_tool_calls: 3`` server-side;
client-side the request after the third call says ``tool_choice: none``). The run checks
that both flows made the same calls with the same code and the same number of model turns;
a round where they differ is reported and left out of the ratio.

``--engine mock`` is a synthetic variant: an in-process server on the mock engine, which
"generates" the same scripted turns both ways, one token per byte with a fixed delay. It
isolates orchestration (HTTP round trips, store, sandbox vs subprocess) from the model.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
from _common import emit, median

from midtier.tools.code_interpreter import DESCRIPTION

MODEL = "qwen2.5-coder-0.5b"
FILES = {
    "start.txt": "The next clue is in the file clue_k7.txt. Print that file with python.",
    "clue_k7.txt": "The next clue is in the file clue_q2.txt. Print that file with python.",
    "clue_q2.txt": "The code is 4471. Now reply to the user: the code is 4471.",
}
PROMPT = ("Find the code. Use python to print the file start.txt, then follow the clue it gives. "
          "Keep following the clues, one python call per file, until a clue gives the code.")
STEPS = 3
MAX_OUTPUT = 300
# what the mock engine "generates" (Hermes calls), turn by turn: the calls the real model makes
MOCK_TURNS = [*(f'<tool_call>\n{{"name": "python", "arguments": {{"code": "print(open(\'{name}\').read())"}}}}\n'
                "</tool_call>" for name in FILES), "The code is 4471."]


@dataclass
class Flow:
    """One flow's run: wall time, the code of each call, the answer, and where the time went."""

    name: str
    wall: float = 0.0
    codes: list[str] = field(default_factory=list)
    turns: int = 0  # model turns
    answer: str = ""
    tool_s: float = 0.0  # executing the calls (sandbox / local subprocess)
    requests: int = 0
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    events: list[tuple[str, float]] = field(default_factory=list)  # (what, seconds since start)
    usages: list[tuple[int, int, int]] = field(default_factory=list)  # per request: input, cached, output


def function_tool() -> dict[str, Any]:
    """The function the client declares: what the server shows the model for code_interpreter."""
    description = DESCRIPTION + f" Files: {', '.join(FILES)}."
    return {"type": "function", "name": "python", "description": description, "strict": False,
            "parameters": {"type": "object",
                           "properties": {"code": {"type": "string", "description": "The Python code to run."}},
                           "required": ["code"]}}


def _usage(flow: Flow, usage: Any) -> None:
    if usage is None:
        return
    details = usage.input_tokens_details
    cached = details.cached_tokens if details is not None else 0
    flow.input_tokens += usage.input_tokens
    flow.output_tokens += usage.output_tokens
    flow.cached_tokens += cached
    flow.usages.append((usage.input_tokens, cached, usage.output_tokens))


async def server_side(client: openai.AsyncOpenAI, model: str, container: str) -> Flow:
    """ONE streamed request; the loop runs the calls. Timestamps of the stream's events give the
    split: a call item's ``in_progress`` to its ``completed`` is tool time."""
    flow = Flow("server")
    t0 = time.perf_counter()
    started: dict[str, float] = {}
    stream = await client.responses.create(
        model=model, temperature=0, max_output_tokens=MAX_OUTPUT, input=PROMPT, stream=True,
        tools=[{"type": "code_interpreter", "container": container}], tool_choice={"type": "code_interpreter"},
        max_tool_calls=STEPS)
    final = None
    async for event in stream:
        now = time.perf_counter() - t0
        if event.type == "response.code_interpreter_call.in_progress":
            started[event.item_id] = now
            flow.events.append(("tool_start", now))
        elif event.type == "response.code_interpreter_call.completed":
            flow.tool_s += now - started.get(event.item_id, now)
            flow.events.append(("tool_done", now))
        elif event.type == "response.completed":
            final = event.response
    flow.wall = time.perf_counter() - t0
    flow.requests = 1
    assert final is not None, "the stream ended without response.completed"
    flow.codes = [i.code or "" for i in final.output if i.type == "code_interpreter_call"]
    flow.turns = len(flow.codes) + (1 if final.output_text else 0)
    flow.answer = final.output_text
    _usage(flow, final.usage)
    return flow


def run_locally(code: str, folder: Path) -> str:
    """What an agent framework does with a python call: a fresh interpreter in its work folder."""
    done = subprocess.run([sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, timeout=60)
    text = (done.stdout.rstrip("\n") + ("\n" + done.stderr.strip() if done.returncode else "")).strip()
    return text or "(no output: use print() to show values)"


async def client_driven(client: openai.AsyncOpenAI, model: str, folder: Path) -> Flow:
    """The client's loop: a request per model turn, each call run locally, its output sent back
    with ``previous_response_id`` (the Responses API's own agent pattern)."""
    flow = Flow("client")
    t0 = time.perf_counter()
    tools = [function_tool()]
    kwargs: dict[str, Any] = {"input": PROMPT, "tool_choice": {"type": "function", "name": "python"}}
    while True:
        r = await client.responses.create(model=model, temperature=0, max_output_tokens=MAX_OUTPUT, tools=tools,
                                          **kwargs)
        flow.requests += 1
        flow.turns += 1
        flow.events.append(("response", time.perf_counter() - t0))
        _usage(flow, r.usage)
        calls = [i for i in r.output if i.type == "function_call"]
        if not calls:
            flow.answer = r.output_text
            break
        outputs = []
        for call in calls:
            try:
                code = json.loads(call.arguments).get("code", "")
            except (ValueError, AttributeError):
                code = ""
            flow.codes.append(code)
            t = time.perf_counter()
            output = await asyncio.to_thread(run_locally, code, folder)
            flow.tool_s += time.perf_counter() - t
            outputs.append({"type": "function_call_output", "call_id": call.call_id, "output": output})
        left = STEPS - len(flow.codes)
        kwargs = {"input": outputs, "previous_response_id": r.id,
                  "tool_choice": "auto" if left > 0 else "none"}
    flow.wall = time.perf_counter() - t0
    return flow


def same_steps(a: Flow, b: Flow) -> bool:
    return a.codes == b.codes and a.turns == b.turns and len(a.codes) == STEPS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def real_server(model: str, data: Path) -> Iterator[str]:
    """``midtier serve`` on a free port; yields its base URL."""
    port = free_port()
    log = data / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "midtier.cli.main", "serve", "--port", str(port), "--model",
                                 model, "--data-dir", str(data), "--log-level", "warning"],
                                stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited: {log.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start: {log.read_text()}")
            time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


class MockServer:
    """The app on the mock engine, served by uvicorn in a thread of this process."""

    def __init__(self, data: Path, token_delay: float) -> None:
        import uvicorn

        from midtier.engines.mock import MockEngine
        from midtier.loop.load import serve_engine
        from midtier.server import create_app
        from midtier.store.sqlite import SqliteStore

        self.engine = MockEngine(delay=token_delay)
        app = create_app([serve_engine("mock", self.engine, format_key="hermes")],
                         store=SqliteStore(data / "store.db"), data_dir=data)
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)

    def script(self) -> None:
        self.engine.outputs.clear()
        self.engine.enqueue(*MOCK_TURNS)


def describe(flow: Flow) -> str:
    share = flow.tool_s / flow.wall if flow.wall else 0.0
    return (f"{flow.name:6s} {flow.wall:8.2f} s  turns {flow.turns}  requests {flow.requests}  "
            f"tools {flow.tool_s:6.2f} s ({share:.0%})  input {flow.input_tokens} (cached {flow.cached_tokens})  "
            f"output {flow.output_tokens}")


async def bench(base: str, model: str, rounds: int, script: Any = None) -> dict[str, Any]:
    client = openai.AsyncOpenAI(base_url=base + "/v1", api_key="none", timeout=1800, max_retries=0)
    container = await client.containers.create(name="loop-bench")
    for name, text in FILES.items():
        await client.containers.files.create(container.id, file=(name, text.encode()))
    pairs: list[tuple[Flow, Flow]] = []
    excluded: list[int] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, text in FILES.items():
            (folder / name).write_text(text)
        for i in range(rounds):
            # interleaved, and the order alternates, so both flows share the machine's noise
            order = ["server", "client"] if i % 2 == 0 else ["client", "server"]
            got: dict[str, Flow] = {}
            for which in order:
                if script is not None:
                    script()  # the mock engine's turns (it has no KV cache)
                else:
                    # the same cache state before each flow: an unrelated prompt, so neither flow's first
                    # turn finds its own earlier run in the KV cache (the flow run right after itself did)
                    await client.chat.completions.create(model=model, max_tokens=1, temperature=0,
                                                         messages=[{"role": "user", "content": "Say OK."}])
                got[which] = (await server_side(client, model, container.id) if which == "server"
                              else await client_driven(client, model, folder))
            s, c = got["server"], got["client"]
            ok = same_steps(s, c)
            print(f"round {i + 1}: {'same steps' if ok else 'DIFFERENT STEPS (excluded)'}")
            for flow in (s, c):
                print("  " + describe(flow))
                print(f"    calls: {flow.codes}  answer: {flow.answer!r}")
                print(f"    timeline: {[(w, round(t, 2)) for w, t in flow.events]}")
                print(f"    usage per request (input, cached, output): {flow.usages}")
            if ok:
                pairs.append((s, c))
            else:
                excluded.append(i + 1)
    await client.close()
    return summary(pairs, rounds, excluded)


def summary(pairs: list[tuple[Flow, Flow]], rounds: int, excluded: list[int]) -> dict[str, Any]:
    if not pairs:
        return {"ratio": None, "rounds": rounds, "compared": 0, "excluded": list(excluded)}
    server = [s.wall for s, _ in pairs]
    client = [c.wall for _, c in pairs]
    per_round = [s.wall / c.wall for s, c in pairs]
    return {"ratio": round(min(server) / min(client), 4), "ratio_median_rounds": round(median(per_round), 4),
            "server_s": round(min(server), 3), "client_s": round(min(client), 3),
            "server_tool_s": round(median([s.tool_s for s, _ in pairs]), 3),
            "client_tool_s": round(median([c.tool_s for _, c in pairs]), 3),
            "server_requests": pairs[0][0].requests, "client_requests": pairs[0][1].requests,
            "model_turns": pairs[0][0].turns, "tool_calls": len(pairs[0][0].codes),
            "server_cached_tokens": pairs[0][0].cached_tokens, "server_input_tokens": pairs[0][0].input_tokens,
            "client_cached_tokens": pairs[0][1].cached_tokens, "client_input_tokens": pairs[0][1].input_tokens,
            "rounds": rounds, "compared": len(pairs), "excluded": list(excluded)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--engine", choices=["real", "mock"], default="real")
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--token-delay-ms", type=float, default=5.0, help="mock engine: seconds per generated byte")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        if args.engine == "mock":
            mock = MockServer(data, args.token_delay_ms / 1000)
            with mock as base:
                result = asyncio.run(bench(base, "mock", args.rounds, mock.script))
        else:
            with real_server(args.model, data) as base:
                result = asyncio.run(bench(base, args.model, args.rounds))
    result = {"bench": "loop", "engine": args.engine, **result}
    if result["ratio"] is not None:
        print(f"server-side / client-driven wall time (best of rounds): {result['ratio']:.3f}")
    emit(result)
    return result


if __name__ == "__main__":
    main()
