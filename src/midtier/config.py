"""The server's configuration file (TOML): which models it serves, by which engine, and its
``[store]`` and ``[tools]`` sections. ``midtier serve --config FILE``; see docs/config.md.

    [models.NAME]            one table per model clients can name; ``engine`` picks its kind
    engine = "openai_chat"   a key of ENGINES; the other keys are that engine's settings

    [store]                  passed to ``midtier.store.open_store`` (kind = "sqlite", path = ...)
    [tools]                  passed to ``midtier.tools.ToolsConfig`` (enabled = [...], settings...)

``ENGINES`` is the registry of engine kinds, ``key -> "module:SettingsClass"``, imported only
when a config names the kind (so a config of upstream models never loads llama.cpp). A
settings class is a pydantic model with ``build(name) -> Served``. The key is what users
write: renaming one breaks their files.

This module sits above ``loop`` and below ``cli``; it never imports ``server``.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from midtier.core.errors import MidtierError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENGINES: dict[str, str] = {
    "llama_cpp": "midtier.loop.load:LlamaCppSettings",
    "openai_chat": "midtier.loop.upstream:OpenAIChatSettings",
    "token": "midtier.loop.load:TokenSettings",
}


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the key."""


class _File(BaseModel):
    """The file's top level. The sections below ``models`` are validated by their owners."""

    model_config = ConfigDict(extra="forbid")

    models: dict[str, dict[str, Any]] = Field(min_length=1)
    store: dict[str, Any] = Field(default_factory=dict)
    tools: dict[str, Any] = Field(default_factory=dict)


@dataclass
class Config:
    """A validated configuration: each model's settings (built on ``build_models``), and the
    ``store`` and ``tools`` sections as written."""

    models: dict[str, Any]  # name -> an engine's settings object
    store: dict[str, Any] = field(default_factory=dict)
    tools: dict[str, Any] = field(default_factory=dict)
    source: str = "<config>"

    def build_models(self) -> list[Any]:
        """The served models (``loop.served.Served``), in the file's order."""
        out = []
        for name, settings in self.models.items():
            try:
                out.append(settings.build(name))
            except MidtierError as exc:
                raise ConfigError(f"{self.source}: models.{name}: {exc.message}") from exc
            except (ValueError, KeyError, OSError) as exc:
                raise ConfigError(f"{self.source}: models.{name}: {_message(exc)}") from exc
        return out

    def open_store(self) -> Any:
        """The store the ``[store]`` section describes (None: no section)."""
        if not self.store:
            return None
        from midtier.store import open_store

        options = dict(self.store)
        try:
            return open_store(**options)
        except (KeyError, TypeError, ValueError, OSError) as exc:
            raise ConfigError(f"{self.source}: store: {_message(exc)}") from exc

    def tools_config(self) -> Any:
        """``midtier.tools.ToolsConfig`` from the ``[tools]`` section (None: no section)."""
        if not self.tools:
            return None
        from midtier.tools import ToolsConfig

        options = dict(self.tools)
        if "enabled" in options:
            if not isinstance(options["enabled"], list) or not all(isinstance(t, str) for t in options["enabled"]):
                raise ConfigError(f"{self.source}: tools.enabled: expected a list of tool types")
            options["enabled"] = frozenset(options["enabled"])
        try:
            return ToolsConfig(**options)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{self.source}: tools.{exc}" if isinstance(exc, ValueError)
                              else f"{self.source}: tools: {exc}") from exc


def _message(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    return str(exc)


def settings_class(engine: str) -> type[BaseModel]:
    try:
        module, _, name = ENGINES[engine].partition(":")
    except KeyError:
        raise KeyError(f"unknown engine {engine!r}; known: {', '.join(sorted(ENGINES))}") from None
    cls: type[BaseModel] = getattr(importlib.import_module(module), name)
    return cls


def _where(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc)


def parse_config(data: dict[str, Any], source: str = "<config>") -> Config:
    """Validate a configuration already read; every error names ``source`` and the key."""
    try:
        top = _File.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = _where(tuple(err["loc"]))
        if err["type"] == "extra_forbidden":
            raise ConfigError(f"{source}: unknown section or key {where!r} (known: models, store, tools)") from None
        raise ConfigError(f"{source}: {where or 'top level'}: {err['msg']}") from None
    models: dict[str, Any] = {}
    for name, table in top.models.items():
        engine = table.get("engine")
        if not isinstance(engine, str):
            raise ConfigError(f"{source}: models.{name}.engine: missing; one of {', '.join(sorted(ENGINES))}")
        try:
            cls = settings_class(engine)
        except KeyError as exc:
            raise ConfigError(f"{source}: models.{name}.engine: {_message(exc)}") from None
        try:
            models[name] = cls.model_validate(table)
        except ValidationError as exc:
            err = exc.errors()[0]
            key = _where((name, *err["loc"]))
            if err["type"] == "extra_forbidden":
                raise ConfigError(f"{source}: models.{key}: unknown key for engine {engine!r}") from None
            raise ConfigError(f"{source}: models.{key}: {err['msg']}") from None
    return Config(models, top.store, top.tools, source)


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(data, str(path))


__all__ = ["ENGINES", "Config", "ConfigError", "load_config", "parse_config", "settings_class"]
