"""Vector backends give the exact backend's answers: the hybrid candidates logic, FAISS."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from search.config import BackendSettings
from search.index_format import Index, IndexArrays, write_index
from search.searcher import Fusion, Searcher
from search.vectors import Hits, VectorStore, VectorStoreError
from search.vectors.exact import ExactStore
from shared.settings import SettingsError

WORDS = ["black", "red", "linen", "cotton", "tunic", "dress", "shirt", "long", "short", "sleeve", "floral", "navy"]


def synthetic(out, products: int = 3000, pooling: str = "max", seed: int = 0):
    """An index of clustered vectors whose product names share a small vocabulary, so a query's
    words name many products at several name-score levels."""
    rng = np.random.default_rng(seed)
    names = sorted({f"{i:05d}-{'-'.join(rng.choice(WORDS, rng.integers(1, 4)))}" for i in range(products)})
    counts = rng.integers(1, 5, len(names))
    centres = rng.standard_normal((40, 64)).astype(np.float32)
    images = centres[rng.integers(0, 40, counts.sum())] + 0.6 * rng.standard_normal((counts.sum(), 64)).astype(np.float32)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pooled = np.maximum.reduceat(images, starts)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    write_index(out, IndexArrays(images, pooled, counts.tolist(), names,
                                 [f"{j}.jpg" for c in counts for j in range(c)], ["00" * 32] * int(counts.sum()),
                                 ["garment"] * int(counts.sum()), np.zeros((int(counts.sum()), 256), np.float32)),
                {"embedder": {}, "garment_pipeline": {}, "pooling": pooling, "catalog_dir": str(out)})
    return Index.load(out)


class NoFullScores(VectorStore):
    """The exact store seen as an approximate backend would be: no `scores` of every product, so
    the searcher takes the candidates path."""

    backend = "exact-as-ann"

    def __init__(self, exact: ExactStore):
        self.exact = exact

    def top(self, query, k, product_filter=None):
        return self.exact.top(query, k, product_filter)

    def top_among(self, query, rows, k):
        return self.exact.top_among(query, rows, k)

    def best_images(self, query, rows):
        return self.exact.best_images(query, rows)


def queries(index: Index, count: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q = index.product_embeddings[rng.integers(0, len(index.products), count)] + 0.8 * rng.standard_normal(
        (count, index.product_embeddings.shape[1])).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


@pytest.mark.parametrize("pooling", ["max", "score-max"])
@pytest.mark.parametrize("lexical_first", [4096, 30])
def test_hybrid_candidates_give_the_same_ranking_as_fusing_every_product(tmp_path, pooling, lexical_first,
                                                                           monkeypatch):
    """An approximate backend is asked for the visual scores of the best lexical matches, more of
    them (doubling) until the bound says no other match could still enter: with a small first
    batch most queries go through that bound, and the answer is still the exact fusion."""
    monkeypatch.setattr("search.searcher.LEXICAL_FIRST", lexical_first)
    index = synthetic(tmp_path / "idx", pooling=pooling)
    texts = ["black linen tunic", "red dress", "long sleeve navy shirt", "floral", "nothing matches", "black black"]
    for w in (0.0, 0.3, 0.7, 1.0):
        full = Searcher(index, None, store=ExactStore(index), fusion=Fusion(weight=w))
        store = NoFullScores(ExactStore(index))
        store.blend_pool = 40 if w < 0.5 else 0
        candidates = Searcher(index, None, store=store, fusion=Fusion(weight=w))
        for i, query in enumerate(queries(index, 30)):
            text = texts[i % len(texts)]
            for n in (1, 5, 100):
                expected, got = full.rank(query, text, n), candidates.rank(query, text, n)
                assert np.array_equal(expected.rows, got.rows), (w, text, n)
                assert np.allclose(expected.scores, got.scores, atol=1e-6)


def test_common_words_are_fused_from_a_wider_visual_pool(tmp_path, monkeypatch):
    """Past LEXICAL_LIMIT lexical matches an approximate backend is not asked about more: the
    fusion then comes from the visual pool and the best matches, and stays close to the exact one."""
    monkeypatch.setattr("search.searcher.LEXICAL_FIRST", 50)
    monkeypatch.setattr("search.searcher.LEXICAL_LIMIT", 100)  # every word names thousands of products here
    index = synthetic(tmp_path / "idx", products=20000)
    store = NoFullScores(ExactStore(index))
    full = Searcher(index, None, store=ExactStore(index), fusion=Fusion(weight=0.3))
    pooled = Searcher(index, None, store=store, fusion=Fusion(weight=0.3))
    texts = ["black linen tunic", "red dress", "long sleeve navy shirt", "floral", "cotton"]
    recall = [len(set(full.rank(q, texts[i % 5], 10).rows) & set(pooled.rank(q, texts[i % 5], 10).rows)) / 10
              for i, q in enumerate(queries(index, 50))]
    assert np.mean(recall) >= 0.9, np.mean(recall)


def test_exact_scores_of_some_products_equal_the_full_scores(tmp_path):
    for pooling in ("max", "mean", "score-max"):
        index = synthetic(tmp_path / pooling, products=500, pooling=pooling)
        store = ExactStore(index)
        query = queries(index, 1)[0]
        rows = np.random.default_rng(2).choice(len(index.products), 200, replace=False)
        assert np.allclose(store.scores_of(query, rows), store.scores(query)[rows], atol=1e-6)


@pytest.mark.parametrize("kind,params", [("hnsw", {"M": 16}), ("ivf-flat", {"nlist": 32}), ("flat-fp16", {}),
                                         ("ivf-pq", {"nlist": 16, "m": 16})])
@pytest.mark.parametrize("pooling", ["max", "score-max"])
def test_faiss_recall_and_true_scores(tmp_path, kind, params, pooling):
    from search.indexing.ann import build_ann
    from search.vectors.faiss_ann import FaissStore

    index = synthetic(tmp_path / "idx", pooling=pooling)
    entry = build_ann(tmp_path / "idx", kind, params, progress=False)
    assert entry["over"] == ("images" if pooling == "score-max" else "products")
    index = Index.load(tmp_path / "idx")
    # PQ codes are coarse: its candidates need more exact re-scoring (the bench tunes this at scale).
    oversample = 10 if kind == "ivf-pq" else 4
    store = FaissStore.open(index, BackendSettings(backend="faiss", faiss_nprobe=16, faiss_oversample=oversample))
    exact = ExactStore(index)
    recalls = []
    for query in queries(index, 100):
        got, want = store.top(query, 10), exact.top(query, 10)
        recalls.append(len(set(got.rows) & set(want.rows)) / 10)
        assert np.allclose(got.scores, exact.scores_of(query, got.rows), atol=1e-6)  # true cosines
        assert np.all(np.diff(got.scores) <= 1e-7)
    assert np.mean(recalls) >= 0.9, (kind, np.mean(recalls))
    assert store.describe()["ann"] == kind


@pytest.mark.parametrize("pooling", ["max", "score-max"])
def test_faiss_answers_large_name_levels_by_a_filtered_search(tmp_path, pooling, monkeypatch):
    """IVF and flat kinds search only the products a name level holds (a bitmap selector): with
    every IVF list probed that is exact, and the blend matches blending every product."""
    from search.indexing.ann import build_ann
    from search.vectors.faiss_ann import FaissStore

    monkeypatch.setattr("search.vectors.faiss_ann.GATHER_LIMIT", 50)
    monkeypatch.setattr("search.searcher.LEXICAL_FIRST", 50)
    synthetic(tmp_path / "idx", products=6000, pooling=pooling)
    build_ann(tmp_path / "idx", "ivf-flat", {"nlist": 16}, progress=False)
    index = Index.load(tmp_path / "idx")
    store = FaissStore.open(index, BackendSettings(backend="faiss", faiss_nprobe=16))
    rng = np.random.default_rng(3)
    for query in queries(index, 10):
        rows = np.sort(rng.choice(len(index.products), 900, replace=False))
        got, want = store.top_among(query, rows, 10), ExactStore(index).top_among(query, rows, 10)
        assert got.rows.tolist() == want.rows.tolist()
    full = Searcher(index, None, store=ExactStore(index), fusion=Fusion(weight=0.3))
    blended = Searcher(index, None, store=store, fusion=Fusion(weight=0.3))
    for i, query in enumerate(queries(index, 20)):
        text = ["black linen tunic", "red dress", "floral"][i % 3]
        assert blended.rank(query, text, 10).rows.tolist() == full.rank(query, text, 10).rows.tolist()


def test_faiss_refuses_an_index_without_a_matching_approximate_index(tmp_path):
    from search.indexing.ann import build_ann
    from search.vectors.faiss_ann import FaissStore

    index = synthetic(tmp_path / "idx", products=300)
    with pytest.raises(VectorStoreError, match="search.index ann"):
        FaissStore.open(index, BackendSettings(backend="faiss"))
    build_ann(tmp_path / "idx", "flat-fp16", progress=False)
    meta = json.loads((tmp_path / "idx" / "meta.json").read_text())
    (tmp_path / "idx" / "meta.json").write_text(json.dumps({**meta, "pooling": "score-max"}))
    with pytest.raises(VectorStoreError, match="covers products"):
        FaissStore.open(Index.load(tmp_path / "idx"), BackendSettings(backend="faiss"))
    (tmp_path / "idx" / "meta.json").write_text(json.dumps(meta))
    (tmp_path / "idx" / meta["generation"] / meta["ann"]["file"]).write_bytes(b"garbage")
    with pytest.raises(VectorStoreError, match="cannot be read"):
        FaissStore.open(Index.load(tmp_path / "idx"), BackendSettings(backend="faiss"))


@pytest.mark.parametrize("pooling", ["max", "score-max"])
def test_exact_float16_ranks_as_float32_and_returns_true_cosines(tmp_path, pooling, monkeypatch):
    from search.indexing.ann import build_ann
    from search.vectors import open_store

    index = synthetic(tmp_path / "idx", products=6000, pooling=pooling)
    with pytest.raises(VectorStoreError, match="ann --index DIR --ann flat-fp16"):
        open_store(BackendSettings(exact_dtype="float16"), index)
    build_ann(tmp_path / "idx", "flat-fp16", progress=False)
    index = Index.load(tmp_path / "idx")
    store, exact = open_store(BackendSettings(exact_dtype="float16"), index), ExactStore(index)
    assert store.describe() == {"backend": "exact", "pooling": pooling, "dtype": "float16", "memory_mapped": True}
    texts = ["black linen tunic", "red dress", "floral", "long sleeve navy shirt"]
    monkeypatch.setattr("search.searcher.LEXICAL_FIRST", 50)  # most queries go through the pool's bound
    for gather in (4096, 50):  # name levels read from float32 rows, or found by a filtered float16 scan
        monkeypatch.setattr("search.vectors.faiss_ann.GATHER_LIMIT", gather)
        for w in (0.0, 0.3, 0.8):
            half = Searcher(index, None, store=store, fusion=Fusion(weight=w))
            full = Searcher(index, None, store=exact, fusion=Fusion(weight=w))
            for i, query in enumerate(queries(index, 30)):
                got, want = half.rank(query, texts[i % 4], 10), full.rank(query, texts[i % 4], 10)
                assert got.rows.tolist() == want.rows.tolist(), (gather, w, i)
                assert np.allclose(got.scores, want.scores, atol=1e-6)  # re-scored in float32
    with pytest.raises(SettingsError, match="SEARCH_EXACT_DTYPE='int8' is not allowed: choose 'float32' or 'float16'"):
        open_store(BackendSettings(exact_dtype="int8"), index)


def test_an_unknown_backend_is_refused(tmp_path):
    from search.vectors import open_store

    with pytest.raises(SettingsError, match="SEARCH_BACKEND='elastic' is not allowed: choose 'exact', 'faiss' or 'milvus'"):
        open_store(BackendSettings(backend="elastic"), synthetic(tmp_path / "idx", products=50))


def test_update_keeps_the_approximate_index(synthetic_catalog, synthetic_index, tmp_path, tiny_embedder, bg_pipeline):
    from search.garments import LocalGarments
    from search.indexing.builder import build_index

    out = tmp_path / "idx"
    shutil.copytree(synthetic_index, out)
    build_index(synthetic_catalog, out, tiny_embedder, LocalGarments(bg_pipeline), update=True, ann="flat-fp16",
                progress=False)
    assert Index.load(out).meta["ann"]["kind"] == "flat-fp16"
    build_index(synthetic_catalog, out, tiny_embedder, LocalGarments(bg_pipeline), update=True, progress=False)
    index = Index.load(out)
    assert index.meta["ann"]["kind"] == "flat-fp16"
    assert (out / index.meta["generation"] / index.meta["ann"]["file"]).is_file()
    build_index(synthetic_catalog, out, tiny_embedder, LocalGarments(bg_pipeline), update=True, ann="none",
                progress=False)
    assert "ann" not in Index.load(out).meta


def test_hits_best_orders_by_score_then_row():
    hits = Hits.best(np.array([5, 3, 9, 1]), np.array([0.5, 0.9, 0.5, 0.1], np.float32), 3)
    assert hits.rows.tolist() == [3, 5, 9] and hits.scores.tolist() == pytest.approx([0.9, 0.5, 0.5])
