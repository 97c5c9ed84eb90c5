"""Approximate search with FAISS (SEARCH_BACKEND=faiss): the store that serves it.

The indexer builds the approximate index beside the arrays (search/indexing/ann.py: `--ann KIND`,
or later with `python -m search.index ann`), over the pooled product vectors (max/mean pooling) or
over the image vectors (score-max: a product scores as its best image). This store reads it
memory-mapped where FAISS allows it, asks it for `oversample` x k candidates, and re-scores those
exactly from the index's own matrices, so every returned score is a true cosine and the order
among the candidates is exact; only a product the ANN never proposes can be missed (recall, see
bench/scale.py).

Query-time settings per kind (the build parameters are in search/indexing/ann.py):
    hnsw       query breadth SEARCH_FAISS_EF_SEARCH (256)
    ivf-pq     query breadth SEARCH_FAISS_NPROBE (32)
    ivf-flat   nprobe as above
    flat-fp16  every vector scanned in float16 (half the bytes of the exact backend), candidates
               re-scored in float32: exact up to float16 rounding; also the float16 copy that
               SEARCH_BACKEND=exact SEARCH_EXACT_DTYPE=float16 scans
Every kind: SEARCH_FAISS_OVERSAMPLE (16) x k candidates are re-scored exactly.
"""
from __future__ import annotations

import sys

import numpy as np

from search.filters import ProductFilter
from search.index_format import Index
from search.vectors.base import Hits, VectorStore, VectorStoreError
from search.vectors.exact import ExactStore

GATHER_LIMIT = 4096  # a set of products this small is scored from its float32 rows, not searched
HNSW_MAX_EF = 4096  # the widest filtered HNSW walk (then the exact fallback of top_among)


def faiss_module():
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss-cpu is in requirements-search.txt
        raise VectorStoreError(f"SEARCH_BACKEND=faiss needs faiss-cpu installed ({exc})") from None
    return faiss


class FaissStore(VectorStore):
    backend = "faiss"
    capabilities = frozenset()  # candidates only: no score of every product

    def __init__(self, index: Index, ann, entry: dict, mapped: bool, settings):
        self.index, self.ann, self.entry, self.mapped = index, ann, entry, mapped
        self.exact = ExactStore(index)  # re-scores candidates, answers top_among and best images
        self.oversample = max(1, settings.faiss_oversample)
        self.ef_search, self.nprobe = int(settings.faiss_ef_search), int(settings.faiss_nprobe)
        self.params = self.search_params()
        self.hits_per_product = 1  # image hits asked for per product wanted (see Float16ExactStore)
        self.search_settings = ({"ef_search": settings.faiss_ef_search} if entry["kind"] == "hnsw" else
                                {"nprobe": settings.faiss_nprobe} if entry["kind"].startswith("ivf") else {})

    def search_params(self, sel=None):
        """FAISS query parameters of this kind (a new object: a selector is per call and per thread)."""
        faiss = faiss_module()
        extra = {"sel": sel} if sel is not None else {}
        if self.entry["kind"] == "hnsw":
            return faiss.SearchParametersHNSW(efSearch=self.ef_search, **extra)
        if self.entry["kind"] in ("ivf-pq", "ivf-flat"):
            return faiss.SearchParametersIVF(nprobe=self.nprobe, **extra)
        return faiss.SearchParameters(**extra) if extra else None

    @classmethod
    def open(cls, index: Index, settings) -> "FaissStore":
        entry = index.meta.get("ann")
        if not entry:
            raise VectorStoreError(
                "SEARCH_BACKEND=faiss but the index has no approximate index; build one with "
                "`python -m search.index ann --index DIR --ann hnsw` (or `build --ann hnsw`)")
        return cls(index, *cls.read(index, entry), settings)

    @staticmethod
    def read(index: Index, entry: dict):
        """The FAISS index that `entry` describes, memory-mapped where its kind allows: (ann, entry, mapped)."""
        faiss = faiss_module()
        path = index.generation_dir / entry["file"]
        if not path.is_file():
            raise VectorStoreError(f"the index's approximate index {path} is missing; rebuild it")
        expected = len(index.image_files) if entry.get("over") == "images" else len(index.products)
        if (entry.get("over") == "images") != (index.pooling == "score-max"):
            raise VectorStoreError(f"the approximate index covers {entry.get('over')}, but pooling is "
                                   f"{index.pooling}; rebuild it with `python -m search.index ann`")
        ann, mapped = None, False
        for flag in ("IO_FLAG_MMAP_IFC", "IO_FLAG_MMAP"):  # zero-copy where this kind allows it
            try:
                ann, mapped = faiss.read_index(str(path), getattr(faiss, flag) | faiss.IO_FLAG_READ_ONLY), True
                break
            except (RuntimeError, AttributeError):
                continue
        if ann is None:
            try:
                ann = faiss.read_index(str(path))
            except RuntimeError as exc:
                raise VectorStoreError(f"the approximate index {path} cannot be read: {exc}") from None
        if ann.ntotal != expected or ann.d != index.product_embeddings.shape[1]:
            raise VectorStoreError(f"the approximate index {path} holds {ann.ntotal} vectors of {ann.d} "
                                   f"dimensions, the index {expected}; rebuild it")
        return ann, entry, mapped

    def candidates(self, query: np.ndarray, k: int) -> np.ndarray:
        """Product rows the approximate index proposes for the k best (oversampled)."""
        wanted = min(self.ann.ntotal, max(k * self.oversample, k + 16) * self.hits_per_product)
        return self._product_rows(query, wanted, self.params)

    def _product_rows(self, query: np.ndarray, wanted: int, params) -> np.ndarray:
        """The product rows of the approximate index's `wanted` best vectors (sorted, unique)."""
        _, found = self.ann.search(np.ascontiguousarray(query[None], np.float32), wanted, params=params)
        found = found[0][found[0] >= 0]
        if self.entry.get("over") == "images":
            found = np.searchsorted(self.index.product_starts, found, side="right") - 1
        return np.unique(found)

    def top(self, query: np.ndarray, k: int, product_filter: ProductFilter | None = None) -> Hits:
        if product_filter is None:
            return self.exact.top_among(query, self.candidates(query, k), k)
        return self.top_among(query, product_filter.rows, k)

    def candidates_among(self, query: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
        """The candidates among some product rows only: FAISS skips every other vector (a bitmap
        selector), so a flat scan reads only those rows' codes."""
        faiss = faiss_module()
        mask = np.zeros(len(self.index.products), bool)
        mask[rows] = True
        if self.entry.get("over") == "images":
            starts = self.index.product_starts
            mask = np.repeat(mask, np.diff(starts))
        bits = np.packbits(mask, bitorder="little")  # FAISS reads bit i of byte i >> 3, lowest first
        selected = int(mask.sum())
        wanted = min(selected, max(k * self.oversample, k + 16) * self.hits_per_product)
        selector = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits))  # `bits` outlives the search
        params = self.search_params(selector)
        share = max(selected, 1) / len(mask)
        if self.entry["kind"] == "hnsw":
            # A walk meets selected vectors at their share of the graph: widen it by that share
            # (bounded), so a selective filter still reaches `wanted` of them.
            params.efSearch = int(min(HNSW_MAX_EF, max(self.ef_search, wanted) / share))
        elif self.entry["kind"].startswith("ivf"):
            # The lists nearest the query hold the selected vectors at their share: probe more
            # lists by that share (a 1 % filter probes them all: the scan skips unselected codes
            # before computing any distance, so it costs about one unfiltered search).
            nlist = faiss.extract_index_ivf(self.ann).nlist
            params.nprobe = int(min(nlist, max(self.nprobe, np.ceil(self.nprobe / share))))
        return self._product_rows(query, wanted, params)

    @property
    def blend_pool(self) -> int:
        # An IVF search filtered to some products costs about one unfiltered search, less than
        # re-scoring a wide pool's oversampled candidates: no pool beyond the n asked for.
        return 0 if self.entry["kind"].startswith("ivf") else VectorStore.blend_pool

    def top_among(self, query: np.ndarray, rows: np.ndarray, k: int) -> Hits:
        """The k best of some products (a filter's, a text's lexical matches): a small set is scored exactly;
        a large one is searched with an ID selector, and where the search finds fewer than k of
        them (an IVF list holding few, an HNSW walk the selector starves) they are scored exactly."""
        if len(rows) <= GATHER_LIMIT:
            return self.exact.top_among(query, rows, k)
        hits = self.exact.top_among(query, self.candidates_among(query, rows, k), k)
        if len(hits.rows) < min(k, len(rows)):
            return self.exact.top_among(query, rows, k)
        return hits

    def best_images(self, query: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return self.exact.best_images(query, rows)

    def describe(self) -> dict:
        return {"backend": self.backend, "ann": self.entry["kind"], "params": self.entry["params"],
                "search": {**self.search_settings, "oversample": self.oversample}, "memory_mapped": self.mapped}


class Float16ExactStore(FaissStore):
    """SEARCH_BACKEND=exact with SEARCH_EXACT_DTYPE=float16: every product is scored, from a float16
    copy of the product matrix (half the bytes of float32, so about half the time: the scan is
    memory-bound). numpy has no fast float16 matrix-vector product, so the copy is FAISS's flat
    float16 index (`python -m search.index ann --ann flat-fp16`), memory-mapped and shared by the
    workers. The k best (plus 16, a margin for float16 rounding) are re-scored in float32, so scores
    are true cosines; only products within float16 rounding of the k-th can swap places."""

    backend = "exact"  # any set of products the name blend asks about is scanned exactly too
    capabilities = frozenset()  # it scans every product, but answers only the k best (no scores())

    @classmethod
    def open(cls, index: Index, settings) -> "Float16ExactStore":
        entry = index.meta.get("ann") or {}
        if entry.get("kind") != "flat-fp16":
            raise VectorStoreError(
                "SEARCH_EXACT_DTYPE=float16 scans the index's float16 copy of its vectors, and this "
                f"index has {'a ' + entry['kind'] + ' approximate index' if entry else 'none'}; write it with "
                "`python -m search.index ann --index DIR --ann flat-fp16`")
        store = cls(index, *cls.read(index, entry), settings.model_copy(update={"faiss_oversample": 1}))
        if entry.get("over") == "images":  # score-max: k products surely lie among k x (most images) hits
            store.hits_per_product = int(np.diff(index.product_starts).max(initial=1))
        return store

    def describe(self) -> dict:
        return {"backend": self.backend, "pooling": self.index.pooling, "dtype": "float16",
                "memory_mapped": self.mapped}
