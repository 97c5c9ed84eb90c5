"""The search service's requests, declared once: search/api.py validates with these models and
openapi_document() turns them into the service's OpenAPI document."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, ValidationInfo, field_validator, \
    model_validator

from search.filters import MAX_FIELDS as MAX_FILTER_FIELDS
from search.filters import MAX_VALUES as MAX_FILTER_VALUES
from search.filters import RANGE_OPERATORS
from shared.garment_vocabulary import GARMENT_CLASSES
from shared.openapi import Document, image_body, problem, problems
from shared.schemas import (
    GARMENT_FIELDS,
    PRODUCT_OR_CLASSES,
    Classes,
    Fallback,
    FormSpelling,
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
    comma_separated,
    from_text,
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


MAX_FIELDS_ASKED = 64
FILTER_VALUE = {"oneOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]}
FILTER_SCHEMA = {
    "type": "object", "maxProperties": MAX_FILTER_FIELDS,
    "additionalProperties": {"oneOf": [
        FILTER_VALUE,
        {"type": "array", "items": FILTER_VALUE, "minItems": 1, "maxItems": MAX_FILTER_VALUES},
        {"type": "object", "minProperties": 1, "additionalProperties": False, "properties": {
            **{op: FILTER_VALUE for op in ("eq", "contains")},
            **{op: {"type": "number"} for op in RANGE_OPERATORS},
            **{op: {"type": "array", "items": FILTER_VALUE, "minItems": 1, "maxItems": MAX_FILTER_VALUES}
               for op in ("in", "contains_any")}}},
    ]},
    "examples": [{"category": "dresses", "price": {"lt": 50}, "in_stock": True, "sizes": {"contains": "M"}}],
}


def as_json(value, info: ValidationInfo):
    """A form's or query string's filter is JSON text."""
    if from_text(info) and isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            raise Refusal("{field} must be a JSON object of field conditions, e.g. "
                          '{{"category": "dresses", "price": {{"lt": 50}}}}.') from None
    return value


Filter = Annotated[
    dict[str, Any], Strict(), BeforeValidator(as_json),
    Field(description="only products passing every condition (fields ANDed): a value = equal (a list field: "
                      "contains), a list = any of them, or an object of operators: eq, in, gte, gt, lte, lt (numbers), "
                      "contains, contains_any (list fields). The index's fields: GET /fields",
          json_schema_extra=FILTER_SCHEMA),
    FormSpelling({"type": "string", "contentMediaType": "application/json",
                  "description": "the filter as JSON text, e.g. {\"category\": \"dresses\"}"}),
    Refused('{field} must be an object of field conditions, e.g. {{"category": "dresses", "price": {{"lt": 50}}}}.'),
]
FieldsAsked = Annotated[
    list[NonBlank], BeforeValidator(comma_separated), Field(min_length=1, max_length=MAX_FIELDS_ASKED, description=(
        "the product's attributes to return with each result (as `fields`), e.g. [\"price\", \"in_stock\"]")),
    FormSpelling({"type": "string", "description": "comma-separated attribute names, e.g. price,in_stock"}),
    Refused(f"{{field}} must be a list of 1 to {MAX_FIELDS_ASKED} field names."),
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
    filter: Filter = None
    fields: FieldsAsked = None
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
    filter: Filter = None
    fields: FieldsAsked = None


class Batch(RequestModel):
    """POST /batch."""
    queries: Annotated[list[BatchQuery], Field(min_length=1, max_length=MAX_BATCH),
                       Refused(f"{{field}} must be a list of 1 to {MAX_BATCH} query objects.")]


class SimilarQuery(RequestModel):
    """GET /products/{product}/similar's query string."""
    n: Count = 5
    filter: Filter = None
    fields: FieldsAsked = None


class NoQuery(RequestModel):
    """A query string that must stay empty."""


# ------------------------------------------------------------------ responses


class Result(BaseModel):
    model_config = ConfigDict(extra="forbid")
    product_name: str
    url: str = Field(description="the product's best-matching image: the feed's URL, or served by this service")
    score: float = Field(description="higher = more similar (cosine, fused with the BM25 text match)")
    id: str = Field(description="the product's id (a folder catalog's folder name)")
    fields: dict[str, Any] | None = Field(None, description="the attributes asked for (null where it has none); "
                                                            "only when the request named `fields`")


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
    id: str = Field(description="the feed's id (a folder catalog's folder name)")
    name: str
    product_name: str = Field(description="the same as name, as results spell it")
    description: str | None = None
    category: str | None = None
    brand: str | None = None
    url: str | None = Field(None, description="the product's page, as the feed gave it")
    attributes: dict[str, Any] = Field(description="the feed's other fields, typed (GET /fields)")
    images: list[ProductImage]
    garment_classes: ProductGarments


class FilterableFields(BaseModel):
    fields: dict[str, Literal["string", "number", "boolean", "strings"]] = Field(
        description="each field a filter may name, with its type (strings: a list of strings)")


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
        _400="Bad field (e.g. filter.price.gte: an unknown field or operator, a wrong type, an empty list, too deep "
             "or too large), refused image_url, or photo queries turned off",
        _413=too_large,
        _415="Not JSON/multipart/image, or an unsupported image format",
        _422="The photo shows no garment, or is corrupt",
        _502="The image host failed",
        _503="Index or model not loaded, the garment step (bg-removal service) unavailable, or this worker's "
             "megapixel budget for photos in use (then with Retry-After)",
        _504="The image host timed out",
    )
    not_loaded = problem("Index or model not loaded")
    results = {"type": "array", "items": doc.ref(Result)}
    product_name = {"name": "product", "in": "path", "required": True, "schema": {"type": "string"},
                    "description": "the product's id (a feed's id, a catalog folder's name), percent-encoded"}
    bad_filter = ("Bad field; `field` names it, e.g. filter.price.gte (an unknown field or operator, a wrong type, "
                  "an empty list, too deep or too large) or fields[1]")

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
                            f"{config.image_weight}). A text's BM25 match over the products' name, category, brand and "
                            f"description joins the CLIP score ({config.fusion_method}, lexical weight "
                            f"{config.lexical_weight}). `filter` keeps the products passing every condition (GET "
                            "/fields lists them); `fields` returns attributes with each result.",
                responses={"200": {
                    "description": "min(n, products passing the filter) results, each product once, score "
                                   "descending; with look, one such list per garment of the photo",
                    "content": {"application/json": {"schema": {"oneOf": [results, doc.ref(LookResults)]}}}},
                    **photo_errors}),
        },
        "/fields": {"get": {
            "summary": "The fields a filter may name, with their types",
            "responses": {"200": {"description": "the index's filterable fields (none for a folder catalog)",
                                  "content": {"application/json": {"schema": doc.ref(FilterableFields)}}},
                          **problems(_400="Unknown parameter"), "503": not_loaded},
        }},
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
            "parameters": [product_name, *doc.query_parameters(SimilarQuery, description="how many products, "
                                                                                        "which, and what to return")],
            "responses": {"200": {"description": "min(n, products passing the filter - 1) results, score descending",
                                  "content": {"application/json": {"schema": results}}},
                          **problems(_400=f"Bad n or unknown parameter. {bad_filter}",
                                     _404="No such product in the index"),
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
                **problems(_400=f"Bad field; `field` names it, e.g. queries[3].n. {bad_filter}",
                           _413=f"Body over {config.max_body_bytes:,} bytes", _415="Not JSON"),
                "503": not_loaded,
            },
        }},
        "/images/{product}/{file}": {"get": {
            "summary": "A catalog image listed in the index (a feed's local image: its path beside the feed, which may "
                       "hold /)",
            "parameters": [{"name": "product", "in": "path", "required": True, "schema": {"type": "string"}},
                           {"name": "file", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "the image", "content": {"image/*": {}}},
                          **problems(_404="Not in the index"), "503": not_loaded},
        }},
    }
    return doc.assemble(paths=paths, info={"title": "Garment search by text and photo", "version": "1.0.0"})
