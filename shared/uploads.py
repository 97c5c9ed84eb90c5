"""The three ways both services take an image request: a JSON object (the image by URL), a
multipart form with the image in `file`, or a raw image/* body with the options in the query
string. One parser, so the two services accept and refuse the same things."""
from __future__ import annotations

from dataclasses import dataclass

from flask import request

from shared.errors import BadRequest, UnsupportedMediaType
from shared.web import json_object_body, reject_unknown_fields

FILE_FIELD = "file"


@dataclass
class ImageRequest:
    fields: dict  # the JSON object, the form fields, or the query parameters (then all strings)
    image: bytes | None  # the uploaded or raw image; None for JSON (its URL is in `fields`)
    form: str  # "json" | "multipart" | "raw"


def url_field(value, field: str) -> str:
    """A client-supplied image address: a non-empty string (fetch_url checks the rest)."""
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"{field} must be a non-empty string with the image's http(s) address.", field=field)
    return value.strip()


def read_image_request(fields: set[str], *, json_fields: set[str] = frozenset(), file_required: bool = True) -> ImageRequest:
    """The request's fields (unknown ones refused) and image bytes. `json_fields` are accepted in
    a JSON body only (the image's URL). A multipart form without `file` is refused unless
    `file_required` is False (a text-only form)."""
    mimetype = request.mimetype or ""
    if request.is_json:
        body = json_object_body()
        reject_unknown_fields(body, fields | json_fields)
        return ImageRequest(body, None, "json")
    if mimetype == "multipart/form-data":
        form = request.form.to_dict()
        reject_unknown_fields(form, fields)
        extra_files = sorted(set(request.files) - {FILE_FIELD})
        if extra_files:
            raise BadRequest(f"Unknown file field {extra_files[0]!r}; send the image as {FILE_FIELD!r}.",
                             field=extra_files[0])
        upload = request.files.get(FILE_FIELD)
        if upload is None and file_required:
            raise BadRequest(f"multipart requests must carry the image in a {FILE_FIELD!r} field.", field=FILE_FIELD)
        return ImageRequest(form, upload.read() if upload is not None else None, "multipart")
    if mimetype.startswith("image/"):
        query = request.args.to_dict()
        reject_unknown_fields(query, fields)
        # Not cached on the request object: the handler drops the body once it is decoded.
        return ImageRequest(query, request.get_data(cache=False), "raw")
    raise UnsupportedMediaType(
        "Send JSON, a multipart form with a 'file' field, or a raw image/* body "
        f"(got Content-Type {mimetype or 'none'!r})."
    )
