"""HTTP layer of the search service: text, photo and text + photo queries, similar products,
embeddings and batches; every field checked before any work is done."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from urllib.parse import quote

import numpy as np
from flask import Blueprint, current_app, g, jsonify, request, send_from_directory

from search.filters import ProductFilter, compile_filter
from search.index_format import RECORD_FIELDS, is_remote, record_values
from search.schemas import Batch, EmbedForm, EmbedJson, NoQuery, SearchForm, SearchJson, SimilarQuery
from search.vectors import VectorStoreError
from shared.errors import BadRequest, NotFound, NotReady
from shared.fetch import fetch_url
from shared.garment_request import GarmentOptions
from shared.schemas import read
from shared.timing import timed
from shared.uploads import read_image_request
from shared.web import json_object_body, stage_timings

bp = Blueprint("search", __name__)
log = logging.getLogger("fashion.search")
UPLOAD_TYPES = ("multipart/form-data",)
STORE_RETRY_AFTER_S = 5  # a vector database that is down: reconnects are tried in the background meanwhile


@bp.before_request
def _body_limit() -> None:
    """Photos may be large, JSON queries may not: each body kind has its own limit."""
    config = current_app.config["SEARCH"]
    mimetype = request.mimetype or ""
    is_upload = mimetype in UPLOAD_TYPES or mimetype.startswith("image/")
    request.max_content_length = config.max_upload_bytes if is_upload else config.max_body_bytes


def image_url(product_id: str, file: str) -> str:
    """A feed's URL image as the feed gave it; a local one as served by /images/."""
    if is_remote(file):
        return file
    path = f"/images/{quote(product_id, safe='')}/{quote(file, safe='/')}"
    base = current_app.config["SEARCH"].public_base_url
    return f"{base}{path}" if base else path


def _generation():
    """The index generation this request uses from start to end (search/live.py): taken at the
    first use, released when the request ends, so a swap meanwhile never changes it mid-request."""
    generation = g.get("index_generation")
    if generation is None:
        current_app.extensions["readiness"].require()
        generation = g.index_generation = current_app.extensions["live_index"].acquire()
    return generation


@bp.teardown_request
def _release_generation(exc) -> None:
    generation = g.pop("index_generation", None)
    if generation is not None:
        current_app.extensions["live_index"].release(generation)


def _searcher():
    return _generation().searcher


def _photos():
    return _generation().photos  # there: a photo query is refused (PhotoQueriesOn) when they are off


def _shown_image(index, catalog, result) -> str:
    """The result's image file: its best image, or, when that file has gone from the catalog,
    another image of the same product that is there (logged and counted)."""
    path = index.image_path(catalog, result.image_row) if result.image_row >= 0 else None
    if path is None or os.path.isfile(path):
        return result.image_file
    _count_missing(index.image_relpath(result.image_row), "result")
    for row in index.image_rows(result.row):
        other = index.image_path(catalog, row)
        if other is not None and os.path.isfile(other):
            return index.image_files[row]
    return result.image_file  # none left: its url answers a counted 404


def _count_missing(relpath: str, where: str) -> None:
    current_app.extensions["missing_images"].labels(where).inc()
    log.warning(json.dumps({"event": "catalog_image_missing", "image": relpath, "where": where,
                            "request_id": g.get("request_id"),
                            "hint": "python -m search.index verify --index DIR lists every missing image"}))


class _Query:
    """One query's parsed parts: text, and a photo (its bytes, or the URL to fetch them from),
    with the garments to search for in it and whether to answer per garment (`look`)."""

    def __init__(self, *, text: str | None, n: int, weight: float, photo: bytes | None, photo_url: str | None,
                 garments: GarmentOptions = GarmentOptions(), look: bool = False,
                 product_filter: ProductFilter | None = None, fields: list[str] | None = None):
        self.text, self.n, self.weight, self.photo, self.photo_url = text, n, weight, photo, photo_url
        self.garments, self.look, self.filter, self.fields = garments, look, product_filter, fields

    @property
    def has_photo(self) -> bool:
        return self.photo is not None or self.photo_url is not None

    def photo_bytes(self) -> bytes:
        if self.photo is not None:
            return self.photo
        with timed(stage_timings(), "fetch"):
            return fetch_url(self.photo_url, current_app.config["SEARCH"].fetch, field="image_url")


def _read_query(json_model=SearchJson, form_model=SearchForm) -> _Query:
    """A query from JSON {text, image_url, n, image_weight, ...}, a multipart form (`file`, text,
    n, image_weight, ...) or a raw image/* body (the fields in the query string)."""
    got = read_image_request(json_model, form_model, file_required=False,
                             photos_on=current_app.extensions.get("photos_on", False),
                             photo_field="file" if request.mimetype != "application/json" else "image_url")
    fields = got.fields
    weight = getattr(fields, "image_weight", None)
    return _Query(text=fields.text, n=getattr(fields, "n", 0),
                  weight=current_app.config["SEARCH"].image_weight if weight is None else weight,
                  photo=got.image, photo_url=getattr(fields, "image_url", None),
                  garments=fields.garments(current_app.extensions["garment_vocabulary"]),
                  look=getattr(fields, "look", False),
                  product_filter=_filter(getattr(fields, "filter", None)),
                  fields=_fields_asked(getattr(fields, "fields", None)))


def _filter(raw, where: str = "filter") -> ProductFilter | None:
    """The request's filter checked against the served index's fields (400 naming the path)."""
    return compile_filter(raw, _searcher().index.attributes, where)


def _fields_asked(names: list[str] | None, where: str = "fields") -> list[str] | None:
    """The attributes a request asks results to carry: each must be one the index knows."""
    if names is None:
        return None
    known = set(_searcher().index.attributes.types) | set(RECORD_FIELDS)
    for i, name in enumerate(names):
        if name not in known:
            raise BadRequest(f"{where}[{i}]: unknown field {name!r}; known: {', '.join(sorted(known))}.",
                             field=f"{where}[{i}]")
    return list(dict.fromkeys(names))


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


def _results_json(results, fields: list[str] | None = None) -> list[dict]:
    generation = _generation()
    index = generation.index
    answers = []
    for r in results:
        shown = _shown_image(index, generation.catalog_dir, r)
        answer = {"product_name": r.product_name, "url": image_url(r.product_id, shown),
                  "score": round(r.score, 6), "id": r.product_id}
        if fields is not None:
            values = record_values(index.product_record(r.row))
            answer["fields"] = {name: values.get(name) for name in fields}
        answers.append(answer)
    return answers


def _ranked(searcher, what, *args):
    """Run a ranking call, timed and counted; a vector database that is down answers 503."""
    start = time.perf_counter()
    try:
        results = what(*args)
    except VectorStoreError as exc:  # the vector database is down or changed: retry later
        raise NotReady(str(exc), headers={"Retry-After": str(STORE_RETRY_AFTER_S)}) from None
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
                                             query.n, query.text, query.filter), query.fields))
    garments = _look_vectors(searcher, query)
    if not query.look:
        vectors = [vector for _, vector in garments]
        return jsonify(_results_json(_ranked(searcher, searcher.search_vectors, vectors, query.n, query.text,
                                             query.filter), query.fields))
    return jsonify({
        "classes": list(query.garments.classes), "classes_source": query.garments.source,
        "garments": [{"class": garment.garment_class, "box": list(garment.box),
                      "results": _results_json(_ranked(searcher, searcher.search_vector, vector, query.n, query.text,
                                                       query.filter), query.fields)}
                     for garment, vector in garments],
    })


@bp.get("/fields")
def filterable_fields():
    """The fields a filter may name, with their types (a feed's attributes, category, brand)."""
    searcher = _searcher()
    read(NoQuery, request.args.to_dict(), text=True)
    return jsonify({"fields": dict(searcher.index.attributes.types)})


@bp.get("/products/<product>")
def product_record(product: str):
    """A product as the index holds it: its record (the feed's fields), its images and the garment
    classes its masks kept."""
    searcher = _searcher()
    read(NoQuery, request.args.to_dict(), text=True)
    index = searcher.index
    row = index.products.find(product)
    if row is None:
        raise NotFound(f"No product {product!r} in the index.")
    fallbacks = index.image_fallbacks
    choice = index.product_garments(row)
    record = index.product_record(row)
    return jsonify({
        **record,
        "product_name": record["name"],
        "images": [{"file": index.image_files[i], "url": image_url(product, index.image_files[i]),
                    "garment_fallback": bool(fallbacks[i])} for i in index.image_rows(row)],
        "garment_classes": {"classes": list(choice.classes), "source": choice.source, "garment": choice.garment},
    })


@bp.get("/products/<product>/similar")
def similar(product: str):
    searcher = _searcher()
    asked = read(SimilarQuery, request.args.to_dict(), text=True)
    product_filter, fields = _filter(asked.filter), _fields_asked(asked.fields)
    # Asked first, not inferred from a KeyError: one raised inside a backend is a bug (a 500 with
    # the request id), not a product the client got wrong.
    if searcher.index.products.find(product) is None:
        raise NotFound(f"No product {product!r} in the index.")
    return jsonify(_results_json(_ranked(searcher, searcher.similar, product, asked.n, product_filter), fields))


@bp.post("/embed")
def embed():
    """The normalised vector of a text or of a photo's garment, with the model that made it."""
    searcher = _searcher()
    query = _read_query(EmbedJson, EmbedForm)  # text or a photo, not both
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
    queries = read(Batch, json_object_body()).queries
    asked = [(_filter(q.filter, f"queries[{i}].filter"), _fields_asked(q.fields, f"queries[{i}].fields"))
             for i, q in enumerate(queries)]  # every query checked before any is answered
    answers = []
    for query, (product_filter, fields) in zip(queries, asked, strict=True):
        with timed(stage_timings(), "embed_text"):
            vector = searcher.embed_query(query.text)
        answers.append(_results_json(_ranked(searcher, searcher.search_vector, vector, query.n, query.text,
                                             product_filter), fields))
    return jsonify(answers)


@bp.get("/images/<product>/<path:file>")
def image(product: str, file: str):
    generation = _generation()
    index = generation.index
    # Only files the index lists are served: no path from the client reaches the filesystem.
    row = index.find_image(product, file)
    if row is None or is_remote(file):
        raise NotFound(f"No image {file!r} of product {product!r} in the index.")
    relpath = index.image_relpath(row)
    if not os.path.isfile(generation.catalog_dir / relpath):  # gone from the catalog since the build
        _count_missing(relpath, "image")
        raise NotFound(f"Image {file!r} of product {product!r} is missing from the catalog; it has been logged.")
    return send_from_directory(generation.catalog_dir, relpath, max_age=3600)
