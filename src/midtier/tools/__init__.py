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


@dataclass
class ToolsConfig:
    """Which built-in tools a server runs, and their settings (the ``[tools]`` table of the config).

    ``enabled``: tool types; ``settings``: per type, the keys that tool reads (for example
    ``settings["web_search"]["corpus"]``, ``settings["code_interpreter"]["memory_mb"]``)."""

    enabled: frozenset[str] = frozenset(REGISTRY)
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    max_turns: int = 8  # model turns in one response
    tool_timeout: float = 60.0  # seconds per tool execution


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
