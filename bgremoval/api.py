"""HTTP layer of the background-removal service: parse and validate, call the pipeline, encode."""
from __future__ import annotations

import re
import time
from dataclasses import dataclass

from flask import Blueprint, Response, current_app, jsonify, request

from bgremoval.pipeline import GARMENT_CLASSES, GarmentPipeline
from shared.errors import BadRequest, UnsupportedMediaType
from shared.fetch import fetch_url
from shared.images import decode_opened, encode_image, open_image
from shared.web import json_object_body, reject_unknown_fields, stage_timings

bp = Blueprint("bgremoval", __name__)

OPTION_FIELDS = {"format", "background", "classes"}
FORMATS = {"jpeg": "image/jpeg", "png": "image/png"}
HEX_COLOUR = re.compile(r"^#?([0-9a-fA-F]{6})$")


@dataclass(frozen=True)
class Options:
    format: str = "jpeg"
    background: tuple[int, int, int] = (0, 0, 0)
    classes: tuple[str, ...] = GARMENT_CLASSES


def parse_options(raw: dict) -> Options:
    """Validate the optional fields; `classes` may be a list (JSON) or comma-separated (form/query)."""
    fmt = raw.get("format", "jpeg")
    if not isinstance(fmt, str) or fmt.lower() not in FORMATS:
        raise BadRequest(f"format must be one of {sorted(FORMATS)}.", field="format")
    colour = raw.get("background", "#000000")
    match = HEX_COLOUR.match(colour) if isinstance(colour, str) else None
    if not match:
        raise BadRequest("background must be a hex colour like '#000000'.", field="background")
    rgb = tuple(int(match.group(1)[i:i + 2], 16) for i in (0, 2, 4))
    classes = raw.get("classes", list(GARMENT_CLASSES))
    if isinstance(classes, str):
        classes = [c.strip() for c in classes.split(",") if c.strip()]
    if (not isinstance(classes, list) or not classes
            or not all(isinstance(c, str) and c in GARMENT_CLASSES for c in classes)):
        raise BadRequest(f"classes must be a non-empty subset of {list(GARMENT_CLASSES)}.", field="classes")
    ordered = tuple(c for c in GARMENT_CLASSES if c in classes)
    return Options(format=fmt.lower(), background=rgb, classes=ordered)


def _read_request() -> tuple[bytes, Options]:
    """The image bytes and options from a JSON {url}, a multipart `file`, or a raw image/* body."""
    config = current_app.config["BG"]
    mimetype = request.mimetype or ""
    if request.is_json:
        body = json_object_body()
        reject_unknown_fields(body, OPTION_FIELDS | {"url"})
        url = body.get("url")
        if not isinstance(url, str) or not url.strip():
            raise BadRequest("url must be a non-empty string with the image's http(s) address.", field="url")
        options = parse_options(body)
        start = time.perf_counter()
        data = fetch_url(url.strip(), config.fetch)
        stage_timings()["fetch"] = time.perf_counter() - start
        return data, options
    if mimetype == "multipart/form-data":
        reject_unknown_fields(dict(request.form), OPTION_FIELDS)
        extra_files = set(request.files) - {"file"}
        if extra_files:
            raise BadRequest(f"Unknown file field {sorted(extra_files)[0]!r}; send the image as 'file'.",
                             field=sorted(extra_files)[0])
        upload = request.files.get("file")
        if upload is None:
            raise BadRequest("multipart requests must carry the image in a 'file' field.", field="file")
        return upload.read(), parse_options(request.form.to_dict())
    if mimetype.startswith("image/"):
        reject_unknown_fields(request.args.to_dict(), OPTION_FIELDS)
        # Not cached on the request object: the handler drops the body once it is decoded.
        return request.get_data(cache=False), parse_options(request.args.to_dict())
    raise UnsupportedMediaType(
        "Send JSON {\"url\": ...}, a multipart form with a 'file' field, or a raw image/* body "
        f"(got Content-Type {mimetype or 'none'!r})."
    )


@bp.post("/")
def remove_background() -> Response:
    current_app.extensions["readiness"].require()
    config = current_app.config["BG"]
    pipeline: GarmentPipeline = current_app.extensions["bg_pipeline"]
    data, options = _read_request()
    opened = open_image(data, max_pixels=config.max_pixels)  # header only: 413/415/422 before any pixel
    del data  # the opened image holds the bytes until it is decoded
    # Memory grows with pixels: reserve them from this worker's budget (503 + Retry-After past it).
    with current_app.extensions["pixel_budget"].reserve(opened.pixels):
        start = time.perf_counter()
        decoded = decode_opened(opened)
        del opened
        stage_timings()["decode"] = time.perf_counter() - start

        picture, result = pipeline.cut_out(decoded, options.classes, options.background,
                                           mask_as_alpha=options.format == "png")
        del decoded  # the input is not needed any more: free it before encoding
        stage_timings().update(result.timings)

        start = time.perf_counter()
        payload = encode_image(picture, options.format, jpeg_quality=config.jpeg_quality)
        del picture
        stage_timings()["encode"] = time.perf_counter() - start
    response = Response(payload, mimetype=FORMATS[options.format])
    response.headers["X-Mask-Source"] = result.source
    return response


@bp.get("/pipeline")
def pipeline_identity():
    """The models (with weights sha256) and settings that decide masks: the indexer records them so
    that --update knows what to re-embed, whether it runs the pipeline in-process or calls here."""
    current_app.extensions["readiness"].require()
    return jsonify(garment_pipeline=current_app.extensions["bg_pipeline"].identity())
