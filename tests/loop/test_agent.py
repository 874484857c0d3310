"""The server-side tool loop on the scripted mock engine, with a fake built-in tool.

The fake stands in for ``code_interpreter`` (its type and item shape, so the SDK's types
check the items), and does whatever the test tells it: answer, fail, sleep past its budget.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import openai
import pytest
from starlette.testclient import TestClient

from midtier.core.messages import ToolCall, ToolSpec, new_id
from midtier.engines.mock import MockEngine
from midtier.loop.turn import ServedModel
from midtier.server import create_app
from midtier.store import open_store
from midtier.store.base import Store
from midtier.tools import Toolbox, ToolsConfig
from midtier.tools.base import ToolContext, ToolError, ToolResult


class FakeInterpreter:
    type: ClassVar[str] = "code_interpreter"
    item_type: ClassVar[str] = "code_interpreter_call"
    item_types: ClassVar[tuple[str, ...]] = ("code_interpreter_call",)

    def __init__(self, toolbox: Toolbox) -> None:
        self.toolbox = toolbox
        self.behaviour = "ok"
        self.ran: list[str] = []
        self.cancelled = asyncio.Event()
        self.contexts: list[ToolContext] = []

    def runs_on_server(self, param: dict[str, Any]) -> bool:
        return True

    def check(self, param: dict[str, Any], where: str) -> None:
        pass

    async def functions(self, param: dict[str, Any], ctx: ToolContext) -> list[ToolSpec]:
        return [ToolSpec("python", "Run Python code", {"type": "object", "properties": {"code": {"type": "string"}},
                                                       "required": ["code"]})]

    def start(self, call: ToolCall, param: dict[str, Any]) -> dict[str, Any]:
        return {"id": new_id("ci_"), "type": "code_interpreter_call", "status": "in_progress", "code": "",
                "container_id": "cntr_test", "outputs": None}

    async def run(self, item: dict[str, Any], call: ToolCall, ctx: ToolContext) -> ToolResult:
        self.contexts.append(ctx)
        code = json.loads(call.arguments)["code"]
        self.ran.append(code)
        item["code"] = code
        ctx.emit("response.code_interpreter_call.in_progress", {})
        ctx.emit("response.code_interpreter_call_code.delta", {"delta": code})
        ctx.emit("response.code_interpreter_call_code.done", {"code": code})
        ctx.emit("response.code_interpreter_call.interpreting", {})
        if self.behaviour == "fail":
            raise ToolError("NameError: name 'x' is not defined")
        if self.behaviour == "crash":
            raise RuntimeError("a bug in the tool")
        if self.behaviour == "sleep":
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        item["outputs"] = [{"type": "logs", "logs": f"ran {code}"}]
        ctx.emit("response.code_interpreter_call.completed", {})
        return ToolResult(f"OUTPUT({code})", citations=[{"type": "url_citation", "url": "https://x.test/a",
                                                          "title": "A"}])

    def as_call(self, item: dict[str, Any]) -> ToolCall | None:
        return ToolCall(item["id"], "python", json.dumps({"code": item["code"]}))

    def as_output(self, item: dict[str, Any]) -> tuple[str, str] | None:
        return item["id"], "from the item"


INTERPRETER: Any = {"type": "code_interpreter", "container": {"type": "auto"}}
WEATHER: Any = {"type": "function", "name": "get_weather", "description": "Weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def py(code: str) -> str:
    return "<tool_call>\n" + json.dumps({"name": "python", "arguments": {"code": code}}) + "\n</tool_call>"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return open_store(path=tmp_path / "store.sqlite3")


@pytest.fixture
def fake() -> dict[str, FakeInterpreter]:
    return {}


@pytest.fixture
def http(served: ServedModel, store: Store, tmp_path: Path, fake: dict[str, FakeInterpreter]) -> Iterator[TestClient]:
    app = create_app([served], store=store, tools=ToolsConfig(tool_timeout=2.0, max_turns=3), data_dir=tmp_path)
    toolbox: Toolbox = app.state.toolbox
    fake["tool"] = FakeInterpreter(toolbox)
    toolbox._tools["code_interpreter"] = fake["tool"]  # type: ignore[assignment]
    with TestClient(app) as client:
        yield client


@pytest.fixture
def tool(fake: dict[str, FakeInterpreter], http: TestClient) -> FakeInterpreter:
    return fake["tool"]


def prompt(engine: MockEngine, i: int = -1) -> str:
    return engine.detokenize(engine.prompts[i])


def test_call_runs_and_the_model_answers_in_one_response(client: openai.OpenAI, engine: MockEngine,
                                                          tool: FakeInterpreter, store: Store) -> None:
    engine.enqueue(py("print(2+2)"), "It is 4.")
    r = client.responses.create(model="mock", input="What is 2+2? Use python.", tools=[INTERPRETER])
    assert r.status == "completed"
    assert [o.type for o in r.output] == ["code_interpreter_call", "message"]
    ci = r.output[0]
    assert ci.type == "code_interpreter_call" and ci.status == "completed" and ci.code == "print(2+2)"
    assert ci.outputs is not None and ci.outputs[0].type == "logs"
    assert r.output_text == "It is 4."
    assert tool.ran == ["print(2+2)"]
    # the second turn read the tool's output; usage sums both turns
    assert "OUTPUT(print(2+2))" in prompt(engine, 1)
    assert r.usage is not None and r.usage.input_tokens == len(engine.prompts[0]) + len(engine.prompts[1])
    # the citation the tool gave sits on the answer
    annotations = r.output[1].content[0].annotations  # type: ignore[union-attr]
    assert [a.type for a in annotations] == ["url_citation"]
    assert tool.contexts[0].scope == r.id and tool.contexts[0].response_id == r.id

    async def audit() -> list[dict[str, Any]]:
        return await store.all_records("audit", r.id)

    entries = asyncio.run(audit())
    assert [(e["tool"], e["name"], e["outcome"]) for e in entries] == [("code_interpreter", "python", "ok")]
    assert json.loads(entries[0]["arguments"]) == {"code": "print(2+2)"} and entries[0]["duration_ms"] >= 0


def test_streamed_events_are_openais_and_fold_to_the_same_object(client: openai.OpenAI, engine: MockEngine,
                                                                tool: FakeInterpreter) -> None:
    engine.enqueue(py("1+1"), "Two.")
    with client.responses.stream(model="mock", input="1+1?", tools=[INTERPRETER]) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    ci = types.index("response.output_item.added")
    assert types[ci:ci + 7] == [
        "response.output_item.added", "response.code_interpreter_call.in_progress",
        "response.code_interpreter_call_code.delta", "response.code_interpreter_call_code.done",
        "response.code_interpreter_call.interpreting", "response.code_interpreter_call.completed",
        "response.output_item.done"]
    assert "response.output_text.annotation.added" in types
    assert [e.sequence_number for e in events] == list(range(len(events)))
    done = events[ci + 6]
    assert done.item.type == "code_interpreter_call" and done.item.status == "completed"  # type: ignore[union-attr]
    assert final.output_text == "Two." and final.output[0].type == "code_interpreter_call"
    stored = client.responses.retrieve(final.id)
    assert events[-1].type == "response.completed"
    # the stream helper's objects carry a ``parsed`` field of their own
    assert stored.model_dump() == _unparsed(events[-1].response.model_dump())


def _unparsed(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _unparsed(v) for k, v in obj.items() if k != "parsed"}
    if isinstance(obj, list):
        return [_unparsed(v) for v in obj]
    return obj


def test_a_failing_tool_hands_the_model_an_error(client: openai.OpenAI, engine: MockEngine,
                                                 tool: FakeInterpreter) -> None:
    tool.behaviour = "fail"
    engine.enqueue(py("x"), "x is not defined.")
    r = client.responses.create(model="mock", input="x?", tools=[INTERPRETER])
    assert r.status == "completed" and r.output[0].status == "failed"  # type: ignore[union-attr]
    assert "Error: NameError: name 'x' is not defined" in prompt(engine, 1)
    tool.behaviour = "crash"
    engine.enqueue(py("y"), "Sorry.")
    r = client.responses.create(model="mock", input="y?", tools=[INTERPRETER])
    assert r.status == "completed" and r.output[0].status == "failed"  # type: ignore[union-attr]
    assert "internal error" in prompt(engine, 3)


def test_a_tool_past_its_budget_is_stopped(client: openai.OpenAI, engine: MockEngine, tool: FakeInterpreter) -> None:
    tool.behaviour = "sleep"
    engine.enqueue(py("while True: pass"), "It took too long.")
    started = time.monotonic()
    r = client.responses.create(model="mock", input="loop", tools=[INTERPRETER])
    assert time.monotonic() - started < 10
    assert r.status == "completed" and r.output[0].status == "incomplete"  # type: ignore[union-attr]
    assert "budget" in prompt(engine, 1) and tool.cancelled.is_set()


def test_parallel_calls_all_run(client: openai.OpenAI, engine: MockEngine, tool: FakeInterpreter) -> None:
    engine.enqueue(py("a") + "\n" + py("b"), "Done.")
    r = client.responses.create(model="mock", input="a and b", tools=[INTERPRETER])
    assert [o.type for o in r.output] == ["code_interpreter_call", "code_interpreter_call", "message"]
    assert sorted(tool.ran) == ["a", "b"]
    assert "OUTPUT(a)" in prompt(engine, 1) and "OUTPUT(b)" in prompt(engine, 1)


def test_a_function_call_ends_the_loop(client: openai.OpenAI, engine: MockEngine, tool: FakeInterpreter) -> None:
    weather = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    engine.enqueue(py("1"), weather)
    r = client.responses.create(model="mock", input="go", tools=[INTERPRETER, WEATHER])
    assert [o.type for o in r.output] == ["code_interpreter_call", "function_call"]
    assert len(engine.prompts) == 2


def test_max_tool_calls_counts_built_in_calls(client: openai.OpenAI, engine: MockEngine,
                                              tool: FakeInterpreter) -> None:
    engine.enqueue(py("1"), py("2"))  # the second turn may not call: the grammar cuts the call
    r = client.responses.create(model="mock", input="go", tools=[INTERPRETER], max_tool_calls=1)
    assert tool.ran == ["1"]
    assert [o.type for o in r.output][0] == "code_interpreter_call"
    assert all(o.type != "code_interpreter_call" for o in r.output[1:])


def test_a_turn_cut_at_the_call_limit_counts_only_its_own_output(client: openai.OpenAI, engine: MockEngine,
                                                                  tool: FakeInterpreter) -> None:
    engine.enqueue(py("1"), py("2"), "done")  # the second turn ends at its call: no calls are left
    r = client.responses.create(model="mock", input="go", tools=[INTERPRETER], max_tool_calls=2)
    assert tool.ran == ["1", "2"] and r.output_text == "done"
    assert r.usage is not None
    assert r.usage.output_tokens == sum(len(engine.tokenize(t)) for t in (py("1"), py("2"), "done"))


def test_cached_tokens_count_every_turn_also_one_cut_at_the_call_limit(client: openai.OpenAI, engine: MockEngine,
                                                                       tool: FakeInterpreter) -> None:
    engine.report_cache = True
    engine.enqueue(py("1"), py("2"), "done")  # the second turn is cut at its call (max_tool_calls=2)
    r = client.responses.create(model="mock", input="go", tools=[INTERPRETER], max_tool_calls=2)
    assert tool.ran == ["1", "2"] and len(engine.prompts) == 3

    def shared(a: list[int], b: list[int]) -> int:
        n = 0
        while n < min(len(a), len(b)) - 1 and a[n] == b[n]:
            n += 1
        return n
    p = engine.prompts
    # each turn finds at least the prompt before it in the cache (and that turn's output too)
    assert r.usage is not None and shared(p[0], p[1]) > 0
    assert shared(p[0], p[1]) + shared(p[1], p[2]) <= r.usage.input_tokens_details.cached_tokens < r.usage.input_tokens


def test_the_turn_budget_ends_the_loop(client: openai.OpenAI, engine: MockEngine, tool: FakeInterpreter) -> None:
    engine.enqueue(py("1"), py("2"), py("3"), "no more")  # max_turns=3: the third turn may not call
    r = client.responses.create(model="mock", input="go", tools=[INTERPRETER])
    assert tool.ran == ["1", "2"] and r.status == "completed"
    assert len(engine.prompts) == 3


def test_forcing_choice_applies_to_the_first_turn_only(client: openai.OpenAI, engine: MockEngine,
                                                       tool: FakeInterpreter) -> None:
    engine.enqueue(py("6*7"), "42.")
    r = client.responses.create(model="mock", input="6*7", tools=[INTERPRETER, WEATHER],
                                tool_choice={"type": "code_interpreter"})
    assert r.output_text == "42." and tool.ran == ["6*7"]
    assert r.tool_choice.type == "code_interpreter"  # type: ignore[union-attr]


def test_history_shows_the_model_what_it_read(client: openai.OpenAI, engine: MockEngine,
                                              tool: FakeInterpreter) -> None:
    engine.enqueue(py("print(7)"), "Seven.", "Yes.")
    first = client.responses.create(model="mock", input="7?", tools=[INTERPRETER])
    client.responses.create(model="mock", input="sure?", previous_response_id=first.id, tools=[INTERPRETER])
    third = prompt(engine, 2)
    assert "OUTPUT(print(7))" in third and "print(7)" in third
    assert tool.contexts[0].scope == first.id


def test_built_in_items_are_accepted_as_input(client: openai.OpenAI, engine: MockEngine,
                                              tool: FakeInterpreter) -> None:
    engine.enqueue("Fine.")
    item = {"type": "code_interpreter_call", "id": "ci_given", "status": "completed", "code": "print(1)",
            "container_id": "cntr_x", "outputs": [{"type": "logs", "logs": "1"}]}
    r = client.responses.create(model="mock", input=[item, {"role": "user", "content": "and?"}],  # type: ignore[list-item]
                                tools=[INTERPRETER])
    assert r.output_text == "Fine." and "from the item" in prompt(engine)


def test_unknown_or_disabled_tool_types_are_refused(served: ServedModel, store: Store, tmp_path: Path) -> None:
    app = create_app([served], store=store, tools=ToolsConfig(enabled=frozenset()), data_dir=tmp_path)
    with TestClient(app) as http:
        for tool_type in ("code_interpreter", "computer_use_preview"):
            r = http.post("/v1/responses", json={"model": "mock", "input": "x", "tools": [{"type": tool_type}]})
            assert r.status_code == 400
            assert r.json()["error"]["param"] == "tools[0].type"
            assert r.json()["error"]["code"] == "unsupported_tool_type"


def test_cancelling_a_background_response_stops_its_tools(client: openai.OpenAI, engine: MockEngine,
                                                          tool: FakeInterpreter) -> None:
    tool.behaviour = "sleep"
    engine.enqueue(py("sleep"), "never")
    r = client.responses.create(model="mock", input="go", tools=[INTERPRETER], background=True)
    deadline = time.monotonic() + 10
    while not tool.ran and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tool.ran == ["sleep"]
    cancelled = client.responses.cancel(r.id)
    assert cancelled.status == "cancelled"
    deadline = time.monotonic() + 5
    while not tool.cancelled.is_set() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tool.cancelled.is_set()


def test_max_output_tokens_bounds_all_turns_together(client: openai.OpenAI, engine: MockEngine,
                                                     tool: FakeInterpreter) -> None:
    first = len(engine.tokenize(py("1")))
    engine.enqueue(py("1"), "The answer is a long sentence that does not fit.")
    r = client.responses.create(model="mock", input="go", tools=[INTERPRETER], max_output_tokens=first + 3)
    assert tool.ran == ["1"]
    assert r.status == "incomplete" and r.incomplete_details is not None
    assert r.incomplete_details.reason == "max_output_tokens"
    assert r.usage is not None and r.usage.output_tokens == first + 3


def test_a_call_that_spends_the_whole_budget_ends_the_response(client: openai.OpenAI, engine: MockEngine,
                                                               tool: FakeInterpreter) -> None:
    first = len(engine.tokenize(py("1")))
    engine.enqueue(py("1"), "never read")
    r = client.responses.create(model="mock", input="go", tools=[INTERPRETER], max_output_tokens=first)
    assert tool.ran == ["1"] and len(engine.prompts) == 1
    assert r.status == "incomplete" and r.incomplete_details is not None
    assert r.incomplete_details.reason == "max_output_tokens"
    assert [o.type for o in r.output] == ["code_interpreter_call"]


def shell_call(command: str) -> str:
    return "<tool_call>\n" + json.dumps({"name": "shell", "arguments": {"command": command}}) + "\n</tool_call>"


@pytest.mark.parametrize("tool_param", [{"type": "local_shell"}, {"type": "shell", "environment": {"type": "local"}}])
def test_a_shell_the_client_runs_ends_the_response_and_its_output_comes_back(
        client: openai.OpenAI, engine: MockEngine, tool: FakeInterpreter, tool_param: Any) -> None:
    engine.enqueue(shell_call("ls -la"), "There are two files.")
    r = client.responses.create(model="mock", input="list the files", tools=[tool_param])
    assert len(engine.prompts) == 1  # nothing ran on the server, the model waits for the client
    assert [o.type for o in r.output] == [f"{tool_param['type']}_call"]
    call: Any = r.output[0]
    assert call.status == "completed"
    if tool_param["type"] == "local_shell":
        assert call.action.command == ["bash", "-lc", "ls -la"]
        output: Any = {"type": "local_shell_call_output", "id": call.call_id, "output": "a.txt\nb.txt"}
    else:
        assert call.action.commands == ["ls -la"]
        output = {"type": "shell_call_output", "call_id": call.call_id, "output": [
            {"stdout": "a.txt\nb.txt", "stderr": "", "outcome": {"type": "exit", "exit_code": 0}}]}
    again = client.responses.create(model="mock", previous_response_id=r.id, input=[output], tools=[tool_param])
    assert again.output_text == "There are two files."
    assert "a.txt\nb.txt" in prompt(engine)


def test_a_container_file_is_cited_where_the_answer_names_it() -> None:
    from openai.types.responses.response_output_text import AnnotationContainerFileCitation

    from midtier.loop.agent import _place
    cited = {"type": "container_file_citation", "container_id": "cntr_1", "file_id": "cfile_1",
             "filename": "plot.png", "path": "/mnt/data/plot.png"}
    text = "Saved the chart to sandbox:/mnt/data/plot.png for you."
    [placed] = _place([cited], text)
    annotation = AnnotationContainerFileCitation.model_validate(placed)
    assert text[annotation.start_index:annotation.end_index] == "/mnt/data/plot.png"
    assert "path" not in placed
    assert _place([cited], "Done, the chart is ready.") == []  # an answer that names no file cites none
