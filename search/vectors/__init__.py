"""Where a query is scored: one interface, three backends, chosen by SEARCH_BACKEND.

    exact   (default) the index's memory-mapped product matrix; one matrix-vector product scores
            every product, so a query costs O(products), shared by all workers, no server.
            SEARCH_EXACT_DTYPE=float16 scans a float16 copy instead (half the bytes and time).
    faiss   an approximate index (HNSW, IVF-PQ...) built by the indexer beside the arrays
            (search/indexing/ann.py) and memory-mapped where FAISS allows it; its candidates are
            re-scored exactly.
    milvus  a Milvus collection (Milvus Lite for a file URI, a Milvus standalone/cluster for
            http(s)://host:19530), published from the index with `python -m search.index publish`.

Every backend answers in product rows of the local index (`search.index_format.Index`), whose names,
image files and BM25 index stay the service's metadata; what differs is where the vectors live
and how the best products are found. Scores are always true cosines (pooled vector . query, or
the best image's for score-max pooling), so the BM25 fusion works the same way everywhere.

The stores only serve: nothing here builds or writes an index (that is search/indexing/). Each
store declares in `capabilities` what it can do beyond the common interface (see `Capability`);
callers check that declaration instead of probing for methods.
"""
from __future__ import annotations

from search.vectors.base import BACKENDS, Capability, Hits, VectorStore, VectorStoreError

__all__ = ["BACKENDS", "Capability", "Hits", "VectorStore", "VectorStoreError", "open_store"]


def open_store(settings, index) -> VectorStore:
    """The backend `settings.backend` names, over `index` (a search.config.BackendSettings and a
    search.index_format.Index). Raises VectorStoreError with the reason when it cannot be opened.
    The settings model allows only known backends and dtypes (search/config.py)."""
    if settings.backend == "exact":
        if settings.exact_dtype == "float16":
            from search.vectors.faiss_ann import Float16ExactStore

            return Float16ExactStore.open(index, settings)
        from search.vectors.exact import ExactStore

        return ExactStore(index)
    if settings.backend == "faiss":
        from search.vectors.faiss_ann import FaissStore

        return FaissStore.open(index, settings)
    if settings.backend == "milvus":
        from search.vectors.milvus import MilvusStore

        return MilvusStore.open(index, settings)
    raise VectorStoreError(f"SEARCH_BACKEND={settings.backend!r} is not one of {', '.join(BACKENDS)}")
