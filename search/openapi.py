"""OpenAPI 3.1 document of the search service (served at /openapi.json)."""
from search.api import MAX_BATCH, MAX_N
from shared.openapi import GARMENT_OPTIONS, PROBLEM_SCHEMA, ops_paths, problem

RESULT = {
    "type": "object", "required": ["product_name", "url", "score"], "additionalProperties": False,
    "properties": {"product_name": {"type": "string"}, "url": {"type": "string"},
                   "score": {"type": "number", "description": "higher = more similar (cosine, blended with name match)"}},
}

TEXT = {"type": "string", "minLength": 1}
N = {"type": "integer", "minimum": 1, "maximum": MAX_N, "default": 5}
IMAGE_URL = {"type": "string", "format": "uri", "description": "a photo, fetched as the bg service fetches (SSRF-safe)"}
WEIGHT = {"type": "number", "minimum": 0, "maximum": 1, "default": 0.5,
          "description": "with text and a photo: the photo's share of the visual score (SEARCH_IMAGE_WEIGHT)"}
LOOK = {"type": "boolean", "default": False,
        "description": "with a photo: one result list per garment found in it instead of one list"}
PHOTO_GARMENTS = {name: {**schema, "description": "with a photo: which of its garments to search for. "
                                                 + schema["description"]}
                  for name, schema in GARMENT_OPTIONS.items()}
FORM_PHOTO_GARMENTS = {**PHOTO_GARMENTS, "classes": {"type": "string", "description": "comma-separated"},
                       "look": {"type": "string", "enum": ["true", "false", "1", "0"]}}
LOOK_RESULT = {
    "type": "object", "required": ["garments", "classes", "classes_source"],
    "properties": {
        "classes": {"type": "array", "items": {"type": "string"}, "description": "the classes searched for"},
        "classes_source": {"type": "string", "enum": ["product", "classes", "all"]},
        "garments": {"type": "array", "items": {
            "type": "object", "required": ["class", "box", "results"],
            "properties": {
                "class": {"type": ["string", "null"], "enum": ["upper", "lower", "full", None],
                          "description": "null: a flat-lay's product (no person), class unknown"},
                "box": {"type": "array", "items": {"type": "integer"}, "minItems": 4, "maxItems": 4,
                        "description": "[x0, y0, x1, y1] of the garment in the photo's pixels (x1, y1 exclusive)"},
                "results": {"type": "array", "items": RESULT}}}},
    },
}
RESULTS_200 = {"200": {"description": "min(n, products) results, each product once, score descending",
                       "content": {"application/json": {"schema": {"type": "array", "items": RESULT}}}}}
PHOTO_ERRORS = {
    "400": problem("Bad field, refused image_url, or photo queries turned off"),
    "413": problem("Body, download or pixel count over the limit"),
    "415": problem("Not JSON/multipart/image, or an unsupported image format"),
    "422": problem("The photo shows no garment, or is corrupt"),
    "502": problem("The image host failed"),
    "503": problem("Index or model not loaded, or the garment step (bg-removal service) unavailable"),
    "504": problem("The image host timed out"),
}
PRODUCT = {
    "type": "object", "required": ["product_name", "images", "garment_classes"],
    "properties": {
        "product_name": {"type": "string"},
        "images": {"type": "array", "items": {
            "type": "object", "required": ["file", "url", "garment_fallback"],
            "properties": {"file": {"type": "string"}, "url": {"type": "string"},
                           "garment_fallback": {"type": "boolean",
                                                "description": "its product's classes found no garment: all kept"}}}},
        "garment_classes": {"type": "object", "required": ["classes", "source", "garment"], "properties": {
            "classes": {"type": "array", "items": {"type": "string", "enum": ["upper", "lower", "full"]}},
            "source": {"type": "string", "enum": ["product", "all"],
                       "description": "product: chosen from its name; all: its name names no garment"},
            "garment": {"type": ["string", "null"], "description": "the garment its name named, e.g. tunic"}}},
    },
}
EMBEDDING = {
    "type": "object", "required": ["embedding", "dim", "input", "normalised", "model"],
    "properties": {
        "embedding": {"type": "array", "items": {"type": "number"}},
        "dim": {"type": "integer"},
        "input": {"type": "string", "enum": ["text", "photo"]},
        "normalised": {"type": "boolean"},
        "model": {"type": "object", "required": ["model", "pretrained", "identity_sha256"], "properties": {
            "model": {"type": "string"}, "pretrained": {"type": ["string", "null"]},
            "identity_sha256": {"type": "string"}}},
    },
}

OPENAPI = {
    "openapi": "3.1.0",
    "info": {"title": "Garment search by text and photo", "version": "1.0.0"},
    "paths": {
        "/": {"get": {"summary": "The web page (HTML; its script and style under /assets/)",
                      "responses": {"200": {"description": "HTML page", "content": {"text/html": {}}}}},
              "post": {
            "summary": "Products matching a text, a photo's garment, or both",
            "description": "A photo's garments are isolated by the indexer's own pipeline; each class covering "
                           "SEARCH_LOOK_MIN_FRACTION of the photo is cut out and embedded on its own with CLIP's "
                           "image tower, and products rank by their best match over those garments (with `look`: "
                           "one result list per garment). `product` or `classes` choose the garment to search for. "
                           "Text and photo together rank by a blend of both cosines (image_weight = the photo's "
                           "share). Photo queries answer 400 when the service runs with SEARCH_IMAGE_QUERIES=0.",
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": {
                    "type": "object", "additionalProperties": False,
                    "description": "text, image_url, or both",
                    "anyOf": [{"required": ["text"]}, {"required": ["image_url"]}],
                    "properties": {"text": TEXT, "image_url": IMAGE_URL, "n": N, "image_weight": WEIGHT,
                                   "look": LOOK, **PHOTO_GARMENTS},
                    "not": {"required": ["product", "classes"]}}},
                "multipart/form-data": {"schema": {
                    "type": "object", "description": "a photo in `file`, text, or both",
                    "properties": {"file": {"type": "string", "format": "binary"}, "text": {"type": "string"},
                                   "n": N, "image_weight": WEIGHT, **FORM_PHOTO_GARMENTS}}},
                "image/*": {"schema": {"type": "string", "format": "binary"},
                            "description": "the photo; the other fields as query parameters"},
            }},
            "parameters": [{"name": name, "in": "query", "required": False, "schema": schema,
                            "description": "only with a raw image/* body"}
                           for name, schema in (("text", TEXT), ("n", N), ("image_weight", WEIGHT),
                                                *FORM_PHOTO_GARMENTS.items())],
            "responses": {"200": {
                "description": "min(n, products) results, each product once, score descending; with look, one "
                               "such list per garment of the photo",
                "content": {"application/json": {"schema": {"oneOf": [
                    {"type": "array", "items": RESULT}, LOOK_RESULT]}}}}, **PHOTO_ERRORS},
        }},
        "/products/{product}": {"get": {
            "summary": "A product as the index holds it: its images and the garment classes its masks kept",
            "parameters": [{"name": "product", "in": "path", "required": True, "schema": {"type": "string"},
                            "description": "the product name (catalog folder), percent-encoded"}],
            "responses": {
                "200": {"description": "the product", "content": {"application/json": {"schema": PRODUCT}}},
                "400": problem("Unknown parameter"),
                "404": problem("No such product in the index"),
                "503": problem("Index or model not loaded")},
        }},
        "/products/{product}/similar": {"get": {
            "summary": "The products nearest to this one (\"more like this\"), without itself",
            "parameters": [{"name": "product", "in": "path", "required": True, "schema": {"type": "string"},
                            "description": "the product name (catalog folder), percent-encoded"},
                           {"name": "n", "in": "query", "required": False, "schema": N}],
            "responses": {**RESULTS_200, "400": problem("Bad n or unknown parameter"),
                          "404": problem("No such product in the index"),
                          "503": problem("Index or model not loaded")},
        }},
        "/embed": {"post": {
            "summary": "The normalised CLIP vector of a text or of a photo's garment, with the model identity",
            "description": "For teams with their own vector store: vectors of one `identity_sha256` only are "
                           "comparable with each other (and with this index).",
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": {
                    "type": "object", "additionalProperties": False,
                    "oneOf": [{"required": ["text"]}, {"required": ["image_url"]}],
                    "properties": {"text": TEXT, "image_url": IMAGE_URL, **PHOTO_GARMENTS}}},
                "multipart/form-data": {"schema": {
                    "type": "object", "properties": {"file": {"type": "string", "format": "binary"},
                                                     "text": {"type": "string"},
                                                     **{k: v for k, v in FORM_PHOTO_GARMENTS.items() if k != "look"}}}},
                "image/*": {"schema": {"type": "string", "format": "binary"},
                            "description": "product, classes and fallback as query parameters"},
            }},
            "responses": {
                "200": {"description": "the vector", "content": {"application/json": {"schema": EMBEDDING}}},
                **PHOTO_ERRORS,
            },
        }},
        "/batch": {"post": {
            "summary": f"Up to {MAX_BATCH} text queries at once; one result list per query, in order",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["queries"], "additionalProperties": False,
                "properties": {"queries": {"type": "array", "minItems": 1, "maxItems": MAX_BATCH, "items": {
                    "type": "object", "required": ["text"], "additionalProperties": False,
                    "properties": {"text": TEXT, "n": N}}}}}}}},
            "responses": {
                "200": {"description": "one list per query", "content": {"application/json": {"schema": {
                    "type": "array", "items": {"type": "array", "items": RESULT}}}}},
                "400": problem("Bad field; `field` names it, e.g. queries[3].n"),
                "413": problem("Body over the limit"),
                "415": problem("Not JSON"),
                "503": problem("Index or model not loaded"),
            },
        }},
        "/images/{product}/{file}": {"get": {
            "summary": "A catalog image listed in the index",
            "parameters": [{"name": "product", "in": "path", "required": True, "schema": {"type": "string"}},
                           {"name": "file", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "the image", "content": {"image/*": {}}},
                          "404": problem("Not in the index")},
        }},
        **ops_paths(),
    },
    "components": {"schemas": {"Problem": PROBLEM_SCHEMA}},
}
