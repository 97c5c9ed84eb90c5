"""The OpenAPI 3.1 documents, assembled from the request and response models (shared/schemas.py,
<service>/schemas.py) when an app is created, so that the values its config decides (defaults,
limits) are the ones it applies: request bodies in their three forms (JSON, a multipart form with
the image in `file`, a raw image/* body with the fields as query parameters), problem responses,
the image responses' headers and the ops endpoints."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import GenerateJsonSchema, NoDefault

from shared.schemas import FILE_FIELD, FormSpelling, FromConfig, RequestModel

REF = "#/components/schemas/{model}"


class _Generator(GenerateJsonSchema):
    """pydantic's JSON Schema, without a title on every property or a `default: null` for "not sent"."""

    def field_title_should_be_set(self, schema) -> bool:
        return False

    def get_default_value(self, schema) -> Any:
        default = super().get_default_value(schema)
        return NoDefault if default is None else default


class Document:
    """One service's document being assembled; models' nested definitions go to components/schemas."""

    def __init__(self, config: Any):
        self.config = config
        self.components: dict[str, dict] = {}

    def schema(self, model: type[BaseModel]) -> dict:
        """The model's JSON Schema (nested models referenced from components), with the defaults
        its config decides."""
        schema = model.model_json_schema(ref_template=REF, schema_generator=_Generator)
        self.components.update(schema.pop("$defs", {}))
        for name, info in model.model_fields.items():
            for marker in info.metadata:
                if isinstance(marker, FromConfig):
                    schema["properties"][info.alias or name]["default"] = getattr(self.config, marker.attribute)
        return schema

    def ref(self, model: type[BaseModel]) -> dict:
        """A response model, in components/schemas."""
        self.components[model.__name__] = self.schema(model)
        return {"$ref": REF.format(model=model.__name__)}

    def json_body(self, model: type[RequestModel], *, photo: str | None = None) -> dict:
        """A JSON object body; `photo` is the field carrying its photo (the rules that need one)."""
        schema = self.schema(model)
        return {"schema": _with_rules(schema, model, photo)}

    def form_body(self, model: type[RequestModel], *, file_required: bool, photo_description: str) -> dict:
        """A multipart form: the model's fields spelt as text, and the photo in `file`."""
        schema = self.schema(model)
        properties = {FILE_FIELD: {"type": "string", "format": "binary", "description": photo_description},
                      **self._form_properties(model, schema)}
        form = {**schema, "properties": properties}
        if file_required:
            form["required"] = [FILE_FIELD, *schema.get("required", [])]
        return {"schema": _with_rules(form, model, FILE_FIELD)}

    def query_parameters(self, model: type[RequestModel], *, description: str) -> list[dict]:
        """The model's fields as query parameters (spelt as in a form)."""
        schema = self.schema(model)
        required = set(schema.get("required", []))
        return [{"name": name, "in": "query", "required": name in required, "schema": property_schema,
                 "description": description}
                for name, property_schema in self._form_properties(model, schema).items()]

    def _form_properties(self, model: type[RequestModel], schema: dict) -> dict:
        properties = dict(schema["properties"])
        for name, info in model.model_fields.items():
            for marker in info.metadata:
                if isinstance(marker, FormSpelling):
                    properties[name] = marker.schema
        return properties

    def assemble(self, *, info: dict, paths: dict) -> dict:
        self.components["Problem"] = self.schema(Problem)
        return {"openapi": "3.1.0", "info": info, "paths": {**paths, **self.ops_paths()},
                "components": {"schemas": self.components}}

    def ops_paths(self) -> dict:
        ok = {"description": "OK", "content": {"application/json": {"schema": self.ref(Status)}}}
        return {
            "/healthz": {"get": {"summary": "Process is up", "responses": {"200": ok}}},
            "/readyz": {"get": {"summary": "Models/index loaded", "responses": {
                "200": ok, "503": problem("Not ready yet, or loading failed (detail says why)")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {
                "200": {"description": "Prometheus text format", "content": {"text/plain": {}}}}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {
                "200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}}}}},
        }


def _with_rules(schema: dict, model: type[RequestModel], photo: str | None) -> dict:
    """The model's checks across fields (NotTogether, ...) as JSON Schema."""
    fragments = [fragment for rule in model.rules if (fragment := rule.json_schema(photo))]
    return {**schema, "allOf": [*schema.get("allOf", []), *fragments]} if fragments else schema


def image_body(description: str) -> dict:
    return {"schema": {"type": "string", "format": "binary"}, "description": description}


class Problem(BaseModel):
    """Every error (RFC 9457), as application/problem+json."""
    type: str
    title: str
    status: int
    detail: str
    field: str = Field(None, description="the bad field, e.g. url or queries[3].n")
    request_id: str = Field(None, description="also in the server log")


class Status(BaseModel):
    """/healthz and /readyz (which adds what it loaded, e.g. the vector backend)."""
    model_config = ConfigDict(extra="allow")
    status: str
    service: str
    detail: str = None


def problem(description: str) -> dict:
    return {"description": description,
            "content": {"application/problem+json": {"schema": {"$ref": REF.format(model="Problem")}}}}


def problems(**descriptions: str) -> dict:
    """Problem responses by status: problems(_400="Bad field", ...)."""
    return {status.lstrip("_"): problem(description) for status, description in descriptions.items()}


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
