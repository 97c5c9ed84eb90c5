"""OpenAPI pieces both services' documents use."""
from shared.garment_request import MAX_PRODUCT_CHARS
from shared.garment_vocabulary import GARMENT_CLASSES

# Which garments of a photo to keep (shared/garment_request.py), in both services' requests.
GARMENT_OPTIONS = {
    "classes": {"type": "array", "items": {"type": "string", "enum": list(GARMENT_CLASSES)},
                "minItems": 1, "default": list(GARMENT_CLASSES),
                "description": "the cloth model's classes to keep; not together with product"},
    "product": {"type": "string", "minLength": 1, "maxLength": MAX_PRODUCT_CHARS,
                "description": "the product's name, title or category (any language the vocabulary covers, e.g. "
                               "'Kadın Lacivert Tunik'): its garment's classes are kept (tunic: upper + full; jeans: "
                               "lower); a text naming no garment keeps all. Not together with classes"},
    "fallback": {"type": "string", "enum": ["all", "none"],
                 "description": "all: keep every garment when the chosen classes find none (default with product); "
                                "none: answer 422 instead (default otherwise)"},
}
GARMENT_HEADERS = {
    "X-Mask-Source": {"schema": {"type": "string", "enum": ["garment", "product"]},
                      "description": "garment: a person's garment; product: no person, the flat-lay's matte"},
    "X-Garment-Classes": {"schema": {"type": "string"}, "description": "the classes kept, e.g. upper,full"},
    "X-Garment-Source": {"schema": {"type": "string", "enum": ["product", "classes", "all"]},
                         "description": "product: chosen from its text; classes: as asked; all: nothing chosen, "
                                        "the text named no garment, or the fallback was used"},
    "X-Garment-Fallback": {"schema": {"type": "string", "enum": ["true"]},
                           "description": "present when the chosen classes found no garment and all were kept"},
    "X-Garment-Name": {"schema": {"type": "string"}, "description": "the garment the product text named, e.g. tunic"},
}

PROBLEM_SCHEMA = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "field": {"type": "string"},
        "request_id": {"type": "string"},
    },
}


def problem(description: str) -> dict:
    return {"description": description,
            "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}


def ops_paths() -> dict:
    status = {"type": "object", "required": ["status", "service"],
              "properties": {"status": {"type": "string"}, "service": {"type": "string"},
                             "detail": {"type": "string"}}}
    ok = {"description": "OK", "content": {"application/json": {"schema": status}}}
    return {
        "/healthz": {"get": {"summary": "Process is up", "responses": {"200": ok}}},
        "/readyz": {"get": {"summary": "Models/index loaded", "responses": {
            "200": ok, "503": problem("Not ready yet, or loading failed (detail says why)")}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {
            "200": {"description": "Prometheus text format", "content": {"text/plain": {}}}}}},
        "/openapi.json": {"get": {"summary": "This document", "responses": {
            "200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}}}}},
    }
