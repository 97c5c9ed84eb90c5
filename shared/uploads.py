"""The three ways both services take an image request: a JSON object (the image by URL), a
multipart form with the image in `file`, or a raw image/* body with the fields in the query
string. One reader, so the two services accept and refuse the same things; the fields are
validated by the request's models (shared/schemas.py)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic

from flask import request

from shared.errors import BadRequest, UnsupportedMediaType
from shared.schemas import FILE_FIELD, M, read, reject_unknown
from shared.web import json_object_body


@dataclass
class ImageRequest(Generic[M]):
    fields: M  # the JSON object's, the form's or the query string's fields, validated
    image: bytes | None  # the uploaded or raw image; None for JSON (its URL is in `fields`)
    form: str  # "json" | "multipart" | "raw"


def read_image_request(json_model: type[M], form_model: type[M], *, file_required: bool = True,
                       **context: Any) -> ImageRequest[M]:
    """The request's fields, validated by `json_model` (a JSON body) or `form_model` (a form's or
    query string's text), and its image bytes. A multipart form without `file` is refused unless
    `file_required` is False (a text-only form). The models' validators see `context` and
    `photo`: whether the request carries the image itself."""
    mimetype = request.mimetype or ""
    if request.is_json:
        return ImageRequest(read(json_model, json_object_body(), photo=False, **context), None, "json")
    if mimetype == "multipart/form-data":
        form = request.form.to_dict()
        reject_unknown(form_model, form)
        extra_files = sorted(set(request.files) - {FILE_FIELD})
        if extra_files:
            raise BadRequest(f"Unknown file field {extra_files[0]!r}; send the image as {FILE_FIELD!r}.",
                             field=extra_files[0])
        upload = request.files.get(FILE_FIELD)
        if upload is None and file_required:
            raise BadRequest(f"multipart requests must carry the image in a {FILE_FIELD!r} field.", field=FILE_FIELD)
        image = upload.read() if upload is not None else None
        return ImageRequest(read(form_model, form, text=True, photo=image is not None, **context), image, "multipart")
    if mimetype.startswith("image/"):
        fields = read(form_model, request.args.to_dict(), text=True, photo=True, **context)
        # Not cached on the request object: the handler drops the body once it is decoded.
        return ImageRequest(fields, request.get_data(cache=False), "raw")
    raise UnsupportedMediaType(
        "Send JSON, a multipart form with a 'file' field, or a raw image/* body "
        f"(got Content-Type {mimetype or 'none'!r})."
    )
