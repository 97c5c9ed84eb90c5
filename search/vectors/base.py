"""The interface every vector store serves through (re-exported by search.vectors): Hits, the
VectorStore base with its declared capabilities, and VectorStoreError. The stores import it from
here, so nothing in a store depends on search.vectors' open_store, which imports the stores."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum

import numpy as np

from search.filters import ProductFilter

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


class Capability(Enum):
    """What a store can do beyond top / top_among / best_images, declared in its `capabilities`."""

    # `scores(query)` gives the visual score of every product at once (a full scan): the searcher
    # then fuses the BM25 score into all of them instead of asking for candidates.
    SCORES_EVERY_PRODUCT = "scores_every_product"


class VectorStore(ABC):
    backend: str = ""
    # What this store can do beyond the abstract methods (none unless a store declares them).
    capabilities: frozenset[Capability] = frozenset()
    # Visual candidates the lexical fusion starts from when a query's words match many products
    # (see Searcher.rank): a wider pool lowers the bound on the matches not yet asked about.
    blend_pool: int = 512

    @abstractmethod
    def top(self, query: np.ndarray, k: int, product_filter: ProductFilter | None = None) -> Hits:
        """The k products with the highest visual score for a normalised query vector; with a
        filter, the k best of the products that pass it (all of them when fewer pass), never fewer
        because an approximate search found too few of them."""

    @abstractmethod
    def top_among(self, query: np.ndarray, rows: np.ndarray, k: int) -> Hits:
        """The same, among the given product rows only (a query's lexical matches, a filter's products)."""

    @abstractmethod
    def best_images(self, query: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """For each product row, the index's row of its image that matches the query best."""

    def supports(self, capability: Capability) -> bool:
        """Whether this store declares `capability`."""
        return capability in self.capabilities

    def scores(self, query: np.ndarray) -> np.ndarray:
        """The visual score of every product (float32); only for Capability.SCORES_EVERY_PRODUCT."""
        raise NotImplementedError(f"the {self.backend or type(self).__name__} store does not score every product")

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if Capability.SCORES_EVERY_PRODUCT in cls.capabilities and cls.scores is VectorStore.scores:
            raise TypeError(f"{cls.__name__} declares {Capability.SCORES_EVERY_PRODUCT} but has no scores()")

    def describe(self) -> dict:
        """What /readyz shows about this backend (its name and main parameters)."""
        return {"backend": self.backend}

    def check(self) -> None:  # noqa: B027 - most backends have nothing to check
        """Raise VectorStoreError when the backend cannot answer now (used by readiness)."""

    def close(self) -> None:  # noqa: B027 - most backends hold nothing to release
        """Release connections or files."""
