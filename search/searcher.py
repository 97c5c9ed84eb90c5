"""Query-time search over a loaded index (plain Python, no Flask)."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from threading import Lock

import numpy as np

from search.index_format import Index, words
from search.vectors import Capability, Hits

CHEAP_LEVEL = 4096  # products of one name score that are always asked about (read row by row)
SCORE_SLACK = 1e-3  # how far a backend's own ordering may stray from true cosines (float16 scans)

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
    """Text -> the n best products: CLIP text embedding, visual scores from the vector store,
    blended with the product-name word match (name_weight), best image of each."""

    def __init__(self, index: Index, embedder, *, store=None, name_weight: float = 0.0, cache_size: int = 1024):
        from search.vectors.exact import ExactStore

        if not 0.0 <= name_weight <= 1.0:
            raise ValueError("name_weight must be within 0..1")
        self.index = index
        self.embedder = embedder
        self.store = store if store is not None else ExactStore(index)
        self.name_weight = name_weight
        self.cache = QueryCache(cache_size)

    def embed_query(self, text: str) -> np.ndarray:
        ids = self.embedder.query_tokens(text)
        return self.cache.get_or_compute(ids.tobytes(), lambda: self.embedder.encode_query_tokens(ids))

    def search(self, text: str, n: int) -> list[Result]:
        return self.search_vector(self.embed_query(text), n, text)

    def search_vector(self, query: np.ndarray, n: int, text: str | None = None) -> list[Result]:
        """The n best products for a normalised query vector (a text's, a photo's or a blend);
        `text`, when there is one, also scores the product names (name_weight)."""
        return self._results(query, self.rank(query, text, n))

    def search_vectors(self, queries: list[np.ndarray], n: int, text: str | None = None) -> list[Result]:
        """The n best products by their best score over several query vectors (a photo's
        garments, each embedded on its own): each product once, shown by the image that matches
        the vector it scored best with. Exact: a product in the top n by its best score is in the
        top n of the vector that gives it that score."""
        if len(queries) == 1:
            return self.search_vector(queries[0], n, text)
        best: dict[int, tuple[float, int]] = {}  # product row -> (score, which query)
        for which, query in enumerate(queries):
            hits = self.rank(query, text, n)
            for row, score in zip(hits.rows.tolist(), hits.scores.tolist(), strict=True):
                if row not in best or score > best[row][0]:
                    best[row] = (score, which)
        rows = np.fromiter(best, np.int64, len(best))
        top = Hits.best(rows, np.array([best[row][0] for row in rows.tolist()], np.float32), n)
        # each product's image is the one its best-scoring vector matches best
        return [self._results(queries[best[row][1]], Hits(top.rows[i:i + 1], top.scores[i:i + 1]))[0]
                for i, row in enumerate(top.rows.tolist())]

    def similar(self, product_name: str, n: int) -> list[Result]:
        """The n products nearest to that product's pooled vector, without itself ("more like
        this"). Raises KeyError for a product the index does not have."""
        row = self.index.products.find(product_name)
        if row is None:
            raise KeyError(product_name)
        query = np.asarray(self.index.product_embeddings[row], np.float32)
        query = query / max(float(np.linalg.norm(query)), 1e-12)
        hits = self.store.top(query, n + 1)  # itself is (nearly always) the first of them
        others = hits.rows != row
        return self._results(query, Hits(hits.rows[others][:n], hits.scores[others][:n]))

    @staticmethod
    def blend(text_query: np.ndarray, photo_query: np.ndarray, photo_weight: float) -> np.ndarray:
        """One query vector for text and photo together: its cosine to a product is, up to one
        positive factor, (1 - photo_weight) x text cosine + photo_weight x photo cosine, so every
        backend ranks by that blend; normalised, as the backends expect."""
        query = (1.0 - photo_weight) * text_query + photo_weight * photo_query
        return (query / max(float(np.linalg.norm(query)), 1e-12)).astype(np.float32)

    def _results(self, query: np.ndarray, hits: Hits) -> list[Result]:
        best = self.store.best_images(query, hits.rows)
        return [Result(self.index.products[int(row)], self.index.image_files[int(image)], float(score))
                for row, image, score in zip(hits.rows, best, hits.scores, strict=True)]

    def rank(self, query: np.ndarray, text: str | None, n: int) -> Hits:
        """The n best products by (1 - w) * visual + w * name score (w = name_weight); by the
        visual score alone for a query without text (a photo)."""
        w = self.name_weight if text is not None else 0.0
        if self.store.supports(Capability.SCORES_EVERY_PRODUCT):  # exact: every product's score is at hand anyway
            scores = self.store.scores(query)
            if w:
                scores = (1.0 - w) * scores + w * self.index.names.scores(text)
            return Hits.best(np.arange(len(scores)), scores, min(n, len(scores)))
        if not w:
            return self.store.top(query, n)
        # A product in the blended top n is among the n visually best of the products sharing its
        # name score (within one name score, the blend orders as the visual score does), and
        # products without a name match can only come from the visual top n. Asking the backend
        # for those per name score gives the same answer as blending every product.
        # A common word names many products, and asking about them costs a scan: the visual pool
        # (the backend's blend_pool best) comes first, and a common level is asked about only when one of
        # its products outside the pool (visual score at most the pool's last) could still beat
        # the n-th blended score so far. Levels larger than the backend's among_limit (HNSW) are
        # never asked about: their products come from the pool alone, so there the blend is exact
        # for rare words and approximate for common ones (bench/scale.py measures the recall).
        matched, name_scores = self.index.names.matches(text)
        levels = [(level, matched[name_scores == level]) for level in np.unique(name_scores)[::-1]]
        if w == 1.0:  # names only: ties go by catalog order, as when every product is blended
            unmatched = np.setdiff1d(np.arange(min(len(self.index.products), n + len(matched))), matched)[:n]
            rows = np.concatenate([unmatched, *(rows[:n] for _, rows in levels)])
            return Hits.best(rows, self._name_scores(rows, matched, name_scores), n)
        cheap = min(CHEAP_LEVEL, self.store.among_limit)
        pool = n if all(len(rows) <= cheap for _, rows in levels) else max(n, self.store.blend_pool)
        hits = self.store.top(query, pool)
        candidates = [hits] + [self.store.top_among(query, rows, n) for _, rows in levels if len(rows) <= cheap]
        outside = hits.scores[-1] + SCORE_SLACK if len(hits.rows) >= pool else -np.inf  # best visual off the pool
        for level, rows in levels:  # highest name score first: the bar rises soonest
            if cheap < len(rows) <= self.store.among_limit:
                bar = self._blend(candidates, matched, name_scores).scores
                if len(bar) < n or (1.0 - w) * outside + w * level >= bar[n - 1]:
                    candidates.append(self.store.top_among(query, rows, n))
        return self._blend(candidates, matched, name_scores, n)

    def _blend(self, candidates: list[Hits], matched: np.ndarray, name_scores: np.ndarray, n: int | None = None) -> Hits:
        """The n best of the candidates (all of them when n is None) by blended score."""
        w = self.name_weight
        rows = np.concatenate([c.rows for c in candidates])
        visual = np.concatenate([c.scores for c in candidates])
        rows, first = np.unique(rows, return_index=True)
        blended = (1.0 - w) * visual[first] + w * self._name_scores(rows, matched, name_scores)
        return Hits.best(rows, blended, len(rows) if n is None else n)

    @staticmethod
    def _name_scores(rows: np.ndarray, matched: np.ndarray, name_scores: np.ndarray) -> np.ndarray:
        """Name scores of `rows`, from the sparse (sorted matched rows, their scores)."""
        names = np.zeros(len(rows), np.float32)
        if len(matched):
            at = np.minimum(np.searchsorted(matched, rows), len(matched) - 1)
            known = matched[at] == rows
            names[known] = name_scores[at[known]]
        return names
