"""Built-in tools in the form a model was trained on: gpt-oss (harmony) sees web_search as its
``browser`` and code_interpreter as its ``python``, calls them by those recipients, and reads
their results authored by them; the items stay web_search_call and code_interpreter_call.
Any other format still sees functions. On the scripted mock engine with gpt-oss.jinja."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from starlette.testclient import TestClient

from midtier.engines.mock import MockEngine
from midtier.formats.harmony import MARKERS
from midtier.loop.load import serve_engine
from midtier.loop.turn import ServedModel
from midtier.server import create_app
from midtier.store import open_store
from midtier.tools import ToolsConfig

TEMPLATES = Path(__file__).resolve().parents[3] / "shared" / "data" / "templates"
NOTES = "https://kelvara.example/notes"
PAGES = {
    "kelvara.html": f"""<html><head><title>Kelvara travel notes</title><link rel="canonical" href="{NOTES}">
        </head><body><p>Kelvara is a small town in the hills.</p><p>The Zorblat festival of Kelvara is held every
        year on the ninth of Brumaire, with lanterns of blue glass.</p><p>Trains run twice a day.</p></body></html>""",
    "weather.txt": "Weather in Kelvara\n\nKelvara has cold winters; the festival season is wet.\n",
    "cooking.md": "# Cooking rice\n\nRinse the rice, then boil it for twelve minutes.\n",
}
THINK = "<|channel|>analysis<|message|>I should look this up.<|end|><|start|>assistant"
WEATHER: Any = {"type": "function", "name": "get_weather", "description": "Weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
WEB: Any = {"type": "web_search"}
PYTHON: Any = {"type": "code_interpreter", "container": {"type": "auto"}}


def browser(call: str, args: dict[str, Any]) -> str:
    """A browser call as gpt-oss writes it: the recipient after the channel, JSON arguments."""
    return f"<|channel|>commentary to=browser.{call} <|constrain|>json<|message|>{json.dumps(args)}<|call|>"


def final(text: str) -> str:
    return f"<|channel|>final<|message|>{text}<|return|>"


@pytest.fixture
def engine() -> MockEngine:
    specials = ("<|return|>", *(m for m in MARKERS if m != "<|return|>"))  # the first is the mock's EOS
    return MockEngine(specials=specials, chat_template=(TEMPLATES / "gpt-oss.jinja").read_text())


@pytest.fixture
def served(engine: MockEngine) -> ServedModel:
    served = serve_engine("gpt-oss", engine)
    assert served.format.key == "harmony"
    return served


def app_client(served: ServedModel, tmp_path: Path) -> Iterator[openai.OpenAI]:
    store = open_store(path=tmp_path / "store.sqlite3")
    for name, text in PAGES.items():
        (tmp_path / "web").mkdir(exist_ok=True)
        (tmp_path / "web" / name).write_text(text)
    tools = ToolsConfig(settings={"web_search": {"corpus": str(tmp_path / "web")}},
                        tool_timeout=6.0, max_turns=5)
    with TestClient(create_app([served], store=store, tools=tools, data_dir=tmp_path)) as http:
        yield openai.OpenAI(base_url="http://testserver/v1", api_key="t", http_client=http, max_retries=0)


@pytest.fixture
def client(served: ServedModel, tmp_path: Path) -> Iterator[openai.OpenAI]:
    yield from app_client(served, tmp_path)


def prompt(engine: MockEngine, n: int) -> str:
    return engine.detokenize(engine.prompts[n])


def test_the_prompt_shows_browser_and_python_and_functions_beside_them(client: openai.OpenAI,
                                                                        engine: MockEngine) -> None:
    engine.enqueue(final("Hello."))
    client.responses.create(model="gpt-oss", input="Hi", tools=[WEB, PYTHON, WEATHER])
    shown = prompt(engine, 0)
    system = shown[:shown.index("<|end|>")]
    assert "## browser" in system and "namespace browser {" in system and "type search = " in system
    assert "## python" in system and "stateful Jupyter notebook" in system
    assert "namespace functions {" in shown and "type get_weather = " in shown  # a function is a function
    for name in ("web_search", "open_page", "find_in_page", "python"):
        assert f"type {name} = " not in shown


def test_browser_search_runs_web_search_and_the_result_is_authored_by_browser_search(
        client: openai.OpenAI, engine: MockEngine) -> None:
    engine.enqueue(THINK + browser("search", {"query": "Zorblat festival", "topn": 1}),
                   final("It is held on the ninth of Brumaire (Kelvara travel notes)."))
    with client.responses.stream(model="gpt-oss", input="When is the Zorblat festival?", tools=[WEB]) as stream:
        events = [e.type for e in stream]
        r = stream.get_final_response()
    assert [o.type for o in r.output] == ["reasoning", "web_search_call", "message"]
    search = r.output[1]
    assert search.type == "web_search_call" and search.status == "completed"
    assert search.action.type == "search" and search.action.query == "Zorblat festival"
    start = events.index("response.output_item.added", events.index("response.output_item.done"))
    assert events[start:start + 5] == [
        "response.output_item.added", "response.web_search_call.in_progress",
        "response.web_search_call.searching", "response.web_search_call.completed", "response.output_item.done"]
    after = prompt(engine, 1)
    assert ('<|start|>assistant to=browser.search<|channel|>commentary code<|message|>'
            '{"query": "Zorblat festival", "topn": 1}<|call|>'
            '<|start|>browser.search to=assistant<|channel|>commentary<|message|>Search results for') in after
    assert f"【0†Kelvara travel notes†kelvara.example】 {NOTES}" in after and "ninth of Brumaire" in after
    assert "【1†" not in after  # topn
    message = r.output[2]
    assert message.type == "message" and message.content[0].type == "output_text"
    cited = message.content[0].annotations[0]
    assert cited.type == "url_citation" and cited.url == NOTES

    # the next response of the conversation shows the call as gpt-oss made it
    engine.enqueue(final("Twice a day."))
    client.responses.create(model="gpt-oss", input="And the trains?", tools=[WEB], previous_response_id=r.id)
    assert "<|start|>browser.search to=assistant<|channel|>commentary<|message|>Search results for" in prompt(engine, 2)
    assert "functions.browser" not in prompt(engine, 2)


def test_browser_open_by_result_number_then_find_in_the_open_page(client: openai.OpenAI, engine: MockEngine) -> None:
    engine.enqueue(browser("search", {"query": "Zorblat festival"}), browser("open", {"id": 0}),
                   browser("find", {"pattern": "blue glass"}), final("On the ninth of Brumaire."))
    r = client.responses.create(model="gpt-oss", input="When is the Zorblat festival?", tools=[WEB])
    calls = [o for o in r.output if o.type == "web_search_call"]
    assert [c.action.type for c in calls] == ["search", "open_page", "find_in_page"]
    assert calls[1].action.url == NOTES  # type: ignore[union-attr]
    assert calls[2].action.url == NOTES and calls[2].action.pattern == "blue glass"  # type: ignore[union-attr]
    assert all(c.status == "completed" for c in calls)
    last = prompt(engine, 3)
    assert ('<|start|>assistant to=browser.open<|channel|>commentary code<|message|>{"id": 0}<|call|>'
            "<|start|>browser.open to=assistant<|channel|>commentary<|message|>Kelvara travel notes\nURL: ") in last
    assert '<|start|>browser.find to=assistant<|channel|>commentary<|message|>"blue glass" on Kelvara' in last


def test_browser_open_of_a_missing_result_tells_the_model(client: openai.OpenAI, engine: MockEngine) -> None:
    engine.enqueue(browser("open", {"id": 3}), final("I could not open it."))
    r = client.responses.create(model="gpt-oss", input="Open result 3.", tools=[WEB])
    assert r.output[0].type == "web_search_call" and r.output[0].status == "failed"
    assert "Error: there is no result 3: search first, or give a URL" in prompt(engine, 1)


def test_python_runs_code_interpreter_and_its_output_is_authored_by_python(
        client: openai.OpenAI, engine: MockEngine) -> None:
    engine.enqueue("<|channel|>analysis to=python code<|message|>print(6 * 7)<|call|>", final("42."))
    r = client.responses.create(model="gpt-oss", input="What is 6 times 7?", tools=[PYTHON],
                                include=["code_interpreter_call.outputs"])
    ran = r.output[0]
    assert ran.type == "code_interpreter_call" and ran.status == "completed" and ran.code == "print(6 * 7)"
    assert ran.outputs is not None and ran.outputs[0].logs == "42"  # type: ignore[union-attr]
    assert ("<|start|>assistant to=python<|channel|>commentary code<|message|>print(6 * 7)<|call|>"
            "<|start|>python to=assistant<|channel|>commentary<|message|>The code printed:\n42") in prompt(engine, 1)


def test_a_function_beside_the_builtins_goes_to_the_client(client: openai.OpenAI, engine: MockEngine) -> None:
    engine.enqueue("<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
                   '{"city": "Paris"}<|call|>', final("Sunny."))
    r = client.responses.create(model="gpt-oss", input="Weather in Paris?", tools=[WEB, PYTHON, WEATHER])
    call = r.output[0]
    assert call.type == "function_call" and call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    client.responses.create(model="gpt-oss", previous_response_id=r.id, tools=[WEB, PYTHON, WEATHER], input=[
        {"type": "function_call_output", "call_id": call.call_id, "output": "20 C"}])
    assert ('<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Paris"}<|call|>'
            '<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>"20 C"<|end|>') in prompt(engine, 1)


def test_other_formats_see_the_builtins_as_functions(tmp_path: Path) -> None:
    engine = MockEngine()
    served = serve_engine("mock", engine, format_key="hermes")
    for client in app_client(served, tmp_path):
        call = {"name": "web_search", "arguments": {"query": "Zorblat festival"}}
        engine.enqueue(f"<tool_call>\n{json.dumps(call)}\n</tool_call>", "The ninth of Brumaire.")
        r = client.responses.create(model="mock", input="When is the Zorblat festival?", tools=[WEB])
        assert r.output[0].type == "web_search_call"
    shown = prompt(engine, 0)
    assert '"name": "web_search"' in shown and '"name": "open_page"' in shown and "browser" not in shown
