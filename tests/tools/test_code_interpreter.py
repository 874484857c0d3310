"""code_interpreter, called directly: the item and its events (checked with the SDK's types),
what the model reads, state along a scope, outputs only when included, images, files written,
errors and limits, expired containers, file_ids, the request checks and history."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from openai.types.responses import ResponseCodeInterpreterToolCall

from midtier.core.errors import InvalidRequest, NotFound
from midtier.core.messages import ToolCall
from midtier.store import open_store
from midtier.store.base import Store
from midtier.tools import Toolbox, ToolContext, ToolsConfig
from midtier.tools.code_interpreter import DONE, RETRY, CodeInterpreterTool, repair
from midtier.tools.containers import Containers
from midtier.tools.files import create_file
from midtier.tools.sandbox import STATE_LOST

AUTO: dict[str, Any] = {"type": "code_interpreter", "container": {"type": "auto"}}
OUTPUTS = frozenset({"code_interpreter_call.outputs"})
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")


class Harness:
    def __init__(self, tmp_path: Path, **settings: Any) -> None:
        self.store: Store = open_store(path=tmp_path / "store.sqlite3")
        self.box = Toolbox(ToolsConfig(settings={"code_interpreter": settings}), self.store,
                           tmp_path)
        tool = self.box.tool("code_interpreter")
        assert isinstance(tool, CodeInterpreterTool)
        self.tool = tool
        self.events: list[tuple[str, dict[str, Any]]] = []

    @property
    def containers(self) -> Containers:
        containers: Containers = self.box.service("containers", Containers)
        return containers

    def ctx(self, param: dict[str, Any], scope: str = "conv_1", include: frozenset[str] = OUTPUTS,
            timeout: float = 20.0) -> ToolContext:
        return ToolContext("resp_1", param, self.store, self.box, scope, lambda t, f: self.events.append((t, f)),
                           include, timeout)

    async def call(self, code: str, param: dict[str, Any] = AUTO, **ctx: Any) -> tuple[dict[str, Any], str]:
        context = self.ctx(param, **ctx)
        await self.tool.functions(param, context)
        call = ToolCall("call_1", "python", json.dumps({"code": code}))
        item = self.tool.start(call, param)
        result = await self.tool.run(item, call, context)
        ResponseCodeInterpreterToolCall.model_validate(item)
        self.citations = result.citations
        return item, result.output


def scenario(tmp_path: Path, body: Callable[[Harness], Awaitable[None]], **settings: Any) -> None:
    async def main() -> None:
        harness = Harness(tmp_path, **settings)
        try:
            await body(harness)
        finally:
            await harness.box.close()
            await harness.store.close()

    asyncio.run(main())


def test_a_call_runs_and_fills_its_item(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        specs = await h.tool.functions(AUTO, h.ctx(AUTO))
        assert [s.name for s in specs] == ["python"] and specs[0].parameters["required"] == ["code"]
        assert "print()" in specs[0].description
        call = ToolCall("call_1", "python", json.dumps({"code": "x = 6 * 7\nprint('x is', x)"}))
        item = h.tool.start(call, AUTO)
        assert item["status"] == "in_progress" and item["code"] == "x = 6 * 7\nprint('x is', x)"
        assert item["container_id"].startswith("cntr_")  # the auto container, known before it runs
        result = await h.tool.run(item, call, h.ctx(AUTO))
        done = ResponseCodeInterpreterToolCall.model_validate(item)
        assert done.status == "completed" and done.container_id == item["container_id"]
        assert done.outputs is not None and [o.type for o in done.outputs] == ["logs"]
        assert done.outputs[0].logs == "x is 42"  # type: ignore[union-attr]
        assert result.output == f"The code printed:\nx is 42\n{DONE}"
        assert [t for t, _ in h.events] == [
            "response.code_interpreter_call.in_progress", "response.code_interpreter_call_code.delta",
            "response.code_interpreter_call_code.done", "response.code_interpreter_call.interpreting",
            "response.code_interpreter_call.completed"]
        assert h.events[1][1] == {"delta": item["code"]} and h.events[2][1] == {"code": item["code"]}

    scenario(tmp_path, body)


def test_state_lives_along_a_scope_and_not_across(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        first, _ = await h.call("total = 40")
        second, seen = await h.call("total + 2")
        assert seen == f"The code printed:\n42\n{DONE}" and first["container_id"] == second["container_id"]
        other, text = await h.call("total", scope="conv_2")
        assert other["container_id"] != first["container_id"]
        assert other["status"] == "completed" and text.startswith("It failed:\nTraceback")
        assert text.endswith(f"NameError: name 'total' is not defined\n{RETRY}")

    scenario(tmp_path, body)


def test_outputs_are_shown_only_when_included(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        item, text = await h.call("print('hello')", include=frozenset())
        assert item["outputs"] is None and text == f"The code printed:\nhello\n{DONE}"
        quiet, text = await h.call("y = 1")
        assert quiet["outputs"] == [] and text == f"The code ran and printed nothing (use print() to show values).\n{DONE}"

    scenario(tmp_path, body)


def test_files_written_become_container_files_and_images_outputs(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        png = base64.b64encode(PNG).decode()
        item, text = await h.call(f"import base64\nopen('plot.png', 'wb').write(base64.b64decode({png!r}))\n"
                                  "open('table.csv', 'w').write('a,b\\n1,2\\n')\nprint('saved')")
        assert text.startswith("The code printed:\nsaved\nFiles written:")
        assert "/mnt/data/plot.png" in text and "/mnt/data/table.csv" in text
        assert item["outputs"][1] == {"type": "image", "url": f"data:image/png;base64,{png}"}
        cid = item["container_id"]
        files = {f["path"]: f for f in (await h.containers.list_files(cid)).data}
        assert set(files) == {"/mnt/data/plot.png", "/mnt/data/table.csv"}
        assert files["/mnt/data/table.csv"]["source"] == "assistant" and files["/mnt/data/table.csv"]["bytes"] == 8
        assert await h.containers.read_file(cid, files["/mnt/data/table.csv"]) == b"a,b\n1,2\n"
        # the answer may cite them: container_file_citation (placed by the loop where the answer names one)
        assert sorted((c["type"], c["filename"], c["file_id"], c["container_id"]) for c in h.citations) == [
            ("container_file_citation", "plot.png", files["/mnt/data/plot.png"]["id"], cid),
            ("container_file_citation", "table.csv", files["/mnt/data/table.csv"]["id"], cid)]
        # changed and deleted files are seen on the next call; a link the code makes is never followed
        _, text = await h.call("import os\nos.remove('plot.png')\nopen('table.csv', 'a').write('3,4\\n')\n"
                               "os.symlink('/etc/passwd', 'passwd')")
        files = {f["path"]: f for f in (await h.containers.list_files(cid)).data}
        assert set(files) == {"/mnt/data/table.csv"} and files["/mnt/data/table.csv"]["bytes"] == 12
        assert "Files written: /mnt/data/table.csv" in text
        assert os.path.islink(h.containers.folder(cid) / "passwd")

    scenario(tmp_path, body)


def test_errors_and_limits_are_what_the_model_reads(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        item, text = await h.call("print('start')\n1 / 0")
        assert item["status"] == "completed"
        assert text.startswith("The code printed:\nstart\nIt failed:\nTraceback")
        assert text.endswith(f"ZeroDivisionError: division by zero\n{RETRY}")
        assert item["outputs"][0]["logs"].startswith("start\nTraceback (most recent call last):")
        assert item["outputs"][0]["logs"].endswith("ZeroDivisionError: division by zero")
        item, text = await h.call("import os\nwhile True:\n    os.fork()")
        assert item["status"] == "completed" and "BlockingIOError" in text and "processes" in text
        item, text = await h.call("x = bytearray(8 * 1024 ** 3)")
        assert "MemoryError" in text
        item, text = await h.call("while True:\n    pass", timeout=4.5)
        assert item["status"] == "incomplete" and "TimeoutError: the code ran longer than" in text
        item, text = await h.call("open('/etc/evil', 'w')")
        assert "PermissionError" in text and "only the container folder is writable" in text
        item, text = await h.call("import socket\nsocket.create_connection(('10.0.0.1', 80))")
        assert text.endswith(f"sandbox: network access is disabled\n{RETRY}")
        item, text = await h.call("print('y' * 10000)")
        assert text.endswith(f"[... 6000 more characters not shown]\n{DONE}")
        item, text = await h.call("print('still alive')")
        assert text == f"The code printed:\nstill alive\n{DONE}"

    scenario(tmp_path, body, model_output_chars=4000)


def test_a_killed_sandbox_says_its_state_is_gone(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        await h.call("kept = 1")
        item, text = await h.call("import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
                                  "signal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True:\n    pass", timeout=4.5)
        assert item["status"] == "failed" and STATE_LOST in text
        item, text = await h.call("kept")
        assert text.startswith(f"Note: {STATE_LOST}") and "NameError" in text

    scenario(tmp_path, body)


def test_cancelling_a_run_stops_the_code(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        call = ToolCall("call_1", "python", json.dumps({"code": "import time\ntime.sleep(60)"}))
        item = h.tool.start(call, AUTO)
        task = asyncio.ensure_future(h.tool.run(item, call, h.ctx(AUTO, timeout=60)))
        await asyncio.sleep(1.0)
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - started < 1
        _, text = await h.call("print('next')")
        assert text.endswith(f"next\n{DONE}")

    scenario(tmp_path, body)


def test_an_explicit_container_and_file_ids(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        meta = await create_file(h.store, b"n\n1\n2\n3\n", "numbers.csv", "user_data")
        made = await h.containers.create("mine", file_ids=[meta["id"]])
        param = {"type": "code_interpreter", "container": made["id"]}
        specs = await h.tool.functions(param, h.ctx(param))
        assert "Files: numbers.csv." in specs[0].description
        item, text = await h.call("import csv\nprint(sum(int(r['n']) for r in csv.DictReader(open('numbers.csv'))))",
                                  param)
        assert item["container_id"] == made["id"] and text == f"The code printed:\n6\n{DONE}"
        auto = {"type": "code_interpreter", "container": {"type": "auto", "file_ids": [meta["id"]]}}
        _, text = await h.call("print(open('numbers.csv').read().split())", auto, scope="conv_9")
        assert text == f"The code printed:\n['n', '1', '2', '3']\n{DONE}"
        with pytest.raises(NotFound):
            await h.tool.functions({"type": "code_interpreter", "container": "cntr_nope"}, h.ctx(param))
        with pytest.raises(NotFound, match="file-missing"):
            await h.containers.create("bad", file_ids=["file-missing"])

    scenario(tmp_path, body)


def test_a_container_is_held_to_its_disk_limit(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        item, text = await h.call("open('a.bin', 'wb').write(b'a' * 600_000)\nopen('b.bin', 'wb').write(b'b' * 700_000)")
        cid = item["container_id"]
        # over 1 MB together: the call's files go, largest first, until they fit; the model is told
        assert "DiskFull" in text and "/mnt/data/b.bin" in text and text.endswith(RETRY)
        files = {f["path"] for f in (await h.containers.list_files(cid)).data}
        assert files == {"/mnt/data/a.bin"}
        assert not (h.containers.folder(cid) / "b.bin").exists()
        _, text = await h.call("import os\nprint(sorted(os.listdir('.')))")
        assert "['a.bin']" in text
        with pytest.raises(InvalidRequest) as info:  # an upload that would not fit is refused
            await h.containers.add_file(cid, "big.csv", b"x" * 500_000)
        assert info.value.code == "container_full" and info.value.param == "file"
        await h.containers.add_file(cid, "small.csv", b"x" * 1000)

    scenario(tmp_path, body, max_disk_mb=1)


def test_a_call_that_keeps_writing_is_stopped_at_the_disk_limit(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        started = time.monotonic()
        item, text = await h.call("import time\ni = 0\nwhile True:\n"
                                  "    open(f'f{i}.bin', 'wb').write(b'x' * 100_000)\n    i += 1\n    time.sleep(0.01)")
        assert time.monotonic() - started < 10  # not its 20 s budget: stopped once past 1 MB
        assert "DiskFull" in text and "was stopped" in text
        cid = item["container_id"]
        assert sum(f["bytes"] for f in (await h.containers.list_files(cid)).data) <= 1024 * 1024
        _, text = await h.call("print('again')")  # the sandbox works on
        assert "again" in text

    scenario(tmp_path, body, max_disk_mb=1)


def test_an_idle_container_expires(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        item, _ = await h.call("kept = 1\nopen('a.txt', 'w').write('a')")
        cid = item["container_id"]
        record = await h.containers.require(cid)
        record["last_active_at"] = int(time.time()) - 21 * 60
        await h.store.put_record("container", cid, record)
        assert await h.containers.sweep() == 1
        expired = await h.containers.require(cid)
        assert expired["status"] == "expired"
        assert not h.containers.folder(cid).exists() and (await h.containers.list_files(cid)).data == []
        param = {"type": "code_interpreter", "container": cid}
        with pytest.raises(InvalidRequest, match="expired"):
            await h.tool.functions(param, h.ctx(param))
        fresh, text = await h.call("kept")  # the scope gets a new auto container
        assert fresh["container_id"] != cid and "NameError" in text

    scenario(tmp_path, body)


@pytest.mark.parametrize(("container", "param"), [
    (None, "tools[0].container"),
    ("", "tools[0].container"),
    ({"type": "manual"}, "tools[0].container"),
    ({"type": "auto", "file_ids": "file-1"}, "tools[0].container.file_ids"),
    ({"type": "auto", "memory_limit": "2g"}, "tools[0].container.memory_limit"),
    ({"type": "auto", "network_policy": {"type": "allowlist", "allowed_domains": ["x.com"]}},
     "tools[0].container.network_policy"),
])
def test_check_names_the_bad_parameter(tmp_path: Path, container: Any, param: str) -> None:
    tool = Toolbox(ToolsConfig(), None, tmp_path).tool("code_interpreter")
    entry = {"type": "code_interpreter"} if container is None else {"type": "code_interpreter", "container": container}
    with pytest.raises(InvalidRequest) as info:
        tool.check(entry, "tools[0]")
    assert info.value.param == param


def test_history_reads_an_item_back(tmp_path: Path) -> None:
    tool = Toolbox(ToolsConfig(), None, tmp_path).tool("code_interpreter")
    item = {"id": "ci_1", "type": "code_interpreter_call", "status": "completed", "code": "print(1)",
            "container_id": "cntr_1", "outputs": [{"type": "logs", "logs": "1"}]}
    call = tool.as_call(item)
    assert call is not None and (call.id, call.name, json.loads(call.arguments)) == ("ci_1", "python",
                                                                                     {"code": "print(1)"})
    assert tool.as_output(item) == ("ci_1", "1")
    assert tool.as_output({**item, "outputs": None}) == ("ci_1", "(the output of this call was not kept)")
    assert tool.as_call({"type": "message"}) is None and tool.runs_on_server(AUTO)


@pytest.mark.parametrize(("written", "run"), [
    ("print(total)}", "print(total)"),  # the JSON object closed inside the string
    ('print(total)"}', "print(total)"),
    ("a = 1\\nprint(a)", "a = 1\nprint(a)"),  # newlines escaped twice
    ("x = {1: 2}", "x = {1: 2}"),  # code that parses is never touched
    ('print("}")', 'print("}")'),
    ("def f(:", "def f(:"),  # no mend parses: the model reads the SyntaxError
])
def test_small_model_slips_are_mended(written: str, run: str) -> None:
    assert repair(written) == run


def test_a_mended_call_runs(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        item, text = await h.call("total = 2 + 3\nprint(total)}")
        assert item["code"] == "total = 2 + 3\nprint(total)}"  # the item shows the call as the model wrote it
        assert text == f"The code printed:\n5\n{DONE}"

    scenario(tmp_path, body)


def test_matplotlib_figures_become_images(tmp_path: Path) -> None:
    """The sandbox saves open pyplot figures after each call (a stand-in pyplot here: matplotlib is
    not installed on this machine)."""
    png = base64.b64encode(PNG).decode()
    fake = ("import sys, types, base64\npyplot = types.ModuleType('matplotlib.pyplot')\n"
            "class Figure:\n    def savefig(self, path):\n"
            f"        open(path, 'wb').write(base64.b64decode({png!r}))\n"
            "figures = {1: Figure()}\npyplot.get_fignums = lambda: sorted(figures)\n"
            "pyplot.figure = lambda n: figures[n]\n"
            "pyplot.close = lambda f: figures.clear()\nsys.modules['matplotlib.pyplot'] = pyplot\nprint('drawn')")

    async def body(h: Harness) -> None:
        item, text = await h.call(fake)
        assert item["outputs"] == [{"type": "logs", "logs": "drawn"},
                                   {"type": "image", "url": f"data:image/png;base64,{png}"}]
        assert "Files written: /mnt/data/figure_1_1.png" in text
        again, _ = await h.call("print('no new figure')")
        assert [o["type"] for o in again["outputs"]] == ["logs"]

    scenario(tmp_path, body)
