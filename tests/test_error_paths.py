"""Error paths: a backend's KeyError in /similar is a 500 (an unknown product stays a
404); an unexpected answer of the bg-removal service is a 503 that says why (and the service goes
on serving); one thread-safe connection pool serves every request thread of a worker; and a
speculative cloth-model run never outlives the request whose person step failed."""
from __future__ import annotations

import http.server
import io
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image
from werkzeug.serving import make_server

from tests import scenes
from tests.colour_embedder import ColourEmbedder
from tests.test_product_garments import build, outfit, png, search_app, write_catalog

TUNIC = "1-tunic-shop-111"
JEANS = "2-jeans-shop-222"


@pytest.fixture(scope="module")
def colour_embedder():
    return ColourEmbedder()


@pytest.fixture(scope="module")
def outfit_index(tmp_path_factory, colour_embedder, local_garments):
    catalog = write_catalog(tmp_path_factory.mktemp("outfits"), {TUNIC: [outfit(0)], JEANS: [outfit(1)]})
    out = tmp_path_factory.mktemp("outfit-index")
    build(catalog, out, colour_embedder, local_garments)
    return out


def assert_problem(response, status: int) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    assert response.mimetype == "application/problem+json"
    assert response.json["status"] == status and response.json["detail"]
    return response.json


# ------------------------------------------------------------------ /similar


def test_a_key_error_inside_the_backend_is_a_500_with_the_request_id(outfit_index, colour_embedder,
                                                                     local_garments, monkeypatch):
    app = search_app(outfit_index, colour_embedder, local_garments)
    client = app.test_client()
    store = app.extensions["live_index"].current.searcher.store

    def broken_top(*args, **kwargs):  # a bug in a vector backend, not a missing product
        raise KeyError("internal-row-7")

    monkeypatch.setattr(store, "top", broken_top)
    answer = client.get(f"/products/{TUNIC}/similar", headers={"X-Request-ID": "similar-keyerror-1"})
    body = assert_problem(answer, 500)
    assert body["request_id"] == "similar-keyerror-1" and answer.headers["X-Request-ID"] == "similar-keyerror-1"
    assert "internal-row-7" not in answer.get_data(as_text=True)  # internals stay in the log
    # a product the index does not have is still the client's 404, whatever the backend does
    assert "no-such-product" in assert_problem(client.get("/products/no-such-product/similar"), 404)["detail"]


# ------------------------------------------------------------------ the bg-removal service's answers


class AnswerFaults:
    """WSGI middleware in front of the real bg-removal app: with `fault` set, its answers to POSTs
    (or to GET /pipeline, for the faults named pipeline-*) come back altered in that way."""

    def __init__(self, app):
        self.app, self.fault = app, None
        self.cookies_received = 0
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        if environ.get("HTTP_COOKIE"):
            with self.lock:
                self.cookies_received += 1
        captured = {}

        def keep(status, headers, exc_info=None):
            captured["status"], captured["headers"] = status, headers

        body = b"".join(self.app(environ, keep))
        fault = self.fault
        is_pipeline = environ["PATH_INFO"] == "/pipeline"
        if fault is None or fault.startswith("pipeline-") != is_pipeline:
            return self._answer(start_response, captured["status"], captured["headers"], body)
        if fault == "html":
            return self._answer(start_response, "200 OK", [("Content-Type", "text/html")],
                                b"<html><body><h1>Gateway says hello</h1></body></html>")
        if fault == "truncated-png":  # correctly framed, but the PNG stops half-way
            return self._answer(start_response, "200 OK", [("Content-Type", "image/png")], body[:len(body) // 2])
        if fault == "json-instead-of-png":
            return self._answer(start_response, "200 OK", [("Content-Type", "application/json")], b'{"ok": true}')
        if fault == "png-labelled-json":
            return self._answer(start_response, "200 OK", [("Content-Type", "application/json")], body)
        if fault == "undecodable-png":
            return self._answer(start_response, "200 OK", [("Content-Type", "image/png")], b"\x89PNG\r\n\x1a\n junk")
        if fault == "png-without-alpha":
            rgb = io.BytesIO()
            Image.new("RGB", (40, 60), (200, 30, 30)).save(rgb, "PNG")
            return self._answer(start_response, "200 OK", [("Content-Type", "image/png")], rgb.getvalue())
        if fault == "pipeline-json-array":
            return self._answer(start_response, "200 OK", [("Content-Type", "application/json")], b"[1, 2]")
        if fault == "pipeline-html":
            return self._answer(start_response, "200 OK", [("Content-Type", "text/html")], b"<html>login</html>")
        raise AssertionError(f"unknown fault {fault}")

    @staticmethod
    def _answer(start_response, status, headers, body):
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        # a cookie on every answer, as a load balancer's sticky sessions set: a client must not echo it
        start_response(status, [*headers, ("Content-Length", str(len(body))), ("Set-Cookie", "affinity=node-1")])
        return [body]


@pytest.fixture(scope="module")
def faulty_bg(bg_app):
    """The real bg-removal app behind AnswerFaults, served on 127.0.0.1 (werkzeug, threaded)."""
    faults = AnswerFaults(bg_app.wsgi_app)
    server = make_server("127.0.0.1", 0, faults, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    faults.url = f"http://127.0.0.1:{server.server_port}/"
    yield faults
    faults.fault = None
    server.shutdown()


WHAT_IS_WRONG = {  # fault -> words the 503's detail must hold (for POST /, for POST /labels)
    "html": ("text/html", "text/html"),
    "truncated-png": ("undecodable PNG", "undecodable PNG"),
    "json-instead-of-png": ("application/json", "application/json"),
    "png-labelled-json": ("application/json", "application/json"),
    "undecodable-png": ("undecodable PNG", "undecodable PNG"),
    "png-without-alpha": ("no alpha", "not a label map"),  # an RGB picture of another size
    "pipeline-json-array": ("GET /pipeline", "GET /pipeline"),
    "pipeline-html": ("GET /pipeline", "GET /pipeline"),
}


@pytest.mark.parametrize("query", ["/embed", "/?n=2"])  # POST / (a garment), POST /labels (each garment)
@pytest.mark.parametrize("fault", list(WHAT_IS_WRONG))
def test_an_unexpected_answer_of_the_bg_service_is_a_503_that_says_why(outfit_index, colour_embedder, faulty_bg,
                                                                       caplog, fault, query):
    from search.garments import RemoteGarments

    client = search_app(outfit_index, colour_embedder, RemoteGarments(faulty_bg.url, retries=0)).test_client()
    photo = png(outfit(0))
    faulty_bg.fault = fault
    try:
        with caplog.at_level(logging.WARNING):
            answer = client.post(query, data=photo, content_type="image/png")
    finally:
        faulty_bg.fault = None
    body = assert_problem(answer, 503)
    reason = WHAT_IS_WRONG[fault][query != "/embed"]
    assert reason in body["detail"] and "bg-removal service" in body["detail"], body["detail"]
    assert answer.headers["Retry-After"] == "5"  # as the garment step's other 503s
    assert any(reason in record.getMessage() and record.levelno >= logging.WARNING
               for record in caplog.records), [r.getMessage() for r in caplog.records]
    # the service goes on serving: the same app answers the same photo once the bg service is sane
    again = client.post(query, data=photo, content_type="image/png")
    assert again.status_code == 200, again.get_data(as_text=True)[:500]
    assert client.post("/", json={"text": "red top", "n": 1}).status_code == 200


class CutShort(http.server.BaseHTTPRequestHandler):
    """Answers 8 of the 5000 bytes it promises, then closes the connection (HTTP/1.0): the bg
    service's worker died mid-answer."""

    def log_message(self, *args):
        pass

    def do_POST(self):  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", "5000")
        self.end_headers()
        self.wfile.write(b"\x89PNG\r\n\x1a\n")


def test_a_connection_cut_mid_answer_is_a_503(colour_embedder, outfit_index):
    from search.garments import RemoteGarments

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), CutShort)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        remote = RemoteGarments(f"http://127.0.0.1:{server.server_address[1]}/", retries=0, timeout=30)
        remote._identity = {"shared": {"working_max_side": 1024}}  # not under test: the POST is
        client = search_app(outfit_index, colour_embedder, remote).test_client()
        body = assert_problem(client.post("/?n=2", data=png(outfit(0)), content_type="image/png"), 503)
        assert "bg-removal service" in body["detail"]
    finally:
        server.shutdown()


# ------------------------------------------------------------------ one client for every thread


def test_request_threads_share_one_thread_safe_pool_and_no_state(faulty_bg):
    """8 threads x 3 garment calls through one RemoteGarments at once: each answer is the garment
    of its own photo; the connections are pooled (far fewer than the calls); and nothing an
    answer set (a cookie) is sent with the next request, which a requests.Session shared by
    every thread does."""
    import urllib3

    from search.garments import RemoteGarments
    from shared.images import decode_opened, open_image

    remote = RemoteGarments(faulty_bg.url, retries=1, backoff=0.01)
    cookies_before = faulty_bg.cookies_received
    outfits = [(scenes.UPPER, scenes.LOWER), (scenes.LOWER, scenes.UPPER), (scenes.FULL, scenes.LOWER),
               (scenes.UPPER, scenes.FULL)]
    photos = [decode_opened(open_image(png(outfit(0, top, bottom)), max_pixels=10**7), max_side=1024)
              for top, bottom in outfits]
    expected = [np.asarray(remote.garment(photo).picture) for photo in photos]  # one at a time
    assert all(not np.array_equal(a, b) for i, a in enumerate(expected) for b in expected[i + 1:])
    started = threading.Barrier(8, timeout=30)

    def calls(thread: int) -> list[bool]:
        started.wait()  # every thread calls at the same moment
        return [np.array_equal(np.asarray(remote.garment(photos[(thread + i) % 4]).picture),
                               expected[(thread + i) % 4]) for i in range(3)]

    with ThreadPoolExecutor(8) as pool:
        answers = [ok for oks in pool.map(calls, range(8)) for ok in oks]
    assert answers == [True] * 24
    assert faulty_bg.cookies_received == cookies_before
    assert isinstance(remote.http, urllib3.PoolManager)  # documented thread-safe, unlike requests.Session
    # pooled: 28 calls over at most one connection per thread
    assert len(remote.http.pools) == 1 and remote.http.connection_from_url(faulty_bg.url).num_connections <= 8


# ------------------------------------------------------------------ the speculative cloth run


class GatedCloth:
    """The oracle cloth model, counting its runs; each run holds until `release` is set."""

    def __init__(self, real):
        self.real = real
        self.started, self.release, self.finished = threading.Event(), threading.Event(), threading.Event()
        self.runs = 0

    def class_probabilities(self, *args, **kwargs):
        self.runs += 1
        self.started.set()
        self.release.wait(timeout=30)
        try:
            return self.real.class_probabilities(*args, **kwargs)
        finally:
            self.finished.set()


class FailingPerson:
    """A person model that fails once the cloth run is under way (or straight away, `wait=False`)."""

    def __init__(self, cloth: GatedCloth, wait: bool = True):
        self.cloth, self.wait = cloth, wait

    def mattes(self, images):
        if self.wait:
            assert self.cloth.started.wait(timeout=30), "the speculative cloth run never started"
            # let the cloth run go on after the failure: only a join makes the request wait for it
            threading.Timer(0.3, self.cloth.release.set).start()
        raise RuntimeError("person model failed")


def test_a_failing_person_step_waits_for_the_running_cloth_run(bg_models):
    from bgremoval.config import PipelineSettings
    from bgremoval.pipeline import GarmentPipeline

    cloth = GatedCloth(bg_models.cloth)
    pipeline = GarmentPipeline(replace(bg_models, person=FailingPerson(cloth), cloth=cloth),
                               PipelineSettings(concurrent_models=True))
    with pytest.raises(RuntimeError, match="person model failed"):
        pipeline.garment_masks([outfit(0)])
    assert cloth.finished.is_set(), "the cloth run outlived the request"
    assert cloth.runs == 1


def test_a_failing_person_step_cancels_a_cloth_run_not_yet_started(bg_models):
    from bgremoval.config import PipelineSettings
    from bgremoval.pipeline import GarmentPipeline

    cloth = GatedCloth(bg_models.cloth)
    cloth.release.set()
    pipeline = GarmentPipeline(replace(bg_models, person=FailingPerson(cloth, wait=False), cloth=cloth),
                               PipelineSettings(concurrent_models=True))
    busy = threading.Event()
    pipeline._beside = ThreadPoolExecutor(max_workers=1)  # taken by other work: the cloth run must queue
    blocker = pipeline._beside.submit(busy.wait, 30)
    try:
        with pytest.raises(RuntimeError, match="person model failed"):
            pipeline.garment_masks([outfit(0)])
    finally:
        busy.set()
        blocker.result(timeout=30)
        pipeline._beside.shutdown(wait=True)  # whatever was still queued has run by now
    assert cloth.runs == 0, "a cloth run for a failed request ran after it"
