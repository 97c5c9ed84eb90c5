"""HTTP layer of the background-removal service: parse and validate, call the pipeline, encode."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

from flask import Blueprint, Response, current_app, jsonify
from PIL import Image

from bgremoval.pipeline import GarmentMask, GarmentPipeline
from bgremoval.schemas import FORMATS, LabelsForm, LabelsJson, RemoveForm, RemoveJson
from shared.errors import ProblemError, Unprocessable
from shared.fetch import fetch_url
from shared.garment_request import LABEL_CLASSES, GarmentOptions
from shared.images import WEBP_MAX_SIDE, OpenedImage, decode_covering, decode_opened, encode_image, open_image
from shared.timing import timed
from shared.uploads import read_image_request
from shared.web import stage_timings

bp = Blueprint("bgremoval", __name__)

OPTION_FIELDS = set(RemoveForm.model_fields)
ALPHA_FORMATS = {"png", "webp"}  # these carry the garment mask as alpha (unless a background_url is given)


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


def to_options(fields: RemoveForm) -> Options:
    """The validated fields as the pipeline's options."""
    return Options(format=fields.format, background=fields.background_rgb, background_url=fields.background_url,
                   garments=fields.garments(current_app.extensions["garment_vocabulary"]), crop=fields.crop)


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


def _read_request(json_model, form_model, parse):
    """The image bytes and parse(fields) from a JSON {url}, a multipart `file`, or a raw image/*
    body; the fields are checked before the image is downloaded."""
    got = read_image_request(json_model, form_model)
    parsed = parse(got.fields)
    return (fetch_image(got.fields.url, "fetch") if got.form == "json" else got.image), parsed


def require_webp_fits(options: Options, size: tuple[int, int]) -> None:
    if options.format == "webp" and max(size) > WEBP_MAX_SIDE:
        raise Unprocessable(f"The result would be {size[0]}x{size[1]}; WebP holds at most {WEBP_MAX_SIDE} px "
                            "a side: ask for jpeg or png (or crop=garment).", field="format")


@bp.post("/")
def remove_background() -> Response:
    current_app.extensions["readiness"].require()
    config = current_app.config["BG"]
    pipeline: GarmentPipeline = current_app.extensions["bg_pipeline"]
    data, options = _read_request(RemoveJson, RemoveForm, to_options)
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
    data, garments = _read_request(LabelsJson, LabelsForm,
                                   lambda fields: fields.garments(current_app.extensions["garment_vocabulary"]))
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
