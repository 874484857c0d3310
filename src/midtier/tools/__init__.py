"""Built-in tools run server-side. This module is the registry: ``type -> "module:Class"``.

The key is the tool ``type`` a request sends (and the config string that enables it); renaming
one breaks users. ``Toolbox`` is the per-server owner of the tools and their shared backends.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from midtier.store.base import Store
from midtier.tools.base import BuiltinTool, ToolContext, ToolError, ToolResult

log = logging.getLogger(__name__)

REGISTRY: dict[str, str] = {
    "code_interpreter": "midtier.tools.code_interpreter:CodeInterpreterTool",
    "shell": "midtier.tools.shell:ShellTool",
    "local_shell": "midtier.tools.shell:LocalShellTool",
    "file_search": "midtier.tools.file_search:FileSearchTool",
    "web_search": "midtier.tools.web_search:WebSearchTool",
    "web_search_preview": "midtier.tools.web_search:WebSearchPreviewTool",
    "web_search_2025_08_26": "midtier.tools.web_search:WebSearchDatedTool",
    "web_search_preview_2025_03_11": "midtier.tools.web_search:WebSearchPreviewDatedTool",
    "mcp": "midtier.tools.mcp:McpTool",
}


#: the settings tables (``[tools.settings.<name>]``) and the keys each is read for (docs/config.md):
#: a key not here is a mistake the server names at start-up instead of ignoring it
SETTINGS: dict[str, frozenset[str]] = {
    "code_interpreter": frozenset({  # its containers and their sandboxes; shell runs in them too
        "sandbox", "max_sandboxes", "max_memory_mb", "processes", "file_size_mb", "open_files", "cpu_seconds",
        "tmp_mb", "output_chars", "model_output_chars", "isolation", "python", "uid", "gid", "mountpoint",
        "max_disk_mb"}),
    "shell": frozenset({"max_output", "model_output_chars"}),  # local_shell reads it too
    "file_search": frozenset({"model_results", "excerpt_chars", "embeddings", "index_workers"}),
    "web_search": frozenset({"provider", "corpus", "base_url", "url", "headers", "timeout", "open_pages", "browse",
                             "max_results"}),  # every web_search type reads it
    "mcp": frozenset({"allowed_urls", "transport"}),
    "files": frozenset({"max_bytes"}),  # the Files API
}


@dataclass
class ToolsConfig:
    """Which built-in tools a server runs, and their settings (the ``[tools]`` table of the config).

    ``enabled``: tool types; ``settings``: per table of ``SETTINGS``, the keys it is read for (for
    example ``settings["web_search"]["corpus"]``, ``settings["code_interpreter"]["max_memory_mb"]``).
    An unknown tool type, table or key is a ``ValueError`` naming it."""

    enabled: frozenset[str] = frozenset(REGISTRY)
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    max_turns: int = 8  # model turns in one response
    tool_timeout: float = 60.0  # seconds per tool execution

    def __post_init__(self) -> None:
        unknown = sorted(set(self.enabled) - set(REGISTRY))
        if unknown:
            raise ValueError(f"enabled: unknown tool type {unknown[0]!r}; known: {', '.join(sorted(REGISTRY))}")
        for table, values in self.settings.items():
            if table not in SETTINGS:
                raise ValueError(f"settings.{table}: unknown settings table; known: {', '.join(sorted(SETTINGS))}")
            if not isinstance(values, dict):
                raise ValueError(f"settings.{table}: expected a table of settings")
            for key in sorted(set(values) - SETTINGS[table]):
                raise ValueError(f"settings.{table}.{key}: unknown setting; known: {', '.join(sorted(SETTINGS[table]))}")
        if self.max_turns < 1:
            raise ValueError("max_turns: must be at least 1")
        if self.tool_timeout <= 0:
            raise ValueError("tool_timeout: must be more than 0")


class Toolbox:
    """The tools of one server and their shared backends (opened on first use)."""

    def __init__(self, config: ToolsConfig, store: Store | None, data_dir: Path) -> None:
        self.config = config
        self._store = store
        self.data_dir = data_dir
        self._tools: dict[str, BuiltinTool] = {}
        self._services: dict[str, Any] = {}
        self._unavailable: set[str] = set()

    @property
    def store(self) -> Store:
        if self._store is None:
            from midtier.store import open_store

            self._store = open_store()
        return self._store

    @store.setter
    def store(self, store: Store) -> None:
        self._store = store

    def enabled(self, tool_type: str) -> bool:
        return tool_type in REGISTRY and tool_type in self.config.enabled

    def available(self, tool_type: str) -> bool:
        """Enabled, and its module loads (a missing optional dependency disables a tool, loudly)."""
        if not self.enabled(tool_type):
            return False
        try:
            self.tool(tool_type)
        except ImportError as exc:
            if tool_type not in self._unavailable:
                self._unavailable.add(tool_type)
                log.warning("built-in tool %s is unavailable: %s", tool_type, exc)
            return False
        return True

    def settings(self, tool_type: str) -> dict[str, Any]:
        return dict(self.config.settings.get(tool_type, {}))

    def tool(self, tool_type: str) -> BuiltinTool:
        """The tool for ``tool_type`` (``KeyError`` when it is unknown or not enabled)."""
        if not self.enabled(tool_type):
            raise KeyError(tool_type)
        if tool_type not in self._tools:
            module, _, name = REGISTRY[tool_type].partition(":")
            cls = getattr(importlib.import_module(module), name)
            self._tools[tool_type] = cls(self)
        return self._tools[tool_type]

    def service(self, key: str, factory: Any) -> Any:
        """A shared backend by key, made by ``factory(self)`` on first use (the containers,
        a search index...)."""
        if key not in self._services:
            self._services[key] = factory(self)
        return self._services[key]

    async def close(self) -> None:
        for key, service in list(self._services.items()):
            close = getattr(service, "close", None)
            if close is None:
                continue
            try:
                result = close()
                if hasattr(result, "__await__"):
                    await result
            except Exception:
                log.exception("closing tool service %s failed", key)
        self._services.clear()


__all__ = ["REGISTRY", "BuiltinTool", "ToolContext", "ToolError", "ToolResult", "Toolbox", "ToolsConfig"]
