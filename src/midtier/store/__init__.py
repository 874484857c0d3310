"""Stored responses and conversations. This module is the registry: ``kind -> "module:Class"``.

The key is also the config string users write (``store = "sqlite"``); renaming one breaks them.
SQLite is the default, in the data folder ``${MIDTIER_DATA:-~/.local/share/midtier}``.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from midtier.store.base import Order, Page, Store, StoredConversation, StoredResponse

REGISTRY: dict[str, str] = {
    "sqlite": "midtier.store.sqlite:SqliteStore",
    "postgres": "midtier.store.postgres:PostgresStore",
}

DB_NAME = "midtier.sqlite3"


def default_data_dir() -> Path:
    """``${MIDTIER_DATA:-~/.local/share/midtier}``: where the store keeps its files."""
    return Path(os.environ.get("MIDTIER_DATA") or Path.home() / ".local" / "share" / "midtier").expanduser()


def default_db_path() -> Path:
    return default_data_dir() / DB_NAME


def store_class(kind: str) -> type[Any]:
    try:
        target = REGISTRY[kind]
    except KeyError:
        raise KeyError(f"unknown store {kind!r}; registered: {', '.join(sorted(REGISTRY))}") from None
    module, _, name = target.partition(":")
    try:
        loaded = importlib.import_module(module)
    except ImportError as exc:  # a backend's driver is an extra (postgres: asyncpg)
        raise ValueError(f"the {kind} store cannot load: {exc}") from exc
    cls: type[Any] = getattr(loaded, name)
    return cls


def open_store(kind: str = "sqlite", **options: Any) -> Store:
    """A store of ``kind`` built from ``options`` (each backend has its defaults: SQLite's ``path``
    is ``default_db_path()``)."""
    store: Store = store_class(kind)(**options)
    return store


__all__ = ["DB_NAME", "REGISTRY", "Order", "Page", "Store", "StoredConversation", "StoredResponse",
           "default_data_dir", "default_db_path", "open_store", "store_class"]
