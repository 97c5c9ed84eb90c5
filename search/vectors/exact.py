"""Exact scoring over the index's memory-mapped matrices (SEARCH_BACKEND=exact, the default).

One matrix-vector product scores every product (max/mean pooling: the pooled matrix; score-max:
every image row, then the best per product). Image rows are read only for the results' best
images. The matrices are the index's own np.load(mmap_mode="r") arrays: one copy in the page
cache for all workers, nothing copied per query beyond the score vector.
"""
from __future__ import annotations

import numpy as np

from search.filters import ProductFilter
from search.index_format import Index
from search.vectors.base import Capability, Hits, VectorStore

CHUNK_ROWS = 16384  # rows scored at a time when only some products count: bounded temporaries
# A filter passing under 1/GATHER_SHARE of the products is scored from its rows alone: a gathered
# row costs a few sequential ones (measured in bench/scale.py), so this stays under a full scan.
GATHER_SHARE = 4


class ExactStore(VectorStore):
    backend = "exact"
    capabilities = frozenset({Capability.SCORES_EVERY_PRODUCT})  # one scan scores them all anyway

    def __init__(self, index: Index):
        self.index = index

    def scores(self, query: np.ndarray) -> np.ndarray:
        """The visual score of every product (float32)."""
        return self.index.visual_scores(query)

    def scores_of(self, query: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Visual scores of some products, computed in chunks (never a copy of the whole matrix)."""
        rows = np.asarray(rows, np.int64)
        out = np.empty(len(rows), np.float32)
        starts, images = self.index.product_starts, self.index.image_embeddings
        for first in range(0, len(rows), CHUNK_ROWS):
            chunk = rows[first:first + CHUNK_ROWS]
            if self.index.pooling != "score-max":
                out[first:first + len(chunk)] = self.index.product_embeddings[chunk] @ query
                continue
            counts = starts[chunk + 1] - starts[chunk]
            offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
            image_rows = np.repeat(starts[chunk] - offsets, counts) + np.arange(counts.sum())
            out[first:first + len(chunk)] = np.maximum.reduceat(images[image_rows] @ query, offsets)
        return out

    def top(self, query: np.ndarray, k: int, product_filter: ProductFilter | None = None) -> Hits:
        if product_filter is None:
            scores = self.scores(query)
            return Hits.best(np.arange(len(scores)), scores, k)
        rows = product_filter.rows
        if len(rows) * GATHER_SHARE < len(self.index.products):  # a selective filter: score only its rows
            return self.top_among(query, rows, k)
        return Hits.best(rows, self.scores(query)[rows], k)  # a row mask over the one full scan

    def top_among(self, query: np.ndarray, rows: np.ndarray, k: int) -> Hits:
        return Hits.best(rows, self.scores_of(query, rows), k)

    def best_images(self, query: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return np.array([self.index.best_image(int(r), query) for r in rows], np.int64)

    def describe(self) -> dict:
        return {"backend": self.backend, "pooling": self.index.pooling,
                "dtype": str(self.index.product_embeddings.dtype)}
