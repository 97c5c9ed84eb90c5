"""Filters on the milvus backend, against Milvus Lite (and the `served` tests against a real Milvus
2.3 server too: its expression grammar, Go's string unquoting, no grouping search): the index's
filterable fields published as scalar fields, MilvusStore.top(q, k, filter) equal to the exact
answer over the filter's mask, string values matched literally (no expression injection), the
digest covering the values, and collections without this index's fields refused with the fix."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from search.vectors import VectorStoreError
from search.vectors.milvus import pymilvus as import_pymilvus

try:
    import milvus_lite  # noqa: F401

    pymilvus = import_pymilvus()  # MILVUS_URI hidden while it imports (a .db value makes it fail)
except (ImportError, VectorStoreError) as exc:  # pragma: no cover - both are in requirements-dev.txt
    pytest.skip(f"the milvus backend's tests need pymilvus and milvus-lite: {exc}", allow_module_level=True)

from search.config import BackendSettings
from search.filters import MAX_STRING, Condition, ProductFilter, compile_filter
from search.index_format import Index, IndexArrays, write_index
from search.indexing.pooling import pool_products
from search.indexing.publish import PublishError, publish
from search.vectors import Hits
from search.vectors import milvus as milvus_module
from search.vectors.milvus import (
    FIELDS_PROPERTY,
    MilvusStore,
    field_mapping,
    fields_mismatch,
    filter_expression,
    read_property,
)

DIM = 32
PRODUCTS = 300
TYPES = {"price": "number", "in_stock": "boolean", "color": "string", "sizes": "strings",
         "category": "string", "brand": "string"}
# Values a filter expression must take literally: quotes, backslashes, control characters, an
# attempted injection, non-ASCII. Each is held by the product(s) of WEIRD_HOLDERS only.
WEIRD = ['x" or 1==1 or "', 'a"b', "a'b", "back\\slash", "\\", '\\"', "new\nline", "tab\there\r",
         "ünïcødé 😀", "ctrl\x01\x0b", '" || true || "', "') or ('1'=='1"]
WEIRD_HOLDERS = {w: (7 + 11 * i,) if i % 3 else (7 + 11 * i, 250 + i) for i, w in enumerate(WEIRD)}
LONG = "L" * (MAX_STRING + 1)  # longer than any value a request may compare: stored as none
CATEGORIES = ["dresses", "tops", "trousers", "skirts", "shoes"]
COLORS = ["red", "blue", "green", "black", "white"]
SIZES = ["XS", "S", "M", "L", "XL"]


def settings(uri: str, **extra) -> BackendSettings:
    return BackendSettings(backend="milvus", milvus_uri=uri, milvus_timeout=10.0, **extra)


def records(seed: int = 0) -> list[dict]:
    """Products p000..p299 with every type of field, some values missing, a few odd ones."""
    rng = np.random.default_rng(seed)
    holders = {p: w for w, ps in WEIRD_HOLDERS.items() for p in ps}
    out = []
    for p in range(PRODUCTS):
        attributes = {}
        if p % 10 != 3:
            attributes["price"] = round(float(rng.uniform(1, 100)), 2)
        if p % 7 != 2:
            attributes["in_stock"] = bool(rng.integers(2))
        if p % 9 != 4:
            attributes["color"] = COLORS[int(rng.integers(len(COLORS)))]
        if p % 8 != 5:
            attributes["sizes"] = sorted(rng.choice(SIZES, int(rng.integers(1, 4)), replace=False).tolist())
        if p in holders:
            attributes["color"] = holders[p]
            attributes["sizes"] = [holders[p], "M"]
        record = {"id": f"p{p:03d}", "name": f"product {p}", "attributes": attributes}
        if p % 11 != 6:
            record["category"] = CATEGORIES[p % len(CATEGORIES)]
        record["brand"] = "rare" if p in (5, 123) else f"brand-{p % 4}"
        out.append(record)
    # Numbers a literal must keep: tiny, huge, negative; and values stored as none.
    out[10]["attributes"]["price"], out[20]["attributes"]["price"] = 1e-07, 3e16
    out[30]["attributes"]["price"] = -12.5
    out[42]["attributes"]["color"], out[43]["attributes"]["sizes"] = LONG, [LONG, "S"]
    return out


def write_feed_index(out: Path, recs: list[dict], *, pooling: str = "max", types: dict | None = TYPES,
                     seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    counts = [1 + p % 3 for p in range(len(recs))]
    images = rng.normal(size=(sum(counts), DIM)).astype(np.float32)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    files = [f"img-{v}.jpg" for c in counts for v in range(c)]
    probe = np.random.default_rng(99).normal(size=DIM)
    probe /= np.linalg.norm(probe)
    write_index(out, IndexArrays(images, pool_products(images, counts, pooling), counts, [r["id"] for r in recs],
                                 files, ["00" * 32] * len(files), ["garment"] * len(files),
                                 np.zeros((len(files), 4), np.float32), product_records=recs,
                                 attribute_types=types),
                {"embedder": {"model": "tiny-clip", "pretrained": "", "seed": 0,
                              "probe": [round(float(v), 6) for v in probe]},
                 "pooling": pooling, "embed_dim": DIM, "catalog_dir": str(out), "catalog_fingerprint": "test"})
    return out


def unit(rng) -> np.ndarray:
    q = rng.normal(size=DIM).astype(np.float32)
    return q / np.linalg.norm(q)


def exact(index: Index, q: np.ndarray, k: int, product_filter: ProductFilter) -> Hits:
    rows = product_filter.rows
    return Hits.best(rows, index.visual_scores(q)[rows], k)


def assert_same_hits(got: Hits, want: Hits) -> None:
    assert len(got.rows) == len(want.rows), (got, want)
    assert np.allclose(got.scores, want.scores, atol=1e-4), (got, want)
    assert set(got.rows.tolist()) == set(want.rows.tolist()), (got, want)  # random vectors: no ties


@pytest.fixture(scope="module")
def lite(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("milvus-filters") / "milvus.db")


@pytest.fixture(scope="module", params=["lite", "server"])
def backend(request, lite) -> str:
    """Where `served` publishes: Milvus Lite, and a real Milvus server (one for the session, see
    tests/milvus_server.py: skipped where none can run, a failure under CI)."""
    if request.param == "lite":
        return lite
    from tests.milvus_server import shared_server

    return shared_server().uri


@pytest.fixture(scope="module", params=["max", "score-max"])
def served(request, backend, tmp_path_factory):
    """One published feed index per pooling (score-max searches the images collection), per backend."""
    index_dir = write_feed_index(tmp_path_factory.mktemp(f"feed-{request.param}") / "idx", records(),
                                 pooling=request.param)
    report = publish(index_dir, backend, progress=False)
    index = Index.load(index_dir)
    assert report["upserted"] == {"products": PRODUCTS, "images": len(index.image_files)}
    store = MilvusStore.open(index, settings(backend))
    yield index, store, report
    store.close()


FILTERS = [
    {"category": "dresses"},
    {"category": ["dresses", "tops"]},
    {"price": {"gte": 10, "lt": 50}},
    {"price": {"gt": 90}},
    {"price": {"lte": 20}, "in_stock": True},
    {"in_stock": False},
    {"in_stock": [True, False]},
    {"sizes": {"contains": "M"}},
    {"sizes": ["XS", "XL"]},
    {"color": {"in": ["red", "blue"]}, "sizes": {"contains_any": ["S", "L"]}},
    {"color": "red", "sizes": "M", "price": {"lt": 60}, "category": ["tops", "skirts", "shoes"]},
    {"brand": "rare"},  # two products
    {"price": 1e-07},  # one, a literal in exponent form
    {"price": {"gt": 1e15}},
    {"price": {"lt": 0}},
    {"price": -12.5},
    {"price": {"gte": 10, "lt": 50}, "in_stock": True, "color": "green"},
]


@pytest.mark.parametrize("k", [1, 10, PRODUCTS])
def test_filtered_top_is_the_exact_answer(served, k, monkeypatch):
    index, store, _ = served
    fallbacks = []
    original = store._exact_among
    monkeypatch.setattr(store, "_exact_among", lambda *a: fallbacks.append(a) or original(*a))
    rng = np.random.default_rng(k)
    for raw in FILTERS:
        product_filter = compile_filter(raw, index.attributes)
        assert product_filter.count > 0, raw
        for _ in range(2):
            q = unit(rng)
            assert_same_hits(store.top(q, k, product_filter), exact(index, q, k, product_filter))
    assert not fallbacks  # Milvus filtered by itself: every answer came from the expression
    assert compile_filter({"brand": "rare"}, index.attributes).count == 2
    assert compile_filter({"price": 1e-07}, index.attributes).count == 1


def test_a_filter_nothing_passes_answers_without_a_call(served, monkeypatch):
    index, store, _ = served
    monkeypatch.setattr(store, "_call", lambda *a: pytest.fail("Milvus was asked"))
    for raw in ({"category": "dresses", "color": "nobody"}, {"color": 'nobody" or 1==1 or "'},
                {"price": {"gt": 1e300}}):
        product_filter = compile_filter(raw, index.attributes)
        assert product_filter.count == 0
        got = store.top(unit(np.random.default_rng(0)), 10, product_filter)
        assert len(got.rows) == 0 and len(got.scores) == 0


def test_values_are_matched_literally(served):
    index, store, _ = served
    keys = {p: index.products[p] for p in range(PRODUCTS)}
    q = unit(np.random.default_rng(5))
    for value, holders in WEIRD_HOLDERS.items():
        for raw in ({"color": value}, {"color": [value, "nobody"]}, {"sizes": {"contains": value}},
                    {"sizes": {"contains_any": [value, "nobody"]}}):
            product_filter = compile_filter(raw, index.attributes)
            assert set(product_filter.rows.tolist()) == set(holders), raw
            assert set(store.top(q, PRODUCTS, product_filter).rows.tolist()) == set(holders), raw
    # The expressions themselves, straight to Milvus: only the literal holders, for values held
    # and for injection attempts nobody holds (whose mask is empty, so the store never sends them).
    client = pymilvus.MilvusClient(store.uri)
    try:
        collection = store.names["images" if store.score_max else "products"]
        key = "product" if store.score_max else "name"
        for value in [*WEIRD, 'nobody" or 1==1 or "', "nobody\\", 'x\\" or 1==1 or \\"', "\\\\", LONG]:
            for op, field in (("eq", "color"), ("in", "color"), ("contains", "sizes"), ("contains_any", "sizes")):
                kind = TYPES[field]
                condition = Condition(field, kind, op, (value,) if op in ("in", "contains_any") else value)
                where = filter_expression([condition], store.fields)
                if value == LONG:
                    assert where is None  # longer than any stored value: nothing can match
                    continue
                found = {hit[key] for hit in client.query(collection, filter=where, output_fields=[key])}
                assert found == {keys[p] for p in WEIRD_HOLDERS.get(value, ())}, (value, op, where)
    finally:
        client.close()


def test_values_too_long_to_compare_are_stored_as_none(served):
    index, store, _ = served
    assert index.attributes.value("color", 42) == LONG  # the index keeps it
    client = pymilvus.MilvusClient(store.uri)
    try:
        rows = client.query(store.names["products"], filter='name in ["p042", "p043"]',
                            output_fields=["name", "f_2", "f_5", "f_present"])
    finally:
        client.close()
    held = {row["name"]: row for row in rows}
    assert held["p042"]["f_2"] == "" and 2 not in held["p042"]["f_present"]  # color: none
    assert list(held["p043"]["f_5"]) == ["S"] and 5 in held["p043"]["f_present"]  # sizes: the other one
    q = unit(np.random.default_rng(6))
    product_filter = compile_filter({"sizes": "S"}, index.attributes)
    assert 43 in product_filter.rows  # its other size still matches
    assert_same_hits(store.top(q, PRODUCTS, product_filter), exact(index, q, PRODUCTS, product_filter))


def test_expressions_are_built_from_the_mapping(served):
    index, store, _ = served
    mapping = store.fields
    assert [(f["name"], f["type"], f["field"]) for f in mapping["fields"]] == [
        ("brand", "string", "f_0"), ("category", "string", "f_1"), ("color", "string", "f_2"),
        ("in_stock", "boolean", "f_3"), ("price", "number", "f_4"), ("sizes", "strings", "f_5")]
    conditions = compile_filter({"price": {"gte": 10, "lt": 5e-324}, "sizes": "M", "in_stock": True,
                                 "category": ["dresses", 'x"y\\']}, index.attributes).conditions
    assert filter_expression(conditions, mapping) == (
        '(array_contains_all(f_present, [1, 3, 4, 5])) and (f_4 >= 10.0) and (f_4 < 5e-324) and '
        '(array_contains(f_5, "M")) and (f_3 == true) and (f_1 in ["dresses", "x\\"y\\\\"])')
    both = compile_filter({"in_stock": [False, True], "sizes": {"contains_any": ["S", "new\nline"]}},
                          index.attributes).conditions
    assert filter_expression(both, mapping) == (
        '(array_contains_all(f_present, [3, 5])) and (array_contains_any(f_5, ["S", "new\\nline"]))')
    with pytest.raises(ValueError, match="finite"):
        filter_expression([Condition("price", "number", "lt", float("nan"))], mapping)
    with pytest.raises(ValueError, match="string"):
        filter_expression([Condition("color", "string", "eq", 1)], mapping)


def test_fewer_hits_than_the_filter_passes_fall_back_to_exact(served, monkeypatch):
    """An ANN search that under-answers, or answers with products the local mask does not pass
    (collections published from another generation): the filter's rows are scored exactly."""
    index, store, _ = served
    q = unit(np.random.default_rng(7))
    product_filter = compile_filter({"category": ["dresses", "tops"]}, index.attributes)
    want = exact(index, q, 10, product_filter)
    original = store._search
    monkeypatch.setattr(store, "_search", lambda *a, **kw: tuple(x[:4] for x in original(*a, **kw)))
    assert_same_hits(store.top(q, 10, product_filter), want)
    monkeypatch.setattr(store, "_search", original)
    mask = product_filter.mask.copy()
    mask[want.rows[0]] = False  # the local index says the best one no longer passes
    narrower = ProductFilter(product_filter.conditions, mask)
    got = store.top(q, 10, narrower)
    assert want.rows[0] not in got.rows
    assert_same_hits(got, exact(index, q, 10, narrower))


def test_a_changed_value_reupserts_that_product_only(lite, tmp_path):
    first = write_feed_index(tmp_path / "first", records())
    assert publish(first, lite, collection="changed", progress=False)["upserted"]["products"] == PRODUCTS
    again = publish(first, lite, collection="changed", progress=False)
    assert again["upserted"] == {"products": 0, "images": 0} and again["deleted"] == {"products": 0, "images": 0}
    changed = records()
    changed[77]["attributes"]["price"] = 4242.0
    second = write_feed_index(tmp_path / "second", changed)  # same vectors, one price changed
    index = Index.load(second)
    report = publish(second, lite, collection="changed", progress=False)
    assert report["upserted"] == {"products": 1, "images": len(index.image_rows(77))}
    assert report["deleted"] == {"products": 0, "images": 0} and report["index_built"] == []
    store = MilvusStore.open(index, settings(lite, milvus_collection="changed"))
    product_filter = compile_filter({"price": {"gt": 1000, "lt": 1e6}}, index.attributes)
    assert store.top(unit(np.random.default_rng(8)), 10, product_filter).rows.tolist() == [77]
    store.close()


def test_collections_without_this_index_fields_are_refused(lite, tmp_path):
    recs = records()
    plain = write_feed_index(tmp_path / "plain", recs, types=None)  # same vectors, no filterable fields
    feed = write_feed_index(tmp_path / "feed", recs)
    publish(plain, lite, collection="plain", progress=False)
    store = MilvusStore.open(Index.load(feed), settings(lite, milvus_collection="plain"))  # starts, not ready
    with pytest.raises(VectorStoreError, match=r"plain_products .* does not hold this index's filter fields "
                                               r"\(filter fields there: none; here: 'brand' string.*re-publish it: "
                                               r"`python -m search.index publish .*--replace`"):
        store.check()
    store.close()
    with pytest.raises(PublishError, match="holds other filter fields than this index.*--replace"):
        publish(feed, lite, collection="plain", progress=False)
    publish(feed, lite, collection="plain", replace=True, progress=False)
    store = MilvusStore.open(Index.load(feed), settings(lite, milvus_collection="plain"))
    store.check()
    index = store.index
    product_filter = compile_filter({"brand": "rare"}, index.attributes)
    assert set(store.top(unit(np.random.default_rng(9)), 10, product_filter).rows.tolist()) == {5, 123}
    store.close()
    # Another mapping: the index lost a field the collections hold.
    retyped = write_feed_index(tmp_path / "retyped", recs, types={k: v for k, v in TYPES.items() if k != "brand"})
    store = MilvusStore.open(Index.load(retyped), settings(lite, milvus_collection="plain"))
    with pytest.raises(VectorStoreError, match="filter fields there: 'brand' string, .*here: 'category' string"):
        store.check()
    store.close()
    # A list longer than the published field holds (twice the longest, at least 16).
    longer = [dict(r, attributes=dict(r["attributes"])) for r in recs]
    longer[3]["attributes"]["sizes"] = [f"size-{i}" for i in range(17)]
    with pytest.raises(PublishError, match="'sizes' has a list of 17 values.*at most 16.*--replace"):
        publish(write_feed_index(tmp_path / "longer", longer), lite, collection="plain", progress=False)
    client = pymilvus.MilvusClient(lite)
    fields = read_property(client.describe_collection("plain_products"), FIELDS_PROPERTY)
    client.close()
    assert fields["fields"][-1] == {"name": "sizes", "type": "strings", "field": "f_5", "max_capacity": 16}


def test_old_collections_serve_an_index_without_fields():
    """Published before filters (no FIELDS_PROPERTY): right for an index without attributes only."""
    assert fields_mismatch(None, field_mapping({})) is None
    assert "there: none; here: 'price' number" in fields_mismatch(None, field_mapping({"price": "number"}))
    assert fields_mismatch(field_mapping({"a": "strings"}, {"a": 64}), field_mapping({"a": "strings"})) is None
    assert milvus_module.STRING_MAX >= 4 * MAX_STRING  # any value a request compares fits, in UTF-8 bytes
