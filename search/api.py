"""HTTP layer of the search service: text, photo and text + photo queries, similar products,
embeddings and batches; every field checked before any work is done."""
from __future__ import annotations

import hashlib
import json
import time
from urllib.parse import quote

import numpy as np
from flask import Blueprint, current_app, jsonify, request, send_from_directory

from search.vectors import VectorStoreError
from shared.errors import BadRequest, NotFound, NotReady
from shared.fetch import fetch_url
from shared.garment_request import GARMENT_FIELDS, GarmentOptions, parse_garment_options
from shared.timing import timed
from shared.uploads import read_image_request, url_field
from shared.web import json_object_body, reject_unknown_fields, stage_timings

bp = Blueprint("search", __name__)
MAX_N = 100
MAX_BATCH = 32
PHOTO_FIELDS = {"look", *GARMENT_FIELDS}  # only with a photo: its garments, and which to search for
QUERY_FIELDS = {"text", "n", "image_weight", *PHOTO_FIELDS}
UPLOAD_TYPES = ("multipart/form-data",)


@bp.before_request
def _body_limit() -> None:
    """Photos may be large, JSON queries may not: each body kind has its own limit."""
    config = current_app.config["SEARCH"]
    mimetype = request.mimetype or ""
    is_upload = mimetype in UPLOAD_TYPES or mimetype.startswith("image/")
    request.max_content_length = config.max_upload_bytes if is_upload else config.max_body_bytes


def parse_n(value, field: str = "n", *, from_text: bool = False) -> int:
    """1..MAX_N; a JSON 5.0 counts as 5 (JSON "5" does not); a form or query string (`from_text`)
    gives "5"."""
    if from_text and isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 5.0 is an integer in JSON; 5.5 is not
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_N:
        raise BadRequest(f"{field} must be an integer from 1 to {MAX_N}.", field=field)
    return value


def parse_text(value, field: str = "text") -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"{field} must be a non-empty string.", field=field)
    return value


def parse_weight(value, *, from_text: bool = False) -> float:
    if from_text and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise BadRequest("image_weight must be a number from 0 to 1.", field="image_weight")
    return float(value)


def parse_flag(value, field: str, *, from_text: bool = False) -> bool:
    """A JSON true/false; in a form or query string also 1/0, yes/no, on/off."""
    if from_text and isinstance(value, str) and value.strip().lower() in TRUTHY | FALSY:
        return value.strip().lower() in TRUTHY
    if not isinstance(value, bool):
        raise BadRequest(f"{field} must be true or false.", field=field)
    return value


TRUTHY, FALSY = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def image_url(product: str, file: str) -> str:
    path = f"/images/{quote(product, safe='')}/{quote(file, safe='')}"
    base = current_app.config["SEARCH"].public_base_url
    return f"{base}{path}" if base else path


def _searcher():
    current_app.extensions["readiness"].require()
    return current_app.extensions["searcher"]


def _photos():
    photos = current_app.extensions.get("photos")
    if photos is None:
        raise BadRequest("Photo queries are turned off on this service (SEARCH_IMAGE_QUERIES=0); send text.",
                         field="file" if request.mimetype != "application/json" else "image_url")
    return photos


class _Query:
    """One query's parsed parts: text, and a photo (its bytes, or the URL to fetch them from),
    with the garments to search for in it and whether to answer per garment (`look`)."""

    def __init__(self, *, text: str | None, n: int, weight: float, photo: bytes | None, photo_url: str | None,
                 garments: GarmentOptions = GarmentOptions(), look: bool = False):
        self.text, self.n, self.weight, self.photo, self.photo_url = text, n, weight, photo, photo_url
        self.garments, self.look = garments, look

    @property
    def has_photo(self) -> bool:
        return self.photo is not None or self.photo_url is not None

    def photo_bytes(self) -> bytes:
        if self.photo is not None:
            return self.photo
        with timed(stage_timings(), "fetch"):
            return fetch_url(self.photo_url, current_app.config["SEARCH"].fetch)


def _read_query(*, with_n: bool = True) -> _Query:
    """A query from JSON {text, image_url, n, image_weight}, a multipart form (`file`, text, n,
    image_weight) or a raw image/* body (text, n, image_weight in the query string)."""
    fields = QUERY_FIELDS if with_n else {"text", *GARMENT_FIELDS}
    got = read_image_request(fields, json_fields={"image_url"}, file_required=False)
    raw_text = got.fields.get("text")
    photo_url = url_field(got.fields["image_url"], "image_url") if "image_url" in got.fields else None
    photo = got.image
    has_photo = photo is not None or photo_url is not None
    if has_photo:
        _photos()  # refused before any work when photo queries are off
    elif photo_only := sorted(PHOTO_FIELDS & set(got.fields)):
        raise BadRequest(f"{photo_only[0]} applies to a photo's garments: send a photo (image_url, file or an "
                         "image/* body) with it.", field=photo_only[0])
    # A page's empty text box next to a photo is no text; without a photo, text is required.
    text = None if has_photo and (raw_text is None or (isinstance(raw_text, str) and not raw_text.strip())) \
        else parse_text(raw_text)
    from_text = got.form != "json"
    n = parse_n(got.fields.get("n", 5), from_text=from_text) if with_n else 0
    config = current_app.config["SEARCH"]
    weight = (parse_weight(got.fields["image_weight"], from_text=from_text) if "image_weight" in got.fields
              else config.image_weight)
    garments = parse_garment_options(got.fields, current_app.extensions["garment_vocabulary"])
    look = parse_flag(got.fields["look"], "look", from_text=from_text) if "look" in got.fields else False
    return _Query(text=text, n=n, weight=weight, photo=photo, photo_url=photo_url, garments=garments, look=look)


def _text_vector(searcher, query: _Query) -> np.ndarray | None:
    if query.text is None:
        return None
    with timed(stage_timings(), "embed_text"):
        return searcher.embed_query(query.text)


def _query_vector(searcher, query: _Query) -> np.ndarray:
    """The text's embedding, the photo's garment embedding (all the garments it keeps together,
    as the indexer embeds a catalog photo), or their blend."""
    text_vector = _text_vector(searcher, query)
    if not query.has_photo:
        return text_vector
    photo_vector = _photos().embed(query.photo_bytes(), stage_timings(), query.garments)
    if text_vector is None:
        return photo_vector
    return searcher.blend(text_vector, photo_vector, query.weight)


def _look_vectors(searcher, query: _Query):
    """Each garment of the query photo with its query vector (blended with the text, if any)."""
    text_vector = _text_vector(searcher, query)
    garments = _photos().look(query.photo_bytes(), stage_timings(), query.garments)
    if text_vector is not None:
        garments = [(garment, searcher.blend(text_vector, vector, query.weight)) for garment, vector in garments]
    return garments


def _results_json(results) -> list[dict]:
    return [{"product_name": r.product_name, "url": image_url(r.product_name, r.image_file),
             "score": round(r.score, 6)} for r in results]


def _ranked(searcher, what, *args):
    """Run a ranking call, timed and counted; a vector database that is down answers 503."""
    start = time.perf_counter()
    try:
        results = what(*args)
    except VectorStoreError as exc:  # the vector database is down or changed: retry later
        raise NotReady(str(exc)) from None
    elapsed = time.perf_counter() - start
    stage_timings()["rank"] = stage_timings().get("rank", 0.0) + elapsed  # as timed(), and the metric needs it
    current_app.extensions["metrics"].query_latency.labels("search", searcher.store.backend).observe(elapsed)
    return results


@bp.post("/")
def search():
    """Text: its products. A photo: by default the products ranked by their best match over the
    photo's garments (each embedded on its own); with `look`, one result list per garment."""
    searcher = _searcher()
    query = _read_query()
    if not query.has_photo:
        return jsonify(_results_json(_ranked(searcher, searcher.search_vector, _text_vector(searcher, query),
                                             query.n, query.text)))
    garments = _look_vectors(searcher, query)
    if not query.look:
        vectors = [vector for _, vector in garments]
        return jsonify(_results_json(_ranked(searcher, searcher.search_vectors, vectors, query.n, query.text)))
    return jsonify({
        "classes": list(query.garments.classes), "classes_source": query.garments.source,
        "garments": [{"class": garment.garment_class, "box": list(garment.box),
                      "results": _results_json(_ranked(searcher, searcher.search_vector, vector, query.n, query.text))}
                     for garment, vector in garments],
    })


@bp.get("/products/<product>")
def product_record(product: str):
    """A product as the index holds it: its images and the garment classes its masks kept."""
    searcher = _searcher()
    reject_unknown_fields(request.args.to_dict(), set())
    index = searcher.index
    row = index.products.find(product)
    if row is None:
        raise NotFound(f"No product {product!r} in the index.")
    fallbacks = index.image_fallbacks
    choice = index.product_garments(row)
    return jsonify({
        "product_name": product,
        "images": [{"file": index.image_files[i], "url": image_url(product, index.image_files[i]),
                    "garment_fallback": bool(fallbacks[i])} for i in index.image_rows(row)],
        "garment_classes": {"classes": list(choice.classes), "source": choice.source, "garment": choice.garment},
    })


@bp.get("/products/<product>/similar")
def similar(product: str):
    searcher = _searcher()
    reject_unknown_fields(request.args.to_dict(), {"n"})
    n = parse_n(request.args.get("n", 5), from_text=True)
    try:
        results = _ranked(searcher, searcher.similar, product, n)
    except KeyError:
        raise NotFound(f"No product {product!r} in the index.") from None
    return jsonify(_results_json(results))


@bp.post("/embed")
def embed():
    """The normalised vector of a text or of a photo's garment, with the model that made it."""
    searcher = _searcher()
    query = _read_query(with_n=False)
    if query.text is not None and query.has_photo:
        raise BadRequest("Send either text or a photo to /embed, not both.", field="text")
    vector = _query_vector(searcher, query)
    identity = searcher.embedder.identity
    return jsonify({
        "embedding": np.asarray(vector, np.float32).astype(np.float64).tolist(),
        "dim": int(vector.shape[0]),
        "input": "text" if query.text is not None else "photo",
        "normalised": True,
        "model": {"model": identity["model"], "pretrained": identity.get("pretrained") or None,
                  # changes with the weights: vectors of two identities must not be mixed
                  "identity_sha256": hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()},
    })


@bp.post("/batch")
def batch():
    """Up to MAX_BATCH text queries; one result list per query, in order."""
    searcher = _searcher()
    body = json_object_body()
    reject_unknown_fields(body, {"queries"})
    queries = body.get("queries")
    if not isinstance(queries, list) or not 1 <= len(queries) <= MAX_BATCH:
        raise BadRequest(f"queries must be a list of 1 to {MAX_BATCH} query objects.", field="queries")
    parsed = []
    for i, item in enumerate(queries):
        where = f"queries[{i}]"
        if not isinstance(item, dict):
            raise BadRequest(f"{where} must be an object like {{\"text\": ..., \"n\": ...}}.", field=where)
        unknown = sorted(set(item) - {"text", "n"})
        if unknown:
            raise BadRequest(f"Unknown field {unknown[0]!r} in {where}; accepted fields: n, text.",
                             field=f"{where}.{unknown[0]}")
        parsed.append((parse_text(item.get("text"), f"{where}.text"), parse_n(item.get("n", 5), f"{where}.n")))
    answers = []
    for text, n in parsed:
        with timed(stage_timings(), "embed_text"):
            vector = searcher.embed_query(text)
        answers.append(_results_json(_ranked(searcher, searcher.search_vector, vector, n, text)))
    return jsonify(answers)


@bp.get("/images/<product>/<file>")
def image(product: str, file: str):
    index = _searcher().index
    # Only files the index lists are served: no path from the client reaches the filesystem.
    if index.find_image(product, file) is None:
        raise NotFound(f"No image {file!r} of product {product!r} in the index.")
    return send_from_directory(current_app.extensions["catalog_dir"] / product, file, max_age=3600)
