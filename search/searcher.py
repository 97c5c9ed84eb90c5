"""Query-time search over a loaded index (plain Python, no Flask)."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from threading import Lock

import numpy as np

from search.store import Index, words

__all__ = ["QueryCache", "Result", "Searcher", "words"]


@dataclass(frozen=True)
class Result:
    product_name: str
    image_file: str
    score: float


class QueryCache:
    """LRU of query embeddings: repeated queries skip the text encoder. Keys are the token ids
    the encoder sees (<= 77), so a 240 KB query costs a few hundred bytes here, not 240 KB."""

    def __init__(self, size: int):
        self.size, self._items, self._lock = size, OrderedDict(), Lock()
        self.hits = self.misses = 0

    def get_or_compute(self, key: bytes, compute):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
        value = compute()
        with self._lock:
            self.misses += 1
            if self.size > 0:
                self._items[key] = value
                if len(self._items) > self.size:
                    self._items.popitem(last=False)
        return value

    def keys(self) -> list[bytes]:
        with self._lock:
            return list(self._items)


class Searcher:
    def __init__(self, index: Index, embedder, *, name_weight: float = 0.0, cache_size: int = 1024):
        if not 0.0 <= name_weight <= 1.0:
            raise ValueError("name_weight must be within 0..1")
        self.index = index
        self.embedder = embedder
        self.name_weight = name_weight
        self.cache = QueryCache(cache_size)

    def embed_query(self, text: str) -> np.ndarray:
        ids = self.embedder.query_tokens(text)
        return self.cache.get_or_compute(ids.tobytes(), lambda: self.embedder.encode_query_tokens(ids))

    def search(self, text: str, n: int) -> list[Result]:
        query = self.embed_query(text)
        scores = self.index.visual_scores(query)
        if self.name_weight:
            scores = (1.0 - self.name_weight) * scores + self.name_weight * self.index.names.scores(text)
        count = min(n, len(scores))
        top = np.argpartition(-scores, count - 1)[:count] if count < len(scores) else np.arange(len(scores))
        top = top[np.lexsort((top, -scores[top]))]  # score descending, ties by catalog order
        return [Result(self.index.products[i], self.index.image_files[self.index.best_image(i, query)],
                       float(scores[i])) for i in top]
