"""Query-time search over a loaded index (plain Python, no Flask)."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from threading import Lock

import numpy as np

from search.filters import ProductFilter
from search.index_format import Index
from search.vectors import Capability, Hits

FUSIONS = ("weighted", "rrf")
LEXICAL_FIRST = 256  # lexical matches whose visual scores an approximate backend is asked for first
LEXICAL_LIMIT = 4096  # at most this many (doubling): beyond, the weighted fusion is approximate
SCORE_SLACK = 1e-3  # how far a backend's own ordering may stray from true cosines (float16 scans)

__all__ = ["FUSIONS", "Fusion", "QueryCache", "Result", "Searcher"]


@dataclass(frozen=True)
class Result:
    row: int  # the product's row in the index
    product_id: str
    product_name: str
    image_file: str
    score: float
    image_row: int = -1  # the image's row in the index (-1: not known)


@dataclass(frozen=True)
class Fusion:
    """How a text query's lexical (BM25) score joins the CLIP score.

    weighted  (1 - weight) x cosine + weight x BM25 / the query's best BM25 over the catalog
              (so the lexical part is 0..1, 1 for the best-matching product)
    rrf       reciprocal rank fusion: (1 - weight) / (k + visual rank) + weight / (k + lexical
              rank), ranks from 1 within each list's best `window` products (a product outside a
              list's window gets nothing from it), as Elasticsearch's rank_window_size does
    weight 0 is visual only; a query without text (a photo) is always visual only."""
    method: str = "weighted"
    weight: float = 0.3
    rrf_k: int = 60
    rrf_window: int = 100

    def __post_init__(self):
        if self.method not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}")
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError("the lexical weight must be within 0..1")


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
    fused with the BM25 score of the products' text (`fusion`), among the products a filter
    passes; each product shown by its best image."""

    def __init__(self, index: Index, embedder, *, store=None, fusion: Fusion = Fusion(), cache_size: int = 1024,
                 cache: QueryCache | None = None):
        """`cache`: query embeddings shared with other searchers of the same model (each index
        generation gets its own Searcher, search/live.py); else a new one of `cache_size`."""
        from search.vectors.exact import ExactStore

        self.index = index
        self.embedder = embedder
        self.store = store if store is not None else ExactStore(index)
        self.fusion = fusion
        self.cache = cache if cache is not None else QueryCache(cache_size)

    def embed_query(self, text: str) -> np.ndarray:
        ids = self.embedder.query_tokens(text)
        return self.cache.get_or_compute(ids.tobytes(), lambda: self.embedder.encode_query_tokens(ids))

    def search(self, text: str, n: int, product_filter: ProductFilter | None = None) -> list[Result]:
        return self.search_vector(self.embed_query(text), n, text, product_filter)

    def search_vector(self, query: np.ndarray, n: int, text: str | None = None,
                      product_filter: ProductFilter | None = None) -> list[Result]:
        """The n best products for a normalised query vector (a text's, a photo's or a blend);
        `text`, when there is one, also scores the products' text (fusion)."""
        return self._results(query, self.rank(query, text, n, product_filter))

    def search_vectors(self, queries: list[np.ndarray], n: int, text: str | None = None,
                       product_filter: ProductFilter | None = None) -> list[Result]:
        """The n best products by their best score over several query vectors (a photo's
        garments, each embedded on its own): each product once, shown by the image that matches
        the vector it scored best with. Exact: a product in the top n by its best score is in the
        top n of the vector that gives it that score."""
        if len(queries) == 1:
            return self.search_vector(queries[0], n, text, product_filter)
        best: dict[int, tuple[float, int]] = {}  # product row -> (score, which query)
        for which, query in enumerate(queries):
            hits = self.rank(query, text, n, product_filter)
            for row, score in zip(hits.rows.tolist(), hits.scores.tolist(), strict=True):
                if row not in best or score > best[row][0]:
                    best[row] = (score, which)
        rows = np.fromiter(best, np.int64, len(best))
        top = Hits.best(rows, np.array([best[row][0] for row in rows.tolist()], np.float32), n)
        # each product's image is the one its best-scoring vector matches best
        return [self._results(queries[best[row][1]], Hits(top.rows[i:i + 1], top.scores[i:i + 1]))[0]
                for i, row in enumerate(top.rows.tolist())]

    def similar(self, product_id: str, n: int, product_filter: ProductFilter | None = None) -> list[Result]:
        """The n products nearest to that product's pooled vector, without itself ("more like
        this"), among those the filter passes. Raises KeyError for a product the index does not have."""
        row = self.index.products.find(product_id)
        if row is None:
            raise KeyError(product_id)
        query = np.asarray(self.index.product_embeddings[row], np.float32)
        query = query / max(float(np.linalg.norm(query)), 1e-12)
        hits = self.store.top(query, n + 1, product_filter)  # itself is (nearly always) the first of them
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
        index = self.index
        return [Result(int(row), index.products[int(row)], index.product_name(int(row)), index.image_files[int(image)],
                       float(score), int(image)) for row, image, score in zip(hits.rows, best, hits.scores, strict=True)]

    def lexical_matches(self, text: str | None, product_filter: ProductFilter | None) -> tuple[np.ndarray, np.ndarray]:
        """The products the text matches (rows sorted) and their lexical score, 0..1: BM25 over
        the query's best BM25 in the whole catalog (so a filter does not change a score); only
        those the filter passes."""
        if text is None or not self.fusion.weight:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        rows, scores = self.index.lexical.matches(text)
        if len(scores):
            scores = (scores / scores.max()).astype(np.float32)
        if product_filter is not None and len(rows):
            keep = product_filter.mask[rows]
            rows, scores = rows[keep], scores[keep]
        return rows, scores

    def rank(self, query: np.ndarray, text: str | None, n: int, product_filter: ProductFilter | None = None) -> Hits:
        """The n best products by the fused score (visual alone for a query without text), among
        those the filter passes."""
        lexical_rows, lexical = self.lexical_matches(text, product_filter)
        w = self.fusion.weight
        if text is None or not w:
            return self.store.top(query, n, product_filter)
        if self.fusion.method == "rrf":
            return self._reciprocal_rank(query, n, product_filter, lexical_rows, lexical)
        if not len(lexical_rows):  # nothing matches the text: every product's lexical part is 0
            hits = self.store.top(query, n, product_filter)
            return Hits(hits.rows, ((1.0 - w) * hits.scores).astype(np.float32))
        if self.store.supports(Capability.SCORES_EVERY_PRODUCT):  # exact: every product's score is at hand anyway
            fused = (1.0 - w) * self.store.scores(query)
            fused[lexical_rows] += w * lexical
            rows = product_filter.rows if product_filter is not None else np.arange(len(fused))
            return Hits.best(rows, fused[rows], min(n, len(rows)))
        # Approximate backends: a product in the fused top n either matches the text (and its
        # visual score is asked for, best lexical first) or does not (then it is in the visual top
        # n). Lexical matches are asked about until none left could beat the n-th fused score: its
        # visual score is at most the pool's last (or it is in the pool) and its lexical score at
        # most the next one's. Past LEXICAL_LIMIT matches the fusion stops there: approximate for
        # queries whose words match thousands of products (bench/scale.py measures the recall).
        order = np.argsort(-lexical, kind="stable")
        pool = n if len(order) <= LEXICAL_FIRST else max(n, self.store.blend_pool)
        hits = self.store.top(query, pool, product_filter)
        outside = hits.scores[-1] + SCORE_SLACK if len(hits.rows) >= pool else -np.inf
        candidates, asked, upto = [hits], 0, min(len(order), LEXICAL_FIRST)
        while True:
            chosen = np.sort(lexical_rows[order[asked:upto]])
            candidates.append(self.store.top_among(query, chosen, len(chosen)))
            asked = upto
            fused = self._weighted(candidates, lexical_rows, lexical)
            if asked == len(order) or asked >= LEXICAL_LIMIT:
                break
            bound = (1.0 - w) * outside + w * lexical[order[asked]]
            if len(fused.rows) >= n and fused.scores[n - 1] >= bound:
                break
            upto = min(len(order), 2 * asked, LEXICAL_LIMIT)
        return Hits(fused.rows[:n], fused.scores[:n])

    def _weighted(self, candidates: list[Hits], lexical_rows: np.ndarray, lexical: np.ndarray) -> Hits:
        """All the candidates, best first, by (1 - w) x visual + w x lexical."""
        w = self.fusion.weight
        rows = np.concatenate([c.rows for c in candidates])
        visual = np.concatenate([c.scores for c in candidates])
        rows, first = np.unique(rows, return_index=True)
        fused = (1.0 - w) * visual[first] + w * _sparse_lookup(rows, lexical_rows, lexical)
        return Hits.best(rows, fused, len(rows))

    def _reciprocal_rank(self, query: np.ndarray, n: int, product_filter: ProductFilter | None,
                         lexical_rows: np.ndarray, lexical: np.ndarray) -> Hits:
        f = self.fusion
        window = max(n, f.rrf_window)
        visual = self.store.top(query, window, product_filter)
        best_lexical = Hits.best(lexical_rows, lexical, min(window, len(lexical_rows)))
        fused: dict[int, float] = {}
        for hits, weight in ((visual, 1.0 - f.weight), (best_lexical, f.weight)):
            for rank, row in enumerate(hits.rows.tolist(), start=1):
                fused[row] = fused.get(row, 0.0) + weight / (f.rrf_k + rank)
        rows = np.fromiter(fused, np.int64, len(fused))
        return Hits.best(rows, np.fromiter(fused.values(), np.float32, len(fused)), min(n, len(rows)))


def _sparse_lookup(rows: np.ndarray, known_rows: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Values of `rows` in the sparse (sorted known_rows, their values); 0 elsewhere."""
    values = np.zeros(len(rows), np.float32)
    if len(known_rows):
        at = np.minimum(np.searchsorted(known_rows, rows), len(known_rows) - 1)
        found = known_rows[at] == rows
        values[found] = known[at[found]]
    return values
