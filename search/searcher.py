"""Query-time search over a loaded index (plain Python, no Flask)."""
from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from threading import Lock

import numpy as np

from search.index import Index

WORD = re.compile(r"[^\W\d_]+")  # letters only: drops the numeric prefix and id of folder names


def words(text: str) -> set[str]:
    return {w for w in WORD.findall(text.lower()) if len(w) > 1}


@dataclass(frozen=True)
class Result:
    product_name: str
    image_file: str
    score: float


class QueryCache:
    """LRU of query embeddings: repeated queries skip the text encoder."""

    def __init__(self, size: int):
        self.size, self._items, self._lock = size, OrderedDict(), Lock()
        self.hits = self.misses = 0

    def get_or_compute(self, key: str, compute):
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


class Searcher:
    def __init__(self, index: Index, embedder, *, name_weight: float = 0.0, cache_size: int = 1024):
        if not 0.0 <= name_weight <= 1.0:
            raise ValueError("name_weight must be within 0..1")
        self.index = index
        self.embedder = embedder
        self.name_weight = name_weight
        self.cache = QueryCache(cache_size)
        self._product_words = [words(name) for name in index.products]

    def embed_query(self, text: str) -> np.ndarray:
        key = " ".join(text.split()).lower()
        vector = self.cache.get_or_compute(key, lambda: self.embedder.encode_texts([text])[0])
        return vector

    def name_scores(self, text: str) -> np.ndarray:
        """Share of the query's words that appear in each product's name (0..1)."""
        query = words(text)
        if not query:
            return np.zeros(len(self._product_words), np.float32)
        return np.array([len(query & name) / len(query) for name in self._product_words], np.float32)

    def search(self, text: str, n: int) -> list[Result]:
        visual, per_image = self.index.visual_scores(self.embed_query(text))
        scores = visual
        if self.name_weight:
            scores = (1.0 - self.name_weight) * visual + self.name_weight * self.name_scores(text)
        count = min(n, len(scores))
        top = np.argpartition(-scores, count - 1)[:count] if count < len(scores) else np.arange(len(scores))
        top = top[np.lexsort((top, -scores[top]))]  # score descending, ties by catalog order
        return [Result(self.index.products[i], self.index.image_files[self.index.best_image(i, per_image)],
                       float(scores[i])) for i in top]
