"""HTTP contract of the background-removal service (Flask test client, and one real gunicorn)."""
from __future__ import annotations

import io

import numpy as np
import pytest
import requests
from PIL import Image

from tests import scenes
from tests.conftest import send_bytes, start_gunicorn, stop


def jpeg_bytes(picture: Image.Image) -> bytes:
    buf = io.BytesIO()
    picture.save(buf, "JPEG", quality=95)
    return buf.getvalue()


def png_bytes(picture: Image.Image) -> bytes:
    buf = io.BytesIO()
    picture.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def street_url(upstream):
    photo, _ = scenes.street_photo()
    upstream.routes["/street.jpg"] = lambda h: send_bytes(h, jpeg_bytes(photo))
    return upstream.base_url + "/street.jpg"


def decoded(response) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(response.data)).convert("RGB"), dtype=np.int16)


def box_pixels(arr: np.ndarray, name: str) -> np.ndarray:
    _, boxes = scenes.street_photo()
    x0, y0, x1, y1 = scenes.inner(boxes[name])
    return arr[y0:y1, x0:x1].reshape(-1, 3)


def test_url_request_returns_same_size_jpeg_with_only_the_garment(bg_client, street_url):
    response = bg_client.post("/", json={"url": street_url})
    assert response.status_code == 200, response.json
    assert response.mimetype == "image/jpeg"
    arr = decoded(response)
    assert arr.shape == (800, 600, 3)
    assert (np.abs(box_pixels(arr, "top") - scenes.UPPER) <= 6).all()
    for name in ("face", "bystander_top", "tree", "building"):
        assert box_pixels(arr, name).max() <= 3, name


def test_multipart_upload(bg_client):
    photo, _ = scenes.street_photo()
    response = bg_client.post("/", data={"file": (io.BytesIO(png_bytes(photo)), "street.png"),
                                         "classes": "upper"}, content_type="multipart/form-data")
    assert response.status_code == 200, response.json
    arr = decoded(response)
    assert box_pixels(arr, "trousers").max() <= 3
    assert (np.abs(box_pixels(arr, "top") - scenes.UPPER) <= 6).all()


def test_raw_image_body_with_png_output_has_the_mask_as_alpha(bg_client):
    photo, _ = scenes.street_photo()
    response = bg_client.post("/?format=png&background=%23ffffff", data=png_bytes(photo),
                              content_type="image/png")
    assert response.status_code == 200, response.json
    assert response.mimetype == "image/png"
    out = Image.open(io.BytesIO(response.data))
    assert out.mode == "RGBA" and out.size == photo.size
    alpha = np.asarray(out.getchannel("A"))
    assert alpha[300, 300] == 255 and alpha[120, 300] == 0  # top kept, face out


def test_json_options(bg_client, street_url):
    response = bg_client.post("/", json={"url": street_url, "classes": ["lower"], "background": "#00ff00"})
    arr = decoded(response)
    assert (np.abs(box_pixels(arr, "top") - (0, 255, 0)) <= 6).all()


@pytest.mark.parametrize("body,field", [
    ({"url": 5}, "url"),
    ({}, "url"),
    ({"url": "http://x/y.jpg", "format": "gif"}, "format"),
    ({"url": "http://x/y.jpg", "background": "red"}, "background"),
    ({"url": "http://x/y.jpg", "classes": ["shoes"]}, "classes"),
    ({"url": "http://x/y.jpg", "classes": []}, "classes"),
    ({"url": "http://x/y.jpg", "colour": "#000000"}, "colour"),
])
def test_bad_fields_name_the_field(bg_client, body, field):
    response = bg_client.post("/", json=body)
    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"
    assert response.json["field"] == field


def test_no_garment_is_422(bg_client):
    blank = Image.new("RGB", (200, 200), (240, 240, 240))
    response = bg_client.post("/", data=png_bytes(blank), content_type="image/png")
    assert response.status_code == 422
    assert "No person and no product" in response.json["detail"]


def test_readiness_and_health(bg_client):
    assert bg_client.get("/healthz").json["status"] == "ok"
    assert bg_client.get("/readyz").status_code == 200


def test_missing_weights_fail_readiness_with_a_clear_message(tmp_path, monkeypatch):
    from bgremoval import create_app
    from bgremoval.config import BgConfig

    monkeypatch.setenv("U2NET_HOME", str(tmp_path))
    app = create_app(BgConfig(weights_dir=str(tmp_path)))
    client = app.test_client()
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert "u2net_human_seg" in ready.json["detail"] and "not installed" in ready.json["detail"]
    assert client.get("/healthz").status_code == 200
    response = client.post("/", data=b"x", content_type="image/png")
    assert response.status_code == 503 and response.mimetype == "application/problem+json"


def test_through_real_gunicorn(oracle_weights, street_url, synthetic_catalog, tiny_embedder, tmp_path):
    proc, base = start_gunicorn("bgremoval:create_app()", {
        "U2NET_HOME": str(oracle_weights), "FETCH_ALLOW_HOSTS": "127.0.0.1",
        "GUNICORN_WORKERS": "1", "GUNICORN_THREADS": "2",
    })
    try:
        response = requests.post(base + "/", json={"url": street_url}, timeout=30)
        assert response.status_code == 200, response.text
        out = Image.open(io.BytesIO(response.content))
        assert out.format == "JPEG" and out.size == (600, 800)
        refused = requests.post(base + "/", json={"url": "http://10.0.0.1/x.jpg"}, timeout=30)
        assert refused.status_code == 400 and refused.json()["field"] == "url"
        assert requests.post(base + "/", json={"url": street_url}, timeout=30).status_code == 200

        # The indexer can use this service instead of the in-process pipeline (--bg-url).
        from search.garments import RemoteGarments
        from search.index_format import Index
        from search.indexing.builder import build_index

        report = build_index(synthetic_catalog, tmp_path / "idx", tiny_embedder, RemoteGarments(base + "/"),
                             progress=False)
        assert report.embedded == report.images and not report.skipped
        assert Index.load(tmp_path / "idx").meta["garment_service"].startswith("bg-removal service at")
    finally:
        stop(proc)


def test_loopback_fetch_is_refused_without_the_test_setting(bg_models, street_url):
    from bgremoval import create_app
    from bgremoval.config import BgConfig

    client = create_app(BgConfig(), models=bg_models).test_client()
    response = client.post("/", json={"url": street_url})
    assert response.status_code == 400 and "non-public" in response.json["detail"]
