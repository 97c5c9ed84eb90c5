"""Filters: the stored columns, the request's conditions (400s naming the path), and every local
backend's filtered top n equal to the exact answer over the mask; fusion with BM25 under a filter."""
from __future__ import annotations

import numpy as np
import pytest

from search.config import BackendSettings
from search.filters import AttributeColumns, compile_filter, parse_conditions
from search.index_format import Index, IndexArrays, write_index
from search.searcher import Fusion, Searcher
from search.vectors.exact import ExactStore
from shared.errors import BadRequest
from tests.test_vectors import WORDS, NoFullScores, queries

TYPES = {"category": "string", "price": "number", "in_stock": "boolean", "sizes": "strings", "brand": "string"}


def records(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        attributes = {"price": round(float(rng.uniform(5, 100)), 2), "in_stock": bool(rng.random() < 0.5),
                      "sizes": sorted(set(rng.choice(["XS", "S", "M", "L", "XL"], rng.integers(0, 4)).tolist()))}
        if i % 7 == 0:
            del attributes["price"]  # some products have no price
        record = {"id": f"p{i:05d}", "name": " ".join(rng.choice(WORDS, rng.integers(1, 4))),
                  "category": f"cat-{int(rng.zipf(1.5)) % 100}", "attributes": attributes}
        if i % 3:
            record["brand"] = ["Acme", "Zed", 'Q"uote\\s'][i % 3]
        out.append(record)
    return out


def filtered_index(out, products: int = 3000, pooling: str = "max") -> Index:
    rng = np.random.default_rng(0)
    rows = records(products)
    counts = rng.integers(1, 4, products)
    centres = rng.standard_normal((40, 48)).astype(np.float32)
    images = centres[rng.integers(0, 40, counts.sum())] + 0.6 * rng.standard_normal((counts.sum(), 48)).astype(np.float32)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    pooled = np.maximum.reduceat(images, np.concatenate([[0], np.cumsum(counts)[:-1]]))
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    total = int(counts.sum())
    write_index(out, IndexArrays(images, pooled, counts.tolist(), [r["id"] for r in rows],
                                 [f"{j}.jpg" for c in counts for j in range(c)], ["00" * 32] * total,
                                 ["garment"] * total, np.zeros((total, 16), np.float32),
                                 product_records=rows, attribute_types=TYPES),
                {"embedder": {}, "garment_pipeline": {}, "pooling": pooling, "catalog_dir": str(out)})
    return Index.load(out)


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> Index:
    return filtered_index(tmp_path_factory.mktemp("filtered"))


def by_hand(raw: dict, rows: list[dict]) -> np.ndarray:
    """The filter evaluated record by record, the slow obvious way."""
    def value(record, name):
        return record.get(name) if name in ("category", "brand") else record["attributes"].get(name)

    def passes(record, name, spec):
        v = value(record, name)
        if v is None or v == []:
            return False
        if not isinstance(spec, dict):
            spec = {"contains_any" if TYPES[name] == "strings" else "in": spec} if isinstance(spec, list) else \
                {"contains" if TYPES[name] == "strings" else "eq": spec}
        checks = {"eq": lambda x: v == x, "in": lambda x: v in x, "gte": lambda x: v >= x, "gt": lambda x: v > x,
                  "lte": lambda x: v <= x, "lt": lambda x: v < x, "contains": lambda x: x in v,
                  "contains_any": lambda x: bool(set(x) & set(v))}
        return all(checks[op](x) for op, x in spec.items())

    return np.array([all(passes(r, name, spec) for name, spec in raw.items()) for r in rows])


FILTERS = [
    {"category": "cat-1"}, {"category": ["cat-2", "cat-3", "nowhere"]}, {"in_stock": True}, {"in_stock": False},
    {"price": {"gte": 20, "lt": 40}}, {"price": {"gt": 99.5}}, {"price": {"lte": 5.5}}, {"price": 50.0},
    {"sizes": "M"}, {"sizes": {"contains_any": ["XS", "XL"]}}, {"brand": 'Q"uote\\s'},
    {"brand": 'Q" or 1==1 or "'}, {"category": "cat-1", "in_stock": True, "price": {"lt": 60}},
    {"category": "cat-57"},
]


@pytest.mark.parametrize("raw", FILTERS)
def test_masks_equal_the_filter_evaluated_record_by_record(index, raw):
    product_filter = compile_filter(raw, index.attributes)
    assert np.array_equal(product_filter.mask, by_hand(raw, records(len(index.products))))


def test_columns_give_back_each_products_values(index):
    rows = records(len(index.products))
    for row in (0, 1, 2, 7, 1234):
        for name in TYPES:
            expected = rows[row].get(name) if name in ("category", "brand") else rows[row]["attributes"].get(name)
            assert index.attributes.value(name, row) == (None if expected in (None, []) else expected), (row, name)
    assert compile_filter(None, index.attributes) is None and compile_filter({}, index.attributes) is None


@pytest.mark.parametrize("raw,where", [
    ({"colour": "red"}, "filter.colour"), ({"price": "cheap"}, "filter.price"), ({"price": True}, "filter.price"),
    ({"price": float("nan")}, "filter.price"), ({"price": {"between": [1, 2]}}, "filter.price.between"),
    ({"price": {}}, "filter.price"), ({"category": []}, "filter.category"),
    ({"category": {"in": [1]}}, "filter.category.in[0]"), ({"category": {"lt": "b"}}, "filter.category.lt"),
    ({"in_stock": {"contains": True}}, "filter.in_stock.contains"), ({"sizes": {"in": ["M"]}}, "filter.sizes.in"),
    ({"price": {"gte": [1]}}, "filter.price.gte"), ({"category": {"eq": {"x": 1}}}, "filter.category.eq"),
    ({"category": "x" * 2000}, "filter.category"), ({"category": ["a"] * 257}, "filter.category"),
    ({f"f{i}": 1 for i in range(33)}, "filter"), (["category"], "filter"),
])
def test_bad_conditions_name_their_path(index, raw, where):
    with pytest.raises(BadRequest) as refused:
        parse_conditions(raw, index.attributes.types)
    assert refused.value.field == where, refused.value.detail
    with pytest.raises(BadRequest) as refused:
        parse_conditions(raw, index.attributes.types, "queries[2].filter")
    assert refused.value.field == "queries[2]." + where if where != "filter" else "queries[2].filter"


def test_an_index_without_fields_names_none(tmp_path):
    columns = AttributeColumns([], {}, 5)
    with pytest.raises(BadRequest, match="none \\(this index has no filterable fields\\)"):
        compile_filter({"price": 3}, columns)


def exact_filtered(index: Index, query: np.ndarray, product_filter, k: int):
    scores = index.visual_scores(query)
    rows = product_filter.rows
    order = np.lexsort((rows, -scores[rows]))[:k]
    return rows[order]


@pytest.mark.parametrize("kind,params", [("exact", None), ("flat-fp16", {}), ("ivf-flat", {"nlist": 32}),
                                         ("hnsw", {"M": 16})])
def test_every_local_backend_answers_the_top_n_among_the_filtered(tmp_path, kind, params, monkeypatch):
    """Selective (under GATHER_LIMIT and over it), broad and range filters: the same rows as the
    exact answer over the mask, and never fewer than min(n, passing)."""
    from search.indexing.ann import build_ann
    from search.vectors.faiss_ann import FaissStore

    monkeypatch.setattr("search.vectors.faiss_ann.GATHER_LIMIT", 100)  # the selector path at test scale
    index = filtered_index(tmp_path / "idx")
    if kind == "exact":
        store = ExactStore(index)
    else:
        build_ann(tmp_path / "idx", kind, params, progress=False)
        index = Index.load(tmp_path / "idx")
        store = FaissStore.open(index, BackendSettings(backend="faiss", faiss_nprobe=8, faiss_ef_search=32))
    recalls = []
    for raw in FILTERS:
        product_filter = compile_filter(raw, index.attributes)
        for query in queries(index, 8):
            got = store.top(query, 10, product_filter)
            want = exact_filtered(index, query, product_filter, 10)
            assert len(got.rows) == len(want), (raw, kind)
            assert product_filter.mask[got.rows].all()
            if len(want):
                recalls.append(len(set(got.rows.tolist()) & set(want.tolist())) / len(want))
    assert np.mean(recalls) >= (1.0 if kind in ("exact", "flat-fp16") else 0.95), (kind, np.mean(recalls))


@pytest.mark.parametrize("method", ["weighted", "rrf"])
@pytest.mark.parametrize("lexical_first", [4096, 20])
def test_fusion_under_a_filter_is_the_same_on_the_candidates_path(index, method, lexical_first, monkeypatch):
    monkeypatch.setattr("search.searcher.LEXICAL_FIRST", lexical_first)
    texts = ["black linen tunic", "red dress", "floral", "nothing matches", "long sleeve navy shirt"]
    for w in (0.3, 0.8):
        full = Searcher(index, None, store=ExactStore(index), fusion=Fusion(method, w))
        candidates = Searcher(index, None, store=NoFullScores(ExactStore(index)), fusion=Fusion(method, w))
        for raw in (None, {"in_stock": True}, {"category": "cat-1"}, {"price": {"gte": 20, "lt": 40}}):
            product_filter = compile_filter(raw, index.attributes)
            for i, query in enumerate(queries(index, 6)):
                want = full.rank(query, texts[i % len(texts)], 10, product_filter)
                got = candidates.rank(query, texts[i % len(texts)], 10, product_filter)
                assert got.rows.tolist() == want.rows.tolist(), (method, w, raw, i)
                assert np.allclose(got.scores, want.scores, atol=1e-6)
                if product_filter is not None:
                    assert product_filter.mask[got.rows].all()


def test_weighted_fusion_is_cosine_and_bm25_over_the_querys_best(index):
    searcher = Searcher(index, None, fusion=Fusion("weighted", 0.4))
    query = queries(index, 1)[0]
    rows, bm25 = index.lexical.matches("red dress")
    lexical = np.zeros(len(index.products), np.float32)
    lexical[rows] = bm25 / bm25.max()
    expected = 0.6 * index.visual_scores(query) + 0.4 * lexical
    got = searcher.rank(query, "red dress", 20)
    assert np.allclose(got.scores, np.sort(expected)[::-1][:20], atol=1e-6)


def test_reciprocal_rank_fusion_by_the_definition(index):
    searcher = Searcher(index, None, fusion=Fusion("rrf", 0.5, rrf_k=60, rrf_window=50))
    query = queries(index, 1)[0]
    visual = np.lexsort((np.arange(len(index.products)), -index.visual_scores(query)))[:50]
    rows, bm25 = index.lexical.matches("black linen tunic")
    lexical = rows[np.lexsort((rows, -bm25))][:50]
    fused: dict[int, float] = {}
    for ranked in (visual, lexical):
        for rank, row in enumerate(ranked.tolist(), start=1):
            fused[row] = fused.get(row, 0.0) + 0.5 / (60 + rank)
    got = searcher.rank(query, "black linen tunic", 10)
    assert np.allclose(got.scores, sorted(fused.values(), reverse=True)[:10], atol=1e-7)
