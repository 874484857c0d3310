"""The tool-calling eval's case file is well-formed (no model: checks the data and the judge only)."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "accuracy.py"


def _load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("midtier_bench_accuracy", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


bench = _load_bench()
CASES = bench.load_cases()


def test_enough_cases_in_every_category() -> None:
    assert len(CASES) >= 60
    counts = Counter(c.category for c in CASES)
    assert set(counts) == set(bench.CATEGORIES), counts
    assert all(n >= 5 for n in counts.values()), counts


def test_ids_are_unique() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))


def test_tool_library_entries_are_named_by_their_key() -> None:
    doc = json.loads(bench.DATA.read_text(encoding="utf-8"))
    for key, tool in doc["tools"].items():
        assert tool["type"] == "function"
        assert tool["function"]["name"] == key


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_case_is_well_formed(case: Any) -> None:
    c = case
    assert c.messages and c.messages[-1]["role"] in ("user", "tool")
    names = [t["function"]["name"] for t in c.tools]
    assert names and len(names) == len(set(names)), names
    if c.category == "selection":
        assert len(names) >= 5
    if c.category == "parallel":
        assert len(c.expect) >= 2
    elif c.category == "no_tool":
        assert c.expect == []
    else:
        assert len(c.expect) == 1
    schemas = c.schemas()
    for schema in schemas.values():
        jsonschema.Draft202012Validator.check_schema(schema)
    for call in c.expect:
        assert call.name in schemas, f"{c.id}: expects unknown tool {call.name}"
        jsonschema.Draft202012Validator(schemas[call.name]).validate(call.arguments)
        assert not set(call.optional) & set(call.arguments), f"{c.id}: an argument is both expected and optional"
        jsonschema.Draft202012Validator(schemas[call.name]).validate({**call.arguments, **call.optional})
        for path in call.loose:
            value: object = call.arguments
            for part in path.split("."):
                value = value[0] if part == "*" else value[part]  # type: ignore[index]
            assert isinstance(value, str), f"{c.id}: loose path {path} is not a string"


def test_every_request_passes_midtier_validation() -> None:
    from midtier.server.chat import conversation_from_request
    from midtier.types.chat import ChatCompletionRequest

    for c in CASES:
        conv = conversation_from_request(ChatCompletionRequest.model_validate(bench.request_body(c, "m", 16, 0)))
        assert conv.sampling.temperature == 0


def test_the_expected_answer_is_judged_exact() -> None:
    for c in CASES:
        reply = bench.Reply("It is done." if not c.expect else "",
                            [(e.name, json.dumps(e.arguments)) for e in reversed(c.expect)])
        verdict = bench.judge(c, reply)
        assert verdict.exact and not verdict.malformed and not verdict.leaked, (c.id, verdict.why)
        if c.expect:  # with the optional arguments added, too
            with_optional = [(e.name, json.dumps({**e.arguments, **e.optional})) for e in c.expect]
            assert bench.judge(c, bench.Reply("", with_optional)).exact, c.id


def test_optional_arguments() -> None:
    case = bench.Case("t", "single", [{"role": "user", "content": "hi"}],
                      [{"type": "function", "function": {"name": "tr", "parameters": {"type": "object"}}}],
                      [bench.ExpectedCall("tr", {"text": "hi"}, optional={"source": "en"})])
    assert bench.judge(case, bench.Reply("", [("tr", '{"text": "hi", "source": "en"}')])).exact
    assert not bench.judge(case, bench.Reply("", [("tr", '{"text": "hi", "source": "fr"}')])).exact
    assert not bench.judge(case, bench.Reply("", [("tr", '{"text": "hi", "other": 1}')])).exact


def test_comparison_rule() -> None:
    schema = {"type": "object", "properties": {"unit": {"type": "string", "default": "celsius"},
                                               "n": {"type": "integer"}, "on": {"type": "boolean"},
                                               "tags": {"type": "array", "items": {"type": "string"}}}}
    drop = bench.without_defaults
    assert bench.same(drop({"n": 1}, schema), drop({"n": 1.0, "unit": "celsius"}, schema))
    assert not bench.same({"n": 1}, {"n": 1, "unit": "kelvin"})
    assert not bench.same({"on": True}, {"on": 1})
    assert bench.same({"tags": ["a", "b"]}, {"tags": ["b", "a"]})
    assert not bench.same({"tags": ["a", "a"]}, {"tags": ["a", "b"]})
    assert bench.same({"s": "Good morning."}, {"s": " good  MORNING"}, loose=frozenset({"s"}))
    assert not bench.same({"s": "Good morning."}, {"s": "good morning"})


def test_leak_detection() -> None:
    names = {"get_weather"}
    assert bench.leak('<tool_call>\n{"name": "get_weather"}', names)
    assert bench.leak('Sure: {"name": "get_weather", "arguments": {"city": "Paris"}}', names)
    assert bench.leak('```json\n{"name": "lookup", "arguments": {}}\n```', names)
    assert bench.leak('{"function": "book", "parameters": {}}', names)
    assert bench.leak("It is sunny in Paris; I used get_weather.", names) is None
    assert bench.leak('{"name": "Maria"}', names) is None
    assert bench.leak('```xml\n<tools type="function" function="get_weather">\n<arguments>', names)
    assert bench.leak("<function=get_weather>\n<parameter=city>Paris", names)
    assert bench.leak('```xml\n<toolsFunction name="get_weather">\n  <arguments>', names)
    assert bench.leak('<tools type="function" function="lookup">', names) is None  # names no tool
    assert bench.leak('<tool_response>\n{"temp": 20}\n</tool_response>', names) is None  # an echo, no call
