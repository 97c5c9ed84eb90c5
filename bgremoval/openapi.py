"""OpenAPI 3.1 document of the background-removal service (served at /openapi.json)."""
from shared.openapi import PROBLEM_SCHEMA, ops_paths, problem

OPTIONS = {
    "format": {"type": "string", "enum": ["jpeg", "png"], "default": "jpeg",
               "description": "png carries the garment mask as alpha"},
    "background": {"type": "string", "pattern": "^#?[0-9a-fA-F]{6}$", "default": "#000000"},
    "classes": {"type": "array", "items": {"type": "string", "enum": ["upper", "lower", "full"]},
                "minItems": 1, "default": ["upper", "lower", "full"]},
}

OPENAPI = {
    "openapi": "3.1.0",
    "info": {"title": "Garment background removal", "version": "1.0.0",
             "description": "Returns the photo with everything but the garment set to the background colour."},
    "paths": {
        "/": {"post": {
            "summary": "Remove everything that is not the garment",
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": {
                    "type": "object", "required": ["url"], "additionalProperties": False,
                    "properties": {"url": {"type": "string", "format": "uri"}, **OPTIONS}}},
                "multipart/form-data": {"schema": {
                    "type": "object", "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"},
                                   "format": OPTIONS["format"], "background": OPTIONS["background"],
                                   "classes": {"type": "string", "description": "comma-separated"}}}},
                "image/*": {"schema": {"type": "string", "format": "binary"},
                            "description": "options as query parameters"},
            }},
            "responses": {
                "200": {"description": "Same width and height as the input (after EXIF orientation)",
                        "content": {"image/jpeg": {}, "image/png": {}}},
                "400": problem("Bad field or refused URL"),
                "413": problem("Body, download or pixel count over the limit"),
                "415": problem("Not JSON/multipart/image, or an unsupported image format"),
                "422": problem("Decodable but unusable: no garment found, corrupt or tiny image"),
                "502": problem("The image host failed"),
                "503": problem("Models not loaded, or this worker's megapixel budget is in use "
                               "(then with Retry-After)"),
                "504": problem("The image host timed out"),
            },
        }},
        "/pipeline": {"get": {
            "summary": "Models (with weights sha256) and settings that decide the masks",
            "description": "The search indexer records this to know what an --update must re-embed.",
            "responses": {
                "200": {"description": "shared / garment / product parts", "content": {"application/json": {
                    "schema": {"type": "object", "required": ["garment_pipeline"], "properties": {
                        "garment_pipeline": {"type": "object", "required": ["shared", "garment", "product"]}}}}}},
                "503": problem("Models not loaded"),
            },
        }},
        **ops_paths(),
    },
    "components": {"schemas": {"Problem": PROBLEM_SCHEMA}},
}
