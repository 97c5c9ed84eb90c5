"""New generations of a small index for the hot-swap tests, written the way a build writes them
(search.index_format.write_index: a new generation folder, then one atomic switch of meta.json),
without running the models: the added product copies another one's photos and vectors."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from search.index_format import SOURCES, Index, IndexArrays, write_index

# What write_index computes itself; everything else of meta.json is carried over.
COMPUTED_META = ("format_version", "generation", "catalog_kind", "attributes", "lexical", "products", "images", "ann")


def write_generation_with(index_dir: Path, catalog: Path, new_product: str, like: str, *,
                          meta_changes: dict | None = None) -> dict:
    """A new generation of the folder-catalog index at `index_dir` with one more product,
    `new_product`: `like`'s folder copied in the catalog, its vectors reused. Returns the meta."""
    old = Index.load(index_dir, for_building=True)
    if not (catalog / new_product).exists():
        shutil.copytree(catalog / like, catalog / new_product)
    source = {old.products[p]: p for p in range(len(old.products))}
    names = sorted([*source, new_product])
    rows, counts, files, garments = [], [], [], []
    for name in names:
        p = source[like if name == new_product else name]
        span = list(old.image_rows(p))
        rows += span
        counts.append(len(span))
        files += [old.image_files[r] for r in span]
        garments.append(old.product_garments(p))
    rows = np.array(rows)
    pooled = np.stack([np.asarray(old.product_embeddings[source[like if n == new_product else n]]) for n in names])
    content = IndexArrays(
        image_embeddings=np.asarray(old.image_embeddings)[rows], product_embeddings=pooled, counts=counts,
        product_names=names, image_files=files, image_sha256=[old.builder["image_sha256"][r].tobytes().hex() for r in rows],
        image_sources=[SOURCES[old.builder["image_sources"][r]] for r in rows], thumbs=np.asarray(old.thumbs)[rows],
        product_garments=garments, image_fallbacks=[bool(old.image_fallbacks[r]) for r in rows])
    meta = {k: v for k, v in old.meta.items() if k not in COMPUTED_META}
    return write_index(index_dir, content, {**meta, **(meta_changes or {})})
