"""A shop's feed end to end: built into an index (URL images from a local HTTP server on
127.0.0.1, local images beside the feed, a bad row, a 404 image), served with ids, fields,
product records and filters (400s naming the path), and updated from the image cache."""
from __future__ import annotations

import csv
import io
import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from search.config import ClipSettings, SearchConfig
from search.index_format import Index
from search.indexing.feed import FeedError
from search.indexing.feed_catalog import load_feed_catalog
from search.searcher import Fusion, Searcher
from shared.fetch import FetchPolicy
from shared.garment_vocabulary import Vocabulary
from tests.conftest import PRODUCT_COLOURS, TINY, person_wearing

POLICY = FetchPolicy(allow_hosts=frozenset({"127.0.0.1"}), deadline=5.0)
COLOURS = list(PRODUCT_COLOURS.values())
TRICKY_BRAND = 'Q"uo\'te\\ or 1==1'


def jpeg(colour, variant=0) -> bytes:
    out = io.BytesIO()
    person_wearing(colour, variant).save(out, "JPEG", quality=90)
    return out.getvalue()


class ImageHost:
    """Routes on the shared local image host, each image with an ETag, counting bodies sent."""

    def __init__(self, upstream, prefix: str):
        self.upstream, self.prefix, self.bodies = upstream, prefix, 0

    def add(self, name: str, body: bytes) -> str:
        path = f"/{self.prefix}/{name}"
        etag = f'"{hash(body) & 0xffffffff:x}"'

        def route(handler):
            if handler.headers.get("If-None-Match") == etag:
                handler.send_response(304)
                handler.send_header("ETag", etag)
                handler.send_header("Content-Length", "0")
                handler.end_headers()
                return
            self.bodies += 1
            handler.send_response(200)
            handler.send_header("Content-Type", "image/jpeg")
            handler.send_header("ETag", etag)
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)

        self.upstream.routes[path] = route
        return f"{self.upstream.base_url}{path}"


def feed_rows(host: ImageHost, missing: str) -> list[dict]:
    return [
        {"id": "p-100", "name": "Red top", "category": "tops", "brand": "Acme", "price": 19.5, "in_stock": True,
         "sizes": ["S", "M"], "color": "red", "images": [host.add("top.jpg", jpeg(COLOURS[0]))]},
        {"id": "p-200", "name": "Blue trousers", "category": "trousers", "brand": "Zed", "price": 45,
         "in_stock": False, "sizes": ["M", "L"], "color": "blue", "images": ["img/trousers.jpg"]},
        {"id": "p-300", "name": "Yellow dress", "category": "dresses", "brand": "Acme", "price": 80, "in_stock": True,
         "sizes": ["L"], "images": [host.add("dress.jpg", jpeg(COLOURS[2])), missing]},
        {"id": "p-400", "name": "Dark red blouse", "description": "A silk blouse; wear it with jeans",
         "category": "tops", "brand": TRICKY_BRAND, "price": 30, "in_stock": True,
         "images": [host.add("blouse.jpg", jpeg(COLOURS[3])), host.add("blouse-2.jpg", jpeg(COLOURS[3], 1))]},
        {"id": "p-500", "name": "Navy skirt", "category": "skirts", "price": 25, "in_stock": True, "sizes": ["S"],
         "images": ["img/skirt.jpg"]},
        {"id": "p-600", "name": "Orange tunic", "category": "tops", "price": 10, "images": [missing]},
        {"name": "a row without an id", "images": ["img/skirt.jpg"]},
    ]


@pytest.fixture(scope="module")
def feed_dir(tmp_path_factory, upstream):
    folder = tmp_path_factory.mktemp("feed")
    (folder / "img").mkdir()
    (folder / "img" / "trousers.jpg").write_bytes(jpeg(COLOURS[1]))
    (folder / "img" / "skirt.jpg").write_bytes(jpeg(COLOURS[4]))
    host = ImageHost(upstream, "feed")
    rows = feed_rows(host, f"{upstream.base_url}/feed/missing.jpg")
    (folder / "products.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return SimpleNamespace(folder=folder, host=host)


def load(feed_dir, out, **kwargs):
    return load_feed_catalog(feed_dir.folder / "products.jsonl", vocabulary=Vocabulary.load(), fetch_policy=POLICY,
                             cache_dir=out / "image-cache", progress=False, **kwargs)


@pytest.fixture(scope="module")
def feed_index(feed_dir, tmp_path_factory, tiny_embedder, local_garments):
    from search.indexing.builder import build_index

    out = tmp_path_factory.mktemp("feed-index")
    report = build_index(None, out, tiny_embedder, local_garments, feed=load(feed_dir, out, max_bad_rows=1),
                         progress=False)
    assert report.bad_rows == ["line 7: no id"], report.bad_rows
    assert report.embedded == 6 and report.downloads.bodies == 4
    return out


def test_the_feed_build_keeps_ids_records_fields_and_reasons(feed_index, upstream):
    index = Index.load(feed_index)
    assert list(index.products) == ["p-100", "p-200", "p-300", "p-400", "p-500"]  # p-600: its only image is a 404
    assert [index.product_name(p) for p in range(5)] == ["Red top", "Blue trousers", "Yellow dress",
                                                         "Dark red blouse", "Navy skirt"]
    assert index.catalog_kind == "feed"
    assert index.attributes.types == {"brand": "string", "category": "string", "color": "string",
                                      "in_stock": "boolean", "price": "number", "sizes": "strings"}
    record = index.product_record(index.products.find("p-400"))
    assert record["description"].startswith("A silk blouse") and record["attributes"]["price"] == 30
    # Its name decides its garment, not the jeans its description mentions.
    assert index.product_garments(index.products.find("p-400")).garment == "blouse"
    skipped = {entry["image"]: entry["reason"] for entry in index.meta["skipped"]}
    assert skipped[f"{upstream.base_url}/feed/missing.jpg"] == "HTTP 404 (gone)"
    files = [index.image_files[r] for r in range(len(index.image_files))]
    assert "img/trousers.jpg" in files and f"{upstream.base_url}/feed/top.jpg" in files
    # The description is indexed for BM25: only the blouse says "silk".
    rows, scores = index.lexical.matches("silk")
    assert [index.products[int(r)] for r in rows] == ["p-400"]


def test_an_update_downloads_no_image_body_and_embeds_nothing(feed_dir, feed_index, tiny_embedder, local_garments):
    from search.indexing.builder import build_index

    bodies = feed_dir.host.bodies
    report = build_index(None, feed_index, tiny_embedder, local_garments, update=True, progress=False,
                         feed=load(feed_dir, feed_index, max_bad_rows=1))
    assert feed_dir.host.bodies == bodies and report.downloads.bodies == 0 and report.downloads.not_modified == 4
    assert report.embedded == 0 and report.reused == 6


def test_too_many_bad_rows_stop_before_anything_is_written(feed_dir, feed_index):
    before = (feed_index / "meta.json").read_text()
    with pytest.raises(FeedError, match=r"(?s)1 bad rows, 0 allowed.*line 7: no id"):
        load(feed_dir, feed_index)
    assert (feed_index / "meta.json").read_text() == before


def test_a_csv_feed_reads_the_same_fields(tmp_path, feed_dir):
    shutil.copytree(feed_dir.folder / "img", tmp_path / "img")
    with open(tmp_path / "products.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "name", "images", "category", "price", "in_stock", "sizes"])
        writer.writerow(["c1", "Blue trousers", "img/trousers.jpg", "trousers", "45", "false", "M|L"])
        writer.writerow(["c2", "Navy skirt", "img/skirt.jpg|img/trousers.jpg", "skirts", "25.5", "true", "S"])
    catalog = load_feed_catalog(tmp_path / "products.csv", vocabulary=Vocabulary.load(), fetch_policy=POLICY,
                                cache_dir=tmp_path / "cache", progress=False)
    assert catalog.attribute_types == {"category": "string", "in_stock": "boolean", "price": "number",
                                       "sizes": "strings"}
    assert catalog.records["c2"]["attributes"] == {"price": 25.5, "in_stock": True, "sizes": ["S"]}
    assert [(im.product, im.file) for im in catalog.images] == [
        ("c1", "img/trousers.jpg"), ("c2", "img/skirt.jpg"), ("c2", "img/trousers.jpg")]
    assert catalog.choices["c1"].garment == "trousers"


# ------------------------------------------------------------------ serving


@pytest.fixture(scope="module", params=["exact", "faiss", "milvus"])
def feed_client(request, feed_index, tiny_embedder, local_garments, tmp_path_factory):
    from search import create_app
    from tests.conftest import backend_settings

    index_dir, vectors = backend_settings(request.param, feed_index, tmp_path_factory.mktemp(request.param))
    app = create_app(SearchConfig(clip=ClipSettings(**TINY), index_dir=str(index_dir), vectors=vectors),
                     embedder=tiny_embedder, garments=local_garments)
    assert app.extensions["readiness"].ready, app.extensions["readiness"].error
    app.testing = True
    return app.test_client()


def ids(results) -> list[str]:
    return [r["id"] for r in results]


def test_results_carry_ids_fields_and_the_feeds_urls(feed_client, upstream):
    results = feed_client.post("/", json={"text": "red top", "n": 10, "fields": ["price", "sizes", "brand"]}).json
    assert sorted(ids(results)) == ["p-100", "p-200", "p-300", "p-400", "p-500"]
    by_id = {r["id"]: r for r in results}
    assert by_id["p-100"]["product_name"] == "Red top" and by_id["p-100"]["url"] == f"{upstream.base_url}/feed/top.jpg"
    assert by_id["p-100"]["fields"] == {"price": 19.5, "sizes": ["S", "M"], "brand": "Acme"}
    assert by_id["p-400"]["fields"] == {"price": 30, "sizes": None, "brand": TRICKY_BRAND}
    assert by_id["p-200"]["url"] == "/images/p-200/img/trousers.jpg"
    served = feed_client.get(by_id["p-200"]["url"])
    assert served.status_code == 200 and served.data == (feed_client.application.extensions["live_index"].current.catalog_dir
                                                         / "img" / "trousers.jpg").read_bytes()
    assert feed_client.get("/images/p-200/img/skirt.jpg").status_code == 404  # another product's file
    assert "fields" not in feed_client.post("/", json={"text": "top"}).json[0]


FILTERS = [
    ({"category": "tops"}, {"p-100", "p-400"}),
    ({"category": ["dresses", "skirts"]}, {"p-300", "p-500"}),
    ({"price": {"gte": 25, "lt": 80}}, {"p-200", "p-400", "p-500"}),
    ({"in_stock": False}, {"p-200"}),
    ({"sizes": {"contains": "M"}}, {"p-100", "p-200"}),
    ({"sizes": "L", "in_stock": True}, {"p-300"}),
    ({"sizes": {"contains_any": ["S", "L"]}, "price": {"lte": 25}}, {"p-100", "p-500"}),
    ({"brand": TRICKY_BRAND}, {"p-400"}),
    ({"brand": 'Q" or 1==1 or "'}, set()),
    ({"color": {"in": ["red", "green"]}}, {"p-100"}),
]


@pytest.mark.parametrize("product_filter,expected", FILTERS)
def test_filters_keep_the_products_that_pass_every_condition(feed_client, product_filter, expected):
    results = feed_client.post("/", json={"text": "top", "n": 10, "filter": product_filter}).json
    assert set(ids(results)) == expected
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    # n smaller than what passes: the n best of them, never fewer
    if len(expected) > 1:
        assert len(feed_client.post("/", json={"text": "top", "n": 1, "filter": product_filter}).json) == 1


def test_filters_apply_to_batches_similar_and_photo_queries(feed_client):
    batch = feed_client.post("/batch", json={"queries": [{"text": "top", "filter": {"category": "tops"}},
                                                         {"text": "top", "n": 2}]}).json
    assert set(ids(batch[0])) == {"p-100", "p-400"} and len(batch[1]) == 2
    similar = feed_client.get("/products/p-100/similar", query_string={"filter": '{"in_stock": true}', "n": 10}).json
    assert set(ids(similar)) == {"p-300", "p-400", "p-500"}
    photo = feed_client.post("/", data={"file": (io.BytesIO(jpeg(COLOURS[0])), "q.jpg"), "n": "10",
                                        "filter": '{"price": {"lt": 26}}', "fields": "price"},
                             content_type="multipart/form-data")
    assert photo.status_code == 200, photo.json
    assert set(ids(photo.json)) == {"p-100", "p-500"} and all(r["fields"]["price"] < 26 for r in photo.json)


@pytest.mark.parametrize("body,field", [
    ({"filter": {"colour": "red"}}, "filter.colour"),
    ({"filter": {"price": "cheap"}}, "filter.price"),
    ({"filter": {"price": {"under": 5}}}, "filter.price.under"),
    ({"filter": {"category": []}}, "filter.category"),
    ({"filter": {"category": {"in": [["tops"]]}}}, "filter.category.in[0]"),
    ({"filter": {"price": {"gte": {"lt": 3}}}}, "filter.price.gte"),
    ({"filter": {"category": {"gte": 3}}}, "filter.category.gte"),
    ({"filter": {"sizes": {"eq": "M"}}}, "filter.sizes.eq"),
    ({"filter": {"in_stock": "yes"}}, "filter.in_stock"),
    ({"filter": {"category": ["x"] * 300}}, "filter.category"),
    ({"filter": {f"f{i}": 1 for i in range(40)}}, "filter"),
    ({"filter": "tops"}, "filter"),
    ({"fields": ["price", "nope"]}, "fields[1]"),
    ({"fields": []}, "fields"),
])
def test_bad_filters_and_fields_name_their_path(feed_client, body, field):
    response = feed_client.post("/", json={"text": "top", **body})
    assert response.status_code == 400 and response.json["field"] == field, response.json
    batch = feed_client.post("/batch", json={"queries": [{"text": "ok"}, {"text": "top", **body}]})
    assert batch.status_code == 400 and batch.json["field"] == f"queries[1].{field}"
    assert feed_client.post("/", json={"text": "top"}).status_code == 200  # and it keeps serving


def test_the_product_record_and_the_fields_list(feed_client, upstream):
    record = feed_client.get("/products/p-400").json
    assert record["id"] == "p-400" and record["product_name"] == record["name"] == "Dark red blouse"
    assert record["attributes"] == {"price": 30, "in_stock": True}
    assert [image["url"] for image in record["images"]] == [f"{upstream.base_url}/feed/blouse-2.jpg",
                                                            f"{upstream.base_url}/feed/blouse.jpg"]
    assert record["garment_classes"]["garment"] == "blouse"
    assert feed_client.get("/products/p-600").status_code == 404
    assert feed_client.get("/fields").json["fields"]["sizes"] == "strings"


def test_lexical_fusion_finds_the_description_word(feed_index, tiny_embedder):
    index = Index.load(feed_index)
    for fusion in (Fusion("weighted", 1.0), Fusion("rrf", 0.9)):
        results = Searcher(index, tiny_embedder, fusion=fusion).search("silk", 3)
        assert results[0].product_id == "p-400", fusion
    visual_only = Searcher(index, tiny_embedder, fusion=Fusion("weighted", 0.0)).search("silk", 5)
    vector = tiny_embedder.encode_query_tokens(tiny_embedder.query_tokens("silk"))
    assert [r.product_id for r in visual_only] == [index.products[int(r)] for r in
                                                   np.argsort(-(index.product_embeddings @ vector), kind="stable")]
