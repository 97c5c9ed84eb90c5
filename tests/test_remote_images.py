"""A feed's image URLs (search/indexing/remote_images.py), from a local HTTP server on 127.0.0.1:
cached by URL and validators so an update downloads no body; 404/410 skipped with the reason;
429/5xx retried, then the download stops."""
from __future__ import annotations

import http.server
import threading
from collections import Counter

import pytest

from search.indexing.remote_images import ImageCache, ImageFetchError, download_images
from shared.fetch import FetchPolicy

POLICY = FetchPolicy(allow_hosts=frozenset({"127.0.0.1"}), deadline=3.0, read_timeout=2.0)
BODIES = {"/etag.jpg": b"\xff\xd8etag-image", "/dated.jpg": b"\xff\xd8dated-image", "/plain.jpg": b"\xff\xd8plain"}


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):  # noqa: N802 - http.server's naming
        server = self.server
        path = self.path
        server.requests[path] += 1
        if path == "/flaky.jpg" and server.requests[path] <= 2:
            return self._status(503)
        if path == "/busy.jpg":
            return self._status(429)
        if path in ("/missing.jpg", "/gone.jpg"):
            return self._status(404 if path == "/missing.jpg" else 410)
        body = BODIES.get(path, b"\xff\xd8flaky" if path == "/flaky.jpg" else None)
        if body is None:
            return self._status(404)
        etag = f'"{server.version}"'
        if path == "/etag.jpg" and self.headers.get("If-None-Match") == etag:
            return self._status(304)
        if path == "/dated.jpg" and self.headers.get("If-Modified-Since") == "Mon, 30 Nov 2026 10:00:00 GMT":
            return self._status(304)
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(body)))
        if path == "/etag.jpg":
            self.send_header("ETag", etag)
        if path == "/dated.jpg":
            self.send_header("Last-Modified", "Mon, 30 Nov 2026 10:00:00 GMT")
        self.end_headers()
        self.wfile.write(body)
        server.bodies[path] += 1

    def _status(self, status):
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def images_host():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.requests, server.bodies, server.version = Counter(), Counter(), "v1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_port}"
    yield server
    server.shutdown()


def test_an_update_downloads_no_body_for_unchanged_images(images_host, tmp_path):
    urls = [f"{images_host.url}{path}" for path in ("/etag.jpg", "/dated.jpg", "/missing.jpg", "/gone.jpg")]
    cache = ImageCache(tmp_path / "cache")
    first = download_images(urls + urls[:1], cache, POLICY, workers=4, progress=False)
    assert set(first.files) == set(urls[:2]) and first.bodies == 2 and images_host.requests["/etag.jpg"] == 1
    assert first.files[urls[0]].read_bytes() == BODIES["/etag.jpg"]
    assert first.skipped == {urls[2]: "HTTP 404 (gone)", urls[3]: "HTTP 410 (gone)"}

    images_host.bodies.clear()
    again = download_images(urls, cache, POLICY, workers=4, progress=False)
    assert sum(images_host.bodies.values()) == 0  # both answered 304: no GET body
    assert again.bodies == 0 and again.not_modified == 2 and again.sha256 == first.sha256

    images_host.version = "v2"  # the image changed: its ETag too
    changed = download_images(urls[:1], cache, POLICY, progress=False)
    assert changed.bodies == 1 and images_host.bodies["/etag.jpg"] == 1


def test_a_host_without_validators_is_downloaded_again(images_host, tmp_path):
    cache = ImageCache(tmp_path / "cache")
    url = f"{images_host.url}/plain.jpg"
    assert download_images([url], cache, POLICY, progress=False).bodies == 1
    assert download_images([url], cache, POLICY, progress=False).bodies == 1


def test_busy_and_failing_hosts_are_retried_then_stop_the_download(images_host, tmp_path):
    cache = ImageCache(tmp_path / "cache")
    flaky = f"{images_host.url}/flaky.jpg"
    report = download_images([flaky], cache, POLICY, retries=3, backoff_s=0.01, progress=False)
    assert report.bodies == 1 and images_host.requests["/flaky.jpg"] == 3  # two 503s, then the image
    with pytest.raises(ImageFetchError, match=r"busy\.jpg: HTTP 429, still after 2 retries"):
        download_images([f"{images_host.url}/busy.jpg"], cache, POLICY, retries=2, backoff_s=0.01, progress=False)
    assert images_host.requests["/busy.jpg"] == 3


def test_a_private_address_is_skipped_not_fetched(tmp_path):
    strict = FetchPolicy(deadline=3.0)  # no allow-list: 127.0.0.1 is refused before connecting
    report = download_images(["http://127.0.0.1:9/a.jpg"], ImageCache(tmp_path / "cache"), strict, progress=False)
    assert "non-public address" in report.skipped["http://127.0.0.1:9/a.jpg"]
