"""OpenAPI pieces both services' documents use."""

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
