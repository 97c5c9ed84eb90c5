"""HTTP layer of the search service."""
from __future__ import annotations

import time
from urllib.parse import quote

from flask import Blueprint, current_app, jsonify, send_from_directory

from search.vectors import VectorStoreError
from shared.errors import BadRequest, NotFound, NotReady
from shared.web import json_object_body, reject_unknown_fields, stage_timings

bp = Blueprint("search", __name__)
MAX_N = 100


def _parse(body: dict) -> tuple[str, int]:
    reject_unknown_fields(body, {"text", "n"})
    text = body.get("text")
    if not isinstance(text, str) or not text.strip():
        raise BadRequest("text must be a non-empty string.", field="text")
    n = body.get("n", 5)
    if isinstance(n, float) and n.is_integer():
        n = int(n)  # 5.0 is an integer in JSON; 5.5 is not
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_N:
        raise BadRequest(f"n must be an integer from 1 to {MAX_N}.", field="n")
    return text, n


def image_url(product: str, file: str) -> str:
    path = f"/images/{quote(product, safe='')}/{quote(file, safe='')}"
    base = current_app.config["SEARCH"].public_base_url
    return f"{base}{path}" if base else path


@bp.post("/")
def search():
    current_app.extensions["readiness"].require()
    text, n = _parse(json_object_body())
    searcher = current_app.extensions["searcher"]
    start = time.perf_counter()
    try:
        results = searcher.search(text, n)
    except VectorStoreError as exc:  # the vector database is down or changed: retry later
        raise NotReady(str(exc)) from None
    elapsed = time.perf_counter() - start
    stage_timings()["search"] = elapsed
    current_app.extensions["metrics"].query_latency.labels("search", searcher.store.backend).observe(elapsed)
    return jsonify([{"product_name": r.product_name, "url": image_url(r.product_name, r.image_file),
                     "score": round(r.score, 6)} for r in results])


@bp.get("/images/<product>/<file>")
def image(product: str, file: str):
    current_app.extensions["readiness"].require()
    index = current_app.extensions["searcher"].index
    # Only files the index lists are served: no path from the client reaches the filesystem.
    if index.find_image(product, file) is None:
        raise NotFound(f"No image {file!r} of product {product!r} in the index.")
    return send_from_directory(current_app.extensions["catalog_dir"] / product, file, max_age=3600)
