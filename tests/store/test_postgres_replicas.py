"""Two midtier replicas (two apps, each with its own engine and store pool) on one PostgreSQL
database, driven by the official SDK: what one stores, the other serves."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import openai
import pytest
from starlette.testclient import TestClient

from midtier.config import parse_config
from midtier.engines.mock import MockEngine
from midtier.loop.load import serve_engine
from midtier.server import create_app
from midtier.store.postgres import PostgresStore


def sdk(http: TestClient) -> openai.OpenAI:
    return openai.OpenAI(base_url="http://testserver/v1", api_key="test", http_client=http, max_retries=0)


@pytest.fixture
def replicas(postgres_dsn: str) -> Iterator[tuple[list[MockEngine], list[TestClient]]]:
    engines = [MockEngine(), MockEngine()]
    apps = [create_app([serve_engine("mock", engine, format_key="hermes")], store=PostgresStore(postgres_dsn, max_size=2))
            for engine in engines]
    with TestClient(apps[0]) as one, TestClient(apps[1]) as two:
        yield engines, [one, two]


def test_replicas_share_responses(replicas: tuple[list[MockEngine], list[TestClient]]) -> None:
    engines, (h1, h2) = replicas
    a, b = sdk(h1), sdk(h2)
    engines[0].enqueue("The first answer")
    first = h1.post("/v1/responses", json={"model": "mock", "input": "Hi", "metadata": {"z": "1", "a": "2"}}).json()
    got = h2.get(f"/v1/responses/{first['id']}").json()
    assert got == first and list(got) == list(first)  # the same object, key order included

    engines[1].enqueue("The second answer")
    second = b.responses.create(model="mock", input="And then?", previous_response_id=first["id"])
    assert second.output_text == "The second answer"
    prompt = engines[1].detokenize(engines[1].prompts[-1])
    assert "Hi" in prompt and "The first answer" in prompt  # replica two rebuilt the chain replica one stored
    assert [item.id for item in a.responses.input_items.list(second.id)] == [
        item["id"] for item in h2.get(f"/v1/responses/{second.id}/input_items").json()["data"]]

    b.responses.delete(first["id"])
    with pytest.raises(openai.NotFoundError):
        a.responses.retrieve(first["id"])


def test_replicas_share_conversations(replicas: tuple[list[MockEngine], list[TestClient]]) -> None:
    engines, (h1, h2) = replicas
    a, b = sdk(h1), sdk(h2)
    conv = a.conversations.create(items=[{"type": "message", "role": "user", "content": "Remember: blue"}],
                                  metadata={"topic": "colours"})
    assert b.conversations.retrieve(conv.id).metadata == {"topic": "colours"}
    engines[1].enqueue("Blue it is")
    b.responses.create(model="mock", input="Which colour?", conversation=conv.id)
    assert "Remember: blue" in engines[1].detokenize(engines[1].prompts[-1])
    items = h1.get(f"/v1/conversations/{conv.id}/items", params={"order": "asc"}).json()["data"]
    texts = [item["content"][0]["text"] for item in items if item["type"] == "message"]
    assert texts == ["Remember: blue", "Which colour?", "Blue it is"]
    engines[0].enqueue("Still blue")
    a.responses.create(model="mock", input="Sure?", conversation=conv.id)
    assert len(list(b.conversations.items.list(conv.id))) == 5


def test_config_store_section_opens_postgres(postgres_dsn: str) -> None:
    config = parse_config({"models": {"m": {"engine": "openai_chat", "base_url": "http://127.0.0.1:9/v1"}},
                           "store": {"kind": "postgres", "dsn": postgres_dsn, "max_size": 3}})
    store = config.open_store()
    assert isinstance(store, PostgresStore) and store.dsn == postgres_dsn and store.max_size == 3
    asyncio.run(store.close())
