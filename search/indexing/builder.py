"""build_index: a catalog folder (or a shop's feed) in, an index out. Scan the catalog, choose each
product's garment classes from its text, embed what an --update cannot reuse (on whichever executor), pool each
product's images, write a new generation (search/index_format.py) with its optional approximate
index, then report near-duplicates across products."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from search.index_format import POOLINGS, Index, IndexArrays, ann_file_name, read_meta, write_index
from search.indexing.ann import ann_source, build_ann_file
from search.indexing.catalog import CatalogImage, catalog_fingerprint, scan_catalog
from search.indexing.duplicates import find_duplicates
from search.indexing.embedding import BuildModels
from search.indexing.executors import embedded_batches
from search.indexing.feed_catalog import FeedCatalog
from search.indexing.pooling import pool_products
from search.indexing.report import BuildReport
from search.indexing.update import Reusable, reusable_rows
from shared.garment_vocabulary import Vocabulary


def build_index(catalog: Path | None, out: Path, embedder, garments, *, pooling: str = "max",
                batch_size: int = 16, update: bool = False, dup_threshold: float = 0.97,
                progress: bool = True, ann: str | None = None, ann_params: dict | None = None,
                workers: int = 1, models: BuildModels | None = None, ray: str | None = None,
                decode_workers: int = 0, vocabulary: Vocabulary | None = None,
                feed: FeedCatalog | None = None, lexical_language: str = "english") -> BuildReport:
    """Embed every catalog image's garment and write the index. Images that cannot be read or
    hold no garment are skipped and listed with the reason; anything else that fails (the
    bg-removal service down after its retries, a model error) stops the build and leaves the
    previous index as it was. `ann` adds a FAISS approximate index of that kind (see
    search/indexing/ann.py); an --update keeps the previous index's kind unless told
    otherwise ("none" drops it). Each product keeps only its own garment: `vocabulary` (default:
    the shipped one) chooses its classes from its name. `feed` (search/indexing/feed_catalog.py)
    is a shop's feed instead of a catalog folder: products keyed by id, with records, filterable
    fields and images already made local; its classes were chosen from each product's text."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}")
    started = time.perf_counter()
    report = BuildReport()
    vocabulary = vocabulary or Vocabulary.load()
    if feed is not None:
        catalog, images = feed.folder, feed.images
        report.warnings, report.skipped = list(feed.warnings), list(feed.skipped)
        report.bad_rows, report.downloads = [str(row) for row in feed.bad_rows], feed.downloads
        report.choices = dict(feed.choices)
    else:
        images, report.warnings = scan_catalog(catalog)
        report.choices = {name: vocabulary.choose(name) for name in sorted({im.product for im in images})}
    report.images = len(images)
    for im in images:
        im.classes = report.choices[im.product].classes
    identity = embedder.identity
    garment_id = garments.identity
    reuse = reusable_rows(out, identity, garment_id, report) if update else Reusable()
    if ann is None and update and (previous_meta := read_meta(out)) is not None:
        previous = previous_meta.get("ann") or {}
        ann, ann_params = previous.get("kind"), {**previous.get("params", {}), **(ann_params or {})}
    if ann == "none":
        ann = None

    done: dict[str, tuple] = {}  # relpath -> (vector, thumb, source, fallback)
    pending = []
    for im in images:
        cached = reuse.rows.get((im.relpath, im.sha256))
        if cached is not None and reuse.classes.get(im.product) == im.classes:
            done[im.relpath] = cached
            report.reused += 1
        else:
            pending.append(im)

    def why(im: CatalogImage) -> str:
        if im.relpath not in reuse.previous_sha:
            return "new image" if update else "full build"
        if reuse.previous_sha[im.relpath] != im.sha256:
            return "changed image"
        if im.relpath in reuse.stale:
            return "pipeline changed"
        return "garment classes changed" if reuse.classes.get(im.product) != im.classes else "skipped before"

    by_relpath = {im.relpath: im for im in pending}
    batches = [pending[first:first + batch_size] for first in range(0, len(pending), batch_size)]
    where = f" (Ray {ray})" if ray else f" ({workers} processes)" if workers > 1 else ""
    bar = tqdm(total=len(pending), desc=f"indexing{where}", unit="img", disable=not progress)
    for results in embedded_batches(catalog, batches, embedder, garments, workers, models, ray, decode_workers):
        for relpath, outcome in results:
            bar.update(1)
            if isinstance(outcome, str):
                report.skipped.append({"image": relpath, "reason": outcome})
                continue
            done[relpath] = outcome
            report.reembedded[why(by_relpath[relpath])] += 1
            report.reembedded_products.add(by_relpath[relpath].product)
            report.embedded += 1
    bar.close()

    kept = sorted((im for im in images if im.relpath in done), key=lambda im: (im.product, im.file))
    if not kept:
        raise RuntimeError("no image of the catalog could be indexed; see the skipped list")
    names, counts = [], []
    for im in kept:
        if not names or names[-1] != im.product:
            names.append(im.product)
            counts.append(0)
        counts[-1] += 1
    for name in sorted({im.product for im in images} - set(names)):
        report.warnings.append(f"{name}: no usable image (no garment found in any), not indexed")

    image_matrix = np.stack([done[im.relpath][0] for im in kept]).astype(np.float32, copy=False)
    product_matrix = pool_products(image_matrix, counts, pooling)

    def add_ann(folder: Path) -> dict:
        if not ann:
            return {}
        vectors, over = ann_source(image_matrix, product_matrix, pooling)
        return {"ann": build_ann_file(vectors, over, ann, ann_params, folder / ann_file_name(ann), progress=progress)}

    content = IndexArrays(
        image_embeddings=image_matrix,
        product_embeddings=product_matrix,
        counts=counts, product_names=names, image_files=[im.file for im in kept],
        image_sha256=[im.sha256 for im in kept], image_sources=[done[im.relpath][2] for im in kept],
        thumbs=np.stack([done[im.relpath][1] for im in kept]),
        product_garments=[report.choices[name] for name in names],
        image_fallbacks=[bool(done[im.relpath][3]) for im in kept],
        product_records=[feed.records[key] for key in names] if feed is not None else None,
        attribute_types=feed.attribute_types if feed is not None else None,
        lexical_language=lexical_language,
    )
    write_index(out, content, {
        "embedder": identity,
        "garment_pipeline": garment_id,
        "garment_service": garments.description,
        "embed_dim": int(image_matrix.shape[1]),
        "pooling": pooling,
        "catalog_dir": str(catalog.resolve()),
        "catalog_fingerprint": catalog_fingerprint(images),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        # how each product's classes were chosen is in the arrays (garment_summary counts them)
        "garment_vocabulary": {"path": str(vocabulary.path) if vocabulary.path else None,
                               "sha256": vocabulary.sha256, "version": vocabulary.version},
        "skipped": report.skipped,
        **({"feed": {"bad_rows": report.bad_rows, "downloaded": report.downloads.bodies,
                     "not_modified": report.downloads.not_modified, "bytes": report.downloads.bytes}}
           if feed is not None else {}),
    }, extra=add_ann)
    index = Index.load(out, for_building=True)
    # Random weights embed every image alike: only the pixel fingerprints can tell then.
    report.duplicates = find_duplicates(index.products, index.counts, index.image_embeddings, index.thumbs,
                                        dup_threshold if identity.get("pretrained") else None, progress=progress)
    report.seconds = time.perf_counter() - started
    return report
