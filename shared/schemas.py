"""Request schemas: every field a request may carry is declared once, as a pydantic type with its
rules and the detail of the 400 a bad value gets; validation (read) and the OpenAPI documents
(shared/openapi.py) both come from the same models.

Values from a JSON body are taken as JSON typed them (5.0 is the integer 5, "5" is not a number);
values from a form or a query string are text (`read(..., text=True)`), read as the field's type
("5", "0.5", "true"). Unknown fields are refused. Of several problems, the one reported is the
first in the model's field order (unknown fields first), so each field's problem is the same
whatever else is wrong; a rule across fields (NotTogether) is checked just before its `before`
field."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, TypeVar, get_args

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, Strict, ValidationError, \
    ValidationInfo

from shared.errors import BadRequest
from shared.garment_request import FALLBACKS, MAX_PRODUCT_CHARS, GarmentOptions, garment_options
from shared.garment_vocabulary import GARMENT_CLASSES, Vocabulary

TRUTHY, FALSY = ("true", "1", "yes", "on"), ("false", "0", "no", "off")
FILE_FIELD = "file"  # a multipart form's image


@dataclass(frozen=True)
class Refused:
    """Annotates a field type: the problem's detail for a bad value ({field}: the field's path)."""
    detail: str


@dataclass(frozen=True)
class FormSpelling:
    """Annotates a field type: its schema in a form or query string, where it is spelt as text
    differently from JSON (a list as comma-separated words)."""
    schema: dict


@dataclass(frozen=True)
class FromConfig:
    """Annotates a field type: its documented default is this attribute of the service's config."""
    attribute: str


class Refusal(ValueError):
    """Raised by a validator with its own detail; `field` names the field when a check across
    fields (a model validator) refuses."""

    def __init__(self, detail: str, field: str | None = None):
        super().__init__(detail)
        self.detail, self.field = detail, field


@dataclass(frozen=True)
class NotTogether:
    """Two fields a request may not both send: refused, naming `field`, just before the field
    `before` is checked (as the order of the checks always was)."""
    fields: tuple[str, str]
    field: str
    before: str
    detail: str

    def problem(self, values: dict, context: dict) -> tuple[str, str] | None:
        return (self.field, self.detail) if all(name in values for name in self.fields) else None

    def json_schema(self, photo: str | None) -> dict:
        return {"not": {"required": list(self.fields)}}


class RequestModel(BaseModel):
    """A request's fields. `rules` are the checks across fields; `item_refused` the detail when a
    list's item is not an object of this model."""
    model_config = ConfigDict(extra="forbid", frozen=True, regex_engine="python-re")
    rules: ClassVar[tuple] = ()
    item_refused: ClassVar[str] = "{field} must be an object."


M = TypeVar("M", bound=RequestModel)


def read(model: type[M], values: dict, *, text: bool = False, **context: Any) -> M:
    """`values` (a JSON object, or form / query fields when `text`) validated by `model`; the first
    problem as a 400 naming its field. `context` is what the model's validators and rules may
    consult besides the values (search: whether the request carries a photo)."""
    context = {"text": text, **context}
    problems = []
    for rule in model.rules:
        found = rule.problem(values, context)
        if found is not None:
            problems.append((((1, _position(model, rule.before) - 0.5),), *found))
    try:
        parsed = model.model_validate(values, context=context)
    except ValidationError as exc:
        problems += [_problem(model, error) for error in exc.errors()]
    else:
        if not problems:
            return parsed
    _, field, detail = min(problems, key=lambda problem: problem[0])
    raise BadRequest(detail, field=field)


def reject_unknown(model: type[RequestModel], values: dict) -> None:
    """The unknown-field problem read() would give, alone (multipart forms name them before their
    files are looked at)."""
    unknown = sorted(set(values) - set(model.model_fields))
    if unknown:
        raise BadRequest(_unknown(model, unknown[0], ""), field=unknown[0])


def _unknown(model: type[RequestModel], name: str, where: str) -> str:
    inside = f" in {where}" if where else ""
    return f"Unknown field {name!r}{inside}; accepted fields: {', '.join(sorted(model.model_fields))}."


def _position(model: type[BaseModel], name: str | None) -> int:
    return list(model.model_fields).index(name) if name is not None else len(model.model_fields)


def _item_model(annotation) -> type[BaseModel] | None:
    """The model a field holds, itself or as a list's items."""
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _problem(model: type[RequestModel], error: dict) -> tuple[tuple, str, str]:
    """(order, field path, detail) of one pydantic error: `queries[3].n`, with its field's detail."""
    key, path, current, info = [], "", model, None
    for part in error["loc"]:
        if isinstance(part, int):
            key.append((1, part))
            if current is None:  # an item of a list of values: the field's problem
                break
            path, info = f"{path}[{part}]", None
            continue
        name = f"{path}.{part}" if path else part
        if current is None or part not in current.model_fields:
            return (*key, (0, part)), name, _unknown(current, part, path)
        key.append((1, _position(current, part)))
        path, info = name, current.model_fields[part]
        current = _item_model(info.annotation)
    if not error["loc"]:
        key.append((2,))  # the model's own check runs after its fields'
    refusal = (error.get("ctx") or {}).get("error")
    if isinstance(refusal, Refusal):
        return tuple(key), refusal.field or path, refusal.detail.format(field=path)
    if info is None:  # a list's item that is not an object
        return tuple(key), path, current.item_refused.format(field=path)
    marked = next((m.detail for m in info.metadata if isinstance(m, Refused)), None)
    return tuple(key), path, marked.format(field=path) if marked else f"{path}: {error['msg']}."


# ------------------------------------------------------------------ reading text as a field's type


def from_text(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get("text"))


def as_integer(value, info: ValidationInfo):
    """5.0 is an integer in JSON (5.5 is not); a form's or query string's "5" too."""
    if from_text(info) and isinstance(value, str) and value.strip().isdigit():
        try:
            value = int(value.strip())
        except ValueError:  # "²" is a digit that int() does not read: refused as text
            pass
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value


def as_number(value, info: ValidationInfo):
    if from_text(info) and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    return value


def as_flag(value, info: ValidationInfo):
    """JSON true/false; in a form or query string also 1/0, yes/no, on/off."""
    if from_text(info) and isinstance(value, str) and value.strip().lower() in TRUTHY + FALSY:
        return value.strip().lower() in TRUTHY
    return value


def lower(value):
    return value.lower() if isinstance(value, str) else value


def not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("blank")
    return value


def address(value: str) -> str:
    if not value.strip():
        raise ValueError("blank")
    return value.strip()


def comma_separated(value):
    """"upper, lower" (a form's spelling, also taken in JSON) as ["upper", "lower"]."""
    return [c.strip() for c in value.split(",") if c.strip()] if isinstance(value, str) else value


# A text that must say something: whitespace alone is refused (JSON Schema: a non-space somewhere).
NonBlank = Annotated[str, Strict(), Field(min_length=1, json_schema_extra={"pattern": r"\S"}),
                     AfterValidator(not_blank)]

# A client-supplied image address: a non-empty string, stripped (fetch_url checks the rest).
ImageAddress = Annotated[
    str, Strict(), Field(json_schema_extra={"format": "uri"}), AfterValidator(address),
    Refused("{field} must be a non-empty string with the image's http(s) address."),
]

# ------------------------------------------------------------------ which garments to keep (both services)

GarmentClass = Literal[GARMENT_CLASSES]
GARMENT_FIELDS = ("fallback", "product", "classes")  # in the order they are checked
Classes = Annotated[
    list[GarmentClass], BeforeValidator(comma_separated),
    Field(min_length=1, description="the cloth model's classes to keep (default: all); not together with product",
          json_schema_extra={"default": list(GARMENT_CLASSES)}),
    FormSpelling({"type": "string", "pattern": f"^({'|'.join(GARMENT_CLASSES)})(,({'|'.join(GARMENT_CLASSES)}))*$",
                  "description": "comma-separated classes to keep, e.g. upper,full (default: all); not together "
                                 "with product"}),
    Refused(f"{{field}} must be a non-empty subset of {list(GARMENT_CLASSES)}."),
]
Product = Annotated[
    NonBlank, Field(max_length=MAX_PRODUCT_CHARS, description=(
        "the product's name, title or category (any language the vocabulary covers, e.g. 'Kadın Lacivert Tunik'): "
        "its garment's classes are kept (tunic: upper + full; jeans: lower); a text naming no garment keeps all. "
        "Not together with classes")),
    Refused(f"{{field}} must be the product's name, title or category: text of 1 to {MAX_PRODUCT_CHARS} characters."),
]
Fallback = Annotated[
    Literal[FALLBACKS], BeforeValidator(lower),
    Field(description="all: keep every garment when the chosen classes find none (default with product); none: "
                      "answer 422 instead (default otherwise)"),
    Refused(f"{{field}} must be one of {list(FALLBACKS)}."),
]
PRODUCT_OR_CLASSES = NotTogether(("product", "classes"), field="product", before="fallback",
                                 detail="Send either product (its text chooses the garment) or classes, not both.")


class GarmentFields:
    """Mixed into a model with the fields `fallback`, `product` and `classes` (GARMENT_FIELDS, in
    that order; None: not sent) and the rule PRODUCT_OR_CLASSES."""

    def garments(self, vocabulary: Vocabulary) -> GarmentOptions:
        return garment_options(self.product, self.classes, self.fallback, vocabulary)
