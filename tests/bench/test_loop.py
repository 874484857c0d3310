"""The loop bench on the mock engine: one round of both flows, checking that they made the
same three calls and that the result line has its keys (no timing is asserted)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

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


bench = _load("tool_loop")


def test_both_flows_make_the_same_three_calls_on_the_mock_engine(capsys: pytest.CaptureFixture[str]) -> None:
    result = bench.main(["--engine", "mock", "--rounds", "1", "--token-delay-ms", "0"])
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last == result
    assert last["bench"] == "loop" and last["engine"] == "mock"
    assert last["compared"] == 1 and last["excluded"] == []
    assert last["tool_calls"] == 3 and last["model_turns"] == 4
    assert last["server_requests"] == 1 and last["client_requests"] == 4
    assert isinstance(last["ratio"], float) and last["ratio"] > 0
    assert last["server_s"] > 0 and last["client_s"] > 0


def test_the_client_runs_a_call_as_a_fresh_interpreter(tmp_path: Path) -> None:
    (tmp_path / "start.txt").write_text("hello")
    assert bench.run_locally("print(open('start.txt').read())", tmp_path) == "hello"
    assert bench.run_locally("x = 1", tmp_path) == "(no output: use print() to show values)"
    assert "ZeroDivisionError" in bench.run_locally("1/0", tmp_path)
