"""The store: responses (with their input items and chain), conversations and their items,
records and blobs.

Everything is kept as the JSON objects the API sends (``Response``, items), so a stored
response reads back exactly as it was returned. Backends implement ``Store``; SQLite is
the default, PostgreSQL follows. Every write is durable when the call returns.

Records are JSON objects by ``kind`` and id, optionally owned by another object (a
vector store's files, a response's tool outputs and audit entries): files, vector stores,
containers, the built-in tools' audit log all live there, so a new kind of object needs no
new table in any backend. Blobs are bytes by id (file contents).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Order = Literal["asc", "desc"]


@dataclass
class StoredResponse:
    id: str
    response: dict[str, Any]  # the Response object as last returned (status, output, usage...)
    input_items: list[dict[str, Any]]  # this response's own input, as items with ids
    previous_response_id: str | None = None
    conversation_id: str | None = None
    created_at: int = 0


@dataclass
class Page:
    data: list[dict[str, Any]]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


@dataclass
class StoredConversation:
    id: str
    created_at: int
    metadata: dict[str, str] = field(default_factory=dict)


class Store(Protocol):
    # -- responses ------------------------------------------------------------------------------
    async def put_response(self, stored: StoredResponse) -> None:
        """Insert or replace (a background response is written again as it progresses)."""

    async def get_response(self, response_id: str) -> StoredResponse | None: ...

    async def delete_response(self, response_id: str) -> bool: ...

    async def chain(self, response_id: str) -> list[StoredResponse]:
        """The response and every one before it along previous_response_id, oldest first."""

    async def list_input_items(self, response_id: str, *, after: str | None = None, limit: int = 20,
                               order: Order = "desc") -> Page: ...

    # -- conversations --------------------------------------------------------------------------
    async def create_conversation(self, conversation: StoredConversation,
                                  items: list[dict[str, Any]]) -> None: ...

    async def get_conversation(self, conversation_id: str) -> StoredConversation | None: ...

    async def update_conversation(self, conversation_id: str, metadata: dict[str, str]) -> StoredConversation | None: ...

    async def delete_conversation(self, conversation_id: str) -> bool: ...

    async def add_items(self, conversation_id: str, items: list[dict[str, Any]]) -> None:
        """Append items (each with its ``id``) to a conversation."""

    async def list_items(self, conversation_id: str, *, after: str | None = None, limit: int = 20,
                         order: Order = "asc") -> Page: ...

    async def get_item(self, conversation_id: str, item_id: str) -> dict[str, Any] | None: ...

    async def delete_item(self, conversation_id: str, item_id: str) -> bool: ...

    async def all_items(self, conversation_id: str) -> list[dict[str, Any]]:
        """Every item of a conversation, oldest first (what the model sees)."""

    # -- records and blobs ------------------------------------------------------------------------
    async def put_record(self, kind: str, record_id: str, data: dict[str, Any], *, owner: str | None = None,
                         created_at: int = 0) -> None:
        """Insert or replace; a replaced record keeps its place in listings."""

    async def get_record(self, kind: str, record_id: str) -> dict[str, Any] | None: ...

    async def delete_record(self, kind: str, record_id: str) -> bool: ...

    async def list_records(self, kind: str, *, owner: str | None = None, after: str | None = None, limit: int = 20,
                           order: Order = "desc") -> Page:
        """A page of ``kind`` (of ``owner`` when given), by insertion order; ``after`` is a record id."""

    async def all_records(self, kind: str, owner: str) -> list[dict[str, Any]]:
        """Every record of ``kind`` owned by ``owner``, oldest first."""

    async def delete_owned(self, kind: str, owner: str) -> int:
        """Delete the records of ``kind`` owned by ``owner``; how many there were."""

    async def put_blob(self, blob_id: str, data: bytes) -> None: ...

    async def get_blob(self, blob_id: str) -> bytes | None: ...

    async def delete_blob(self, blob_id: str) -> bool: ...

    async def close(self) -> None: ...
