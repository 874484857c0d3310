"""The openai_chat engine's proxy from the environment: read once, NO_PROXY honoured, only
HTTP proxies, and requests really sent through it."""

from __future__ import annotations

import asyncio

import pytest

from midtier.core.events import TextDelta
from midtier.engines.openai_chat import OpenAIChatEngine, Timeouts, proxy_from_env

from .fault_proxy import FakeUpstream, text_reply

PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


def test_proxy_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert proxy_from_env("http://up.test/v1") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.test:3128")
    monkeypatch.setenv("ALL_PROXY", "http://all.test:3128")
    monkeypatch.setenv("NO_PROXY", "local.test,10.0.0.1")
    assert proxy_from_env("https://api.test/v1") == "http://proxy.test:3128"
    assert proxy_from_env("http://api.test/v1") == "http://all.test:3128"
    assert proxy_from_env("http://local.test:8000/v1") is None
    assert proxy_from_env("http://10.0.0.1:8000/v1") is None


def test_a_proxy_that_is_not_http_is_not_used(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("ALL_PROXY", "socks5://proxy.test:1080")
    assert proxy_from_env("http://api.test/v1") is None
    assert "not an HTTP proxy" in caplog.text


def test_requests_go_through_the_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeUpstream() as proxy:  # it answers any path: a request for an absolute URL shows the proxy was used
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
        engine = OpenAIChatEngine("http://upstream.invalid/v1", name="up", timeouts=Timeouts(connect=2, read=5))
        proxy.enqueue(text_reply("via proxy"))

        async def go() -> list[str]:
            try:
                body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
                return [e.text async for e in engine.stream(body) if isinstance(e, TextDelta)]
            finally:
                await engine.close()

        assert asyncio.run(go()) == ["via proxy"]
        assert proxy.requests[0].path == "http://upstream.invalid/v1/chat/completions"
