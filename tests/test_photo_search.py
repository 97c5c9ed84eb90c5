"""Search by photo, text + photo, similar products, /embed and /batch: what they return, that a
photo query goes through the indexer's own steps (a catalog photo finds its own vector again), and
a bad-input matrix for every new field."""
from __future__ import annotations

import io
from urllib.parse import quote

import numpy as np
import pytest
from PIL import Image

from search.config import ClipSettings, SearchConfig
from shared.fetch import FetchPolicy
from tests.conftest import TINY, person_wearing, send_bytes
from tests.test_openapi import _check

ONE_PHOTO_PRODUCT = "1-red-top-shop-111"  # one image: its pooled vector is that image's vector


def catalog_photo(catalog, product=ONE_PHOTO_PRODUCT) -> bytes:
    return (catalog / product / "photo-0.jpg").read_bytes()


def png(picture: Image.Image) -> bytes:
    buf = io.BytesIO()
    picture.save(buf, "PNG")
    return buf.getvalue()


def assert_problem(response, status: int, field: str | None = None):
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    assert response.mimetype == "application/problem+json"
    assert response.json["status"] == status and response.json["detail"]
    if field is not None:
        assert response.json.get("field") == field, response.json
    return response.json


@pytest.fixture(scope="module")
def photo_app(onnx_index, local_garments):
    """ONNX text and image towers (as the shipped image), image URLs allowed from 127.0.0.1."""
    from search import create_app

    config = SearchConfig(clip=ClipSettings(**TINY), index_dir=str(onnx_index),
                          fetch=FetchPolicy(allow_hosts=frozenset({"127.0.0.1"}), deadline=3.0, read_timeout=2.0))
    app = create_app(config, garments=local_garments)
    assert app.extensions["readiness"].ready, app.extensions["readiness"].error
    assert app.extensions["readiness"].info["photo_queries"].startswith("onnx fp32")
    return app


@pytest.fixture
def photo_client(photo_app):
    return photo_app.test_client()


def check_results(results: list[dict], n: int) -> None:
    assert len(results) == n
    names = [r["product_name"] for r in results]
    assert len(set(names)) == n
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)


def test_a_catalog_photo_finds_its_own_product_in_every_backend(client, synthetic_catalog):
    """The query photo goes through the indexer's steps: its vector is the indexed one (cosine 1)."""
    response = client.post("/", data={"file": (io.BytesIO(catalog_photo(synthetic_catalog)), "q.jpg"), "n": "3"},
                           content_type="multipart/form-data")
    assert response.status_code == 200, response.json
    check_results(response.json, 3)
    assert response.json[0]["product_name"] == ONE_PHOTO_PRODUCT
    assert response.json[0]["score"] == pytest.approx(1.0, abs=2e-3)
    assert response.json[0]["url"] == f"/images/{ONE_PHOTO_PRODUCT}/photo-0.jpg"


def test_photo_by_upload_raw_body_and_url_agree(photo_client, synthetic_catalog, upstream):
    photo = catalog_photo(synthetic_catalog, "3-yellow-dress-shop-333")
    upstream.routes["/query.jpg"] = lambda h: send_bytes(h, photo)
    by_form = photo_client.post("/", data={"file": (io.BytesIO(photo), "q.jpg"), "n": "4"},
                                content_type="multipart/form-data")
    by_raw = photo_client.post("/?n=4", data=photo, content_type="image/jpeg")
    by_url = photo_client.post("/", json={"image_url": f"{upstream.base_url}/query.jpg", "n": 4})
    assert by_form.status_code == by_raw.status_code == by_url.status_code == 200, by_url.json
    assert by_form.json == by_raw.json == by_url.json
    check_results(by_form.json, 4)
    assert by_form.json[0]["product_name"] == "3-yellow-dress-shop-333"


def test_text_and_photo_blend(photo_app, photo_client, synthetic_catalog):
    photo = catalog_photo(synthetic_catalog)
    text_only = photo_client.post("/", json={"text": "blue trousers", "n": 6}).json
    photo_only = photo_client.post("/?n=6", data=photo, content_type="image/jpeg").json

    def both(text, weight):
        return photo_client.post(f"/?n=6&text={quote(text)}&image_weight={weight}", data=photo,
                                 content_type="image/jpeg").json

    assert both("blue trousers", 0) == text_only  # the photo's share is 0: the text query itself
    # All photo, and a text with no word to match names: the photo's ranking, scores x (1 - lexical weight).
    lexical_weight = photo_app.config["SEARCH"].lexical_weight
    blended = both("!!!", 1)
    assert [r["product_name"] for r in blended] == [r["product_name"] for r in photo_only]
    assert [r["score"] for r in blended] == pytest.approx([(1 - lexical_weight) * r["score"] for r in photo_only],
                                                          abs=1e-5)
    halfway = both("blue trousers", 0.5)
    check_results(halfway, 6)
    assert halfway not in (text_only, photo_only)
    # The default weight (SEARCH_IMAGE_WEIGHT, 0.5) applies when the request does not say.
    default = photo_client.post("/?n=6&text=blue%20trousers", data=photo, content_type="image/jpeg").json
    assert default == halfway


def test_empty_text_beside_a_photo_is_a_photo_query(photo_client, synthetic_catalog):
    photo = catalog_photo(synthetic_catalog)
    form = photo_client.post("/", data={"file": (io.BytesIO(photo), "q.jpg"), "text": "", "n": "3"},
                             content_type="multipart/form-data")
    raw = photo_client.post("/?n=3", data=photo, content_type="image/jpeg")
    assert form.status_code == 200 and form.json == raw.json


def test_similar_products(client, search_app):
    searcher = search_app.extensions["live_index"].current.searcher
    index = searcher.index
    for product in ("2-blue-trousers-shop-222", "6-orange-tunic-shop-666"):
        response = client.get(f"/products/{quote(product, safe='')}/similar?n=3")
        assert response.status_code == 200, response.json
        check_results(response.json, 3)
        assert product not in [r["product_name"] for r in response.json]
        row = index.products.find(product)
        vector = index.product_embeddings[row] / np.linalg.norm(index.product_embeddings[row])
        expected = [index.products[int(r)] for r in np.argsort(-(index.product_embeddings @ vector)) if r != row][:3]
        assert [r["product_name"] for r in response.json] == expected
    everything = client.get(f"/products/{ONE_PHOTO_PRODUCT}/similar?n=100").json
    assert len(everything) == len(index.products) - 1  # all the others, never itself


def test_similar_bad_input(client):
    assert_problem(client.get("/products/no-such-product/similar"), 404)
    assert_problem(client.get(f"/products/{ONE_PHOTO_PRODUCT}/similar?n=0"), 400, "n")
    assert_problem(client.get(f"/products/{ONE_PHOTO_PRODUCT}/similar?n=x"), 400, "n")
    assert_problem(client.get(f"/products/{ONE_PHOTO_PRODUCT}/similar?k=3"), 400, "k")
    assert client.get(f"/products/{ONE_PHOTO_PRODUCT}/similar").status_code == 200


def test_embed_text_and_photo(photo_app, photo_client, synthetic_catalog):
    searcher = photo_app.extensions["live_index"].current.searcher
    text = photo_client.post("/embed", json={"text": "red top"})
    assert text.status_code == 200, text.json
    body = text.json
    vector = np.asarray(body["embedding"], np.float32)
    assert body["input"] == "text" and body["normalised"] and body["dim"] == len(vector) == 64
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(vector, searcher.embed_query("red top"), atol=1e-6)
    assert body["model"]["model"] == "tiny-clip" and body["model"]["pretrained"] is None
    assert len(body["model"]["identity_sha256"]) == 64

    photo = photo_client.post("/embed", data=catalog_photo(synthetic_catalog), content_type="image/jpeg").json
    assert photo["input"] == "photo" and photo["model"] == body["model"]
    index = searcher.index
    indexed = index.image_embeddings[index.image_rows(index.products.find(ONE_PHOTO_PRODUCT)).start]
    assert float(np.asarray(photo["embedding"]) @ indexed) == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize("kwargs,status,field", [
    ({"json": {"text": "red", "image_url": "http://127.0.0.1/x.jpg"}}, 400, "text"),
    ({"json": {}}, 400, "text"),
    ({"json": {"text": "red", "n": 3}}, 400, "n"),
    ({"json": {"text": ""}}, 400, "text"),
    ({"json": {"image_url": 5}}, 400, "image_url"),
    ({"data": b"not an image", "content_type": "image/jpeg"}, 415, None),
    ({"data": "x", "content_type": "text/plain"}, 415, None),
])
def test_embed_bad_input(photo_client, kwargs, status, field):
    assert_problem(photo_client.post("/embed", **kwargs), status, field)
    assert photo_client.post("/embed", json={"text": "still serving"}).status_code == 200


def test_batch_answers_each_query_in_order(client):
    queries = [{"text": "red top", "n": 2}, {"text": "navy skirt"}, {"text": "yellow dress", "n": 6}]
    response = client.post("/batch", json={"queries": queries})
    assert response.status_code == 200, response.json
    assert [len(answer) for answer in response.json] == [2, 5, 6]
    for query, answer in zip(queries, response.json, strict=True):
        assert answer == client.post("/", json=query).json


@pytest.mark.parametrize("body,field", [
    ({}, "queries"), ({"queries": []}, "queries"), ({"queries": "red"}, "queries"),
    ({"queries": [{"text": "red"}] * 33}, "queries"), ({"queries": [{"text": "red"}], "n": 3}, "n"),
    ({"queries": ["red"]}, "queries[0]"), ({"queries": [{"text": "red"}, {"text": "x", "n": 0}]}, "queries[1].n"),
    ({"queries": [{"text": ""}]}, "queries[0].text"), ({"queries": [{"text": "a", "image_url": "x"}]},
                                                       "queries[0].image_url"),
])
def test_batch_bad_input(client, body, field):
    assert_problem(client.post("/batch", json=body), 400, field)
    assert client.post("/batch", json={"queries": [{"text": "ok"}]}).status_code == 200


def test_batch_wants_json(client):
    assert_problem(client.post("/batch", data="x", content_type="text/plain"), 415)


def _blank_png() -> bytes:
    return png(Image.new("RGB", (64, 64), (240, 240, 240)))


def _truncated_jpeg() -> bytes:
    buf = io.BytesIO()
    person_wearing((200, 30, 30), 0).save(buf, "JPEG")
    return buf.getvalue()[:400]  # the header reads, the pixels do not


@pytest.mark.parametrize("kwargs,status,field", [
    ({"json": {"image_url": "ftp://127.0.0.1/x.jpg"}}, 400, None),
    ({"json": {"image_url": ""}}, 400, "image_url"),
    ({"json": {"image_url": ["http://x"]}}, 400, "image_url"),
    ({"json": {"image_url": "http://127.0.0.1:1/missing.jpg", "n": 0}}, 400, "n"),
    ({"json": {"text": "red", "image_url": "http://127.0.0.1:1/x.jpg", "image_weight": 2}}, 400, "image_weight"),
    ({"json": {"text": "red", "image_url": "http://127.0.0.1:1/x.jpg", "image_weight": True}}, 400, "image_weight"),
    ({"json": {"text": "red", "image_url": "http://127.0.0.1:1/x.jpg", "image_weight": "0.5"}}, 400, "image_weight"),
    ({"data": _truncated_jpeg(), "content_type": "image/jpeg"}, 422, None),
    ({"data": b"<svg xmlns='http://www.w3.org/2000/svg'/>", "content_type": "image/svg+xml"}, 415, None),
    ({"data": b"", "content_type": "image/png"}, 422, None),
    ({"data": _blank_png(), "content_type": "image/png"}, 422, None),  # no garment in it
    ({"query_string": {"n": "zero"}, "data": _blank_png(), "content_type": "image/png"}, 400, "n"),
    ({"query_string": {"image_weight": "lots"}, "data": _blank_png(), "content_type": "image/png"}, 400, "image_weight"),
    ({"query_string": {"format": "png"}, "data": _blank_png(), "content_type": "image/png"}, 400, "format"),
    ({"data": {"file": (io.BytesIO(b"abc"), "x.txt")}, "content_type": "multipart/form-data"}, 415, None),
    ({"data": {"n": "3"}, "content_type": "multipart/form-data"}, 400, "text"),
    ({"data": {"photo": (io.BytesIO(b"abc"), "x.jpg")}, "content_type": "multipart/form-data"}, 400, "photo"),
    ({"data": {"file": (io.BytesIO(_blank_png()), "x.png"), "limit": "3"}, "content_type": "multipart/form-data"},
     400, "limit"),
    ({"data": {"file": (io.BytesIO(_blank_png()), "x.png"), "n": "101"}, "content_type": "multipart/form-data"},
     400, "n"),
])
def test_photo_query_bad_input(photo_client, kwargs, status, field):
    assert_problem(photo_client.post("/", **kwargs), status, field)
    assert photo_client.post("/", json={"text": "still serving"}).status_code == 200


def test_photo_url_upstream_failures(photo_client, upstream):
    upstream.routes["/page.html"] = lambda h: send_bytes(h, b"<html></html>", "text/html")
    assert_problem(photo_client.post("/", json={"image_url": f"{upstream.base_url}/gone.jpg"}), 502)
    assert_problem(photo_client.post("/", json={"image_url": f"{upstream.base_url}/page.html"}), 415)


def test_private_image_urls_are_refused(client):
    """The shipped fetch policy (no allowed hosts): loopback and private addresses are refused."""
    for url in ("http://127.0.0.1/x.jpg", "http://10.0.0.8/x.jpg", "http://[::1]/x.jpg"):
        assert_problem(client.post("/", json={"image_url": url}), 400)


def test_upload_limits(onnx_index, local_garments, synthetic_catalog):
    from search import create_app

    photo = catalog_photo(synthetic_catalog)
    config = SearchConfig(clip=ClipSettings(**TINY), index_dir=str(onnx_index), max_body_bytes=1000,
                          max_upload_bytes=len(photo) - 1)
    client = create_app(config, garments=local_garments).test_client()
    detail = assert_problem(client.post("/", data=photo, content_type="image/jpeg"), 413)["detail"]
    assert f"{len(photo) - 1:,}-byte" in detail
    detail = assert_problem(client.post("/", json={"text": "x" * 2000}), 413)["detail"]
    assert "1,000-byte" in detail  # JSON keeps its own, smaller limit
    small = SearchConfig(clip=ClipSettings(**TINY), index_dir=str(onnx_index), max_image_pixels=10_000)
    client = create_app(small, garments=local_garments).test_client()
    assert_problem(client.post("/", data=photo, content_type="image/jpeg"), 413)


def test_photo_queries_turned_off(onnx_index, synthetic_catalog):
    from search import create_app

    config = SearchConfig(clip=ClipSettings(**TINY), index_dir=str(onnx_index), image_queries=False)
    app = create_app(config)
    assert app.extensions["readiness"].info["photo_queries"] == "off"
    client = app.test_client()
    detail = assert_problem(client.post("/", data=catalog_photo(synthetic_catalog), content_type="image/jpeg"),
                            400, "file")["detail"]
    assert "SEARCH_IMAGE_QUERIES" in detail
    assert_problem(client.post("/", json={"image_url": "http://example.com/x.jpg"}), 400, "image_url")
    assert client.post("/", json={"text": "red top"}).status_code == 200
    assert client.get(f"/products/{ONE_PHOTO_PRODUCT}/similar").status_code == 200


def test_garments_from_the_bg_service_equal_in_process(onnx_index, bg_server, photo_client, synthetic_catalog):
    from search import create_app

    remote = create_app(SearchConfig(clip=ClipSettings(**TINY), index_dir=str(onnx_index), bg_service_url=bg_server))
    assert "bg-removal service at" in remote.extensions["readiness"].info["photo_queries"]
    photo = catalog_photo(synthetic_catalog, "5-navy-skirt-shop-555")
    over_http = remote.test_client().post("/?n=6", data=photo, content_type="image/jpeg")
    assert over_http.status_code == 200, over_http.json
    assert over_http.json == photo_client.post("/?n=6", data=photo, content_type="image/jpeg").json
    assert over_http.json[0]["product_name"] == "5-navy-skirt-shop-555"
    assert_problem(remote.test_client().post("/", data=_blank_png(), content_type="image/png"), 422)


def test_a_bg_service_that_is_down_is_a_503_with_retry_after(onnx_index, synthetic_catalog):
    from search import create_app
    from tests.conftest import free_port

    down = create_app(SearchConfig(clip=ClipSettings(**TINY), index_dir=str(onnx_index),
                                   bg_service_url=f"http://127.0.0.1:{free_port()}", bg_service_timeout=2))
    client = down.test_client()
    response = client.post("/", data=catalog_photo(synthetic_catalog), content_type="image/jpeg")
    assert "garment step is unavailable" in assert_problem(response, 503)["detail"]
    assert response.headers["Retry-After"] == "5"
    assert client.post("/", json={"text": "red top"}).status_code == 200  # text queries unaffected


def test_openapi_documents_the_new_endpoints(photo_client, synthetic_catalog):
    document = photo_client.get("/openapi.json").json
    photo = catalog_photo(synthetic_catalog)
    _check(photo_client, document, "post", "/?n=2", "/", data=photo, content_type="image/jpeg")
    _check(photo_client, document, "post", "/", "/", data={"file": (io.BytesIO(photo), "q.jpg"), "text": "red"},
           content_type="multipart/form-data")
    _check(photo_client, document, "post", "/", "/", data=_blank_png(), content_type="image/png")
    _check(photo_client, document, "post", "/", "/", json={"image_url": "ftp://x"})
    _check(photo_client, document, "get", f"/products/{ONE_PHOTO_PRODUCT}/similar?n=2", "/products/{product}/similar")
    _check(photo_client, document, "get", "/products/nope/similar", "/products/{product}/similar")
    _check(photo_client, document, "get", f"/products/{ONE_PHOTO_PRODUCT}/similar?n=-1", "/products/{product}/similar")
    _check(photo_client, document, "post", "/embed", "/embed", json={"text": "red"})
    _check(photo_client, document, "post", "/embed", "/embed", data=photo, content_type="image/jpeg")
    _check(photo_client, document, "post", "/embed", "/embed", json={})
    _check(photo_client, document, "post", "/batch", "/batch", json={"queries": [{"text": "red", "n": 2}]})
    _check(photo_client, document, "post", "/batch", "/batch", json={"queries": []})
    _check(photo_client, document, "post", "/batch", "/batch", data="x", content_type="text/plain")


def test_numpy_preprocessing_is_open_clips(tiny_embedder):
    from search.image_encoder import check_pictures, clip_pixels, preprocess_spec

    spec = preprocess_spec(tiny_embedder.model.visual.preprocess_cfg)
    for picture in check_pictures() + [Image.new("RGBA", (90, 40), (10, 200, 30, 128))]:
        expected = tiny_embedder.preprocess(picture).numpy()
        np.testing.assert_allclose(clip_pixels(picture, spec), expected, atol=1e-6)


def test_image_tower_export_is_checked(tmp_path, text_export, onnx_index):
    import json
    import shutil

    from search import create_app
    from search.image_encoder import OnnxImageEncoder
    from search.text_encoder import EXPORT_DIRNAME, ExportError

    meta = json.loads((text_export / "export.json").read_text())
    assert meta["image"]["measured_against_open_clip"]["max_abs_diff"] < 1e-4
    mixed = tmp_path / "mixed"
    shutil.copytree(text_export, mixed)
    meta_mixed = {**meta, "image": {**meta["image"], "probe": list(-np.asarray(meta["image"]["probe"]))}}
    (mixed / "export.json").write_text(json.dumps(meta_mixed))
    with pytest.raises(ExportError, match="probe embedding"):
        OnnxImageEncoder(mixed)
    # An export made before photo queries (no image tower): the service says how to fix it.
    index = tmp_path / "index"
    shutil.copytree(onnx_index, index)
    old = {k: v for k, v in meta.items() if k != "image"}
    (index / EXPORT_DIRNAME / "export.json").write_text(json.dumps(old))
    ready = create_app(SearchConfig(clip=ClipSettings(**TINY), index_dir=str(index),
                                    bg_service_url="http://127.0.0.1:9")).test_client().get("/readyz")
    assert ready.status_code == 503 and "no image tower" in ready.json["detail"]
    assert "SEARCH_IMAGE_QUERIES=0" in ready.json["detail"]
    off = create_app(SearchConfig(clip=ClipSettings(**TINY), index_dir=str(index), image_queries=False))
    assert off.test_client().get("/readyz").status_code == 200


def test_a_real_matted_catalog_photo_gives_its_indexed_vector(tmp_path, tiny_embedder, local_garments):
    """The real catalog's RGBA cut-outs, as the container smoke test sends them: the photo query's
    vector is the one the indexer stored for that file (the alpha path through both)."""
    import shutil

    from search import create_app
    from search.indexing.builder import build_index
    from search.indexing.export import export_text_encoder
    from tests.conftest import shared_data

    catalog = tmp_path / "catalog"
    for folder in sorted(p for p in shared_data("catalog").iterdir() if p.is_dir())[:2]:
        shutil.copytree(folder, catalog / folder.name)
    build_index(catalog, tmp_path / "index", tiny_embedder, local_garments, progress=False)
    export_text_encoder(tiny_embedder, tmp_path / "index" / "text-encoder", int8=False)
    app = create_app(SearchConfig(clip=ClipSettings(**TINY), index_dir=str(tmp_path / "index")),
                     garments=local_garments)
    index = app.extensions["live_index"].current.searcher.index
    photo = sorted(catalog.glob("*/*.png"))[0]
    # the product's name chooses the garment, as it did for the indexer
    body = app.test_client().post("/embed", data=photo.read_bytes(), content_type="image/png",
                                  query_string={"product": photo.parent.name}).json
    indexed = index.image_embeddings[index.find_image(photo.parent.name, photo.name)]
    assert float(np.asarray(body["embedding"]) @ indexed) == pytest.approx(1.0, abs=1e-4)
