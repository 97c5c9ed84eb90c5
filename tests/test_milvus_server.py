"""The milvus backend against a real Milvus server (2.3.5 standalone from the `milvus` package, one
for the whole test session: tests/milvus_server.py), and MILVUS_URI set as docs/milvus.md documents it.

Real server: the store's contract (publish, search, upsert of a delta, delete; filters are in
test_milvus_filters.py), two stores of one process on the same collections (a generation swap), and
the search service under traffic while the server is killed (-9), frozen (SIGSTOP) or loses a
collection. bench/milvus_faults.py prints the same scenarios' timelines. Where no server can run
these tests skip, saying why; under CI (CI=true) they fail instead.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from search.index_format import Index
from search.indexing.publish import publish
from search.vectors import VectorStoreError
from search.vectors import milvus as milvus_module
from search.vectors.exact import ExactStore
from search.vectors.milvus import MilvusStore, collection_names, pymilvus
from tests.conftest import REPO, TINY, free_port
from tests.milvus_server import (
    drop_scenario,
    freeze_scenario,
    kill_scenario,
    service_app,
    service_index,
    shared_server,
)
from tests.test_milvus import QUOTED, assert_same_hits, random_index, settings, unit

TIMEOUT = 2.0  # MILVUS_TIMEOUT of the fault tests
SLACK = 1.0  # what a request may take beyond it (the text encoder, the app, thread switches)
FAULTS = "faults"  # MILVUS_COLLECTION of the service under faults


@pytest.fixture(scope="session")
def milvus_server():
    return shared_server()


def eventually(check, timeout: float = 5.0):
    """check() once it stops raising AssertionError (a server's Bounded consistency shows a write
    up to common.gracefulTime later), at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)


# ------------------------------------------------------------------ MILVUS_URI as docs/milvus.md has it


def python(args: list[str], env: dict, timeout: float = 240) -> subprocess.CompletedProcess:
    full = {**os.environ, **env, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=full, capture_output=True, text=True,
                          timeout=timeout)


def test_pymilvus_imports_with_milvus_uri_set_to_a_db_path(tmp_path):
    env = {"MILVUS_URI": str(tmp_path / "vectors.db"), "MILVUS_CONN_TIMEOUT": "not a number"}
    plain = python(["-c", "import pymilvus"], env)
    # Why search.vectors.milvus.pymilvus() hides them: pymilvus parses them when it is imported.
    assert plain.returncode != 0 and ("Illegal uri" in plain.stderr or "not a number" in plain.stderr)
    shown = "('MILVUS_URI', 'MILVUS_CONN_TIMEOUT', 'PYTHON_DOTENV_DISABLED')"
    fixed = python(["-c", "import json, os; from search.vectors.milvus import pymilvus; pymilvus(); "
                          f"print(json.dumps({{k: os.environ.get(k) for k in {shown}}}))"], env)
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    assert json.loads(fixed.stdout.splitlines()[-1]) == {**env, "PYTHON_DOTENV_DISABLED": None}  # put back


def test_publish_and_serve_with_milvus_uri_in_the_environment(tiny_embedder, tmp_path):
    """`python -m search.index publish` (its --milvus from MILVUS_URI), then the service with
    SEARCH_BACKEND=milvus and MILVUS_URI=<path>.db, each in its own process as a user runs them."""
    index_dir = service_index(tmp_path / "index", tiny_embedder.identity, products=12)
    env = {"MILVUS_URI": str(tmp_path / "vectors.db"), "SEARCH_BACKEND": "milvus", "SEARCH_INDEX_DIR": str(index_dir),
           "SEARCH_STARTUP_IMAGE_SAMPLE": "0", "SEARCH_INDEX_POLL_S": "0", "SEARCH_IMAGE_QUERIES": "false",
           "CLIP_MODEL": TINY["model"], "CLIP_PRETRAINED": TINY["pretrained"],
           "CLIP_CONFIG_DIR": TINY["extra_config_dir"]}
    published = python(["-m", "search.index", "publish", "--index", str(index_dir)], env)
    assert published.returncode == 0, published.stderr[-2000:]
    assert json.loads(published.stdout)["upserted"]["products"] == 12
    served = python(["-c", "import json; from search import create_app; client = create_app().test_client(); "
                           "ready = client.get('/readyz'); "
                           "found = client.post('/', json={'text': 'red dress', 'n': 3}); "
                           "print(json.dumps([ready.status_code, ready.get_json(), found.status_code]))"], env)
    assert served.returncode == 0, served.stderr[-2000:]
    ready_status, ready, found_status = json.loads(served.stdout.splitlines()[-1])
    assert ready_status == 200 and ready["backend"]["backend"] == "milvus", ready
    assert found_status == 200


def test_a_503_from_the_vector_store_says_when_to_retry(tiny_embedder, tmp_path):
    index_dir = service_index(tmp_path / "index", tiny_embedder.identity, products=6)
    app = service_app(index_dir, f"http://127.0.0.1:{free_port()}", tiny_embedder, timeout=0.5)  # nothing there
    response = app.test_client().post("/", json={"text": "red dress", "n": 3})
    assert response.status_code == 503 and "unreachable" in response.json["detail"]
    assert response.headers.get("Retry-After", "").isdigit()


# ------------------------------------------------------------------ the real server


def test_the_server_listens_on_the_ports_it_was_given_only(milvus_server):
    listening = milvus_server.listening()
    if not listening:
        pytest.skip("`ss` (iproute2) is not available to list the server's sockets")
    ports = {int(address.rsplit(":", 1)[1]) for address in listening}
    given = milvus_server.ports
    assert ports <= set(given.values()), (listening, given)  # no 2379/2380, no 9091: every one picked
    assert {given[k] for k in ("proxy_port", "etcd_port", "etcd_peer_port", "metrics_port")} <= ports
    etcd = {given["etcd_port"], given["etcd_peer_port"]}
    assert all(a.startswith("127.0.0.1:") for a in listening if int(a.rsplit(":", 1)[1]) in etcd), listening


def test_the_store_contract_on_a_real_server(milvus_server, tmp_path, monkeypatch):
    """score-max (the images collection: Milvus 2.3 has no grouping search, so the store groups
    itself), names that need quoting, a publish that deletes, one that upserts them back."""
    uri = milvus_server.uri
    full_dir = random_index(tmp_path / "full", pooling="score-max", products=60, seed=11)
    full = Index.load(full_dir)
    first = publish(full_dir, uri, collection="contract", progress=False)
    assert first["upserted"] == {"products": len(full.products), "images": len(full.image_files)}
    store, exact = MilvusStore.open(full, settings(uri, milvus_collection="contract")), ExactStore(full)
    assert store.describe()["index_type"] == "HNSW" and not store._groups  # a 2.3 server
    monkeypatch.setattr(milvus_module, "CHUNK_KEYS", 7)  # several key chunks per call
    rng = np.random.default_rng(1)
    everything = len(full.products)
    for _ in range(3):
        q = unit(rng)
        for k in (1, 5, everything):
            assert_same_hits(store.top(q, k), exact.top(q, k))
        among = rng.choice(everything, 20, replace=False)
        for exact_among in (milvus_module.EXACT_AMONG, 0):  # fetched and scored here, or the ANN with `in`
            monkeypatch.setattr(milvus_module, "EXACT_AMONG", exact_among)
            assert_same_hits(store.top_among(q, among, 5), exact.top_among(q, among, 5))
        rows = exact.top(q, 10).rows
        assert np.array_equal(store.best_images(q, rows), exact.best_images(q, rows))
    quoted = [full.products.find(name) for name in full.products if QUOTED in name]
    assert quoted and set(store.top_among(unit(rng), np.array(quoted), 10).rows) == set(quoted)

    gone = tuple(full.products[:3])  # the first is a name with quotes: deleted through a quoted `in`
    assert any(QUOTED in name for name in gone)
    smaller_dir = random_index(tmp_path / "smaller", pooling="score-max", products=60, seed=11, drop=gone)
    images_gone = sum(len(full.image_rows(full.products.find(name))) for name in gone)
    deleted = publish(smaller_dir, uri, collection="contract", progress=False)
    assert deleted["deleted"] == {"products": 3, "images": images_gone}
    assert deleted["upserted"] == {"products": 0, "images": 0} and deleted["index_built"] == []
    smaller = Index.load(smaller_dir)
    small_store = MilvusStore.open(smaller, settings(uri, milvus_collection="contract"))
    q = unit(rng)
    eventually(lambda: assert_same_hits(small_store.top(q, everything), ExactStore(smaller).top(q, everything)))

    back = publish(full_dir, uri, collection="contract", progress=False)  # a delta: those three again
    assert back["upserted"] == {"products": 3, "images": images_gone}
    assert back["deleted"] == {"products": 0, "images": 0}
    eventually(lambda: assert_same_hits(store.top(q, everything), exact.top(q, everything)))
    again = publish(full_dir, uri, collection="contract", progress=False)
    assert again["upserted"] == {"products": 0, "images": 0} and again["deleted"] == {"products": 0, "images": 0}
    small_store.close()
    store.close()


@pytest.fixture(scope="module")
def service(milvus_server, tiny_embedder, tmp_path_factory):
    """The search service (MILVUS_TIMEOUT=2 s) over an index published to the real server."""
    index_dir = service_index(tmp_path_factory.mktemp("faults") / "index", tiny_embedder.identity)
    publish(index_dir, milvus_server.uri, collection=FAULTS, progress=False)
    app = service_app(index_dir, milvus_server.uri, tiny_embedder, timeout=TIMEOUT, collection=FAULTS)
    ready = app.test_client().get("/readyz")
    assert ready.status_code == 200, ready.get_json()
    return app, index_dir


MUTATING = ("create_collection", "drop_collection", "load_collection", "release_collection", "create_index",
            "drop_index", "upsert", "insert", "delete", "flush", "alter_collection_properties")


@pytest.mark.parametrize("where", ["lite", "server"])
def test_closing_a_store_leaves_another_on_the_same_collections_serving(where, request, tmp_path, monkeypatch):
    """A generation swap: a new store opened while the old one serves (opening only verifies:
    nothing created, loaded or released), then the old one closed while the new one serves."""
    if where == "server":
        _, index_dir = request.getfixturevalue("service")
        uri, collection = request.getfixturevalue("milvus_server").uri, FAULTS
    else:
        index_dir = random_index(tmp_path / "index", products=30, seed=2)
        uri, collection = str(tmp_path / "vectors.db"), None
        publish(index_dir, uri, progress=False)
    index = Index.load(index_dir)
    old = MilvusStore.open(index, settings(uri, milvus_collection=collection, timeout=TIMEOUT))
    q = np.random.default_rng(3).normal(size=index.product_embeddings.shape[1]).astype(np.float32)
    q /= np.linalg.norm(q)
    want = ExactStore(index).top(q, 5)
    assert_same_hits(old.top(q, 5), want)

    client_class = pymilvus().MilvusClient
    changed = []
    for name in MUTATING:
        original = getattr(client_class, name)
        monkeypatch.setattr(client_class, name, lambda self, *a, _name=name, _original=original, **kw:
                            changed.append(_name) or _original(self, *a, **kw))
    new = MilvusStore.open(index, settings(uri, milvus_collection=collection, timeout=TIMEOUT))
    assert changed == []  # opened by verifying only

    answers, failures, stop = [], [], threading.Event()

    def serve():
        while not stop.is_set():
            try:
                answers.append(new.top(q, 5))
            except Exception as exc:  # noqa: BLE001 - any failure is the finding
                failures.append(repr(exc))
            time.sleep(0.01)

    workers = [threading.Thread(target=serve, daemon=True) for _ in range(3)]
    for worker in workers:
        worker.start()
    time.sleep(0.3)
    old.close()
    time.sleep(1.0)  # the new store keeps serving after the old one's connection is gone
    stop.set()
    for worker in workers:
        worker.join(timeout=10)
    assert failures == [] and len(answers) > 10
    for got in answers:
        assert_same_hits(got, want)
    with pytest.raises(VectorStoreError, match="closed"):
        old.top(q, 5)
    new.check()  # still verified: the collections were neither released nor dropped
    new.close()
    assert changed == []


# ------------------------------------------------------------------ faults under traffic


def test_a_collection_dropped_under_the_service_names_the_publish_command(service, milvus_server):
    app, index_dir = service
    names = collection_names(Index.load(index_dir), FAULTS)
    timeline = drop_scenario(app, milvus_server, names["products"],
                             lambda: publish(index_dir, milvus_server.uri, collection=FAULTS, progress=False))
    print(json.dumps(timeline))
    command = f"python -m search.index publish --index {index_dir} --milvus {milvus_server.uri} --collection {FAULTS}"
    assert timeline["first_503_s"] is not None and timeline["first_503_s"] <= TIMEOUT + SLACK, timeline
    assert command in timeline["detail_503"], timeline
    status, detail = timeline["readyz_down"]
    assert status == 503 and command in detail, timeline
    assert not timeline["crashes"] and timeline["answers_other_errors"] == [], timeline
    assert timeline["recovered_s"] is not None and timeline["same_results_after"], timeline


def test_kill_9_under_traffic_then_a_restart(service, milvus_server):
    app, _ = service
    timeline = kill_scenario(app, milvus_server, outage_s=3.0)
    print(json.dumps(timeline))
    assert timeline["first_503_s"] is not None and timeline["first_503_s"] <= TIMEOUT + SLACK, timeline
    assert timeline["slowest_503_s"] <= TIMEOUT + SLACK, timeline
    assert "Milvus at" in timeline["detail_503"], timeline
    status, detail = timeline["readyz_down"]
    assert status == 503 and "unreachable" in detail, timeline
    assert not timeline["crashes"] and timeline["answers_other_errors"] == [], timeline
    assert timeline["recovered_s"] is not None and timeline["recovered_s"] <= 30, timeline
    assert timeline["same_results_after"], timeline


def test_a_frozen_server_fails_requests_at_the_timeout_without_a_pile_up(service, milvus_server):
    app, _ = service
    timeline = freeze_scenario(app, milvus_server, frozen_s=10.0, concurrent=6)
    print(json.dumps(timeline))
    assert timeline["first_503_s"] is not None and timeline["first_503_s"] <= TIMEOUT + SLACK, timeline
    assert timeline["concurrent_status"] == [503], timeline
    assert max(timeline["concurrent_s"]) <= TIMEOUT + SLACK, timeline  # none waited behind another
    assert timeline["slowest_while_frozen_s"] <= TIMEOUT + SLACK, timeline
    assert not timeline["crashes"] and timeline["answers_other_errors"] == [], timeline
    assert timeline["recovered_s"] is not None and timeline["recovered_s"] <= 10, timeline
    assert timeline["same_results_after"], timeline
