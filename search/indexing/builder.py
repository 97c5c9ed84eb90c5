"""build_index: a catalog folder (or a shop's feed) in, an index out. Scan the catalog, choose each
product's garment classes from its text, embed what an --update cannot reuse (on whichever executor), pool each
product's images, write a new generation (search/index_format.py) with its optional approximate
index, then report near-duplicates across products.

An --update costs what changed, not what the catalog holds (search/indexing/update.py): digests
come from the previous index where a file's stat is unchanged, its rows are gathered in one copy,
an unchanged product keeps its pooled row, and the duplicate report compares only the images it
embedded. Each stage's seconds are in the report (`BuildReport.stages`)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from search.index_format import (POOLINGS, SOURCES, Index, IndexArrays, ann_file_name, class_bits, read_meta,
                                 write_index)
from search.indexing.ann import ann_source, build_ann_file
from search.indexing.catalog import NO_STAT, CatalogImage, catalog_fingerprint, fill_digests, scan_catalog
from search.indexing.duplicates import find_duplicates
from search.indexing.embedding import BuildModels
from search.indexing.executors import embedded_batches
from search.indexing.feed_catalog import FeedCatalog
from search.indexing.pooling import pool
from search.indexing.report import BuildReport, Stages
from search.indexing.update import (Reusable, chooser_fingerprint, duplicates_of, gather_rows, image_stats,
                                    reusable_rows, write_stats)
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
    stage = Stages(report.stages)
    vocabulary = vocabulary or Vocabulary.load()
    with stage("scan", bookkeeping=True):
        if feed is not None:
            catalog, images = feed.folder, feed.images
            report.warnings, report.skipped = list(feed.warnings), list(feed.skipped)
            report.bad_rows, report.downloads = [str(row) for row in feed.bad_rows], feed.downloads
        else:
            images, report.warnings = scan_catalog(catalog, digests=False)
    report.images = len(images)
    identity = embedder.identity
    garment_id = garments.identity
    chooser = chooser_fingerprint(vocabulary, feed is not None)
    with stage("previous", bookkeeping=True):
        reuse = reusable_rows(out, identity, garment_id, report, chooser) if update else Reusable()
    with stage("hash", bookkeeping=True):
        stats = image_stats(images)
        previous_rows = reuse.rows(images)  # each image's row in the previous index, -1 for none
        reuse.take_digests(images, previous_rows, stats)  # where the file's stat is the one recorded
        report.hashed = fill_digests(catalog, images)  # the others: read and hashed
    with stage("choose", bookkeeping=True):
        keys = sorted({im.product for im in images})
        if feed is not None:
            if hasattr(feed.choices, "reuse"):
                for key in keys:
                    if (kept_choice := reuse.choice(key, feed.records[key])) is not None:
                        feed.choices.reuse(key, kept_choice)
            report.choices = {key: feed.choices[key] for key in keys}
        else:
            report.choices = {key: reuse.choice(key) or vocabulary.choose(key) for key in keys}
        for im in images:
            im.classes = report.choices[im.product].classes
    if ann is None and update and (previous_meta := read_meta(out)) is not None:
        previous = previous_meta.get("ann") or {}
        ann, ann_params = previous.get("kind"), {**previous.get("params", {}), **(ann_params or {})}
    if ann == "none":
        ann = None

    with stage("match", bookkeeping=True):
        bits = {key: class_bits(choice.classes) for key, choice in report.choices.items()}
        image_bits = np.fromiter((bits[im.product] for im in images), np.uint8, len(images))
        still_right = reuse.still_right(images, previous_rows, image_bits)
        pending = []
        for i in np.flatnonzero(~still_right).tolist():
            im = images[i]
            if (reason := reuse.skipped_again(im)) is not None:  # not tried again: it would be skipped again
                report.skipped.append(_skip(im, reason))
                report.skipped_again += 1
            else:
                pending.append(im)
        report.reused = int(still_right.sum())

    def why(im: CatalogImage) -> str:
        previous_sha = reuse.previous_sha(im.relpath)
        if previous_sha is None:
            return "new image" if update else "full build"
        if previous_sha != im.sha256:
            return "changed image"
        if reuse.stale[reuse.row_of[im.relpath]]:
            return "pipeline changed"
        return "garment classes changed" if reuse.classes.get(im.product) != im.classes else "skipped before"

    done: dict[str, tuple] = {}  # relpath -> (vector, thumb, source, fallback), what this build embedded
    by_relpath = {im.relpath: im for im in pending}
    batches = [pending[first:first + batch_size] for first in range(0, len(pending), batch_size)]
    where = f" (Ray {ray})" if ray else f" ({workers} processes)" if workers > 1 else ""
    in_process = not ray and workers <= 1  # then the garment step and CLIP are timed apart
    step_garments = stage.timing(garments, "garments", "garment") if in_process else garments
    step_embedder = stage.timing(embedder, "encode_images", "embed") if in_process else embedder
    bar = tqdm(total=len(pending), desc=f"indexing{where}", unit="img", disable=not progress)
    with stage("models"):
        for results in embedded_batches(catalog, batches, step_embedder, step_garments, workers, models, ray,
                                        decode_workers):
            for relpath, outcome in results:
                bar.update(1)
                if isinstance(outcome, str):  # with its digest: an --update skips it again without trying
                    report.skipped.append(_skip(by_relpath[relpath], outcome))
                    continue
                done[relpath] = outcome
                report.reembedded[why(by_relpath[relpath])] += 1
                report.reembedded_products.add(by_relpath[relpath].product)
                report.embedded += 1
    bar.close()
    if in_process:  # the rest of that loop: decoding, cropping, thumbnails
        report.stages["decode"] = report.stages.pop("models") - report.stages.get("garment", 0.0) \
            - report.stages.get("embed", 0.0)

    with stage("assemble", bookkeeping=True):
        keep = still_right.copy()
        for i in np.flatnonzero(~still_right).tolist():
            keep[i] = images[i].relpath in done
        order = np.flatnonzero(keep)
        if feed is not None:  # a folder scan is in row order already (by product, then file); a feed's files are not
            order = np.array(sorted(order.tolist(), key=lambda i: (images[i].product, images[i].file)), np.int64)
        kept = [images[i] for i in order.tolist()]
        kept_rows = np.where(still_right, previous_rows, -1)[order]  # the previous row each kept image takes
        if not kept:
            raise RuntimeError("no image of the catalog could be indexed; see the skipped list")
        names, counts = [], []
        for im in kept:
            if not names or names[-1] != im.product:
                names.append(im.product)
                counts.append(0)
            counts[-1] += 1
        for name in sorted(set(keys) - set(names)):
            report.warnings.append(f"{name}: no usable image (no garment found in any), not indexed")
    with stage("gather", bookkeeping=True):
        image_matrix, thumbs, sources, fallbacks = _image_rows(kept, kept_rows, done, reuse.index)
    with stage("assemble", bookkeeping=True):
        embedded_rows = np.flatnonzero(kept_rows < 0)
        product_matrix = _product_rows(image_matrix, names, counts, pooling, kept_rows, reuse)
        kept_stats = stats[order]

    def add_extra(folder: Path) -> dict:
        write_stats(folder, kept_stats)  # lets the next --update trust these digests
        if not ann:
            return {}
        vectors, over = ann_source(image_matrix, product_matrix, pooling)
        return {"ann": build_ann_file(vectors, over, ann, ann_params, folder / ann_file_name(ann), progress=progress)}

    with stage("write", bookkeeping=True):
        content = IndexArrays(
            image_embeddings=image_matrix,
            product_embeddings=product_matrix,
            counts=counts, product_names=names, image_files=[im.file for im in kept],
            image_sha256=[im.sha256 for im in kept], image_sources=[SOURCES[code] for code in sources.tolist()],
            thumbs=thumbs,
            product_garments=[report.choices[name] for name in names],
            image_fallbacks=fallbacks.tolist(),
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
                                   "sha256": vocabulary.sha256, "version": vocabulary.version, "chooser": chooser},
            "skipped": report.skipped,
            **({"feed": {"bad_rows": report.bad_rows, "downloaded": report.downloads.bodies,
                         "not_modified": report.downloads.not_modified, "bytes": report.downloads.bytes}}
               if feed is not None else {}),
        }, extra=add_extra)
    report.switched_at = time.time()  # meta.json names the new generation from here on
    # Random weights embed every image alike: only the pixel fingerprints can tell then.
    threshold = dup_threshold if identity.get("pretrained") else None
    with stage("duplicates"):
        if reuse.index is not None:  # an --update: the pairs with an image it embedded
            report.duplicates_scope = "embedded"
            report.duplicates = duplicates_of(embedded_rows, names, counts, image_matrix, thumbs, threshold)
        else:
            index = Index.load(out, for_building=True)
            report.duplicates = find_duplicates(index.products, index.counts, index.image_embeddings, index.thumbs,
                                                threshold, progress=progress)
    report.seconds = time.perf_counter() - started
    return report


def _skip(im: CatalogImage, reason: str) -> dict:
    """A skipped image's entry (meta.json's "skipped"), with its digest and file stat: an
    --update skips it again without reading or trying it while both are unchanged."""
    return {"image": im.relpath, "reason": reason, "sha256": im.sha256,
            **({"stat": list(im.stat)} if im.stat != NO_STAT else {})}


def _image_rows(kept: list[CatalogImage], rows: np.ndarray, done: dict[str, tuple], previous: Index | None):
    """The new generation's image rows in `kept` order: the previous index's rows (`rows`, -1 for
    none) gathered in one copy each (vectors, thumbnails, sources, fallbacks), this build's filled
    in. Returns those four arrays."""
    from_previous = rows >= 0
    embedded = np.flatnonzero(~from_previous)
    first = done[kept[embedded[0]].relpath] if len(embedded) else None
    dim = len(first[0]) if first is not None else previous.image_embeddings.shape[1]
    thumb_dim = len(first[1]) if first is not None else previous.thumbs.shape[1]
    vectors = np.empty((len(kept), dim), np.float32)
    thumbs = np.empty((len(kept), thumb_dim), np.float32)
    sources = np.empty(len(kept), np.uint8)
    fallbacks = np.empty(len(kept), bool)
    if from_previous.any():
        taken = rows[from_previous]
        positions = np.flatnonzero(from_previous)
        gather_rows(previous.image_embeddings, taken, vectors, positions)
        gather_rows(previous.thumbs, taken, thumbs, positions)
        sources[from_previous] = np.asarray(previous.builder["image_sources"])[taken]
        fallbacks[from_previous] = np.asarray(previous.image_fallbacks)[taken] != 0
    for row in embedded.tolist():
        vector, thumb, source, fallback = done[kept[row].relpath]
        vectors[row], thumbs[row], sources[row], fallbacks[row] = vector, thumb, SOURCES.index(source), bool(fallback)
    return vectors, thumbs, sources, fallbacks


def _product_rows(image_matrix: np.ndarray, names: list[str], counts: list[int], pooling: str, rows: np.ndarray,
                  reuse: Reusable) -> np.ndarray:
    """One pooled row per product. A product whose image rows are exactly its previous ones
    (`rows`: the previous row of each image, -1 for none), in the same order, pooled the same
    way, keeps its previous row (the same bits pooling them again would give); the others are
    pooled."""
    starts = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=starts[1:])
    pooled = np.empty((len(names), image_matrix.shape[1]), np.float32)
    same = np.zeros(len(names), bool)
    previous = reuse.index
    if previous is not None and previous.pooling == pooling:
        old_product = np.fromiter((reuse.product_of.get(name, -1) for name in names), np.int64, len(names))
        old_starts, old_counts = np.asarray(previous.product_starts), np.asarray(previous.counts)
        known = np.maximum(old_product, 0)
        same_count = (old_product >= 0) & (old_counts[known] == np.asarray(counts))
        # each image row where its product's previous row of the same position is expected
        expected = np.repeat(old_starts[known] - starts[:-1], counts) + np.arange(len(rows))
        same = same_count & np.logical_and.reduceat(rows == expected, starts[:-1])
        gather_rows(previous.product_embeddings, old_product[same], pooled, np.flatnonzero(same))
    for product in np.flatnonzero(~same).tolist():
        pooled[product] = pool(image_matrix[starts[product]:starts[product + 1]], pooling)
    return pooled
