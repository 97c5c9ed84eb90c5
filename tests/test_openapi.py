"""Each service's /openapi.json describes the responses it really sends."""
from __future__ import annotations

import io

import jsonschema
from PIL import Image

from tests import scenes


def _schema_for(document: dict, path: str, method: str, status: int, mimetype: str):
    responses = document["paths"][path][method]["responses"]
    assert str(status) in responses, f"{method.upper()} {path} -> {status} is not documented"
    content = responses[str(status)].get("content", {})
    matches = [c for c in content if c == mimetype or (c.endswith("/*") and mimetype.startswith(c[:-1]))]
    assert matches, f"{method.upper()} {path} -> {status} {mimetype} is not documented ({list(content)})"
    schema = content[matches[0]].get("schema")
    if schema is not None:
        schema = {**schema, "components": document.get("components", {})}
    return schema


def _check(client, document, method, path, route, **kwargs):
    response = getattr(client, method)(path, **kwargs)
    schema = _schema_for(document, route, method, response.status_code, response.mimetype)
    if schema is not None and response.mimetype.endswith("json"):
        jsonschema.validate(response.json, schema)
    return response


def _png() -> bytes:
    buf = io.BytesIO()
    scenes.street_photo(300, 400)[0].save(buf, "PNG")
    return buf.getvalue()


def test_bgremoval_openapi_matches_responses(bg_client):
    document = bg_client.get("/openapi.json").json
    assert document["openapi"].startswith("3.")
    _check(bg_client, document, "post", "/", "/", data=_png(), content_type="image/png")
    _check(bg_client, document, "post", "/?format=png", "/", data=_png(), content_type="image/png")
    _check(bg_client, document, "post", "/", "/", json={"url": "ftp://x"})
    _check(bg_client, document, "post", "/", "/", data="x", content_type="text/plain")
    blank = io.BytesIO()
    Image.new("RGB", (64, 64), (240, 240, 240)).save(blank, "PNG")
    _check(bg_client, document, "post", "/", "/", data=blank.getvalue(), content_type="image/png")
    for route in ("/healthz", "/readyz", "/metrics"):
        _check(bg_client, document, "get", route, route)


def test_search_openapi_matches_responses(client):
    document = client.get("/openapi.json").json
    response = _check(client, document, "post", "/", "/", json={"text": "red top", "n": 3})
    first = response.json[0]["url"]
    _check(client, document, "get", first, "/images/{product}/{file}")
    _check(client, document, "get", "/images/nope/nope.jpg", "/images/{product}/{file}")
    _check(client, document, "post", "/", "/", json={"text": "red", "n": 0})
    _check(client, document, "post", "/", "/", data="x", content_type="text/plain")
    for route in ("/healthz", "/readyz", "/metrics"):
        _check(client, document, "get", route, route)


def test_metrics_count_requests_and_inference(bg_client):
    bg_client.post("/", data=_png(), content_type="image/png")
    text = bg_client.get("/metrics").get_data(as_text=True)
    assert 'http_requests_total{endpoint="/",method="POST",service="bgremoval",status="200"}' in text
    assert 'model_inference_seconds_count{service="bgremoval",stage="cloth_seg"}' in text


