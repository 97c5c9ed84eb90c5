"""The background-removal service's requests, declared once: bgremoval/api.py validates with these
models and openapi_document() turns them into the service's OpenAPI document."""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, Strict

from shared.images import CROP_MARGIN, WEBP_MAX_SIDE
from shared.openapi import GARMENT_HEADERS, Document, image_body, problems
from shared.schemas import (
    PRODUCT_OR_CLASSES,
    Classes,
    Fallback,
    GarmentFields,
    ImageAddress,
    NotTogether,
    Product,
    Refusal,
    Refused,
    RequestModel,
    lower,
)

FORMATS = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
CROPS = ("none", "garment")
HEX_COLOUR = re.compile(r"^#?([0-9a-fA-F]{6})$")


def http_address(url: str) -> str:
    """Only the cheap checks (scheme, host), so that a hopeless value is refused before any
    download; fetch_url checks the rest."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        raise Refusal("{field} is not a valid URL.") from None
    if parts.scheme.lower() not in ("http", "https") or not host:
        raise Refusal("{field} must be an http(s) URL with a host.")
    return url


Format = Annotated[
    Literal[tuple(FORMATS)], BeforeValidator(lower),
    Field(description="png and webp carry the garment mask as alpha (the background colour under it), except with "
                      "background_url: then they are the opaque composite, like jpeg. webp is lossy at the JPEG "
                      f"quality (alpha lossless), at most {WEBP_MAX_SIDE} px a side (422, field format, past it)"),
    Refused(f"{{field}} must be one of {sorted(FORMATS)}."),
]
Background = Annotated[
    str, Strict(), Field(pattern=HEX_COLOUR.pattern, description="colour behind the garment; not together with "
                                                                  "background_url"),
    Refused("{field} must be a hex colour like '#000000'."),
]
BackgroundUrl = Annotated[
    ImageAddress, AfterValidator(http_address),
    Field(description="an image (http/https, fetched like url, same limits) to put behind the garment instead of a "
                      "colour: scaled to cover the output, centre-cropped; transparent parts black. Not together "
                      "with background. Its failures are the problems url's would be, with field background_url"),
]
Crop = Annotated[
    Literal[CROPS], BeforeValidator(lower),
    Field(description=f"garment: only the garment's bounding box plus a {CROP_MARGIN:.0%} margin (the search "
                      "indexer's crop); none: the photo's size"),
    Refused(f"{{field}} must be one of {list(CROPS)}."),
]


class LabelsForm(RequestModel, GarmentFields):
    """POST /labels: which garments to label (form fields, or the query string of a raw image)."""
    fallback: Fallback = None
    product: Product = None
    classes: Classes = None
    rules = (PRODUCT_OR_CLASSES,)


class RemoveForm(RequestModel, GarmentFields):
    """POST /: the options (form fields, or the query string of a raw image), checked in this order."""
    format: Format = "jpeg"
    background_url: BackgroundUrl = None
    background: Background = "#000000"
    fallback: Fallback = None
    product: Product = None
    classes: Classes = None
    crop: Crop = "none"
    rules = (NotTogether(("background", "background_url"), field="background_url", before="background_url",
                         detail="Send either background (a colour) or background_url (an image), not both."),
             PRODUCT_OR_CLASSES)

    @property
    def background_rgb(self) -> tuple[int, int, int]:
        digits = HEX_COLOUR.match(self.background).group(1)
        return tuple(int(digits[i:i + 2], 16) for i in (0, 2, 4))


class PhotoUrl(RequestModel):
    url: Annotated[ImageAddress, Field(description="the photo (http/https; private, loopback and link-local "
                                                   "addresses are refused)")]


# A JSON body: the photo's url, checked first (pydantic orders the fields of the last base first).
class RemoveJson(RemoveForm, PhotoUrl):
    """POST / with the photo by URL."""


class LabelsJson(LabelsForm, PhotoUrl):
    """POST /labels with the photo by URL."""


# ------------------------------------------------------------------ responses


class PipelineParts(BaseModel):
    model_config = ConfigDict(extra="allow")
    shared: dict[str, Any]
    garment: dict[str, Any]
    product: dict[str, Any]


class PipelineIdentity(BaseModel):
    """The models (with weights sha256) and settings that decide the masks."""
    garment_pipeline: PipelineParts


def openapi_document(config) -> dict:
    """The service's OpenAPI 3.1 document, with the limits `config` (a BgConfig) sets."""
    doc = Document(config)
    raw = "only with a raw image/* body"
    photo = f"the photo (at most {config.max_body_bytes:,} bytes and {config.max_pixels:,} pixels)"
    image_errors = problems(
        _400="Bad field or refused URL (field says which: url, background_url, product, classes, ...)",
        _413=f"Body over {config.max_body_bytes:,} bytes, download over {config.fetch.max_bytes:,} bytes, or "
             f"more than {config.max_pixels:,} pixels",
        _415="Not JSON/multipart/image, or an unsupported image format",
        _422="Decodable but unusable: no garment found (of the classes asked for), corrupt or tiny image, or too "
             f"large for webp (more than {WEBP_MAX_SIDE} px a side; field format)",
        _502="The image host failed",
        _503="Models not loaded, or this worker's megapixel budget is in use (then with Retry-After)",
        _504="The image host timed out",
    )

    def operation(json_model, form_model, summary: str, ok: dict, **extra) -> dict:
        return {"summary": summary, **extra,
                "parameters": doc.query_parameters(form_model, description=raw),
                "requestBody": {"required": True, "content": {
                    "application/json": doc.json_body(json_model),
                    "multipart/form-data": doc.form_body(form_model, file_required=True, photo_description=photo),
                    "image/*": image_body(f"{photo}; the other fields as query parameters"),
                }},
                "responses": {"200": ok, **image_errors}}

    paths = {
        "/": {
            "get": {"summary": "The web page (HTML; its script and style under /assets/)",
                    "responses": {"200": {"description": "HTML page", "content": {"text/html": {}}}}},
            "post": operation(RemoveJson, RemoveForm, "Remove everything that is not the garment", {
                "description": "Same width and height as the input (after EXIF orientation); with crop=garment the "
                               f"garment's box plus its {CROP_MARGIN:.0%} margin",
                "headers": GARMENT_HEADERS,
                "content": {mimetype: {} for mimetype in FORMATS.values()}}),
        },
        "/labels": {"post": operation(
            LabelsJson, LabelsForm, "The garment label map of a photo (which class each kept pixel is)", {
                "description": "the label map", "content": {"image/png": {}},
                "headers": {**GARMENT_HEADERS, "X-Label-Codes": {
                    "schema": {"type": "string"},
                    "description": "the codes, e.g. 1=upper,2=lower,3=full,255=product"}}},
            description="An 8-bit greyscale PNG at the photo's size: 0 not kept, 1 upper, 2 lower, 3 full (each "
                        "pixel's most probable class), 255 a flat-lay's product (no person: class unknown). One "
                        "pipeline run, as POST / costs. The search service cuts a look's garments from it.")},
        "/pipeline": {"get": {
            "summary": "Models (with weights sha256) and settings that decide the masks",
            "description": "The search indexer records this to know what an --update must re-embed.",
            "responses": {"200": {"description": "shared / garment / product parts",
                                  "content": {"application/json": {"schema": doc.ref(PipelineIdentity)}}},
                          **problems(_503="Models not loaded")},
        }},
    }
    return doc.assemble(paths=paths, info={
        "title": "Garment background removal", "version": "1.0.0",
        "description": "Returns the photo with everything but the garment set to the background colour or replaced "
                       "by a background image, optionally cropped to the garment."})
