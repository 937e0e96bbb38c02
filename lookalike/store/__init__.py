"""The vector store: `VectorStore` in domain terms, on Qdrant Edge or qdrant-client.

`VectorStore.from_settings` opens the one the settings name. Engines: `lookalike.store.edge`
(embedded default), `lookalike.store.qdrant` (a server, or qdrant-client's local mode); the
collection lifecycle (aliases, one collection per model) is `lookalike.store.rollout`.
"""

from lookalike.store.base import Record, VectorStore
from lookalike.store.embedded import open_embedded

__all__ = ["Record", "VectorStore", "open_embedded"]
