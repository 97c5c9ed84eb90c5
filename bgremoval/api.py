"""HTTP layer of the background-removal service: parse and validate, call the pipeline, encode."""
from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

from flask import Blueprint, Response, current_app, jsonify
from PIL import Image

from bgremoval.pipeline import GarmentMask, GarmentPipeline
from shared.errors import BadRequest, ProblemError, Unprocessable
from shared.fetch import fetch_url
from shared.garment_request import GARMENT_FIELDS, LABEL_CLASSES, GarmentOptions, parse_garment_options
from shared.garment_vocabulary import Vocabulary
from shared.images import WEBP_MAX_SIDE, OpenedImage, decode_covering, decode_opened, encode_image, open_image
from shared.timing import timed
from shared.uploads import read_image_request, url_field
from shared.web import stage_timings

bp = Blueprint("bgremoval", __name__)

OPTION_FIELDS = {"format", "background", "background_url", "crop", *GARMENT_FIELDS}
FORMATS = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
ALPHA_FORMATS = {"png", "webp"}  # these carry the garment mask as alpha (unless a background_url is given)
CROPS = ("none", "garment")
HEX_COLOUR = re.compile(r"^#?([0-9a-fA-F]{6})$")


@dataclass(frozen=True)
class Options:
    format: str = "jpeg"
    background: tuple[int, int, int] = (0, 0, 0)
    background_url: str | None = None  # an image to put behind the garment instead of the colour
    garments: GarmentOptions = GarmentOptions()
    crop: str = "none"

    @property
    def mask_as_alpha(self) -> bool:
        # A background picture is meant to be seen: under alpha it would be thrown away, so
        # png/webp with a background_url are the opaque composite.
        return self.format in ALPHA_FORMATS and self.background_url is None


def garment_headers(response: Response, asked: GarmentOptions, result: GarmentMask) -> None:
    """What was kept, on every image response: the classes, where the choice came from, and
    whether the chosen classes found nothing so that all garments were kept."""
    response.headers["X-Mask-Source"] = result.source
    response.headers["X-Garment-Classes"] = ",".join(result.classes)
    response.headers["X-Garment-Source"] = "all" if result.fallback else asked.source
    if result.fallback:
        response.headers["X-Garment-Fallback"] = "true"
    if asked.garment and not result.fallback:
        response.headers["X-Garment-Name"] = asked.garment


def parse_options(raw: dict, vocabulary: Vocabulary) -> Options:
    """Validate the optional fields (the garment ones: parse_garment_options)."""
    fmt = raw.get("format", "jpeg")
    if not isinstance(fmt, str) or fmt.lower() not in FORMATS:
        raise BadRequest(f"format must be one of {sorted(FORMATS)}.", field="format")
    background_url = parse_background_url(raw)
    colour = raw.get("background", "#000000")
    match = HEX_COLOUR.match(colour) if isinstance(colour, str) else None
    if not match:
        raise BadRequest("background must be a hex colour like '#000000'.", field="background")
    rgb = tuple(int(match.group(1)[i:i + 2], 16) for i in (0, 2, 4))
    garments = parse_garment_options(raw, vocabulary)
    crop = raw.get("crop", "none")
    if not isinstance(crop, str) or crop.lower() not in CROPS:
        raise BadRequest(f"crop must be one of {list(CROPS)}.", field="crop")
    return Options(format=fmt.lower(), background=rgb, background_url=background_url, garments=garments,
                   crop=crop.lower())


def parse_background_url(raw: dict) -> str | None:
    """The background image's address, or None. Only the cheap checks here (type, scheme, host),
    so a hopeless value is refused before any download; fetch_url checks the rest."""
    if "background_url" not in raw:
        return None
    if "background" in raw:
        raise BadRequest("Send either background (a colour) or background_url (an image), not both.",
                         field="background_url")
    url = url_field(raw["background_url"], "background_url")
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        raise BadRequest("background_url is not a valid URL.", field="background_url") from None
    if parts.scheme.lower() not in ("http", "https") or not host:
        raise BadRequest("background_url must be an http(s) URL with a host.", field="background_url")
    return url


@contextmanager
def about_field(field: str):
    """Problems raised inside (by the fetcher or the decoder, which know nothing of request
    fields) name `field`, so a client can tell the background's failure from the photo's."""
    try:
        yield
    except ProblemError as exc:
        exc.field = field
        exc.detail = f"{field}: {exc.detail}"
        raise


def fetch_image(url: str, stage: str) -> bytes:
    with timed(stage_timings(), stage):
        return fetch_url(url, current_app.config["BG"].fetch)


def covering(backdrop: OpenedImage):
    """The pipeline's background for a fetched image: decoded to cover the output size it is
    called with (that size is known only after the mask, with crop=garment)."""
    def picture(size: tuple[int, int]):
        with about_field("background_url"):
            return decode_covering(backdrop, size)
    return picture


def _read_request(fields: set[str], parse):
    """The image bytes and parse(fields, vocabulary) from a JSON {url}, a multipart `file`, or a
    raw image/* body; the options are checked before the image is downloaded."""
    got = read_image_request(fields, json_fields={"url"})
    vocabulary = current_app.extensions["garment_vocabulary"]
    if got.form == "json":
        url = url_field(got.fields.get("url"), "url")
        options = parse(got.fields, vocabulary)
        return fetch_image(url, "fetch"), options
    return got.image, parse(got.fields, vocabulary)


def require_webp_fits(options: Options, size: tuple[int, int]) -> None:
    if options.format == "webp" and max(size) > WEBP_MAX_SIDE:
        raise Unprocessable(f"The result would be {size[0]}x{size[1]}; WebP holds at most {WEBP_MAX_SIDE} px "
                            "a side: ask for jpeg or png (or crop=garment).", field="format")


@bp.post("/")
def remove_background() -> Response:
    current_app.extensions["readiness"].require()
    config = current_app.config["BG"]
    pipeline: GarmentPipeline = current_app.extensions["bg_pipeline"]
    data, options = _read_request(OPTION_FIELDS, parse_options)
    opened = open_image(data, max_pixels=config.max_pixels)  # header only: 413/415/422 before any pixel
    del data  # the opened image holds the bytes until it is decoded
    if options.crop == "none":
        require_webp_fits(options, opened.image.size)  # the output is the photo's size (sides maybe swapped)
    backdrop: OpenedImage | None = None
    pixels = opened.pixels
    if options.background_url:
        # Fetched only now that the options and the photo's header passed: a request that is
        # refused anyway costs no download. And before the pixel budget and the models: a
        # background that fails (refused, 502/504, not an image) costs no model run, and a slow
        # host does not hold budget that other requests wait for. Its header is checked here too;
        # its pixels are decoded only once the output size is known (after the mask).
        with about_field("background_url"):
            backdrop = open_image(fetch_image(options.background_url, "background_fetch"),
                                  max_pixels=config.max_pixels)
        pixels += backdrop.pixels  # decoded at most at full size: budget for it (JPEGs take far less)
    # Memory grows with pixels: reserve them from this worker's budget (503 + Retry-After past it).
    with current_app.extensions["pixel_budget"].reserve(pixels):
        with timed(stage_timings(), "decode"):
            decoded = decode_opened(opened)
        del opened

        background = options.background if backdrop is None else covering(backdrop)
        picture, result = pipeline.cut_out(decoded, options.garments.classes, background,
                                           mask_as_alpha=options.mask_as_alpha, crop=options.crop == "garment",
                                           fallback=options.garments.fallback)
        del decoded, backdrop, background  # the inputs are not needed any more: free them before encoding
        stage_timings().update(result.timings)

        require_webp_fits(options, picture.size)
        with timed(stage_timings(), "encode"):
            payload = encode_image(picture, options.format, jpeg_quality=config.jpeg_quality)
        del picture
    response = Response(payload, mimetype=FORMATS[options.format])
    garment_headers(response, options.garments, result)
    return response


@bp.post("/labels")
def garment_labels() -> Response:
    """The garment label map of a photo, at its size, as an 8-bit greyscale PNG: 0 not kept, 1
    upper, 2 lower, 3 full (each pixel's most probable class), 255 a flat-lay's product (no
    person: its class is unknown). One pipeline run, as POST / costs; the search service cuts a
    look's garments from it."""
    current_app.extensions["readiness"].require()
    config = current_app.config["BG"]
    pipeline: GarmentPipeline = current_app.extensions["bg_pipeline"]
    data, garments = _read_request(GARMENT_FIELDS, parse_garment_options)
    opened = open_image(data, max_pixels=config.max_pixels)
    del data
    with current_app.extensions["pixel_budget"].reserve(opened.pixels):
        with timed(stage_timings(), "decode"):
            decoded = decode_opened(opened)
        del opened
        result = pipeline.garment_mask(decoded.rgb, garments.classes, decoded.alpha, fallback=garments.fallback,
                                       labels=True)
        stage_timings().update(result.timings)
        with timed(stage_timings(), "encode"):
            labels = Image.fromarray(result.labels, "L")
            if labels.size != result.size:  # class codes: never blended, so nearest-neighbour
                labels = labels.resize(result.size, Image.NEAREST)
            payload = encode_image(labels, "png")
    response = Response(payload, mimetype="image/png")
    garment_headers(response, garments, result)
    response.headers["X-Label-Codes"] = ",".join(f"{code}={name or 'product'}" for code, name in LABEL_CLASSES.items())
    return response


@bp.get("/pipeline")
def pipeline_identity():
    """The models (with weights sha256) and settings that decide masks: the indexer records them so
    that --update knows what to re-embed, whether it runs the pipeline in-process or calls here."""
    current_app.extensions["readiness"].require()
    return jsonify(garment_pipeline=current_app.extensions["bg_pipeline"].identity())
