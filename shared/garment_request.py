"""Which garments a request keeps, as both services read it: `classes` (as asked), `product` (its
name, title or category: shared/garment_vocabulary.py chooses the classes), or all; and whether
all garments are kept when the chosen ones find none (`fallback`). The fields themselves are
declared in shared/schemas.py."""
from __future__ import annotations

from dataclasses import dataclass

from shared.garment_vocabulary import GARMENT_CLASSES, Vocabulary

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


def garment_options(product: str | None, classes: list[str] | None, fallback: str | None,
                    vocabulary: Vocabulary) -> GarmentOptions:
    """The garments valid fields (None: not sent) keep: the product's (vocabulary.choose), the
    classes asked for, or all. `fallback` defaults to all with `product`, none otherwise:
    classes asked for by name are what the client wants, or a 422."""
    keep_all = (fallback or ("all" if product is not None else "none")) == "all"
    if product is not None:
        choice = vocabulary.choose(product)
        return GarmentOptions(choice.classes, choice.source, choice.garment, keep_all)
    if classes is None:
        return GarmentOptions(fallback=keep_all)
    return GarmentOptions(tuple(c for c in GARMENT_CLASSES if c in classes), "classes", None, keep_all)
