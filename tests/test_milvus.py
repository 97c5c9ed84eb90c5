"""The milvus backend against Milvus Lite: same answers as the exact backend, an idempotent
publish, refusal of another index's vectors, and faults that end in 503s and recover by themselves."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
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

from search.config import BackendSettings, ClipSettings, SearchConfig
from search.index_format import Index, IndexArrays, write_index
from search.indexing.pooling import pool_products
from search.indexing.publish import PublishError, publish, register
from search.vectors import Hits
from search.vectors import milvus as milvus_module
from search.vectors.exact import ExactStore
from search.vectors.milvus import MilvusStore, collection_names
from tests.conftest import PRODUCT_COLOURS, TINY, free_port

DIM = 32
QUOTED = 'q"uo\\te\'d'  # a product name that needs escaping in a filter expression


def settings(uri: str, **extra) -> BackendSettings:
    return BackendSettings(backend="milvus", milvus_uri=uri, milvus_timeout=extra.pop("timeout", 5.0), **extra)


def random_index(out: Path, *, pooling: str = "max", products: int = 120, seed: int = 0, probe_seed: int = 0,
                 drop: tuple[str, ...] = ()) -> Path:
    """An index of random unit vectors (1-4 images per product), written as the indexer does."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 5, products)
    names = sorted(f"{i}-{QUOTED}-{i}" if i % 40 == 0 else f"{i}-item-{i * 13}" for i in range(products))
    images = rng.normal(size=(int(counts.sum()), DIM)).astype(np.float32)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    starts = np.concatenate([[0], np.cumsum(counts)])
    keep = [p for p, name in enumerate(names) if name not in drop]
    images = np.concatenate([images[starts[p]:starts[p + 1]] for p in keep])
    counts, names = [int(counts[p]) for p in keep], [names[p] for p in keep]
    files = [f"photo-{v}.jpg" for c in counts for v in range(c)]
    probe = np.random.default_rng(probe_seed).normal(size=DIM)
    probe /= np.linalg.norm(probe)
    write_index(out, IndexArrays(images, pool_products(images, counts, pooling), counts, names, files,
                                 ["00" * 32] * len(files), ["garment"] * len(files),
                                 np.zeros((len(files), 4), np.float32)),
                {"embedder": {"model": "tiny-clip", "pretrained": "", "seed": 0,
                              "probe": [round(float(v), 6) for v in probe]},
                 "pooling": pooling, "embed_dim": DIM, "catalog_dir": str(out), "catalog_fingerprint": "test"})
    return out


def unit(rng) -> np.ndarray:
    q = rng.normal(size=DIM).astype(np.float32)
    return q / np.linalg.norm(q)


def assert_same_hits(got: Hits, want: Hits, tie: float = 1e-5) -> None:
    """Same scores (1e-4) and rows, except that products whose scores tie may swap places (or,
    tied at the cut-off, be one another)."""
    assert len(got.rows) == len(want.rows), (got, want)
    assert np.allclose(got.scores, want.scores, atol=1e-4), (got, want)
    for i in np.flatnonzero(got.rows != want.rows):
        at = np.flatnonzero(want.rows == got.rows[i])
        exact = want.scores[at[0]] if len(at) else want.scores[-1]
        assert abs(float(got.scores[i]) - float(exact)) < tie, (i, got, want)


@pytest.fixture(scope="module")
def lite(tmp_path_factory) -> str:
    """One Milvus Lite database for the module (its collections are named by index identity)."""
    return str(tmp_path_factory.mktemp("milvus") / "milvus.db")


# ------------------------------------------------------------------ same answers as exact


@pytest.mark.parametrize("pooling", ["max", "mean", "score-max"])
def test_answers_match_the_exact_backend(pooling, lite, tmp_path, monkeypatch):
    index_dir = random_index(tmp_path / "idx", pooling=pooling)
    report = publish(index_dir, lite, progress=False)
    index = Index.load(index_dir)
    assert report["upserted"] == {"products": len(index.products), "images": len(index.image_files)}
    store = MilvusStore.open(index, settings(lite))
    exact = ExactStore(index)
    assert store.describe()["index_type"] == "HNSW" and store.describe()["metric"] == "IP"
    monkeypatch.setattr(milvus_module, "CHUNK_KEYS", 7)  # several keys chunks per call
    rng = np.random.default_rng(1)
    everything = len(index.products)
    for _ in range(6):
        q = unit(rng)
        for k in (1, 3, everything):
            assert_same_hits(store.top(q, k), exact.top(q, k))
        for size in (30, 90):  # filtered by `in` chunks, or by `not in` the others
            among = rng.choice(everything, size, replace=False)
            for exact_among in (milvus_module.EXACT_AMONG, 0):  # fetched and scored here, or ANN
                monkeypatch.setattr(milvus_module, "EXACT_AMONG", exact_among)
                for k in (1, 5, size):
                    assert_same_hits(store.top_among(q, among, k), exact.top_among(q, among, k))
        rows = exact.top(q, 10).rows
        assert np.array_equal(store.best_images(q, rows), exact.best_images(q, rows))
    quoted = [index.products.find(name) for name in index.products if QUOTED in name]
    assert quoted and set(store.top_among(unit(rng), np.array(quoted), 10).rows) == set(quoted)
    store.close()


@pytest.mark.parametrize("pooling", ["max", "score-max"])
def test_tiny_model_index_gives_the_exact_results(pooling, synthetic_index, tiny_embedder, lite, tmp_path):
    index_dir = tmp_path / "idx"
    shutil.copytree(synthetic_index, index_dir)
    meta = json.loads((index_dir / "meta.json").read_text())
    (index_dir / "meta.json").write_text(json.dumps({**meta, "pooling": pooling}))
    publish(index_dir, lite, progress=False)
    index = Index.load(index_dir)
    store, exact = MilvusStore.open(index, settings(lite)), ExactStore(index)
    for text in ("red top", "blue trousers", "yellow dress", "navy skirt"):
        q = tiny_embedder.encode_texts([text])[0]
        for k in (1, 3, len(PRODUCT_COLOURS)):
            assert_same_hits(store.top(q, k), exact.top(q, k))
        rows = exact.top(q, len(PRODUCT_COLOURS)).rows
        assert_same_hits(store.top_among(q, rows[::2], 2), exact.top_among(q, rows[::2], 2))
        assert np.array_equal(store.best_images(q, rows), exact.best_images(q, rows))
    store.close()


def test_l2_and_flat_give_cosines_too(lite, tmp_path):
    index_dir = random_index(tmp_path / "idx", products=40, seed=7, pooling="score-max")
    publish(index_dir, lite, collection="l2_flat", index_type="FLAT", metric="L2", progress=False)
    index = Index.load(index_dir)
    store, exact = MilvusStore.open(index, settings(lite, milvus_collection="l2_flat")), ExactStore(index)
    q = unit(np.random.default_rng(3))
    assert_same_hits(store.top(q, 10), exact.top(q, 10))
    assert store.describe()["metric"] == "L2"
    store.close()


def test_products_the_local_index_lacks_are_skipped(lite, tmp_path, caplog):
    """Collections published from a newer catalog than the index a replica still serves."""
    newer = random_index(tmp_path / "newer", products=30, seed=8)
    dropped = tuple(Index.load(newer).products[:5])
    older = random_index(tmp_path / "older", products=30, seed=8, drop=dropped)
    publish(newer, lite, collection="newer", progress=False)
    index = Index.load(older)
    store, exact = MilvusStore.open(index, settings(lite, milvus_collection="newer")), ExactStore(index)
    q = unit(np.random.default_rng(4))
    with caplog.at_level("WARNING", logger="fashion.milvus"):
        got = store.top(q, 30)
        store.top(q, 30)
    assert set(got.rows) <= set(range(len(index.products))) and len(got.rows) == 25
    assert_same_hits(got, exact.top(q, 25))
    assert sum("does not have" in r.message for r in caplog.records) == 1  # warned once
    assert store.describe()["published_generation"] != store.describe()["local_generation"]
    store.close()


# ------------------------------------------------------------------ publish


def test_publish_is_idempotent_and_removes_gone_products(synthetic_catalog, synthetic_index, tiny_embedder,
                                                         bg_pipeline, tmp_path):
    from search.garments import LocalGarments
    from search.indexing.builder import build_index

    uri = str(tmp_path / "milvus.db")
    first = publish(synthetic_index, uri, progress=False)
    index = Index.load(synthetic_index)
    again = publish(synthetic_index, uri, progress=False)
    assert again["upserted"] == {"products": 0, "images": 0} and again["deleted"] == {"products": 0, "images": 0}
    assert again["unchanged"] == first["upserted"] == {"products": len(index.products),
                                                       "images": len(index.image_files)}
    assert again["index_built"] == [] and again["collections"] == first["collections"]

    gone = "6-orange-tunic-shop-666"  # rebuild from a catalog without one product: same collections
    catalog = tmp_path / "catalog"
    shutil.copytree(synthetic_catalog, catalog)
    shutil.rmtree(catalog / gone)
    smaller = tmp_path / "smaller"
    build_index(catalog, smaller, tiny_embedder, LocalGarments(bg_pipeline), progress=False)
    after = publish(smaller, uri, progress=False)
    assert after["collections"] == first["collections"]
    images_of_gone = len(index.image_rows(index.products.find(gone)))
    assert after["deleted"] == {"products": 1, "images": images_of_gone}
    assert after["upserted"] == {"products": 0, "images": 0}

    client = pymilvus.MilvusClient(uri)
    names = first["collections"]
    assert client.query(names["products"], filter=f'name == "{gone}"', output_fields=["name"]) == []
    assert client.query(names["images"], filter=f'product == "{gone}"', output_fields=["key"]) == []
    left = client.query(names["products"], filter="", output_fields=["count(*)"])[0]["count(*)"]
    assert left == len(index.products) - 1
    client.close()
    store = MilvusStore.open(Index.load(smaller), settings(uri))
    q = tiny_embedder.encode_texts(["orange tunic"])[0]
    assert gone not in {store.index.products[int(r)] for r in store.top(q, 10).rows}
    assert store.describe()["published_generation"] == store.describe()["local_generation"]
    store.close()


def test_the_publish_command(lite, tmp_path, capsys):
    import argparse

    index_dir = random_index(tmp_path / "idx", products=20, seed=3)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["publish", "--index", str(index_dir), "--milvus", lite, "--collection", "cli_test",
                              "--index-type", "IVF_FLAT", "--metric", "cosine", "--index-param", "nlist=4"])
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["collections"] == {"products": "cli_test_products", "images": "cli_test_images"}
    assert report["index_type"] == "IVF_FLAT" and report["metric"] == "COSINE"
    index = Index.load(index_dir)
    store = MilvusStore.open(index, settings(lite, milvus_collection="cli_test"))
    q = unit(np.random.default_rng(2))
    assert_same_hits(store.top(q, 5), ExactStore(index).top(q, 5))
    assert store.describe()["index_type"] == "IVF_FLAT"
    store.close()


# ------------------------------------------------------------------ another index's vectors


def test_another_index_is_refused(lite, tmp_path):
    mine = random_index(tmp_path / "mine", products=20, seed=4)
    publish(mine, lite, collection="shared", progress=False)
    other_seed = tmp_path / "other-seed"
    shutil.copytree(mine, other_seed)
    meta = json.loads((other_seed / "meta.json").read_text())
    meta["embedder"]["seed"] = 1
    (other_seed / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(VectorStoreError, match=r"shared_\w+ .*another index: embedder seed=0 there, seed=1 here"):
        MilvusStore.open(Index.load(other_seed), settings(lite, milvus_collection="shared"))

    mean = random_index(tmp_path / "mean", products=20, seed=4, pooling="mean")
    with pytest.raises(VectorStoreError, match="pooling='max' there, pooling='mean' here"):
        MilvusStore.open(Index.load(mean), settings(lite, milvus_collection="shared"))
    with pytest.raises(PublishError, match="holds another index's vectors: pooling='max' there.*--replace"):
        publish(mean, lite, collection="shared", progress=False)
    publish(mean, lite, collection="shared", replace=True, progress=False)
    MilvusStore.open(Index.load(mean), settings(lite, milvus_collection="shared")).close()

    other_weights = random_index(tmp_path / "weights", products=20, seed=4, probe_seed=9)
    assert collection_names(Index.load(other_weights)) != collection_names(Index.load(mine))


# ------------------------------------------------------------------ faults


def test_a_missing_collection_fails_check_until_published(tmp_path):
    index_dir = random_index(tmp_path / "idx", products=20, seed=5)
    uri = str(tmp_path / "fresh.db")  # a .db that does not exist yet: Milvus Lite creates it, empty
    store = MilvusStore.open(Index.load(index_dir), settings(uri))  # does not raise
    with pytest.raises(VectorStoreError, match=r"has no collection fashion_\w+_products; publish the index"):
        store.check()
    q = unit(np.random.default_rng(0))
    with pytest.raises(VectorStoreError, match="has no collection"):
        store.top(q, 3)
    publish(index_dir, uri, progress=False)  # the same process: Milvus Lite serves a .db to one process
    store.check()
    assert_same_hits(store.top(q, 3), ExactStore(Index.load(index_dir)).top(q, 3))
    store.close()


def test_configuration_errors_are_raised_at_open(tmp_path):
    index = Index.load(random_index(tmp_path / "idx", products=5))
    with pytest.raises(VectorStoreError, match="needs MILVUS_URI"):
        MilvusStore.open(index, BackendSettings(backend="milvus"))
    with pytest.raises(VectorStoreError, match="neither a path ending in .db"):
        MilvusStore.open(index, settings(str(tmp_path / "vectors")))
    with pytest.raises(VectorStoreError, match="collection name"):
        MilvusStore.open(index, settings(str(tmp_path / "x.db"), milvus_collection="1-bad name"))


def test_an_unreachable_server_fails_fast_and_hides_the_password(tmp_path):
    index = Index.load(random_index(tmp_path / "idx", products=5))
    uri = f"http://reader:s3cret@127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    store = MilvusStore.open(index, settings(uri, timeout=1.0))
    for call in (store.check, lambda: store.top(unit(np.random.default_rng(0)), 3)):
        with pytest.raises(VectorStoreError, match=r"Milvus at http://127.0.0.1:\d+ is unreachable") as caught:
            call()
        assert "s3cret" not in str(caught.value)
    assert time.monotonic() - started < 5.0
    assert "s3cret" not in json.dumps(store.describe())
    store.close()


def _lite_server(data_dir: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(data_dir),
                             "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            assert proc.poll() is None, "milvus-lite server exited"
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("milvus-lite server did not start")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_the_store_recovers_when_the_server_comes_back(tmp_path):
    """A Milvus Lite server in its own process, stopped and started again under a running store."""
    index_dir = random_index(tmp_path / "idx", products=30, seed=6)
    index = Index.load(index_dir)
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = _lite_server(tmp_path / "data", port)
    try:
        publish(index_dir, uri, progress=False)
        store = MilvusStore.open(index, settings(uri, timeout=2.0))
        q = unit(np.random.default_rng(1))
        want = ExactStore(index).top(q, 5)
        assert_same_hits(store.top(q, 5), want)
        _stop(server)
        with pytest.raises(VectorStoreError, match=r"Milvus at http://127.0.0.1:\d+"):
            store.top(q, 5)
        with pytest.raises(VectorStoreError, match="unreachable"):
            store.check()
        server = _lite_server(tmp_path / "data", port)  # restarted: it forgot which collections were loaded
        deadline = time.monotonic() + 10
        while True:
            try:
                store.check()
                break
            except VectorStoreError:
                assert time.monotonic() < deadline, "the store did not recover"
                time.sleep(0.2)
        assert_same_hits(store.top(q, 5), want)
        store.close()
    finally:
        _stop(server)


# ------------------------------------------------------------------ through the service


def test_the_service_answers_503_until_the_vectors_are_published(synthetic_index, tiny_embedder, tmp_path):
    from search import create_app

    uri = str(tmp_path / "service.db")
    config = SearchConfig(clip=ClipSettings(**TINY), index_dir=str(synthetic_index),
                          vectors=BackendSettings(backend="milvus", milvus_uri=uri))
    app = create_app(config, embedder=tiny_embedder)
    client = app.test_client()
    ready = client.get("/readyz")
    assert ready.status_code == 503 and "has no collection" in ready.json["detail"]
    response = client.post("/", json={"text": "red top", "n": 3})
    assert response.status_code == 503 and response.mimetype == "application/problem+json"
    assert "publish the index" in response.json["detail"]

    publish(synthetic_index, uri, progress=False)
    assert client.get("/readyz").status_code == 200
    exact = create_app(SearchConfig(clip=ClipSettings(**TINY), index_dir=str(synthetic_index)),
                       embedder=tiny_embedder).test_client()
    for text in ("red top", "yellow dress", "blue"):
        got = client.post("/", json={"text": text, "n": 6}).json
        want = exact.post("/", json={"text": text, "n": 6}).json
        assert [r["score"] for r in got] == pytest.approx([r["score"] for r in want], abs=1e-4)
        assert {r["product_name"] for r in got} == {r["product_name"] for r in want}
