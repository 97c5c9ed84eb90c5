"""What an --update may keep from the previous index: rows whose image bytes, CLIP weights and
mask settings are unchanged. The index records the bg pipeline's identity in parts (`shared`,
`crop`, `garment`, `product`), so a changed setting re-embeds exactly the images it affects, and
each product's garment classes, so a vocabulary change re-embeds exactly the products it moves."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from search.index_format import SOURCES, Index, IndexLoadError
from search.indexing.report import BuildReport

log = logging.getLogger("fashion.index")


def identity_changes(old, new, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two identity dicts, with both values."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [change for key in sorted(set(old) | set(new))
                for change in identity_changes(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


@dataclass
class Reusable:
    """What an --update may keep from the previous index."""

    # (relpath, sha256) -> (vector, thumb, source, fallback)
    rows: dict[tuple[str, str], tuple] = field(default_factory=dict)
    previous_sha: dict[str, str] = field(default_factory=dict)  # relpath -> sha256 of every previous image
    stale: set[str] = field(default_factory=set)  # relpaths whose mask settings changed
    classes: dict[str, tuple[str, ...]] = field(default_factory=dict)  # product -> the classes its masks kept


def reusable_rows(out: Path, identity: dict, garment_id: dict, report: BuildReport) -> Reusable:
    """Rows of the previous index that are still right: same image bytes, same CLIP weights, and
    unchanged settings for the part of the bg pipeline that made the image's mask. `shared` and
    `crop` settings affect every image; `garment` only images where a person's garment was cut
    out; `product` only flat-lays (the salient-object fallback)."""
    reusable = Reusable()
    try:
        old = Index.load(out, for_building=True)
        old.check_compatible(identity)
    except IndexLoadError as exc:
        log.warning("--update: existing index not reusable (%s); embedding everything", exc)
        return reusable
    old_garment = old.meta.get("garment_pipeline") or {}
    report.pipeline_changes = identity_changes(old_garment, garment_id)
    changed_parts = {part for part in set(old_garment) | set(garment_id)
                     if old_garment.get(part) != garment_id.get(part)}
    if report.pipeline_changes:
        log.warning("--update: background-removal pipeline changed (%s); re-embedding the images it affects",
                    "; ".join(report.pipeline_changes))
    sources, sha, thumbs = (old.builder[k] for k in ("image_sources", "image_sha256", "thumbs"))
    for product in range(len(old.products)):
        name = old.products[product]
        reusable.classes[name] = old.product_garments(product).classes
        for row in old.image_rows(product):
            relpath, source = f"{name}/{old.image_files[row]}", SOURCES[sources[row]]
            reusable.previous_sha[relpath] = digest = sha[row].tobytes().hex()
            if changed_parts & {"shared", "crop", source} or source not in garment_id:
                reusable.stale.add(relpath)
                continue
            reusable.rows[(relpath, digest)] = (np.array(old.image_embeddings[row]), np.array(thumbs[row]), source,
                                                bool(old.image_fallbacks[row]))
    return reusable
