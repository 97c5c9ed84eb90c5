"""OpenAPI 3.1 document of the search service (served at /openapi.json)."""
from shared.openapi import PROBLEM_SCHEMA, ops_paths, problem

RESULT = {
    "type": "object", "required": ["product_name", "url", "score"], "additionalProperties": False,
    "properties": {"product_name": {"type": "string"}, "url": {"type": "string"},
                   "score": {"type": "number", "description": "higher = more similar (cosine, blended with name match)"}},
}

OPENAPI = {
    "openapi": "3.1.0",
    "info": {"title": "Garment text search", "version": "1.0.0"},
    "paths": {
        "/": {"get": {"summary": "The web page (HTML; its script and style under /assets/)",
                      "responses": {"200": {"description": "HTML page", "content": {"text/html": {}}}}},
              "post": {
            "summary": "Products whose garment photos match the text",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["text"], "additionalProperties": False,
                "properties": {"text": {"type": "string", "minLength": 1},
                               "n": {"type": "integer", "minimum": 1, "maximum": 100, "default": 5}}}}}},
            "responses": {
                "200": {"description": "min(n, products) results, each product once, score descending",
                        "content": {"application/json": {"schema": {"type": "array", "items": RESULT}}}},
                "400": problem("Bad field"),
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
