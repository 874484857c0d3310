"""The Containers API through the official SDK, and code_interpreter/shell inside responses on
the scripted mock engine: a CSV uploaded to a container is read by the code; every sandbox
limit (fork bomb, memory bomb, endless loop, writing outside, the network) ends in an error the
model reads, and the server answers the next request."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.responses import ResponseCodeInterpreterToolCall
from starlette.testclient import TestClient

from midtier.engines.mock import MockEngine
from midtier.loop.turn import ServedModel
from midtier.server import create_app
from midtier.store import open_store
from midtier.tools import ToolsConfig

INCLUDE: Any = ["code_interpreter_call.outputs"]


@pytest.fixture
def http(served: ServedModel, tmp_path: Path) -> Iterator[TestClient]:
    store = open_store(path=tmp_path / "store.sqlite3")
    app = create_app([served], store=store, tools=ToolsConfig(tool_timeout=6.0, max_turns=3), data_dir=tmp_path)
    with TestClient(app) as client:
        yield client


def py(code: str) -> str:
    return "<tool_call>\n" + json.dumps({"name": "python", "arguments": {"code": code}}) + "\n</tool_call>"


def sh(command: str) -> str:
    return "<tool_call>\n" + json.dumps({"name": "shell", "arguments": {"command": command}}) + "\n</tool_call>"


def error(response: Any) -> dict[str, Any]:
    body: dict[str, Any] = response.json()["error"]
    return body


def test_containers_are_created_listed_retrieved_and_deleted(client: openai.OpenAI, tmp_path: Path) -> None:
    made = client.containers.create(name="analysis", expires_after={"anchor": "last_active_at", "minutes": 5},
                                    memory_limit="4g")
    assert made.id.startswith("cntr_") and made.object == "container" and made.status == "running"
    assert made.expires_after is not None and made.expires_after.minutes == 5 and made.memory_limit == "4g"
    assert made.network_policy is not None and made.network_policy.type == "disabled"
    other = client.containers.create(name="other")
    assert other.expires_after is not None and other.expires_after.minutes == 20
    assert client.containers.retrieve(made.id).name == "analysis"
    assert [c.id for c in client.containers.list()] == [other.id, made.id]
    assert [c.id for c in client.containers.list(order="asc", limit=1).data] == [made.id]
    assert [c.id for c in client.containers.list(name="analysis")] == [made.id]
    page = client.containers.list(limit=1)
    assert page.has_more and [c.id for c in page.data] == [other.id]
    assert [c.id for c in client.containers.list(after=other.id)] == [made.id]
    assert (tmp_path / "containers" / made.id).is_dir()
    client.containers.delete(made.id)
    assert not (tmp_path / "containers" / made.id).exists()
    with pytest.raises(openai.NotFoundError):
        client.containers.retrieve(made.id)


@pytest.mark.parametrize(("body", "param"), [
    ({}, "name"),
    ({"name": "x", "memory_limit": "2g"}, "memory_limit"),
    ({"name": "x", "expires_after": {"anchor": "created_at", "minutes": 5}}, "expires_after.anchor"),
    ({"name": "x", "expires_after": {"anchor": "last_active_at", "minutes": 0}}, "expires_after.minutes"),
    ({"name": "x", "network_policy": {"type": "allowlist", "allowed_domains": ["x.com"]}}, "network_policy"),
    ({"name": "x", "file_ids": ["file-nope"]}, "file_ids[0]"),
])
def test_bad_container_requests_are_4xx(http: TestClient, body: dict[str, Any], param: str) -> None:
    response = http.post("/v1/containers", json=body)
    assert response.status_code in (400, 404) and error(response)["param"] == param
    assert http.get("/v1/containers").json()["data"] == []  # nothing half made


def test_unknown_ids_are_404(http: TestClient, client: openai.OpenAI) -> None:
    assert error(http.get("/v1/containers/cntr_nope"))["param"] == "container_id"
    assert http.get("/v1/containers/../../etc/passwd").status_code == 404
    made = client.containers.create(name="x")
    assert error(http.get(f"/v1/containers/{made.id}/files/cfile_nope"))["param"] == "file_id"
    assert http.delete("/v1/containers/cntr_nope").status_code == 404
    assert http.get("/v1/containers?limit=500").status_code == 400


def test_container_files_by_upload_and_by_file_id(client: openai.OpenAI, http: TestClient, tmp_path: Path) -> None:
    made = client.containers.create(name="files")
    up = client.containers.files.create(made.id, file=("data.csv", b"x,y\n1,2\n"))
    assert (up.object, up.path, up.source, up.bytes, up.container_id) == (
        "container.file", "/mnt/data/data.csv", "user", 8, made.id)
    uploaded = client.files.create(file=("notes.txt", b"hello"), purpose="user_data")
    by_id = client.containers.files.create(made.id, file_id=uploaded.id)
    assert by_id.path == "/mnt/data/notes.txt" and by_id.bytes == 5
    assert {f.id for f in client.containers.files.list(made.id)} == {up.id, by_id.id}
    assert client.containers.files.retrieve(up.id, container_id=made.id).path == "/mnt/data/data.csv"
    assert client.containers.files.content.retrieve(by_id.id, container_id=made.id).read() == b"hello"
    # a file uploaded again under the same name replaces the old one
    again = client.containers.files.create(made.id, file=("data.csv", b"x,y\n5,6\n"))
    assert {f.id for f in client.containers.files.list(made.id)} == {again.id, by_id.id}
    client.containers.files.delete(again.id, container_id=made.id)
    assert not (tmp_path / "containers" / made.id / "data.csv").exists()
    with pytest.raises(openai.NotFoundError):
        client.containers.files.retrieve(again.id, container_id=made.id)
    for name in ("..", ".", ""):
        response = http.post(f"/v1/containers/{made.id}/files", files={"file": (name, b"x")})
        assert response.status_code == 400, name
    assert http.post(f"/v1/containers/{made.id}/files", json={"file_id": "file-nope"}).status_code == 404
    assert http.post(f"/v1/containers/{made.id}/files", json={}).status_code == 400


def test_a_csv_uploaded_to_a_container_is_read_by_the_code(client: openai.OpenAI, engine: MockEngine) -> None:
    made = client.containers.create(name="sales")
    client.containers.files.create(made.id, file=("sales.csv", b"region,amount\nnorth,120\nsouth,80\neast,55\n"))
    code = ("import csv\nrows = list(csv.DictReader(open('sales.csv')))\nprint(sum(int(r['amount']) for r in rows))\n"
            "open('summary.txt', 'w').write('255')")
    engine.enqueue(py(code), "The total is 255.")
    r = client.responses.create(model="mock", input="Sum the amount column of sales.csv.", include=INCLUDE,
                                tools=[{"type": "code_interpreter", "container": made.id}])
    assert [o.type for o in r.output] == ["code_interpreter_call", "message"]
    call = r.output[0]
    assert isinstance(call, ResponseCodeInterpreterToolCall) and call.status == "completed"
    assert call.container_id == made.id and call.outputs is not None
    assert call.outputs[0].type == "logs" and call.outputs[0].logs.startswith("255\n")
    assert r.output_text == "The total is 255."
    prompt = engine.detokenize(engine.prompts[-1])
    assert "Files: sales.csv." in prompt and "Files written: /mnt/data/summary.txt" in prompt
    written = [f for f in client.containers.files.list(made.id) if f.path == "/mnt/data/summary.txt"]
    assert written and written[0].source == "assistant"
    assert client.containers.files.content.retrieve(written[0].id, container_id=made.id).read() == b"255"


def test_streamed_events_fold_to_the_same_response(client: openai.OpenAI, engine: MockEngine) -> None:
    engine.enqueue(py("print(2 ** 10)"), "1024.")
    tools: Any = [{"type": "code_interpreter", "container": {"type": "auto"}}]
    with client.responses.stream(model="mock", input="2**10?", tools=tools, include=INCLUDE) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    start = types.index("response.output_item.added")
    assert types[start:start + 7] == [
        "response.output_item.added", "response.code_interpreter_call.in_progress",
        "response.code_interpreter_call_code.delta", "response.code_interpreter_call_code.done",
        "response.code_interpreter_call.interpreting", "response.code_interpreter_call.completed",
        "response.output_item.done"]
    call = final.output[0]
    assert isinstance(call, ResponseCodeInterpreterToolCall) and call.outputs is not None
    assert call.outputs[0].logs == "1024"  # type: ignore[union-attr]


def test_the_auto_container_lives_along_a_chain(client: openai.OpenAI, engine: MockEngine) -> None:
    tools: Any = [{"type": "code_interpreter", "container": {"type": "auto"}}]
    engine.enqueue(py("secret = 7"), "Stored.", py("print(secret * 6)"), "42.")
    first = client.responses.create(model="mock", input="Store 7.", tools=tools)
    second = client.responses.create(model="mock", input="Times six?", tools=tools, include=INCLUDE,
                                     previous_response_id=first.id)
    one, two = first.output[0], second.output[0]
    assert isinstance(one, ResponseCodeInterpreterToolCall) and isinstance(two, ResponseCodeInterpreterToolCall)
    assert one.container_id == two.container_id and two.outputs is not None
    assert two.outputs[0].logs == "42"  # type: ignore[union-attr]
    assert client.containers.retrieve(one.container_id).status == "running"


def test_shell_in_a_response_shares_the_container(client: openai.OpenAI, engine: MockEngine) -> None:
    engine.enqueue(sh("echo 5 > five.txt && cat five.txt"), "It printed 5.")
    r = client.responses.create(model="mock", input="Run it.", tools=[{"type": "shell",
                                                                        "environment": {"type": "container_auto"}}])
    assert [o.type for o in r.output] == ["shell_call", "shell_call_output", "message"]
    output = r.output[1]
    assert output.type == "shell_call_output" and output.output[0].stdout == "5\n"
    assert "$ echo 5 > five.txt && cat five.txt\n5" in engine.detokenize(engine.prompts[-1])


@pytest.mark.parametrize(("code", "expected"), [
    ("import os\nwhile True:\n    os.fork()", "BlockingIOError"),
    ("hog = []\nwhile True:\n    hog.append(bytearray(128 * 1024 * 1024))", "MemoryError"),
    ("while True:\n    pass", "TimeoutError: the code ran longer than"),
    ("open('/usr/lib/evil.txt', 'w').write('x')", "PermissionError"),
    ("import urllib.request\nurllib.request.urlopen('http://example.com', timeout=2)", "network access is disabled"),
])
def test_sandbox_limits_end_in_an_error_and_the_server_answers_again(
        client: openai.OpenAI, http: TestClient, engine: MockEngine, code: str, expected: str) -> None:
    tools: Any = [{"type": "code_interpreter", "container": {"type": "auto"}}]
    engine.enqueue(py(code), "It failed.")
    r = client.responses.create(model="mock", input="Try it.", tools=tools, include=INCLUDE)
    assert r.status == "completed" and r.output_text == "It failed."
    call = r.output[0]
    assert isinstance(call, ResponseCodeInterpreterToolCall) and call.status in ("completed", "incomplete")
    assert call.outputs is not None and expected in call.outputs[0].logs  # type: ignore[union-attr]
    assert expected in engine.detokenize(engine.prompts[-1])  # the model read it
    assert http.get("/health").status_code == 200
    engine.enqueue(py("print('fine')"), "Fine.")
    again = client.responses.create(model="mock", input="Again.", tools=tools, include=INCLUDE)
    after = again.output[0]
    assert isinstance(after, ResponseCodeInterpreterToolCall) and after.outputs is not None
    assert after.outputs[0].logs == "fine"  # type: ignore[union-attr]


def test_parallel_calls_share_the_container_one_at_a_time(client: openai.OpenAI, engine: MockEngine) -> None:
    engine.enqueue(py("import time\ntime.sleep(0.5)\nprint('first')") + "\n" + py("print('second')"), "Both ran.")
    r = client.responses.create(model="mock", input="Run both.", include=INCLUDE,
                                tools=[{"type": "code_interpreter", "container": {"type": "auto"}}])
    ran = [o for o in r.output if isinstance(o, ResponseCodeInterpreterToolCall)]
    assert len(ran) == 2 and {o.status for o in ran} == {"completed"} and len({o.container_id for o in ran}) == 1
    assert sorted(o.outputs[0].logs for o in ran if o.outputs) == ["first", "second"]  # type: ignore[union-attr]


def test_an_expired_container_is_refused(client: openai.OpenAI, http: TestClient, engine: MockEngine) -> None:
    made = client.containers.create(name="old", expires_after={"anchor": "last_active_at", "minutes": 1})
    store = http.app.state.store  # type: ignore[attr-defined]
    record = http.portal.call(store.get_record, "container", made.id)  # type: ignore[union-attr]
    record["last_active_at"] -= 120
    http.portal.call(store.put_record, "container", made.id, record)  # type: ignore[union-attr]
    assert client.containers.retrieve(made.id).status == "expired"
    with pytest.raises(openai.BadRequestError) as info:
        client.containers.files.create(made.id, file=("a.txt", b"a"))
    assert info.value.code == "container_expired"
    engine.enqueue(py("print(1)"), "One.")
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="mock", input="Run.", tools=[{"type": "code_interpreter", "container": made.id}])
    assert info.value.code == "container_expired"
