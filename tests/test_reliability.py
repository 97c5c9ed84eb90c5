"""Real gunicorn with the shipped config: worker recycling, reload (SIGHUP) and graceful stop
(SIGTERM) cost no request. Bounded: a few hundred requests per service, all on 127.0.0.1."""
from __future__ import annotations

import io
import os
import re
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests import scenes
from tests.conftest import TINY, send_bytes, server_log, start_gunicorn, stop

RECYCLING = {"GUNICORN_WORKERS": "2", "GUNICORN_THREADS": "2", "GUNICORN_MAX_REQUESTS": "30",
             "GUNICORN_MAX_REQUESTS_JITTER": "10"}


def photo_bytes(width: int = 600, height: int = 800) -> bytes:
    buf = io.BytesIO()
    scenes.street_photo(width, height)[0].save(buf, "JPEG", quality=90)
    return buf.getvalue()


def hammer(send, count: int, clients: int, deadline_s: float = 240.0) -> Counter:
    """`count` requests from `clients` threads, each with its own keep-alive session; returns the
    statuses (exception names for transport errors). Stops at the deadline whatever happens."""
    statuses: Counter = Counter()
    lock = threading.Lock()
    numbers = iter(range(count))
    stop_at = time.monotonic() + deadline_s

    def client() -> None:
        session = requests.Session()
        while time.monotonic() < stop_at:
            with lock:
                i = next(numbers, None)
            if i is None:
                return
            try:
                status = send(session, i)
            except requests.RequestException as exc:
                status = type(exc).__name__
            with lock:
                statuses[status] += 1

    with ThreadPoolExecutor(clients) as pool:
        for _ in range(clients):
            pool.submit(client)
    return statuses


def recycled_workers(proc) -> int:
    return len(re.findall(r"Autorestarting worker", server_log(proc, tail=None)))


@pytest.fixture(scope="module")
def search_env(synthetic_index):
    return {"CLIP_MODEL": TINY["model"], "CLIP_PRETRAINED": "", "CLIP_CONFIG_DIR": TINY["extra_config_dir"],
            "SEARCH_INDEX_DIR": str(synthetic_index)}


def test_search_recycling_costs_no_request(search_env):
    proc, base = start_gunicorn("search:create_app()", {**search_env, **RECYCLING})
    try:
        statuses = hammer(lambda s, i: s.post(base + "/", json={"text": f"red top {i}", "n": 3},
                                              timeout=60).status_code, 300, 6)
        assert statuses == Counter({200: 300}), (statuses, server_log(proc))
        assert recycled_workers(proc) >= 5  # ~300 / 35: workers really were recycled meanwhile
    finally:
        stop(proc)


def test_bgremoval_recycling_costs_no_request(oracle_weights):
    body = photo_bytes()
    proc, base = start_gunicorn("bgremoval:create_app()", {"U2NET_HOME": str(oracle_weights), **RECYCLING})
    try:
        statuses = hammer(lambda s, i: s.post(base + "/", data=body, headers={"Content-Type": "image/jpeg"},
                                              timeout=60).status_code, 240, 6)
        assert statuses == Counter({200: 240}), (statuses, server_log(proc))
        assert recycled_workers(proc) >= 4
    finally:
        stop(proc)


def test_reload_with_sighup_costs_no_request(search_env):
    proc, base = start_gunicorn("search:create_app()", search_env)
    try:
        def send(session, i):
            if i in (40, 120):  # two reloads while traffic flows: every worker is replaced
                os.kill(proc.pid, signal.SIGHUP)
            return session.post(base + "/", json={"text": f"blue dress {i}", "n": 2}, timeout=60).status_code
        statuses = hammer(send, 200, 4)
        assert statuses == Counter({200: 200}), (statuses, server_log(proc))
        assert server_log(proc, tail=None).count("Handling signal: hup") == 2
    finally:
        stop(proc)


def test_graceful_stop_with_sigterm_finishes_in_flight_requests(oracle_weights, upstream):
    """Requests still fetching their image when SIGTERM arrives are answered, not dropped."""
    body = photo_bytes()
    arrived = threading.Semaphore(0)

    def slow_image(handler):
        arrived.release()
        time.sleep(1.5)  # the request is in flight in the worker while the server is told to stop
        send_bytes(handler, body)

    upstream.routes["/slow.jpg"] = slow_image
    proc, base = start_gunicorn("bgremoval:create_app()", {
        "U2NET_HOME": str(oracle_weights), "FETCH_ALLOW_HOSTS": "127.0.0.1", "FETCH_READ_TIMEOUT": "5",
        "GUNICORN_WORKERS": "2", "GUNICORN_THREADS": "2"})
    try:
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(requests.post, base + "/", json={"url": upstream.base_url + "/slow.jpg"},
                                   timeout=30) for _ in range(4)]
            for _ in range(4):
                assert arrived.acquire(timeout=20), "the requests never reached the upstream"
            proc.send_signal(signal.SIGTERM)
            answers = [f.result() for f in futures]
        assert [a.status_code for a in answers] == [200] * 4, server_log(proc)
        assert all(a.headers["Content-Type"] == "image/jpeg" for a in answers)
        assert proc.wait(timeout=30) == 0
    finally:
        stop(proc)
