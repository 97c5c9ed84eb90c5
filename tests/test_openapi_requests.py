"""Requests built from each service's /openapi.json (schemathesis), sent to the app in-process:
every answer must be a documented status with a documented content type, body and headers, never
a server error (a 500, or a 5xx other than an image host's failure: no host resolves here, so a
generated URL is a 502); a 400 to a request the document allows must name a documented field. Requests the document
does not allow (negative cases) must be refused cleanly too. No network: only 127.0.0.1 resolves."""
from __future__ import annotations

import io
import re
import socket

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from search.config import ClipSettings, SearchConfig
from shared.fetch import FetchPolicy
from tests import scenes
from tests.conftest import TINY, send_bytes

EXAMPLES = 25  # per operation and generation mode: about 20 s for both services on 2 cores
CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]
PHOTO_ROUTE = "/openapi-photo.png"
URL_FIELDS = ("url", "image_url", "background_url")
REAL_PATH = {"product": "1-red-top-shop-111", "file": "photo-0.jpg"}  # in the synthetic catalog
UPSTREAM_PROBLEMS = {502: "upstream-failed", 504: "upstream-timeout"}  # the image host's, not the server's


def _png(picture) -> bytes:
    buf = io.BytesIO()
    picture.save(buf, "PNG")
    return buf.getvalue()


PHOTO = _png(scenes.street_photo(200, 260)[0])


@pytest.fixture(scope="module", autouse=True)
def no_network():
    """Generated URLs name any host: none of them may be looked up or reached."""
    real = socket.getaddrinfo

    def local_only(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost"):
            raise socket.gaierror(socket.EAI_NONAME, "no network in the OpenAPI tests")
        return real(host, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "getaddrinfo", local_only)
        yield


@pytest.fixture(scope="module")
def photo_url(upstream) -> str:
    upstream.routes[PHOTO_ROUTE] = lambda handler: send_bytes(handler, PHOTO, "image/png")
    return upstream.base_url + PHOTO_ROUTE


@pytest.fixture(scope="module")
def fuzz_search_app(synthetic_index, tiny_embedder, local_garments):
    """Photo queries on, a SEARCH_IMAGE_WEIGHT of its own (the document must show it), image URLs
    from the local upstream allowed."""
    from search import create_app

    config = SearchConfig(clip=ClipSettings(**TINY), index_dir=str(synthetic_index), image_weight=0.35,
                          fetch=FetchPolicy(allow_hosts=frozenset({"127.0.0.1"}), deadline=3.0, read_timeout=2.0))
    app = create_app(config, embedder=tiny_embedder, garments=local_garments)
    assert app.extensions["readiness"].ready, app.extensions["readiness"].error
    return app


def _documented_fields(case) -> set[str]:
    operation = case.operation.definition.raw
    names = {parameter["name"] for parameter in operation.get("parameters", [])}
    for content in operation.get("requestBody", {}).get("content", {}).values():
        names |= set(content.get("schema", {}).get("properties", {}))
    return names


def _realistic(case, data, photo_url: str) -> None:
    """Half the photos, photo URLs and path products a real one, so that the pipeline runs and
    image answers (with their X-Garment-* headers) and products are checked too."""
    if not data.draw(st.booleans(), label="real photo and product"):
        return
    if case.path_parameters:
        case.path_parameters = {**case.path_parameters, **{
            name: value for name, value in REAL_PATH.items() if name in case.path_parameters}}
    if isinstance(case.body, (bytes, bytearray)):
        case.body = PHOTO
    elif isinstance(case.body, dict):
        if "file" in case.body:
            case.body["file"] = PHOTO
        for field in URL_FIELDS:
            if isinstance(case.body.get(field), str):
                case.body[field] = photo_url


def _fuzz(app, mode: GenerationMode, photo_url: str) -> int:
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    if mode == GenerationMode.NEGATIVE:  # only what takes input can be sent wrong
        operations = [op for op in operations if op.definition.raw.keys() & {"parameters", "requestBody"}]
    checked = 0
    for operation in operations:
        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode), data=st.data())
        def check(case, data):
            _realistic(case, data, photo_url)
            response = case.call(app=app)
            case.validate_response(response, checks=CHECKS)
            if response.status_code >= 500:
                slug = str((response.json() or {}).get("type", "")).rsplit("/", 1)[-1]
                assert UPSTREAM_PROBLEMS.get(response.status_code) == slug, (case.as_curl_command(), response.text)
            if mode == GenerationMode.POSITIVE and response.status_code == 400:
                field = (response.json() or {}).get("field")
                # a nested path (filter.price.gte, queries[3].n) names a documented field at its root
                root = re.split(r"[.\[]", field, maxsplit=1)[0] if field else None
                assert root is None or root in _documented_fields(case), (case.as_curl_command(), response.text)

        try:
            check()
        except Unsatisfiable:  # nothing to send wrong (a path's any string): nothing to check
            assert mode == GenerationMode.NEGATIVE, operation.label
            continue
        checked += 1
    return checked


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_bg_requests_from_the_document(bg_app, photo_url, mode):
    assert _fuzz(bg_app, mode, photo_url) >= (7 if mode == GenerationMode.POSITIVE else 2)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_search_requests_from_the_document(fuzz_search_app, photo_url, mode):
    assert _fuzz(fuzz_search_app, mode, photo_url) >= (10 if mode == GenerationMode.POSITIVE else 4)


def test_documented_defaults_and_limits_are_the_apps(fuzz_search_app, bg_app):
    """Values the config decides are the config's; constants are the code's."""
    from bgremoval.schemas import FORMATS
    from search.schemas import MAX_BATCH, MAX_N
    from shared.images import WEBP_MAX_SIDE

    search = fuzz_search_app.test_client().get("/openapi.json").json
    post = search["paths"]["/"]["post"]
    body = post["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["image_weight"]["default"] == 0.35
    assert body["properties"]["n"]["maximum"] == MAX_N
    assert {"minLength": 1, "pattern": r"\S"}.items() <= body["properties"]["text"].items()
    assert {p["name"]: p["schema"] for p in post["parameters"]}["image_weight"]["default"] == 0.35
    batch = search["paths"]["/batch"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert batch["properties"]["queries"]["maxItems"] == MAX_BATCH
    config = fuzz_search_app.config["SEARCH"]
    assert f"{config.max_upload_bytes:,}" in post["responses"]["413"]["description"]

    bg = bg_app.test_client().get("/openapi.json").json
    bg_post = bg["paths"]["/"]["post"]
    assert str(WEBP_MAX_SIDE) in bg_post["requestBody"]["content"]["application/json"]["schema"]["properties"][
        "format"]["description"]
    assert set(bg_post["responses"]["200"]["content"]) == set(FORMATS.values())
    assert f"{bg_app.config['BG'].max_body_bytes:,}" in bg_post["responses"]["413"]["description"]
