"""OpenAPI 3.1 document of the background-removal service (served at /openapi.json)."""
from shared.openapi import GARMENT_HEADERS, GARMENT_OPTIONS, PROBLEM_SCHEMA, ops_paths, problem

OPTIONS = {
    "format": {"type": "string", "enum": ["jpeg", "png", "webp"], "default": "jpeg",
               "description": "png and webp carry the garment mask as alpha (the background colour under it), "
                              "except with background_url: then they are the opaque composite, like jpeg. "
                              "webp is lossy at the JPEG quality (alpha lossless), at most 16383 px a side."},
    "background": {"type": "string", "pattern": "^#?[0-9a-fA-F]{6}$", "default": "#000000",
                   "description": "colour behind the garment; not together with background_url"},
    "background_url": {"type": "string", "format": "uri",
                       "description": "an image (http/https, fetched like url, same limits) to put behind the "
                                      "garment instead of a colour: scaled to cover the output, centre-cropped; "
                                      "transparent parts black. Not together with background. Its failures are "
                                      "the problems url's would be, with field background_url"},
    **GARMENT_OPTIONS,
    "crop": {"type": "string", "enum": ["none", "garment"], "default": "none",
             "description": "garment: only the garment's bounding box plus a 5% margin (the search indexer's crop)"},
}
ONE_BACKGROUND = {"not": {"required": ["background", "background_url"]}}
ONE_CHOICE = {"not": {"required": ["product", "classes"]}}
RAW_GARMENT_OPTIONS = [
    {"name": name, "in": "query", "required": False, "description": "only with a raw image/* body",
     "schema": {"type": "string", "description": "comma-separated"} if name == "classes" else schema}
    for name, schema in GARMENT_OPTIONS.items()
]
IMAGE_ERRORS = {
    "400": problem("Bad field or refused URL (field says which: url, product, classes, ...)"),
    "413": problem("Body, download or pixel count over the limit"),
    "415": problem("Not JSON/multipart/image, or an unsupported image format"),
    "422": problem("Decodable but unusable: no garment found (of the classes asked for), corrupt or tiny image"),
    "502": problem("The image host failed"),
    "503": problem("Models not loaded, or this worker's megapixel budget is in use (then with Retry-After)"),
    "504": problem("The image host timed out"),
}
# A raw image/* body takes the options in the query string (the form's spelling: classes comma-separated).
QUERY_OPTIONS = [
    {"name": name, "in": "query", "required": False, "description": "only with a raw image/* body",
     "schema": {"type": "string", "description": "comma-separated"} if name == "classes" else schema}
    for name, schema in OPTIONS.items()
]

OPENAPI = {
    "openapi": "3.1.0",
    "info": {"title": "Garment background removal", "version": "1.0.0",
             "description": "Returns the photo with everything but the garment set to the background colour "
                            "or replaced by a background image, optionally cropped to the garment."},
    "paths": {
        "/": {"get": {"summary": "The web page (HTML; its script and style under /assets/)",
                      "responses": {"200": {"description": "HTML page", "content": {"text/html": {}}}}},
              "post": {
            "summary": "Remove everything that is not the garment",
            "parameters": QUERY_OPTIONS,
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": {
                    "type": "object", "required": ["url"], "additionalProperties": False,
                    "properties": {"url": {"type": "string", "format": "uri"}, **OPTIONS},
                    "allOf": [ONE_BACKGROUND, ONE_CHOICE]}},
                "multipart/form-data": {"schema": {
                    "type": "object", "required": ["file"], "additionalProperties": False,
                    "properties": {"file": {"type": "string", "format": "binary"},
                                   **OPTIONS, "classes": {"type": "string", "description": "comma-separated"}},
                    "allOf": [ONE_BACKGROUND, ONE_CHOICE]}},
                "image/*": {"schema": {"type": "string", "format": "binary"},
                            "description": "options as query parameters"},
            }},
            "responses": {
                "200": {"description": "Same width and height as the input (after EXIF orientation); with "
                                       "crop=garment the garment's box plus its margin",
                        "headers": GARMENT_HEADERS,
                        "content": {"image/jpeg": {}, "image/png": {}, "image/webp": {}}},
                "400": problem("Bad field or refused URL (field says which: url, background_url, ...)"),
                "413": problem("Body, download or pixel count over the limit"),
                "415": problem("Not JSON/multipart/image, or an unsupported image format"),
                "422": problem("Decodable but unusable: no garment found, corrupt or tiny image, or too large "
                               "for webp (field format)"),
                "502": problem("The image host failed"),
                "503": problem("Models not loaded, or this worker's megapixel budget is in use "
                               "(then with Retry-After)"),
                "504": problem("The image host timed out"),
            },
        }},
        "/labels": {"post": {
            "summary": "The garment label map of a photo (which class each kept pixel is)",
            "description": "An 8-bit greyscale PNG at the photo's size: 0 not kept, 1 upper, 2 lower, 3 full "
                           "(each pixel's most probable class), 255 a flat-lay's product (no person: class unknown). "
                           "One pipeline run, as POST / costs. The search service cuts a look's garments from it.",
            "parameters": RAW_GARMENT_OPTIONS,
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": {
                    "type": "object", "required": ["url"], "additionalProperties": False,
                    "properties": {"url": {"type": "string", "format": "uri"}, **GARMENT_OPTIONS}, **ONE_CHOICE}},
                "multipart/form-data": {"schema": {
                    "type": "object", "required": ["file"], "additionalProperties": False,
                    "properties": {"file": {"type": "string", "format": "binary"}, **GARMENT_OPTIONS,
                                   "classes": {"type": "string", "description": "comma-separated"}}, **ONE_CHOICE}},
                "image/*": {"schema": {"type": "string", "format": "binary"},
                            "description": "options as query parameters"},
            }},
            "responses": {"200": {"description": "the label map", "content": {"image/png": {}},
                                  "headers": {**GARMENT_HEADERS, "X-Label-Codes": {
                                      "schema": {"type": "string"}, "description": "the codes, e.g. 1=upper,2=lower,3=full,255=product"}}},
                          **IMAGE_ERRORS},
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
