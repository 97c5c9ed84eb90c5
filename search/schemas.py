"""The search service's requests, declared once: search/api.py validates with these models and
openapi_document() turns them into the service's OpenAPI document."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, ValidationInfo, field_validator, \
    model_validator

from shared.garment_vocabulary import GARMENT_CLASSES
from shared.openapi import Document, image_body, problem, problems
from shared.schemas import (
    GARMENT_FIELDS,
    PRODUCT_OR_CLASSES,
    Classes,
    Fallback,
    FromConfig,
    GarmentFields,
    ImageAddress,
    NonBlank,
    Product,
    Refusal,
    Refused,
    RequestModel,
    as_flag,
    as_integer,
    as_number,
)

MAX_N = 100
MAX_BATCH = 32
PHOTO_FIELDS = ("look", *GARMENT_FIELDS)  # only with a photo: its garments, and which to search for

Count = Annotated[
    int, Strict(), Field(ge=1, le=MAX_N, description="how many products"), BeforeValidator(as_integer),
    Refused(f"{{field}} must be an integer from 1 to {MAX_N}."),
]
Text = Annotated[
    NonBlank, Field(description="what to look for (long text is truncated to the model's 77-token context)"),
    Refused("{field} must be a non-empty string."),
]
Weight = Annotated[
    float, Strict(), Field(ge=0, le=1, allow_inf_nan=False, description=(
        "with text and a photo: the photo's share of the visual score (default: SEARCH_IMAGE_WEIGHT)")),
    BeforeValidator(as_number), FromConfig("image_weight"), Refused("{field} must be a number from 0 to 1."),
]
Look = Annotated[
    bool, Strict(), BeforeValidator(as_flag),
    Field(description="one result list per garment found in the photo instead of one list (in a form or query "
                      "string also 1/0, yes/no, on/off)"),
    Refused("{field} must be true or false."),
]


def has_photo(values: dict, context: dict) -> bool:
    """Whether the request carries a photo: its bytes (a form's file, a raw body) or its image_url."""
    return bool(context.get("photo")) or "image_url" in values


@dataclass(frozen=True)
class PhotoQueriesOn:
    """A photo is refused before any other check of the query when photo queries are off."""
    before: str = "text"

    def problem(self, values: dict, context: dict) -> tuple[str, str] | None:
        if has_photo(values, context) and not context.get("photos_on", True):
            return context["photo_field"], ("Photo queries are turned off on this service (SEARCH_IMAGE_QUERIES=0); "
                                            "send text.")
        return None

    def json_schema(self, photo: str | None) -> dict:
        return {}


@dataclass(frozen=True)
class NeedsPhoto:
    """The fields about a photo's garments need a photo."""
    fields: tuple[str, ...]
    before: str = "text"

    def problem(self, values: dict, context: dict) -> tuple[str, str] | None:
        sent = sorted(set(self.fields) & set(values))
        if sent and not has_photo(values, context):
            return sent[0], (f"{sent[0]} applies to a photo's garments: send a photo (image_url, file or an image/* "
                             "body) with it.")
        return None

    def json_schema(self, photo: str | None) -> dict:
        return {"dependentRequired": {name: [photo] for name in self.fields}} if photo else {}


@dataclass(frozen=True)
class TextOrPhoto:
    """Text, a photo, or (unless `one`) both: checked by the text field's validator (_Query); as a
    rule only for the document."""
    one: bool = False
    before: str = "text"

    def problem(self, values: dict, context: dict) -> None:
        return None

    def json_schema(self, photo: str | None) -> dict:
        return {"oneOf" if self.one else "anyOf": [{"required": ["text"]}, {"required": [photo]}]} if photo else {}


class _Query(RequestModel, GarmentFields):
    """What POST / and /embed share: text, required without a photo."""

    @field_validator("text", mode="wrap", check_fields=False)
    @classmethod
    def _text_or_photo(cls, value, handler, info: ValidationInfo):
        """Without a photo, text is required; beside one, an empty text box (a page's) is no text."""
        if cls._photo(info, info.data) and (value is None or (isinstance(value, str) and not value.strip())):
            return None
        return handler(value)

    @staticmethod
    def _photo(info: ValidationInfo, fields: dict) -> bool:
        return bool(info.context and info.context.get("photo")) or fields.get("image_url") is not None


class SearchForm(_Query):
    """POST /: a text, a photo's garments, or both (form fields, or the query string of a raw image)."""
    text: Text = Field(None, validate_default=True)
    n: Count = 5
    image_weight: Weight = None  # None: the service's SEARCH_IMAGE_WEIGHT
    fallback: Fallback = None
    product: Product = None
    classes: Classes = None
    look: Look = False
    rules = (TextOrPhoto(), PhotoQueriesOn(), NeedsPhoto(PHOTO_FIELDS), PRODUCT_OR_CLASSES)


class EmbedForm(_Query):
    """POST /embed: a text, or which garments of the photo (form fields, or the query string of a raw image)."""
    text: Text = Field(None, validate_default=True)
    fallback: Fallback = None
    product: Product = None
    classes: Classes = None
    rules = (TextOrPhoto(one=True), PhotoQueriesOn(), NeedsPhoto(GARMENT_FIELDS), PRODUCT_OR_CLASSES)

    @model_validator(mode="after")
    def _one_input(self, info: ValidationInfo):
        if self.text is not None and self._photo(info, {"image_url": getattr(self, "image_url", None)}):
            raise Refusal("Send either text or a photo to /embed, not both.", field="text")
        return self


class ImageUrl(RequestModel):
    image_url: Annotated[ImageAddress, Field(description="a photo, fetched as the bg service fetches (same "
                                                         "address checks and limits)")] = None


# A JSON body: its image_url, checked first (pydantic orders the fields of the last base first).
class SearchJson(SearchForm, ImageUrl):
    """POST / as JSON: text, image_url, or both."""


class EmbedJson(EmbedForm, ImageUrl):
    """POST /embed as JSON: text or image_url."""


class BatchQuery(RequestModel):
    """One text query of a batch."""
    item_refused = '{field} must be an object like {{"text": ..., "n": ...}}.'
    text: Text
    n: Count = 5


class Batch(RequestModel):
    """POST /batch."""
    queries: Annotated[list[BatchQuery], Field(min_length=1, max_length=MAX_BATCH),
                       Refused(f"{{field}} must be a list of 1 to {MAX_BATCH} query objects.")]


class SimilarQuery(RequestModel):
    """GET /products/{product}/similar's query string."""
    n: Count = 5


class NoQuery(RequestModel):
    """A query string that must stay empty."""


# ------------------------------------------------------------------ responses


class Result(BaseModel):
    model_config = ConfigDict(extra="forbid")
    product_name: str
    url: str = Field(description="the product's best-matching image, served by this service")
    score: float = Field(description="higher = more similar (cosine, blended with name match)")


class LookGarment(BaseModel):
    garment_class: Literal[GARMENT_CLASSES] | None = Field(
        alias="class", description="null: a flat-lay's product (no person), class unknown")
    box: list[int] = Field(min_length=4, max_length=4,
                           description="[x0, y0, x1, y1] of the garment in the photo's pixels (x1, y1 exclusive)")
    results: list[Result]


class LookResults(BaseModel):
    classes: list[str] = Field(description="the classes searched for")
    classes_source: Literal["product", "classes", "all"]
    garments: list[LookGarment]


class ProductImage(BaseModel):
    file: str
    url: str
    garment_fallback: bool = Field(description="its product's classes found no garment: all kept")


class ProductGarments(BaseModel):
    classes: list[Literal[GARMENT_CLASSES]]
    source: Literal["product", "all"] = Field(description="product: chosen from its name; all: its name names no "
                                                          "garment")
    garment: str | None = Field(description="the garment its name named, e.g. tunic")


class ProductRecord(BaseModel):
    product_name: str
    images: list[ProductImage]
    garment_classes: ProductGarments


class EmbeddingModel(BaseModel):
    model: str
    pretrained: str | None
    identity_sha256: str = Field(description="changes with the weights: only vectors of one identity compare")


class Embedding(BaseModel):
    embedding: list[float]
    dim: int
    input: Literal["text", "photo"]
    normalised: bool
    model: EmbeddingModel


def openapi_document(config) -> dict:
    """The service's OpenAPI 3.1 document, with the defaults and limits `config` (a SearchConfig) sets."""
    doc = Document(config)
    raw = "only with a raw image/* body"
    photo = f"the photo (at most {config.max_upload_bytes:,} bytes and {config.max_image_pixels:,} pixels)"
    too_large = (f"JSON body over {config.max_body_bytes:,} bytes, upload over {config.max_upload_bytes:,}, download "
                 f"over {config.fetch.max_bytes:,}, or more than {config.max_image_pixels:,} pixels")
    photo_errors = problems(
        _400="Bad field, refused image_url, or photo queries turned off",
        _413=too_large,
        _415="Not JSON/multipart/image, or an unsupported image format",
        _422="The photo shows no garment, or is corrupt",
        _502="The image host failed",
        _503="Index or model not loaded, or the garment step (bg-removal service) unavailable",
        _504="The image host timed out",
    )
    not_loaded = problem("Index or model not loaded")
    results = {"type": "array", "items": doc.ref(Result)}
    product_name = {"name": "product", "in": "path", "required": True, "schema": {"type": "string"},
                    "description": "the product name (catalog folder), percent-encoded"}

    def photo_operation(json_model, form_model, **operation) -> dict:
        return {**operation,
                "parameters": doc.query_parameters(form_model, description=raw),
                "requestBody": {"required": True, "content": {
                    "application/json": doc.json_body(json_model, photo="image_url"),
                    "multipart/form-data": doc.form_body(form_model, file_required=False, photo_description=photo),
                    "image/*": image_body(f"{photo}; the other fields as query parameters"),
                }}}

    photos = ("off: this service runs with SEARCH_IMAGE_QUERIES=0, photo queries answer 400" if not config.image_queries
              else "isolated by the indexer's own pipeline")
    paths = {
        "/": {
            "get": {"summary": "The web page (HTML; its script and style under /assets/)",
                    "responses": {"200": {"description": "HTML page", "content": {"text/html": {}}}}},
            "post": photo_operation(
                SearchJson, SearchForm, summary="Products matching a text, a photo's garment, or both",
                description=f"A photo's garments ({photos}): each class covering {config.look_min_fraction:.0%} of "
                            "the photo is cut out and embedded on its own with CLIP's image tower, and products rank "
                            "by their best match over those garments (with `look`: one result list per garment). "
                            "`product` or `classes` choose the garment to search for. Text and photo together rank "
                            f"by a blend of both cosines (image_weight = the photo's share, default "
                            f"{config.image_weight}).",
                responses={"200": {
                    "description": "min(n, products) results, each product once, score descending; with look, one "
                                   "such list per garment of the photo",
                    "content": {"application/json": {"schema": {"oneOf": [results, doc.ref(LookResults)]}}}},
                    **photo_errors}),
        },
        "/products/{product}": {"get": {
            "summary": "A product as the index holds it: its images and the garment classes its masks kept",
            "parameters": [product_name],
            "responses": {"200": {"description": "the product",
                                  "content": {"application/json": {"schema": doc.ref(ProductRecord)}}},
                          **problems(_400="Unknown parameter", _404="No such product in the index"),
                          "503": not_loaded},
        }},
        "/products/{product}/similar": {"get": {
            "summary": "The products nearest to this one (\"more like this\"), without itself",
            "parameters": [product_name, *doc.query_parameters(SimilarQuery, description="how many products")],
            "responses": {"200": {"description": "min(n, products - 1) results, score descending",
                                  "content": {"application/json": {"schema": results}}},
                          **problems(_400="Bad n or unknown parameter", _404="No such product in the index"),
                          "503": not_loaded},
        }},
        "/embed": {"post": photo_operation(
            EmbedJson, EmbedForm,
            summary="The normalised CLIP vector of a text or of a photo's garment, with the model identity",
            description="For teams with their own vector store: vectors of one `identity_sha256` only are comparable "
                        "with each other (and with this index).",
            responses={"200": {"description": "the vector",
                               "content": {"application/json": {"schema": doc.ref(Embedding)}}},
                       **photo_errors})},
        "/batch": {"post": {
            "summary": f"Up to {MAX_BATCH} text queries at once; one result list per query, in order",
            "requestBody": {"required": True, "content": {"application/json": doc.json_body(Batch)}},
            "responses": {
                "200": {"description": "one list per query", "content": {"application/json": {"schema": {
                    "type": "array", "items": results}}}},
                **problems(_400="Bad field; `field` names it, e.g. queries[3].n",
                           _413=f"Body over {config.max_body_bytes:,} bytes", _415="Not JSON"),
                "503": not_loaded,
            },
        }},
        "/images/{product}/{file}": {"get": {
            "summary": "A catalog image listed in the index",
            "parameters": [{"name": "product", "in": "path", "required": True, "schema": {"type": "string"}},
                           {"name": "file", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "the image", "content": {"image/*": {}}},
                          **problems(_404="Not in the index"), "503": not_loaded},
        }},
    }
    return doc.assemble(paths=paths, info={"title": "Garment search by text and photo", "version": "1.0.0"})
