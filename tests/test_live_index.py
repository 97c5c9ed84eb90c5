"""A living index (search/live.py): a worker serves new index generations without a restart,
finishes in-flight requests on the old one, refuses a generation of other models and keeps
serving; then the same under real gunicorn with the shipped settings and bounded load."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections import Counter

import pytest
import requests

from search.config import ClipSettings, SearchConfig
from search.index_format import read_meta
from search.index_guard import READERS_FILE
from tests.conftest import TINY, server_log, start_gunicorn, stop
from tests.generations import write_generation_with

NEW = "7-green-coat-shop-777"
LIKE = "1-red-top-shop-111"


@pytest.fixture
def served(synthetic_index, synthetic_catalog, tmp_path, tiny_embedder, local_garments):
    """The service over its own copy of the index and catalog, polling meta.json every 0.1 s."""
    from search import create_app

    index_dir, catalog = tmp_path / "index", tmp_path / "catalog"
    shutil.copytree(synthetic_index, index_dir)
    shutil.copytree(synthetic_catalog, catalog)
    config = SearchConfig(clip=ClipSettings(**TINY), index_dir=str(index_dir), catalog_dir=str(catalog),
                          index_poll_s=0.1)
    app = create_app(config, embedder=tiny_embedder, garments=local_garments)
    assert app.extensions["readiness"].ready, app.extensions["readiness"].error
    yield app, index_dir, catalog
    app.extensions["live_index"].stop()


def wait_for(condition, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_a_new_generation_is_served_without_a_restart(served):
    app, index_dir, catalog = served
    client = app.test_client()
    first = client.get("/readyz")
    old = first.json["index_generation"]
    assert first.headers["X-Index-Generation"] == old == read_meta(index_dir)["generation"]
    assert client.get(f"/products/{NEW}").status_code == 404

    started = time.monotonic()
    new = write_generation_with(index_dir, catalog, NEW, LIKE)["generation"]
    assert wait_for(lambda: client.get(f"/products/{NEW}").status_code == 200), "not visible within 5 s"
    visible_s = time.monotonic() - started
    assert visible_s < 5
    answer = client.post("/", json={"text": "red top", "n": 7})
    assert answer.headers["X-Index-Generation"] == new and NEW in {r["id"] for r in answer.json}
    ready = client.get("/readyz").json
    assert ready["index_generation"] == new and ready["products"] == 7
    assert client.get("/healthz").headers["X-Index-Generation"] == new  # every response names it
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'search_index_generations_total{outcome="swapped"} 1.0' in metrics
    assert 'search_index_generations_total{outcome="initial"} 1.0' in metrics


def test_in_flight_requests_finish_on_the_old_generation_which_is_then_released(served):
    app, index_dir, catalog = served
    live = app.extensions["live_index"]
    live.stop()  # switched by hand below, so the test controls when
    in_flight = live.acquire()  # a request that started before the switch
    old_folder = index_dir / in_flight.name
    write_generation_with(index_dir, catalog, NEW, LIKE)
    assert live.check_now()
    assert live.current is not in_flight and in_flight.retired and not in_flight.closed
    results = in_flight.searcher.search("red top", 7)  # still answers, from the old arrays
    assert NEW not in {r.product_id for r in results} and len(results) == 6
    assert old_folder.is_dir()
    live.release(in_flight)
    assert in_flight.closed and in_flight.index is None and not in_flight.hold.held
    # Nothing holds it any more: the next writer may remove it.
    fd = os.open(old_folder / READERS_FILE, os.O_RDONLY)
    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # would raise BlockingIOError if a reader held it
    finally:
        os.close(fd)
    assert not live.check_now()  # meta.json unchanged: nothing to do


def test_a_generation_of_other_models_is_refused_and_the_old_one_keeps_serving(served, caplog):
    app, index_dir, catalog = served
    client = app.test_client()
    live = app.extensions["live_index"]
    live.stop()
    old = live.current.name
    embedder = dict(read_meta(index_dir)["embedder"], seed=12345)
    write_generation_with(index_dir, catalog, NEW, LIKE, meta_changes={"embedder": embedder})
    assert not live.check_now()
    assert live.current.name == old
    answer = client.post("/", json={"text": "red top", "n": 3})
    assert answer.status_code == 200 and answer.headers["X-Index-Generation"] == old
    ready = client.get("/readyz").json
    assert ready["index_generation"] == old and "seed" in ready["last_refused_generation"]
    assert 'search_index_generations_total{outcome="refused"} 1.0' in client.get("/metrics").get_data(as_text=True)
    assert any("index_generation_refused" in r.message for r in caplog.records)
    assert not live.check_now()  # not tried again until meta.json changes
    new = write_generation_with(index_dir, catalog, "8-grey-scarf-shop-888", LIKE,
                                meta_changes={"embedder": read_meta(index_dir)["embedder"] | {"seed": 0}})
    assert live.check_now() and live.current.name == new["generation"]
    assert "last_refused_generation" not in client.get("/readyz").json


def test_a_broken_generation_is_refused(served):
    app, index_dir, catalog = served
    live = app.extensions["live_index"]
    live.stop()
    old = live.current.name
    meta = write_generation_with(index_dir, catalog, NEW, LIKE)
    os.unlink(index_dir / meta["generation"] / "product_embeddings.npy")
    assert not live.check_now() and live.current.name == old
    assert app.test_client().post("/", json={"text": "red top", "n": 3}).status_code == 200


# --------------------------------------------------------------------------- real gunicorn


def worker_pids(master: int) -> set[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(master)], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


@pytest.mark.timeout(240)
def test_three_generations_in_a_row_under_load_cost_no_request(synthetic_index, synthetic_catalog, tmp_path):
    """The shipped settings (2 workers x 2 threads), 4 clients: three generations published one
    after the other; no request fails, each new product is visible on every worker within 10 s."""
    index_dir, catalog = tmp_path / "index", tmp_path / "catalog"
    shutil.copytree(synthetic_index, index_dir)
    shutil.copytree(synthetic_catalog, catalog)
    env = {"CLIP_MODEL": TINY["model"], "CLIP_PRETRAINED": "", "CLIP_CONFIG_DIR": TINY["extra_config_dir"],
           "SEARCH_INDEX_DIR": str(index_dir), "SEARCH_CATALOG_DIR": str(catalog), "SEARCH_IMAGE_QUERIES": "0",
           "GUNICORN_MAX_REQUESTS": "0"}
    proc, base = start_gunicorn("search:create_app()", env)
    statuses: Counter = Counter()
    stop_load = threading.Event()

    def client(i: int) -> None:
        session = requests.Session()
        while not stop_load.is_set():
            try:
                statuses[session.post(base + "/", json={"text": f"red top {i}", "n": 3}, timeout=30).status_code] += 1
            except requests.RequestException as exc:
                statuses[type(exc).__name__] += 1

    clients = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(4)]

    def everywhere(generation: str) -> bool:
        seen = {}
        for _ in range(12):  # new connections: the kernel spreads them over both workers
            ready = requests.get(base + "/readyz", timeout=5)
            if ready.status_code == 200:
                seen[ready.json()["pid"]] = ready.json()["index_generation"]
        return set(seen) == workers and set(seen.values()) == {generation}

    try:
        workers = worker_pids(proc.pid)
        assert len(workers) == 2
        assert wait_for(lambda: everywhere(read_meta(index_dir)["generation"]), timeout=60)  # both loaded
        for client_thread in clients:
            client_thread.start()
        for n, product in enumerate(("7-green-coat-shop-777", "8-grey-scarf-shop-888", "9-white-shirt-shop-999")):
            started = time.monotonic()
            generation = write_generation_with(index_dir, catalog, product, LIKE)["generation"]
            assert wait_for(lambda: everywhere(generation), timeout=10), f"generation {n + 1} not on every worker in 10 s"
            visible = requests.get(f"{base}/products/{product}", timeout=5)
            assert visible.status_code == 200 and visible.headers["X-Index-Generation"] == generation
            assert time.monotonic() - started < 10
        stop_load.set()
        for client_thread in clients:
            client_thread.join(timeout=30)
        assert set(statuses) == {200} and statuses[200] > 20, (statuses, server_log(proc))
        assert worker_pids(proc.pid) == workers  # no worker restarted: the generations were swapped in
        log = server_log(proc, tail=None)
        assert log.count('"event": "index_generation_swapped"') == 6, log[-3000:]
        # Only the current generation and those a worker still holds remain (the writers remove the rest).
        held = [p.name for p in index_dir.glob("gen-*")]
        assert json.loads((index_dir / "meta.json").read_text())["generation"] in held
    finally:
        stop_load.set()
        stop(proc)


def test_verify_checks_every_image_offline(synthetic_index, synthetic_catalog, tmp_path, capsys):
    from search.indexing.cli import main

    catalog = tmp_path / "catalog"
    shutil.copytree(synthetic_catalog, catalog)
    assert main(["verify", "--index", str(synthetic_index), "--catalog", str(catalog), "--decode",
                 "--no-progress"]) == 0
    assert "ok" in capsys.readouterr().out
    (catalog / "3-yellow-dress-shop-333" / "photo-2.jpg").unlink()
    (catalog / "5-navy-skirt-shop-555" / "photo-1.jpg").write_bytes(b"not a jpeg")
    report = tmp_path / "report.json"
    assert main(["verify", "--index", str(synthetic_index), "--catalog", str(catalog), "--decode",
                 "--report", str(report), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "1 missing: 3-yellow-dress-shop-333/photo-2.jpg" in out and "1 undecodable" in out
    found = json.loads(report.read_text())
    assert found["missing"] == ["3-yellow-dress-shop-333/photo-2.jpg"] and not found["ok"]
    assert found["undecodable"] == ["5-navy-skirt-shop-555/photo-1.jpg"] and found["checked"] == 12
