"""Search: pooling maths, index build/load, the HTTP contract, one real gunicorn."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import requests

from search.config import ClipSettings, SearchConfig
from search.index_format import Index, IndexLoadError
from search.indexing.builder import build_index
from search.indexing.pooling import pool
from tests.conftest import (
    PRODUCT_COLOURS,
    TINY,
    person_wearing,
    shared_data,
    start_gunicorn,
    stop,
)

# ------------------------------------------------------------------ maths and embedder


def test_max_pooling_matches_numpy_by_hand():
    e = np.array([[0.6, 0.8, 0.0], [0.0, 0.6, 0.8], [1.0, 0.0, 0.0]], np.float32)
    expected = np.array([1.0, 0.8, 0.8]) / np.sqrt(1.0 + 0.64 + 0.64)
    assert np.allclose(pool(e, "max"), expected, atol=1e-6)
    mean = np.array([1.6, 1.4, 0.8]) / 3
    assert np.allclose(pool(e, "mean"), mean / np.linalg.norm(mean), atol=1e-6)


def test_index_vectors_are_the_pooled_normalised_image_vectors(synthetic_index):
    index = Index.load(synthetic_index)
    assert np.allclose(np.linalg.norm(index.image_embeddings, axis=1), 1.0, atol=1e-5)
    for p, (start, count) in enumerate(zip(index.starts, index.counts, strict=True)):
        rows = index.image_embeddings[start:start + count]
        by_hand = rows.max(axis=0) / np.linalg.norm(rows.max(axis=0))
        assert np.allclose(index.product_embeddings[p], by_hand, atol=1e-6)


def set_meta(index_dir, **changes) -> None:
    meta = json.loads((index_dir / "meta.json").read_text())
    (index_dir / "meta.json").write_text(json.dumps({**meta, **changes}))


def generation(index_dir):
    return index_dir / json.loads((index_dir / "meta.json").read_text())["generation"]


def test_score_max_pooling_scores_the_best_image(synthetic_index, tmp_path, tiny_embedder):
    target = tmp_path / "idx"
    shutil.copytree(synthetic_index, target)
    set_meta(target, pooling="score-max")
    index = Index.load(target)
    q = tiny_embedder.encode_texts(["red top"])[0]
    scores = index.visual_scores(q)
    by_hand = index.image_embeddings @ q
    for p, (start, count) in enumerate(zip(index.starts, index.counts, strict=True)):
        assert scores[p] == pytest.approx(by_hand[start:start + count].max(), abs=1e-6)
        assert index.best_image(p, q) == start + int(np.argmax(by_hand[start:start + count]))


def test_truncated_text_encoding_equals_the_full_77_token_one(tiny_embedder):
    texts = ["pastel coloured tunic", "a", "red", "very " * 30 + "long query", "🧥 ceket dress платье"]
    fp32 = tiny_embedder.fp32_text
    fast = tiny_embedder.encode_texts(texts, tower=fp32)
    full = tiny_embedder.encode_texts_full(texts)
    assert np.abs(fast - full).max() <= 1e-4
    for text in texts[:3]:  # alone, each is truncated to its own length
        alone = tiny_embedder.encode_texts([text], tower=fp32)
        assert np.abs(alone - tiny_embedder.encode_texts_full([text])).max() <= 1e-4


def test_query_precision_stays_close_to_fp32(tiny_embedder):
    texts = ["pastel coloured tunic", "black shirt with a point collar", "🧥 ceket"]
    served = tiny_embedder.encode_texts(texts)
    reference = tiny_embedder.encode_texts_full(texts)
    assert (served * reference).sum(axis=1).min() >= 0.999


# ------------------------------------------------------------------ index build / load


def test_update_reembeds_only_changed_images(synthetic_catalog, synthetic_index, tmp_path, tiny_embedder, bg_pipeline):
    from search.garments import LocalGarments

    catalog = tmp_path / "catalog"
    shutil.copytree(synthetic_catalog, catalog)
    out = tmp_path / "idx"
    shutil.copytree(synthetic_index, out)
    person_wearing((200, 30, 90), 2).save(catalog / "1-red-top-shop-111" / "photo-0.jpg")  # changed
    (catalog / "7-new-pink-top-777").mkdir()
    person_wearing((240, 40, 160), 0).save(catalog / "7-new-pink-top-777" / "a.png")  # new
    report = build_index(catalog, out, tiny_embedder, LocalGarments(bg_pipeline), update=True, progress=False)
    assert report.embedded == 2 and report.reused == report.images - 2
    assert "7-new-pink-top-777" in Index.load(out).products


def test_mismatched_model_is_refused(synthetic_index):
    from search.embedder import ClipEmbedder

    other = ClipEmbedder(ClipSettings(**{**TINY, "seed": 1}))
    with pytest.raises(IndexLoadError, match="seed"):
        Index.load(synthetic_index).check_compatible(other.identity)
    same_names = {**other.identity, "seed": 0}  # other weights behind the same names
    with pytest.raises(IndexLoadError, match="probe"):
        Index.load(synthetic_index).check_compatible(same_names)


@pytest.mark.parametrize("damage", ["missing", "corrupt", "truncated", "shape", "nan", "version", "meta",
                                    "generation"])
def test_broken_index_fails_readiness_with_a_clear_message(synthetic_index, tmp_path, tiny_embedder, damage):
    from search import create_app

    target = tmp_path / "idx"
    shutil.copytree(synthetic_index, target)
    arrays = generation(target)
    if damage == "missing":
        (arrays / "product_embeddings.npy").unlink()
    elif damage == "corrupt":
        (arrays / "image_embeddings.npy").write_bytes(b"garbage")
    elif damage == "truncated":
        data = (arrays / "image_embeddings.npy").read_bytes()
        (arrays / "image_embeddings.npy").write_bytes(data[:len(data) // 2])
    elif damage == "shape":
        np.save(arrays / "product_embeddings.npy", np.zeros((2, 3), np.float32))
    elif damage == "nan":
        broken = np.load(arrays / "product_embeddings.npy")
        broken[1, 0] = np.nan
        np.save(arrays / "product_embeddings.npy", broken)
    elif damage == "version":
        set_meta(target, format_version=99)
    elif damage == "meta":
        (target / "meta.json").write_text("{not json")
    else:
        shutil.rmtree(arrays)
    app = create_app(SearchConfig(clip=ClipSettings(**TINY), index_dir=str(target)), embedder=tiny_embedder)
    client = app.test_client()
    ready = client.get("/readyz")
    assert ready.status_code == 503 and "index" in ready.json["detail"], ready.json
    response = client.post("/", json={"text": "red"})
    assert response.status_code == 503 and response.mimetype == "application/problem+json"
    assert "Traceback" not in response.get_data(as_text=True)


def test_real_catalog_index_with_the_tiny_model(tmp_path_factory, tiny_embedder, bg_pipeline):
    from search.garments import LocalGarments

    catalog = shared_data("catalog")
    out = tmp_path_factory.mktemp("real_index")
    report = build_index(catalog, out, tiny_embedder, LocalGarments(bg_pipeline), progress=False)
    index = Index.load(out)
    assert report.images == 171 and len(index.image_files) + len(report.skipped) == 171
    assert len(index.products) >= 30
    pairs = {frozenset(d["products"]) for d in report.duplicates}
    assert frozenset({"1-black-traverse-point-collar-cotton-tunic-sahra-butik-8271559",
                      "26-results-black-traverse"}) in pairs


# ------------------------------------------------------------------ HTTP contract


def test_results_contract(client):
    response = client.post("/", json={"text": "red top", "n": 4})
    assert response.status_code == 200 and response.mimetype == "application/json"
    results = response.json
    assert len(results) == 4
    assert len({r["product_name"] for r in results}) == 4
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    for r in results:
        assert set(r) == {"product_name", "url", "score", "id"}
        assert isinstance(r["product_name"], str) and isinstance(r["score"], float)
        assert -1.0 <= r["score"] <= 1.0
        assert client.get(r["url"]).status_code == 200


def test_n_defaults_to_5_and_is_capped_by_the_product_count(client):
    assert len(client.post("/", json={"text": "dress"}).json) == 5
    everything = client.post("/", json={"text": "dress", "n": 100}).json
    assert len(everything) == len(PRODUCT_COLOURS)
    assert len({r["product_name"] for r in everything}) == len(PRODUCT_COLOURS)


def test_integral_float_n_is_an_integer(client):
    assert len(client.post("/", json={"text": "dress", "n": 3.0}).json) == 3


def test_text_matches_lift_matching_products(client):
    results = client.post("/", json={"text": "yellow dress", "n": 3}).json
    assert results[0]["product_name"] == "3-yellow-dress-shop-333"


def test_public_base_url_makes_absolute_urls(synthetic_index, tiny_embedder):
    from search import create_app

    app = create_app(SearchConfig(clip=ClipSettings(**TINY), index_dir=str(synthetic_index),
                                  public_base_url="https://search.example.com"), embedder=tiny_embedder)
    url = app.test_client().post("/", json={"text": "top", "n": 1}).json[0]["url"]
    assert url.startswith("https://search.example.com/images/")


@pytest.mark.parametrize("body,field", [
    ({"text": "red", "n": 0}, "n"), ({"text": "red", "n": -1}, "n"), ({"text": "red", "n": 101}, "n"),
    ({"text": "red", "n": 10**9}, "n"), ({"text": "red", "n": "5"}, "n"), ({"text": "red", "n": 5.5}, "n"),
    ({"text": "red", "n": None}, "n"), ({"text": "red", "n": True}, "n"),
    ({"text": ""}, "text"), ({"text": "   "}, "text"), ({"text": 5}, "text"), ({}, "text"),
    ({"text": "red", "limit": 3}, "limit"),
])
def test_bad_fields(client, body, field):
    response = client.post("/", json=body)
    assert response.status_code == 400 and response.json["field"] == field
    assert response.mimetype == "application/problem+json"


@pytest.mark.parametrize("data,content_type,status", [
    ("{not json", "application/json", 400),
    ("[1, 2]", "application/json", 400),
    ("5", "application/json", 400),
    ('{"text": "red"}', "text/plain", 415),
    ("text=red", "application/x-www-form-urlencoded", 415),
])
def test_bad_bodies(client, data, content_type, status):
    response = client.post("/", data=data, content_type=content_type)
    assert response.status_code == status and response.mimetype == "application/problem+json"
    assert client.post("/", json={"text": "red"}).status_code == 200  # still serving


def test_long_and_unusual_text_is_accepted(client):
    for text in ["tunic " * 20000, "🧥👗 elbise платье 连衣裙", "ümlaut çiçekli tunik"]:
        response = client.post("/", json={"text": text, "n": 2})
        assert response.status_code == 200 and len(response.json) == 2


def test_query_cache_hits_on_repeat(search_app, client):
    cache = search_app.extensions["live_index"].current.searcher.cache
    client.post("/", json={"text": "cache me please"})
    hits = cache.hits
    client.post("/", json={"text": "  Cache me   PLEASE "})
    assert cache.hits == hits + 1


def test_unknown_and_traversal_image_paths_are_404(client):
    assert client.get("/images/1-red-top-shop-111/nope.jpg").status_code == 404
    assert client.get("/images/..%2F..%2Fetc/passwd").status_code == 404
    response = client.get("/images/1-red-top-shop-111/..%2F..%2Fmeta.json")
    assert response.status_code == 404 and response.mimetype == "application/problem+json"


def test_through_real_gunicorn(synthetic_index, oracle_weights):
    proc, base = start_gunicorn("search:create_app()", {
        "CLIP_MODEL": "tiny-clip", "CLIP_PRETRAINED": "", "CLIP_CONFIG_DIR": TINY["extra_config_dir"],
        "SEARCH_INDEX_DIR": str(synthetic_index), "GUNICORN_WORKERS": "1",
    })
    try:
        response = requests.post(base + "/", json={"text": "pastel coloured tunic", "n": 3}, timeout=30)
        assert response.status_code == 200, response.text
        results = response.json()
        assert len(results) == 3 and len({r["product_name"] for r in results}) == 3
        assert requests.get(base + results[0]["url"], timeout=10).status_code == 200
        assert requests.post(base + "/", json={"text": "x", "n": 0}, timeout=10).status_code == 400
    finally:
        stop(proc)


# ------------------------------------------------------------------ bounded memory, paths


def test_query_cache_keys_are_the_tokens_the_encoder_sees(search_app, client):
    cache = search_app.extensions["live_index"].current.searcher.cache
    huge = "pastel tunic " * 20000  # 240 KB
    assert client.post("/", json={"text": huge}).status_code == 200
    newest = cache.keys()[-1]
    assert len(newest) <= 77 * 4  # int32 token ids, not 240 KB of text
    hits = cache.hits
    # Another text that differs only after the 77-token context is the same query to the encoder.
    assert client.post("/", json={"text": huge + " and something else"}).status_code == 200
    assert cache.hits == hits + 1


def test_serving_maps_the_index_and_never_loads_builder_files(synthetic_index):
    index = Index.load(synthetic_index)
    for matrix in (index.image_embeddings, index.product_embeddings):
        assert isinstance(matrix, np.memmap) and not matrix.flags.writeable
    assert index.builder is None
    with pytest.raises(RuntimeError, match="only loaded for building"):
        index.thumbs  # noqa: B018 - the access itself must fail


def test_a_relative_catalog_dir_is_resolved_once(synthetic_index, synthetic_catalog, tmp_path, tiny_embedder,
                                                 monkeypatch):
    from search import create_app

    shutil.copytree(synthetic_catalog, tmp_path / "catalog")
    shutil.copytree(synthetic_index, tmp_path / "index")
    monkeypatch.chdir(tmp_path)
    config = SearchConfig(clip=ClipSettings(**TINY), index_dir="index", catalog_dir="catalog")
    assert config.catalog_dir == str(tmp_path / "catalog") and config.index_dir == str(tmp_path / "index")
    client = create_app(config, embedder=tiny_embedder).test_client()
    monkeypatch.chdir("/")  # a later change of directory does not matter any more
    for result in client.post("/", json={"text": "red top", "n": 3}).json:
        assert client.get(result["url"]).status_code == 200


def test_an_index_moved_to_another_machine_serves_with_its_catalog(synthetic_index, synthetic_catalog, tmp_path,
                                                                   tiny_embedder):
    from search import create_app

    shutil.copytree(synthetic_index, tmp_path / "index")
    set_meta(tmp_path / "index", catalog_dir="/nonexistent/catalog")  # where it was built
    moved = create_app(SearchConfig(clip=ClipSettings(**TINY), index_dir=str(tmp_path / "index")),
                       embedder=tiny_embedder).test_client()
    ready = moved.get("/readyz")
    assert ready.status_code == 503 and "SEARCH_CATALOG_DIR" in ready.json["detail"]

    shutil.copytree(synthetic_catalog, tmp_path / "catalog")
    served = create_app(SearchConfig(clip=ClipSettings(**TINY), index_dir=str(tmp_path / "index"),
                                     catalog_dir=str(tmp_path / "catalog")), embedder=tiny_embedder).test_client()
    assert served.get("/readyz").status_code == 200
    url = served.post("/", json={"text": "dress", "n": 1}).json[0]["url"]
    assert served.get(url).status_code == 200


def test_a_missing_image_costs_that_image_only(synthetic_index, synthetic_catalog, tmp_path, tiny_embedder):
    """One image gone from the catalog: the worker is ready, results show another image of that
    product, and /images/ answers a counted 404 for that file alone; a catalog lacking most of the
    sampled images is the wrong folder (503 naming SEARCH_CATALOG_DIR and `verify`)."""
    from search import create_app

    shutil.copytree(synthetic_catalog, tmp_path / "catalog")
    product = "3-yellow-dress-shop-333"
    gone = tmp_path / "catalog" / product / "photo-0.jpg"
    config = SearchConfig(clip=ClipSettings(**TINY), index_dir=str(synthetic_index), catalog_dir=str(tmp_path / "catalog"))
    app = create_app(config, embedder=tiny_embedder)
    client = app.test_client()
    best = next(r for r in client.post("/", json={"text": "yellow dress", "n": 6}).json if r["id"] == product)
    gone.rename(tmp_path / "aside.jpg")  # after the start: the sample cannot have seen it
    index = app.extensions["live_index"].current.index
    shown = {r["id"]: r["url"] for r in client.post("/", json={"text": "yellow dress", "n": 6}).json}
    assert shown[product] != f"/images/{product}/photo-0.jpg"
    assert client.get(shown[product]).status_code == 200
    missing = client.get(f"/images/{product}/photo-0.jpg")
    assert missing.status_code == 404 and "missing from the catalog" in missing.json["detail"]
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'search_missing_images_total{where="image"} 1.0' in metrics
    if best["url"].endswith("photo-0.jpg"):  # the best image was the missing one: another was shown
        assert 'search_missing_images_total{where="result"}' in metrics
    assert client.get("/readyz").status_code == 200 and len(index.products) == 6

    restarted = create_app(config, embedder=tiny_embedder).test_client()
    assert restarted.get("/readyz").status_code == 200  # one image missing of a sample: a warning, not a 503

    for folder in (tmp_path / "catalog").iterdir():
        for photo in folder.glob("photo-*.jpg"):
            if photo.name != "photo-0.jpg":
                photo.unlink()
    (tmp_path / "catalog" / "1-red-top-shop-111" / "photo-0.jpg").unlink()
    wrong = create_app(config, embedder=tiny_embedder).test_client().get("/readyz")
    assert wrong.status_code == 503
    assert "SEARCH_CATALOG_DIR" in wrong.json["detail"] and "search.index verify" in wrong.json["detail"]


def test_the_lexical_index_covers_the_product_names(synthetic_index):
    from search.lexical import LexicalIndex

    index = Index.load(synthetic_index)
    fresh = LexicalIndex(LexicalIndex.arrays([index.product_name(p) for p in range(len(index.products))]),
                         len(index.products))
    for text in ("Red top, dark blouse!", "yellow dress", "12345 !!"):
        assert np.array_equal(index.lexical.scores(text), fresh.scores(text))
    rows, scores = index.lexical.matches("yellow dress")
    assert index.products[int(rows[np.argmax(scores)])] == "3-yellow-dress-shop-333"
    assert not index.lexical.scores("12345 !!").any()
    assert index.products.find("3-yellow-dress-shop-333") == 2 and index.products.find("nope") is None


# ------------------------------------------------------------------ vector backends


def test_readiness_and_metrics_name_the_backend(search_app, client):
    backend = client.get("/readyz").json["backend"]
    assert backend["backend"] == search_app.extensions["live_index"].current.searcher.store.backend
    assert client.post("/", json={"text": "red top"}).status_code == 200
    metrics = client.get("/metrics").get_data(as_text=True)
    assert f'search_query_seconds_count{{backend="{backend["backend"]}",service="search"}}' in metrics


def test_every_backend_answers_like_exact(search_app, synthetic_index, tiny_embedder):
    from search.index_format import Index
    from search.searcher import Searcher

    served = search_app.extensions["live_index"].current.searcher
    reference = tiny_embedder
    if served.embedder is not tiny_embedder:  # the ONNX encoder runs fp32, the shared torch one bf16
        from search.embedder import ClipEmbedder

        reference = ClipEmbedder(ClipSettings(**TINY, text_precision="fp32"))
    exact = Searcher(Index.load(synthetic_index), reference, fusion=served.fusion)
    for text in ("red top", "pastel coloured tunic", "navy skirt", "dress"):
        for n in (1, 3, 100):
            assert served.search(text, n) == exact.search(text, n) or all(
                a.product_name == b.product_name and abs(a.score - b.score) < 1e-4
                for a, b in zip(served.search(text, n), exact.search(text, n), strict=True)), (text, n)


def test_faiss_without_an_approximate_index_fails_readiness_with_the_fix(synthetic_index, tiny_embedder):
    from search import create_app
    from search.config import BackendSettings

    app = create_app(SearchConfig(clip=ClipSettings(**TINY), index_dir=str(synthetic_index),
                                  vectors=BackendSettings(backend="faiss")), embedder=tiny_embedder)
    ready = app.test_client().get("/readyz")
    assert ready.status_code == 503 and "python -m search.index ann" in ready.json["detail"]
    assert app.test_client().post("/", json={"text": "red"}).status_code == 503
