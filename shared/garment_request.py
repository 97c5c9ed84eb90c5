"""Which garments a request keeps, as both services read it: `classes` (as asked), `product` (its
name, title or category: shared/garment_vocabulary.py chooses the classes), or all; and whether
all garments are kept when the chosen ones find none (`fallback`)."""
from __future__ import annotations

from dataclasses import dataclass

from shared.errors import BadRequest
from shared.garment_vocabulary import GARMENT_CLASSES, Vocabulary

GARMENT_FIELDS = {"classes", "product", "fallback"}
MAX_PRODUCT_CHARS = 500
FALLBACKS = ("all", "none")
# The garment label map's codes (bg POST /labels, read by search's look): one per class, and
# LABEL_PRODUCT for a flat-lay's product matte, which has no class.
LABEL_PRODUCT = 255
LABEL_CODES = {name: i + 1 for i, name in enumerate(GARMENT_CLASSES)}
LABEL_CLASSES = {**{code: name for name, code in LABEL_CODES.items()}, LABEL_PRODUCT: None}


@dataclass(frozen=True)
class GarmentOptions:
    classes: tuple[str, ...] = GARMENT_CLASSES
    source: str = "all"  # "classes" (asked), "product" (its text named a garment) or "all"
    garment: str | None = None  # the vocabulary's garment the product text named ("tunic")
    fallback: bool = False  # all garments when the chosen classes find none (default with `product`)


def parse_garment_options(raw: dict, vocabulary: Vocabulary) -> GarmentOptions:
    """`classes` (a list in JSON, comma-separated in a form or query string) or `product`, not
    both; `fallback` all | none (default all with `product`, none otherwise: classes asked for
    by name are what the client wants, or a 422)."""
    if "product" in raw and "classes" in raw:
        raise BadRequest("Send either product (its text chooses the garment) or classes, not both.", field="product")
    fallback = raw.get("fallback", "all" if "product" in raw else "none")
    if not isinstance(fallback, str) or fallback.lower() not in FALLBACKS:
        raise BadRequest(f"fallback must be one of {list(FALLBACKS)}.", field="fallback")
    fallback = fallback.lower() == "all"
    if "product" in raw:
        text = raw["product"]
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_PRODUCT_CHARS:
            raise BadRequest(f"product must be the product's name, title or category: text of 1 to "
                             f"{MAX_PRODUCT_CHARS} characters.", field="product")
        choice = vocabulary.choose(text)
        return GarmentOptions(choice.classes, choice.source, choice.garment, fallback)
    if "classes" not in raw:
        return GarmentOptions(fallback=fallback)
    classes = raw["classes"]
    if isinstance(classes, str):
        classes = [c.strip() for c in classes.split(",") if c.strip()]
    if (not isinstance(classes, list) or not classes
            or not all(isinstance(c, str) and c in GARMENT_CLASSES for c in classes)):
        raise BadRequest(f"classes must be a non-empty subset of {list(GARMENT_CLASSES)}.", field="classes")
    return GarmentOptions(tuple(c for c in GARMENT_CLASSES if c in classes), "classes", None, fallback)
