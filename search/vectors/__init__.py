"""Where a query is scored: one interface, three backends, chosen by SEARCH_BACKEND.

    exact   (default) the index's memory-mapped product matrix; one matrix-vector product scores
            every product, so a query costs O(products), shared by all workers, no server.
            SEARCH_EXACT_DTYPE=float16 scans a float16 copy instead (half the bytes and time).
    faiss   an approximate index (HNSW, IVF-PQ...) built by the indexer beside the arrays and
            memory-mapped where FAISS allows it; its candidates are re-scored exactly.
    milvus  a Milvus collection (Milvus Lite for a file URI, a Milvus standalone/cluster for
            http(s)://host:19530), published from the index with `python -m search.index publish`.

Every backend answers in product rows of the local index (`search.store.Index`), whose names,
image files and name words stay the service's metadata; what differs is where the vectors live
and how the best products are found. Scores are always true cosines (pooled vector . query, or
the best image's for score-max pooling), so the hybrid name score blends the same way everywhere.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

BACKENDS = ("exact", "faiss", "milvus")


class VectorStoreError(Exception):
    """The backend cannot answer: unreachable, missing, or built from another index. The message
    says which; the service shows it on /readyz and answers 503 meanwhile."""


@dataclass(frozen=True)
class Hits:
    rows: np.ndarray  # product rows of the index (int64), best first
    scores: np.ndarray  # their visual scores, true cosines (float32), same order

    @classmethod
    def best(cls, rows: np.ndarray, scores: np.ndarray, k: int) -> "Hits":
        """The k best of (rows, scores): score descending, ties by row (catalog order)."""
        rows, scores = np.asarray(rows, np.int64), np.asarray(scores, np.float32)
        if k < len(scores):
            # argpartition picks arbitrarily among scores tied with the k-th: take every score
            # above it, then the tied ones with the lowest rows, so ties go by catalog order.
            kth = scores[np.argpartition(-scores, k - 1)[k - 1]]
            above = np.flatnonzero(scores > kth)
            tied = np.flatnonzero(scores == kth)
            keep = np.concatenate([above, tied[np.argsort(rows[tied], kind="stable")[:k - len(above)]]])
            rows, scores = rows[keep], scores[keep]
        order = np.lexsort((rows, -scores))
        return cls(rows[order], scores[order])


class VectorStore(ABC):
    backend: str = ""
    # The largest set of products `top_among` answers; the searcher's name blend asks about
    # larger sets only where it can (see Searcher.rank).
    among_limit: int = 4096
    # Visual candidates the name blend starts from when a query's words name many products: its
    # products outside them come from `top_among` where the pool's bound allows, or not at all.
    blend_pool: int = 512

    @abstractmethod
    def top(self, query: np.ndarray, k: int) -> Hits:
        """The k products with the highest visual score for a normalised query vector."""

    @abstractmethod
    def top_among(self, query: np.ndarray, rows: np.ndarray, k: int) -> Hits:
        """The same, among the given product rows only (the products a query's words name)."""

    @abstractmethod
    def best_images(self, query: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """For each product row, the index's row of its image that matches the query best."""

    def describe(self) -> dict:
        """What /readyz shows about this backend (its name and main parameters)."""
        return {"backend": self.backend}

    def check(self) -> None:  # noqa: B027 - most backends have nothing to check
        """Raise VectorStoreError when the backend cannot answer now (used by readiness)."""

    def close(self) -> None:  # noqa: B027 - most backends hold nothing to release
        """Release connections or files."""


def open_store(settings, index) -> VectorStore:
    """The backend `settings.backend` names, over `index` (a search.config.BackendSettings and a
    search.store.Index). Raises VectorStoreError with the reason when it cannot be opened."""
    if settings.backend == "exact":
        if settings.exact_dtype == "float16":
            from search.vectors.faiss_ann import Float16ExactStore

            return Float16ExactStore.open(index, settings)
        if settings.exact_dtype != "float32":
            raise VectorStoreError(f"SEARCH_EXACT_DTYPE={settings.exact_dtype!r} is not float32 or float16")
        from search.vectors.exact import ExactStore

        return ExactStore(index)
    if settings.backend == "faiss":
        from search.vectors.faiss_ann import FaissStore

        return FaissStore.open(index, settings)
    if settings.backend == "milvus":
        from search.vectors.milvus import MilvusStore

        return MilvusStore.open(index, settings)
    raise VectorStoreError(f"SEARCH_BACKEND={settings.backend!r} is not one of {', '.join(BACKENDS)}")
