"""Bad-input matrix: hostile URLs, misbehaving upstreams and odd images. Each case gets its
documented status with a problem+json body, and the service answers the next good request."""
from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from shared.fetch import FetchPolicy, fetch_url, is_public_address
from tests import scenes
from tests.conftest import send_bytes

PRIVATE_URLS = [
    "http://127.0.0.1/x.jpg", "http://[::1]/x.jpg", "http://169.254.169.254/latest/meta-data/",
    "http://10.0.0.1/x.jpg", "http://192.168.1.10/x.jpg", "http://172.16.0.1/x.jpg",
    "http://2130706433/x.jpg",  # decimal 127.0.0.1
    "http://0177.0.0.1/x.jpg",  # octal
    "http://0x7f.0.0.1/x.jpg",  # hex
    "http://[::ffff:127.0.0.1]/x.jpg",  # IPv4-mapped IPv6
    "http://[fe80::1]/x.jpg", "http://0.0.0.0/x.jpg", "http://224.0.0.1/x.jpg", "http://100.64.0.1/x.jpg",
    "http://localhost/x.jpg",  # a name that resolves to loopback
]


def _encode(picture: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    picture.save(buf, fmt, **kw)
    return buf.getvalue()


def _good_photo() -> bytes:
    return _encode(scenes.street_photo(300, 400)[0], "PNG")


def _huge_header_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A PNG whose header claims a giant size (the pixels never follow)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")


def _animated_gif() -> bytes:
    first = scenes.street_photo(300, 400)[0].convert("P", palette=Image.ADAPTIVE)
    second = Image.new("P", (300, 400))
    return _encode(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0)


def _sixteen_bit_png() -> bytes:
    values = np.full((200, 300), 62000, np.uint16)  # near-white backdrop
    values[50:150, 100:200] = 9000  # a dark garment
    return _encode(Image.fromarray(values), "PNG")


@pytest.fixture
def assert_still_serving(bg_client):
    def check():
        response = bg_client.post("/", data=_good_photo(), content_type="image/png")
        assert response.status_code == 200, response.json
    return check


def _assert_problem(response, status: int):
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True)[:300])
    assert response.mimetype == "application/problem+json"
    body = response.json
    assert {"type", "title", "status", "detail"} <= set(body) and body["status"] == status
    assert "Traceback" not in response.get_data(as_text=True)


# ------------------------------------------------------------------ URLs


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x.jpg", "gopher://example.com/x",
                                 "javascript:alert(1)", "http:///nohost.jpg", "http://example.com:99999/x.jpg"])
def test_refused_schemes_and_malformed_urls(bg_client, assert_still_serving, url):
    response = bg_client.post("/", json={"url": url})
    _assert_problem(response, 400)
    assert response.json["field"] == "url"
    assert_still_serving()


@pytest.fixture(scope="module")
def strict_client(bg_models):
    """The production fetch policy: no host is exempt from the address check."""
    from bgremoval import create_app
    from bgremoval.config import BgConfig

    return create_app(BgConfig(), models=bg_models).test_client()


@pytest.mark.parametrize("url", PRIVATE_URLS)
def test_private_addresses_are_refused_before_connecting(strict_client, assert_still_serving, url):
    response = strict_client.post("/", json={"url": url})
    _assert_problem(response, 400)
    assert "non-public" in response.json["detail"]
    assert_still_serving()


def test_redirect_to_a_private_address_is_refused(bg_client, upstream, assert_still_serving):
    def redirect(handler):
        handler.send_response(302)
        handler.send_header("Location", "http://10.0.0.1/internal.jpg")
        handler.send_header("Content-Length", "0")
        handler.end_headers()
    upstream.routes["/redirect-private"] = redirect
    response = bg_client.post("/", json={"url": upstream.base_url + "/redirect-private"})
    _assert_problem(response, 400)
    assert "10.0.0.1" in response.json["detail"]
    assert_still_serving()


def test_redirects_are_followed_at_most_three_times(bg_client, upstream):
    photo = _good_photo()
    upstream.routes["/final.png"] = lambda h: send_bytes(h, photo, "image/png")
    for i in range(5):
        target = "/final.png" if i == 0 else f"/hop{i - 1}"

        def hop(handler, target=target):
            handler.send_response(301)
            handler.send_header("Location", target)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
        upstream.routes[f"/hop{i}"] = hop
    assert bg_client.post("/", json={"url": upstream.base_url + "/hop2"}).status_code == 200  # 3 redirects
    _assert_problem(bg_client.post("/", json={"url": upstream.base_url + "/hop3"}), 502)  # 4 redirects


def test_public_address_check():
    assert is_public_address("93.184.216.34") and is_public_address("2606:4700::1111")
    for address in ("127.0.0.1", "10.1.2.3", "169.254.169.254", "::1", "::ffff:10.0.0.1", "fc00::1",
                    "0.0.0.0", "255.255.255.255", "240.0.0.1", "2002:7f00:1::1"):
        assert not is_public_address(address), address


def test_dns_is_resolved_once_and_the_checked_address_is_used(monkeypatch, upstream):
    """DNS rebinding: the second answer would be private, but there is no second lookup."""
    import socket

    photo = _good_photo()
    upstream.routes["/rebind.png"] = lambda h: send_bytes(h, photo, "image/png")
    port = upstream.server_address[1]
    calls = []

    def fake_getaddrinfo(host, *args, **kwargs):
        calls.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    policy = FetchPolicy(allow_hosts=frozenset({"images.test"}))
    assert fetch_url(f"http://images.test:{port}/rebind.png", policy) == photo
    # The name is looked up once; the connection is made to the checked address literal.
    assert calls[0] == "images.test" and calls[1:] == ["127.0.0.1"] * (len(calls) - 1)


# ------------------------------------------------------------------ misbehaving upstreams


def _slow_drip(handler):
    handler.send_response(200)
    handler.send_header("Content-Type", "image/jpeg")
    handler.send_header("Content-Length", "100000")
    handler.end_headers()
    try:
        for _ in range(40):
            handler.wfile.write(b"\xff")
            handler.wfile.flush()
            time.sleep(0.25)
    except (BrokenPipeError, ConnectionResetError):
        pass


def _streamed_oversize(handler):
    handler.send_response(200)
    handler.send_header("Content-Type", "image/jpeg")
    handler.end_headers()  # no Content-Length: the cap must hold while streaming
    try:
        for _ in range(64):
            handler.wfile.write(b"\0" * 65536)
    except (BrokenPipeError, ConnectionResetError):
        pass


def _stalled(handler):
    time.sleep(3)
    send_bytes(handler, b"late")


UPSTREAM_CASES = {
    "/status-404": (lambda h: h.send_error(404), 502),
    "/status-500": (lambda h: h.send_error(500), 502),
    "/slow-drip.jpg": (_slow_drip, 504),
    "/stalled.jpg": (_stalled, 504),
    "/declared-oversize.jpg": (lambda h: send_bytes(h, b"\0" * 2_500_000), 413),
    "/streamed-oversize.jpg": (_streamed_oversize, 413),
    "/page.html": (lambda h: send_bytes(h, b"<html><body>hi</body></html>", "image/jpeg"), 415),
    "/image.svg": (lambda h: send_bytes(h, b'<svg xmlns="http://www.w3.org/2000/svg"/>', "image/svg+xml"), 415),
    "/empty.jpg": (lambda h: send_bytes(h, b""), 422),
}


@pytest.mark.parametrize("path", sorted(UPSTREAM_CASES))
def test_upstream_failures(bg_client, upstream, assert_still_serving, path):
    handler, status = UPSTREAM_CASES[path]
    upstream.routes[path] = handler
    started = time.monotonic()
    response = bg_client.post("/", json={"url": upstream.base_url + path})
    _assert_problem(response, status)
    assert time.monotonic() - started < 6  # the 3 s test deadline holds (plus one read timeout)
    assert_still_serving()


# ------------------------------------------------------------------ odd images (uploaded)


def _bomb_png() -> bytes:
    return _encode(Image.new("1", (8000, 6000)), "PNG")  # 48 MP, a few KB compressed


IMAGE_CASES = {
    "truncated jpeg": (lambda: _encode(scenes.street_photo()[0], "JPEG")[:5000], 422),
    "decompression bomb png": (_bomb_png, 413),
    "huge dimension header": (_huge_header_png, 413),
    # Under the pixel cap, but a side JPEG (and WebP) cannot encode: refused before decoding.
    "sliver past the JPEG side limit": (lambda: _huge_header_png(70_000, 8), 422),
    "1x1 image": (lambda: _encode(Image.new("RGB", (1, 1), (255, 0, 0)), "PNG"), 422),
    "random bytes": (lambda: bytes(range(256)) * 20, 415),
    "pdf": (lambda: b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", 415),
    "animated gif": (_animated_gif, 200),
    "16-bit png": (_sixteen_bit_png, 200),
    "cmyk jpeg": (lambda: _encode(scenes.street_photo()[0].convert("CMYK"), "JPEG"), 200),
}


@pytest.mark.parametrize("case", sorted(IMAGE_CASES))
def test_odd_images(bg_client, assert_still_serving, case):
    make, status = IMAGE_CASES[case]
    data = make()
    response = bg_client.post("/", data=data, content_type="image/png")
    if status == 200:
        assert response.status_code == 200, response.json
        out = Image.open(io.BytesIO(response.data))
        source = Image.open(io.BytesIO(data))
        assert out.format == "JPEG" and out.size == source.size
    else:
        _assert_problem(response, status)
    assert_still_serving()


# ------------------------------------------------------------------ bodies and methods


@pytest.mark.parametrize("data,content_type,status", [
    ("{broken", "application/json", 400),
    ("[]", "application/json", 400),
    ("42", "application/json", 400),
    ("null", "application/json", 400),
    ("url=http://x", "application/x-www-form-urlencoded", 415),
    ("", "text/plain", 415),
])
def test_bad_bodies(bg_client, assert_still_serving, data, content_type, status):
    _assert_problem(bg_client.post("/", data=data, content_type=content_type), status)
    assert_still_serving()


def test_body_over_the_limit_is_413(bg_models):
    from bgremoval import create_app
    from bgremoval.config import BgConfig

    client = create_app(BgConfig(max_body_bytes=1000), models=bg_models).test_client()
    _assert_problem(client.post("/", data=b"\0" * 5000, content_type="image/png"), 413)


def test_multipart_without_file_and_unknown_routes(bg_client):
    _assert_problem(bg_client.post("/", data={"format": "png"}, content_type="multipart/form-data"), 400)
    _assert_problem(bg_client.get("/nope"), 404)
    response = bg_client.delete("/")  # GET / is the web page (tests/test_pages.py)
    _assert_problem(response, 405)
    assert "POST" in response.headers["Allow"]


def test_unexpected_errors_are_500_problems_without_internals(bg_app, monkeypatch):
    pipeline = bg_app.extensions["bg_pipeline"]

    def explode(*args, **kwargs):
        raise RuntimeError("secret internal detail")
    monkeypatch.setattr(pipeline, "remove_background", explode)
    response = bg_app.test_client().post("/", data=_good_photo(), content_type="image/png")
    _assert_problem(response, 500)
    assert "secret" not in response.get_data(as_text=True) and response.json["request_id"]


def test_mutated_images_only_ever_raise_problem_errors():
    """A small seeded fuzz of the decoder: corrupt bytes give a 4xx problem, never a crash."""
    import random
    import warnings

    from shared.errors import ProblemError
    from shared.images import decode_image

    rng = random.Random(1)
    photo = scenes.street_photo(120, 160)[0]
    seeds = [_encode(photo, fmt) for fmt in ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")]
    for _ in range(1000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 8)):
            pos = rng.randrange(len(data))
            roll = rng.random()
            if roll < 0.6:
                data[pos] = rng.randrange(256)
            elif roll < 0.8:
                del data[pos:pos + rng.randint(1, 64)]
            else:
                data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                decoded = decode_image(bytes(data))
            except ProblemError as exc:
                assert 400 <= exc.status < 500
                continue
        assert decoded.rgb.mode == "RGB" and min(decoded.size) >= 8
