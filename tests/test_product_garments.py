"""Only the product is kept, not every garment the model wears, end to end: oracle scenes whose
upper and lower garments have different colours, the colour-histogram embedder (its vectors
show which garments a picture holds), the indexer, the search service and the bg service.

Catalog: a red tunic worn over blue jeans, and blue jeans worn under a red top: the same kind of
photo. With product-only masks a "blue" query finds the jeans and no blue is in the tunic's
vector; with every garment kept the two products are indistinguishable (asserted too, so the
test shows what changed). A look query answers each garment of a photo on its own."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from search.config import ClipSettings, SearchConfig
from shared.garment_vocabulary import VOCABULARY_FILE, Vocabulary
from tests import scenes
from tests.colour_embedder import COLOURS, ColourEmbedder, colour_counts

TUNIC = "1-tunic-shop-111"
JEANS = "2-jeans-shop-222"
DRESS = "3-dress-shop-333"
TOP_BOX, LOWER_BOX = (60, 70, 180, 180), (75, 180, 165, 300)
BLUE, RED = list(COLOURS).index("blue"), list(COLOURS).index("red")


def outfit(variant: int = 0, top=scenes.UPPER, bottom=scenes.LOWER, size=(240, 320)) -> Image.Image:
    """A person (skin head) in a top over trousers, on grey scenery; `variant` shifts them
    sideways (same areas, so every photo of this kind has the same colour histogram)."""
    img = Image.new("RGB", size, scenes.SCENERY)
    d = ImageDraw.Draw(img)
    shift = 6 * variant
    d.rectangle((95 + shift, 20, 145 + shift, 69), fill=scenes.SKIN)
    if top is not None:
        d.rectangle((TOP_BOX[0] + shift, TOP_BOX[1], TOP_BOX[2] + shift, TOP_BOX[3] - 1), fill=top)
    if bottom is not None:
        d.rectangle((LOWER_BOX[0] + shift, LOWER_BOX[1], LOWER_BOX[2] + shift, LOWER_BOX[3]), fill=bottom)
    return img


def png(picture: Image.Image) -> bytes:
    buf = io.BytesIO()
    picture.save(buf, "PNG")
    return buf.getvalue()


def write_catalog(root, products: dict[str, list[Image.Image]]):
    for name, photos in products.items():
        (root / name).mkdir(parents=True)
        for i, photo in enumerate(photos):
            photo.save(root / name / f"photo-{i}.png")
    return root


def vocabulary_without(garment: str) -> Vocabulary:
    """The shipped vocabulary less one of its garments (every word of it)."""
    data = json.loads(VOCABULARY_FILE.read_text())
    del data["garments"][garment]
    return Vocabulary.from_dict(data)


def naming_nothing() -> Vocabulary:
    """A vocabulary that names none of the catalog's garments: every product keeps all classes
    (what the pipeline did before product-only masks)."""
    data = json.loads(VOCABULARY_FILE.read_text())
    data["garments"] = {"abaya": data["garments"]["abaya"]}
    vocabulary = Vocabulary.from_dict(data)
    assert vocabulary.choose(TUNIC).source == vocabulary.choose(JEANS).source == "all"
    return vocabulary


@pytest.fixture(scope="module")
def colour_embedder():
    return ColourEmbedder()


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    return write_catalog(tmp_path_factory.mktemp("outfits"), {
        TUNIC: [outfit(0), outfit(1)],  # a red tunic worn over blue jeans
        JEANS: [outfit(1), outfit(2)],  # blue jeans worn under a red top
    })


def build(catalog, out, embedder, garments, **kwargs):
    from search.indexing.builder import build_index

    return build_index(catalog, out, embedder, garments, progress=False, **kwargs)


@pytest.fixture(scope="module")
def product_index(tmp_path_factory, catalog, colour_embedder, local_garments):
    out = tmp_path_factory.mktemp("product-index")
    build(catalog, out, colour_embedder, local_garments)
    return out


@pytest.fixture(scope="module")
def all_garments_index(tmp_path_factory, catalog, colour_embedder, local_garments):
    out = tmp_path_factory.mktemp("all-index")
    build(catalog, out, colour_embedder, local_garments, vocabulary=naming_nothing())
    return out


def search_app(index_dir, embedder, garments, **settings):
    from search import create_app

    app = create_app(SearchConfig(clip=ClipSettings(**{"model": "colour-histogram", "pretrained": ""}),
                                  index_dir=str(index_dir), lexical_weight=0.0, **settings),
                     embedder=embedder, garments=garments)
    assert app.extensions["readiness"].ready, app.extensions["readiness"].error
    return app


@pytest.fixture(scope="module")
def product_client(product_index, colour_embedder, local_garments):
    return search_app(product_index, colour_embedder, local_garments).test_client()


def product_vector(index_dir, name):
    from search.index_format import Index

    index = Index.load(index_dir)
    return np.asarray(index.product_embeddings[index.products.find(name)])


def test_product_only_masks_tell_the_tunic_from_the_jeans(product_index, product_client):
    blue = product_client.post("/", json={"text": "blue", "n": 2}).json
    assert [r["product_name"] for r in blue] == [JEANS, TUNIC]
    assert blue[0]["score"] == pytest.approx(1.0, abs=1e-3) and blue[1]["score"] == pytest.approx(0.0, abs=1e-6)
    assert product_vector(product_index, TUNIC)[BLUE] == 0.0  # no blue in the tunic's vector at all
    assert product_vector(product_index, JEANS)[RED] == 0.0
    red = product_client.post("/", json={"text": "red", "n": 2}).json
    assert [r["product_name"] for r in red] == [TUNIC, JEANS]


def test_with_every_garment_kept_the_two_products_are_indistinguishable(all_garments_index, colour_embedder,
                                                                          local_garments):
    tunic, jeans = (product_vector(all_garments_index, name) for name in (TUNIC, JEANS))
    assert tunic[BLUE] > 0 and tunic[RED] > 0  # the jeans are in the tunic's vector
    assert float(tunic @ jeans) == pytest.approx(1.0, abs=1e-6)
    client = search_app(all_garments_index, colour_embedder, local_garments).test_client()
    blue = client.post("/", json={"text": "blue", "n": 2}).json
    assert blue[0]["score"] == pytest.approx(blue[1]["score"], abs=1e-6)  # a coin toss between them


def test_the_index_records_each_products_classes_and_the_product_record(product_index, product_client):
    from search.index_format import Index
    from search.indexing.report import garment_summary

    summary = garment_summary(Index.load(product_index))
    assert summary["products_from_text"] == 2 and summary["products_all_classes"] == 0
    assert summary["fallback_images"] == 0 and summary["classes_chosen"] == {"upper,full": 1, "lower": 1}
    record = product_client.get(f"/products/{TUNIC}").json
    assert record["garment_classes"] == {"classes": ["upper", "full"], "source": "product", "garment": "tunic"}
    assert [image["file"] for image in record["images"]] == ["photo-0.png", "photo-1.png"]
    assert not any(image["garment_fallback"] for image in record["images"])
    assert product_client.get(record["images"][0]["url"]).status_code == 200
    jeans = product_client.get(f"/products/{JEANS}").json["garment_classes"]
    assert jeans["classes"] == ["lower"] and jeans["source"] == "product"
    missing = product_client.get("/products/nope")
    assert missing.status_code == 404 and missing.json["status"] == 404
    assert product_client.get(f"/products/{TUNIC}?x=1").status_code == 400


def test_shop_the_look_answers_each_garment_on_its_own(product_client):
    look = product_client.post("/?look=true&n=2", data=png(outfit(0)), content_type="image/png").json
    assert look["classes"] == ["upper", "lower", "full"] and look["classes_source"] == "all"
    by_class = {garment["class"]: garment for garment in look["garments"]}
    assert set(by_class) == {"upper", "lower"}
    assert by_class["upper"]["results"][0]["product_name"] == TUNIC
    assert by_class["lower"]["results"][0]["product_name"] == JEANS
    assert by_class["upper"]["results"][0]["score"] == pytest.approx(1.0, abs=1e-3)
    # boxes in the photo's pixels: the red top and the blue trousers
    assert by_class["upper"]["box"] == pytest.approx([TOP_BOX[0], TOP_BOX[1], TOP_BOX[2] + 1, TOP_BOX[3]], abs=3)
    assert by_class["lower"]["box"] == pytest.approx([LOWER_BOX[0], LOWER_BOX[1], LOWER_BOX[2] + 1, LOWER_BOX[3] + 1],
                                                     abs=3)
    # default: one list, each product by its best garment: both products match one garment exactly
    best = product_client.post("/?n=2", data=png(outfit(0)), content_type="image/png").json
    assert {r["product_name"] for r in best} == {TUNIC, JEANS}
    assert all(r["score"] == pytest.approx(1.0, abs=1e-3) for r in best)


def test_a_photo_query_can_choose_the_garment_to_search_for(product_client):
    photo = png(outfit(0))
    lower = product_client.post("/?classes=lower&n=2", data=photo, content_type="image/png").json
    assert lower[0]["product_name"] == JEANS and lower[0]["score"] == pytest.approx(1.0, abs=1e-3)
    assert lower[1]["score"] == pytest.approx(0.0, abs=1e-6)
    upper = product_client.post("/?product=Tunik&look=1", data=photo, content_type="image/png").json
    assert upper["classes_source"] == "product" and upper["classes"] == ["upper", "full"]
    assert [g["class"] for g in upper["garments"]] == ["upper"]
    assert upper["garments"][0]["results"][0]["product_name"] == TUNIC


def test_look_over_http_equals_in_process(product_index, colour_embedder, product_client, bg_server):
    from search.garments import RemoteGarments

    remote = search_app(product_index, colour_embedder, RemoteGarments(bg_server, retries=0)).test_client()
    for query in ("/?look=true&n=2", "/?n=2", "/?product=jeans&look=true"):
        over_http = remote.post(query, data=png(outfit(1)), content_type="image/png")
        assert over_http.status_code == 200, over_http.json
        assert over_http.json == product_client.post(query, data=png(outfit(1)), content_type="image/png").json


def test_a_photo_without_the_products_garment_falls_back_to_all_garments(tmp_path, colour_embedder, local_garments):
    from search.index_format import Index
    from search.indexing.report import garment_summary

    catalog = write_catalog(tmp_path / "catalog", {
        TUNIC: [outfit(0), outfit(0, top=None)],  # the second photo shows only the jeans
        JEANS: [outfit(1)],
    })
    report = build(catalog, tmp_path / "index", colour_embedder, local_garments)
    assert report.embedded == 3 and not report.skipped  # never an image dropped for it
    index = Index.load(tmp_path / "index")
    tunic = index.products.find(TUNIC)
    assert [bool(index.image_fallbacks[row]) for row in index.image_rows(tunic)] == [False, True]
    fallback_row = index.image_rows(tunic)[1]
    assert np.asarray(index.image_embeddings[fallback_row])[BLUE] == pytest.approx(1.0)  # all garments: the jeans
    summary = garment_summary(index)
    assert summary["fallback_images"] == 1 and summary["products_with_fallback"] == 1


def test_info_prints_where_the_classes_came_from(product_index, capsys):
    from search.indexing.cli import main

    assert main(["info", "--index", str(product_index)]) == 0
    captured = capsys.readouterr()
    info = json.loads(captured.out)
    assert info["garment_classes"]["products_from_text"] == 2
    assert "2 products from their text, 0 with all classes" in captured.err


def test_update_reembeds_exactly_the_products_whose_choice_changed(tmp_path, colour_embedder, local_garments):
    catalog = write_catalog(tmp_path / "catalog", {
        TUNIC: [outfit(0)], JEANS: [outfit(1), outfit(2)], DRESS: [outfit(0, top=scenes.FULL, bottom=scenes.FULL)],
    })
    out = tmp_path / "index"
    first = build(catalog, out, colour_embedder, local_garments)
    assert first.embedded == 4
    same = build(catalog, out, colour_embedder, local_garments, update=True)
    assert same.embedded == 0 and same.reused == 4
    changed = build(catalog, out, colour_embedder, local_garments, update=True, vocabulary=vocabulary_without("jeans"))
    assert changed.reembedded_products == {JEANS} and changed.embedded == 2 and changed.reused == 2
    assert changed.reembedded == {"garment classes changed": 2}
    from search.index_format import Index

    index = Index.load(out)
    assert index.product_garments(index.products.find(JEANS)).source == "all"
    assert np.asarray(index.product_embeddings[index.products.find(JEANS)])[RED] > 0  # the top is in it now


def test_choosing_the_classes_runs_the_cloth_model_once(bg_pipeline, monkeypatch):
    """The product's classes, all garments as the fallback and each class alone (a look) all come
    from one cloth-model run."""
    calls = []
    cloth = bg_pipeline.models.cloth
    original = cloth.class_probabilities
    monkeypatch.setattr(cloth, "class_probabilities", lambda images, groups: calls.append(len(groups))
                        or original(images, groups))
    photos = [outfit(0), outfit(0, top=None)]
    masks = bg_pipeline.garment_masks(photos, [("upper", "full"), ("upper", "full")], fallback=True, labels=True)
    assert calls == [5]  # one run: upper+full, all, and each of the three classes
    assert masks[0].classes == ("upper", "full") and not masks[0].fallback
    assert masks[1].classes == ("upper", "lower", "full") and masks[1].fallback
    assert set(np.unique(masks[0].labels)) == {0, 1}  # upper only: the jeans are not kept
    assert set(np.unique(masks[1].labels)) == {0, 2}


# ------------------------------------------------------------------ the bg-removal service


def test_bg_keeps_the_products_garment_and_says_so(bg_client):
    photo = png(outfit(0))
    response = bg_client.post("/", data=photo, content_type="image/png",
                              query_string={"product": "Tunik", "format": "png"})
    assert response.status_code == 200, response.json
    assert response.headers["X-Garment-Classes"] == "upper,full"
    assert response.headers["X-Garment-Source"] == "product"
    assert response.headers["X-Garment-Name"] == "tunic"
    counts = colour_counts(Image.open(io.BytesIO(response.data)).convert("RGB"))
    assert counts[RED] > 0 and counts[BLUE] == 0  # the jeans are background
    jeans = bg_client.post("/", json={"url": "http://127.0.0.1:1/x.jpg", "product": "x" * 501})
    assert jeans.status_code == 400 and jeans.json["field"] == "product"
    every = bg_client.post("/", data=photo, content_type="image/png")
    assert every.headers["X-Garment-Classes"] == "upper,lower,full" and every.headers["X-Garment-Source"] == "all"
    asked = bg_client.post("/?classes=lower", data=photo, content_type="image/png")
    assert asked.headers["X-Garment-Classes"] == "lower" and asked.headers["X-Garment-Source"] == "classes"
    unnamed = bg_client.post("/", data={"file": (io.BytesIO(photo), "p.png"), "product": "26-results-black-traverse"},
                             content_type="multipart/form-data")
    assert unnamed.headers["X-Garment-Source"] == "all" and "X-Garment-Name" not in unnamed.headers


def test_bg_falls_back_to_all_garments_for_a_product_but_not_for_classes(bg_client):
    only_jeans = png(outfit(0, top=None))
    response = bg_client.post("/", data=only_jeans, content_type="image/png", query_string={"product": "tunic"})
    assert response.status_code == 200
    assert response.headers["X-Garment-Fallback"] == "true" and response.headers["X-Garment-Source"] == "all"
    assert response.headers["X-Garment-Classes"] == "upper,lower,full"
    strict = bg_client.post("/", data=only_jeans, content_type="image/png",
                            query_string={"product": "tunic", "fallback": "none"})
    assert strict.status_code == 422
    asked = bg_client.post("/", data=only_jeans, content_type="image/png", query_string={"classes": "upper"})
    assert asked.status_code == 422


def test_bg_label_map(bg_client):
    response = bg_client.post("/labels", data=png(outfit(0)), content_type="image/png")
    assert response.status_code == 200 and response.mimetype == "image/png"
    labels = np.asarray(Image.open(io.BytesIO(response.data)))
    assert labels.shape == (320, 240)
    assert labels[120, 120] == 1 and labels[250, 120] == 2 and labels[40, 120] == 0 and labels[5, 5] == 0
    chosen = bg_client.post("/labels?product=jeans", data=png(outfit(0)), content_type="image/png")
    assert set(np.unique(np.asarray(Image.open(io.BytesIO(chosen.data))))) == {0, 2}
    assert chosen.headers["X-Garment-Classes"] == "lower"
    assert bg_client.post("/labels?format=png", data=png(outfit(0)), content_type="image/png").status_code == 400


GARMENT_BAD_INPUT = [
    ({"product": "tunic", "classes": "upper"}, "product"),
    ({"product": ""}, "product"),
    ({"product": "   "}, "product"),
    ({"product": "x" * 501}, "product"),
    ({"fallback": "maybe"}, "fallback"),
    ({"classes": "upper,shoes"}, "classes"),
]


@pytest.mark.parametrize("fields,field", GARMENT_BAD_INPUT)
@pytest.mark.parametrize("route", ["/", "/labels"])
def test_bg_garment_bad_input(bg_client, route, fields, field):
    photo = png(outfit(0))
    for kwargs in ({"data": photo, "content_type": "image/png", "query_string": fields},
                   {"data": {"file": (io.BytesIO(photo), "p.png"), **fields}, "content_type": "multipart/form-data"}):
        response = bg_client.post(route, **kwargs)
        assert response.status_code == 400 and response.json["field"] == field, response.json
    as_json = {**fields, "url": "http://127.0.0.1:1/x.jpg"}
    if "classes" in as_json:
        as_json["classes"] = as_json["classes"].split(",")
    response = bg_client.post(route, json=as_json)
    assert response.status_code == 400 and response.json["field"] == field, response.json
    assert bg_client.post(route, json={"url": "http://127.0.0.1:1/x.jpg", "product": ["tunic"]}).json["field"] == "product"
    assert bg_client.post("/", data=photo, content_type="image/png").status_code == 200  # still serving


@pytest.mark.parametrize("kwargs,field", [
    ({"json": {"text": "red", "product": "tunic"}}, "product"),
    ({"json": {"text": "red", "look": True}}, "look"),
    ({"json": {"text": "red", "classes": ["upper"]}}, "classes"),
    ({"json": {"image_url": "http://127.0.0.1:1/x.jpg", "look": "yes"}}, "look"),
    ({"json": {"image_url": "http://127.0.0.1:1/x.jpg", "product": "tunic", "classes": ["upper"]}}, "product"),
    ({"json": {"image_url": "http://127.0.0.1:1/x.jpg", "product": "x" * 501}}, "product"),
    ({"query_string": {"look": "perhaps"}, "data": png(outfit(0)), "content_type": "image/png"}, "look"),
    ({"query_string": {"classes": "hat"}, "data": png(outfit(0)), "content_type": "image/png"}, "classes"),
    ({"data": {"text": "red", "look": "true"}, "content_type": "multipart/form-data"}, "look"),
])
def test_search_garment_bad_input(product_client, kwargs, field):
    response = product_client.post("/", **kwargs)
    assert response.status_code == 400 and response.json["field"] == field, response.json
    assert product_client.post("/", json={"text": "red"}).status_code == 200


def test_a_look_without_the_garment_asked_for_is_a_422(product_client):
    response = product_client.post("/?classes=full&look=true", data=png(outfit(0)), content_type="image/png")
    assert response.status_code == 422, response.json


def test_openapi_documents_garments_and_look(product_client, bg_client):
    from tests.test_openapi import _check

    document = product_client.get("/openapi.json").json
    photo = png(outfit(0))
    _check(product_client, document, "post", "/?look=true", "/", data=photo, content_type="image/png")
    _check(product_client, document, "post", "/?product=tunic", "/", data=photo, content_type="image/png")
    _check(product_client, document, "get", f"/products/{TUNIC}", "/products/{product}")
    _check(product_client, document, "get", "/products/nope", "/products/{product}")
    post = document["paths"]["/"]["post"]
    assert {"look", "product", "classes"} <= set(post["requestBody"]["content"]["application/json"]["schema"]["properties"])
    bg_document = bg_client.get("/openapi.json").json
    bg_post = bg_document["paths"]["/"]["post"]
    assert "product" in bg_post["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert {"X-Garment-Classes", "X-Garment-Source"} <= set(bg_post["responses"]["200"]["headers"])
    _check(bg_client, bg_document, "post", "/labels", "/labels", data=photo, content_type="image/png")
    _check(bg_client, bg_document, "post", "/labels?product=", "/labels", data=photo, content_type="image/png")


def test_a_looks_small_garments_are_left_out_unless_nothing_else_is_there():
    from search.garments import look_garments
    from shared.images import DecodedImage

    photo = DecodedImage(Image.new("RGB", (100, 100), (200, 200, 200)), None, "PNG")
    labels = np.zeros((100, 100), np.uint8)
    labels[10:60, 10:60] = 1  # 25% of the photo
    labels[90:95, 90:95] = 2  # 0.25%: a speck, below SEARCH_LOOK_MIN_FRACTION's 1%
    found = look_garments(photo, labels, 0.01)
    assert [(g.garment_class, g.box) for g in found] == [("upper", (10, 10, 60, 60))]
    labels[10:60, 10:60] = 0
    assert [g.garment_class for g in look_garments(photo, labels, 0.01)] == ["lower"]  # the largest there is
    assert look_garments(photo, np.zeros((100, 100), np.uint8), 0.01) == []
