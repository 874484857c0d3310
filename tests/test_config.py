"""The TOML config: engines by registry key, settings validated with errors that name the file
and the key, [store] and [tools] passed to their owners, and the CLI without a config."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest
import tomllib

from midtier.cli.main import build_parser
from midtier.cli.serve import config_from_args
from midtier.config import ENGINES, ConfigError, load_config, parse_config, settings_class
from midtier.loop.load import LlamaCppSettings
from midtier.loop.upstream import OpenAIChatSettings, UpstreamModel

EXAMPLE = """
[models.local]
engine = "llama_cpp"
model = "qwen2.5-coder-0.5b"
n_ctx = 4096
threads = 2

[models."gpt-up"]
engine = "openai_chat"
base_url = "http://127.0.0.1:9/v1"
upstream_model = "Qwen/Qwen3-8B"
api_key_env = "MIDTIER_TEST_KEY"
read_timeout = 30
on_invalid_call = "text"
context_length = 32768
extra_body = { top_k = 20 }

[store]
kind = "sqlite"
path = "/tmp/x.sqlite3"

[tools]
enabled = ["code_interpreter"]
max_turns = 4

[tools.settings.code_interpreter]
max_memory_mb = 256
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "midtier.toml"
    path.write_text(text)
    return path


def test_the_example_parses(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, EXAMPLE))
    local, up = config.models["local"], config.models["gpt-up"]
    assert isinstance(local, LlamaCppSettings) and (local.model, local.n_ctx, local.threads) == ("qwen2.5-coder-0.5b",
                                                                                                 4096, 2)
    assert isinstance(up, OpenAIChatSettings) and up.read_timeout == 30 and up.extra_body == {"top_k": 20}
    assert config.store == {"kind": "sqlite", "path": "/tmp/x.sqlite3"}
    assert config.tools["settings"] == {"code_interpreter": {"max_memory_mb": 256}}


def test_the_doc_example_parses() -> None:
    doc = (Path(__file__).parents[1] / "docs" / "config.md").read_text()
    block = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    config = parse_config(tomllib.loads(block), "docs/config.md")
    assert {"llama_cpp", "openai_chat"} <= {type(s).model_fields["engine"].default for s in config.models.values()}
    assert config.tools_config() is not None


def test_every_engine_key_names_a_settings_class() -> None:
    for key in ENGINES:
        cls = settings_class(key)
        assert cls.model_fields["engine"].default == key and hasattr(cls, "build")


def test_an_upstream_model_is_built_with_its_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MIDTIER_TEST_KEY", "sk-123")
    config = load_config(write(tmp_path, EXAMPLE))
    config.models.pop("local")  # building it would load llama.cpp
    (model,) = config.build_models()
    assert isinstance(model, UpstreamModel) and model.name == "gpt-up" and model.upstream_model == "Qwen/Qwen3-8B"
    assert model.upstream.headers["authorization"] == "Bearer sk-123"
    assert model.upstream.timeouts.read == 30 and model.context_length == 32768
    assert model.on_invalid_call == "text"


def test_tools_section_becomes_the_tools_config(tmp_path: Path) -> None:
    tools = load_config(write(tmp_path, EXAMPLE)).tools_config()
    assert tools.enabled == frozenset({"code_interpreter"}) and tools.max_turns == 4
    assert tools.settings == {"code_interpreter": {"max_memory_mb": 256}}


@pytest.mark.parametrize(("tools", "message"), [
    ({"settings": {"code_interpreter": {"memory_mb": 256}}},
     "tools.settings.code_interpreter.memory_mb: unknown setting; known: cpu_seconds, file_size_mb"),
    ({"settings": {"web_serch": {"corpus": "x"}}}, "tools.settings.web_serch: unknown settings table; known: code_interpreter"),
    ({"enabled": ["code_interpreter", "python"]}, "tools.enabled: unknown tool type 'python'; known: code_interpreter"),
    ({"max_turns": 0}, "tools.max_turns: must be at least 1"),
])
def test_a_mistyped_tools_setting_is_named(tools: dict[str, Any], message: str) -> None:
    config = parse_config({"models": {"m": {"engine": "openai_chat", "base_url": "http://x/v1"}}, "tools": tools})
    with pytest.raises(ConfigError) as info:
        config.tools_config()
    assert message in str(info.value)


def test_store_section_opens_the_store(tmp_path: Path) -> None:
    config = parse_config({"models": {"m": {"engine": "openai_chat", "base_url": "http://x/v1"}},
                           "store": {"kind": "sqlite", "path": str(tmp_path / "s.sqlite3")}})
    store = config.open_store()
    assert store is not None
    asyncio.run(store.close())
    assert parse_config({"models": {"m": {"engine": "openai_chat", "base_url": "http://x/v1"}}}).open_store() is None


def test_a_store_whose_driver_is_missing_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "asyncpg", None)  # as if the postgres extra were not installed
    monkeypatch.delitem(sys.modules, "midtier.store.postgres", raising=False)
    config = parse_config({"models": {"m": {"engine": "openai_chat", "base_url": "http://x/v1"}},
                           "store": {"kind": "postgres", "dsn": "postgresql://x/y"}})
    with pytest.raises(ConfigError, match=r"store: the postgres store cannot load: .*pip install 'midtier\[postgres\]'"):
        config.open_store()


@pytest.mark.parametrize(("text", "message"), [
    ("[models.a]\nengine = 'vllm'\n", "models.a.engine: unknown engine 'vllm'; known: llama_cpp, openai_chat"),
    ("[models.a]\nbase_url = 'http://x'\n", "models.a.engine: missing"),
    ("[models.a]\nengine = 'openai_chat'\n", "models.a.base_url: Field required"),
    ("[models.a]\nengine = 'openai_chat'\nbase_url = 'http://x'\nread_timout = 3\n",
     "models.a.read_timout: unknown key for engine 'openai_chat'"),
    ("[models.a]\nengine = 'openai_chat'\nbase_url = 'http://x'\nread_timeout = -1\n",
     "models.a.read_timeout: Input should be greater than 0"),
    ("[models.a]\nengine = 'openai_chat'\nbase_url = 'http://x'\non_invalid_call = 'pass'\n",
     "models.a.on_invalid_call: Input should be 'error' or 'text'"),
    ("[models.a]\nengine = 'llama_cpp'\nn_ctx = 'big'\n", "models.a.n_ctx: Input should be a valid integer"),
    ("[server]\nport = 1\n[models.a]\nengine = 'llama_cpp'\n", "unknown section or key 'server'"),
    ("[store]\nkind = 'sqlite'\n", "models: Field required"),
    ("models = {}\n", "models: Dictionary should have at least 1 item"),
    ("[models.a\n", "not valid TOML"),
])
def test_bad_configs_name_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.toml")


@pytest.mark.parametrize(("table", "message"), [
    ({"api_key_env": "MIDTIER_SURELY_UNSET"}, "models.a: api_key_env: the environment variable MIDTIER_SURELY_UNSET"),
    ({"api_key": "x", "api_key_env": "HOME"}, "models.a: set api_key or api_key_env, not both"),
    ({"base_url": "localhost:8000/v1"}, "models.a: base_url must start with http:// or https://"),
])
def test_build_errors_name_the_model(table: dict[str, str], message: str) -> None:
    config = parse_config({"models": {"a": {"engine": "openai_chat", "base_url": "http://x/v1", **table}}}, "f.toml")
    with pytest.raises(ConfigError) as err:
        config.build_models()
    assert str(err.value).startswith("f.toml: ") and message in str(err.value)


def test_a_missing_gguf_names_the_model(tmp_path: Path) -> None:
    config = parse_config({"models": {"a": {"engine": "llama_cpp", "model": str(tmp_path / "none.gguf")}}}, "f.toml")
    with pytest.raises(ConfigError, match="f.toml: models.a: .*neither a known model nor an existing file"):
        config.build_models()


def test_bad_tools_section(tmp_path: Path) -> None:
    config = parse_config({"models": {"a": {"engine": "openai_chat", "base_url": "http://x/v1"}},
                           "tools": {"enabeld": ["x"]}}, "f.toml")
    with pytest.raises(ConfigError, match="f.toml: tools: .*enabeld"):
        config.tools_config()


# -- the command line ----------------------------------------------------------------------------
def args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *argv])


def test_without_a_config_the_flags_make_one_embedded_model(tmp_path: Path) -> None:
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF")
    config = config_from_args(args("--model", str(gguf), "--n-ctx", "2048", "--format", "hermes"))
    (settings,) = config.models.values()
    assert list(config.models) == ["tiny"] and isinstance(settings, LlamaCppSettings)
    assert (settings.model, settings.n_ctx, settings.format, settings.threads) == (str(gguf), 2048, "hermes", None)


def test_config_and_model_flags_exclude_each_other(tmp_path: Path) -> None:
    path = write(tmp_path, EXAMPLE)
    with pytest.raises(ConfigError, match="--model, --n-ctx: with --config, the models are set in the file"):
        config_from_args(args("--config", str(path), "--model", "x", "--n-ctx", "5"))
    assert set(config_from_args(args("--config", str(path))).models) == {"local", "gpt-up"}


def test_serve_reports_a_bad_config_and_exits_1(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from midtier.cli.serve import run

    path = write(tmp_path, "[models.a]\nengine = 'nope'\n")
    assert run(args("--config", str(path))) == 1
    assert "models.a.engine: unknown engine 'nope'" in caplog.text
