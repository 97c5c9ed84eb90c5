"""The product index: build it offline from a catalog folder; `search.store` loads it for serving.

    python -m search.index build --catalog CATALOG_DIR --out INDEX_DIR [--update] [--pooling max] [--ann hnsw]
    python -m search.index info --index INDEX_DIR
    python -m search.index ann --index INDEX_DIR --ann hnsw        # FAISS index for SEARCH_BACKEND=faiss
    python -m search.index publish --index INDEX_DIR --milvus URI  # vectors to Milvus (SEARCH_BACKEND=milvus)

Catalog: one folder per product (folder name = product name), any number of images inside.
Every image goes through the background-removal pipeline (in-process, or the service at
--bg-url) keeping only the product's garment (its classes chosen from its name by
shared/garment_vocabulary.json; all garments where those find none), is cropped to it and
embedded with open_clip; a product's vector pools its images'. The files are described in `search/store.py`.

--update re-embeds only what changed: new or changed image bytes, images whose mask depends
on a bg-pipeline setting or model that changed (the index records the pipeline's identity), and
the products whose garment classes changed (a vocabulary change).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from search.duplicates import find_duplicates
from search.store import (
    FORMAT_VERSION,
    POOLINGS,
    SOURCES,
    Index,
    IndexArrays,
    IndexLoadError,
    write_index,
)
from search.vectors.faiss_ann import ANN_KINDS
from shared.errors import ProblemError, Unprocessable
from shared.garment_vocabulary import GARMENT_CLASSES, GarmentChoice, Vocabulary
from shared.images import DecodedImage, decode_image

__all__ = ["FORMAT_VERSION", "Index", "IndexLoadError", "build_index", "pool", "scan_catalog"]
log = logging.getLogger("fashion.index")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
THUMB_SIDE = 16


@dataclass
class CatalogImage:
    product: str
    file: str
    sha256: str
    classes: tuple[str, ...] = GARMENT_CLASSES  # the product's garment classes (from its text)

    @property
    def relpath(self) -> str:
        return f"{self.product}/{self.file}"


def scan_catalog(catalog: Path) -> tuple[list[CatalogImage], list[str]]:
    """Every image of every product folder, in a stable order, plus warnings for what was skipped."""
    if not catalog.is_dir():
        raise FileNotFoundError(f"catalog folder {catalog} does not exist")
    images, warnings = [], []
    for entry in sorted(catalog.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            warnings.append(f"{entry.name}: not a product folder (files must be inside one), ignored")
            continue
        for path in sorted(entry.iterdir()):
            if path.name.startswith("."):
                continue
            if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
                warnings.append(f"{entry.name}/{path.name}: not an image (jpg/png/webp), ignored")
                continue
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            images.append(CatalogImage(entry.name, path.name, digest))
    return images, warnings


def catalog_fingerprint(images: list[CatalogImage]) -> str:
    digest = hashlib.sha256()
    for im in images:
        digest.update(f"{im.relpath}\0{im.sha256}\n".encode())
    return digest.hexdigest()


def normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def pool(embeddings: np.ndarray, method: str) -> np.ndarray:
    """One product vector from its images' normalised embeddings.

    max: element-wise max, re-normalised; mean: mean, re-normalised; score-max scores each
    image at query time and keeps the best, so its stored vector is the max-pooled one (used
    only for the duplicate report and as a fallback)."""
    if method == "mean":
        return normalise(embeddings.mean(axis=0))
    if method in ("max", "score-max"):
        return normalise(embeddings.max(axis=0))
    raise ValueError(f"pooling must be one of {POOLINGS}")


def group_starts(counts) -> np.ndarray:
    """First row of each product, for image rows grouped by product with these counts."""
    return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)


def pool_products(image_matrix: np.ndarray, counts: list[int], method: str) -> np.ndarray:
    """One pooled row per product; `image_matrix` rows are grouped by product, `counts` long."""
    starts = group_starts(counts)
    return np.stack([pool(image_matrix[s:s + c], method) for s, c in zip(starts, counts, strict=True)])


def thumbnail(picture: Image.Image) -> np.ndarray:
    """A 16x16 grey, mean-centred, normalised fingerprint: near-duplicate photos score ~1."""
    grey = np.asarray(picture.convert("L").resize((THUMB_SIDE, THUMB_SIDE), Image.BILINEAR), np.float32)
    grey = grey.ravel() - grey.mean()
    return normalise(grey)


# --------------------------------------------------------------------------- building


@dataclass
class BuildReport:
    images: int = 0
    embedded: int = 0
    reused: int = 0
    skipped: list[dict] = field(default_factory=list)  # {"image": relpath, "reason": ...}
    warnings: list[str] = field(default_factory=list)
    duplicates: list[dict] = field(default_factory=list)
    reembedded: Counter = field(default_factory=Counter)  # why each embedded image was (re-)embedded
    pipeline_changes: list[str] = field(default_factory=list)
    choices: dict[str, GarmentChoice] = field(default_factory=dict)  # product -> its garment classes
    reembedded_products: set[str] = field(default_factory=set)  # products whose images were (re-)embedded
    seconds: float = 0.0


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


def _reusable(out: Path, identity: dict, garment_id: dict, report: BuildReport) -> Reusable:
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


@dataclass(frozen=True)
class BuildModels:
    """How a build process loads its models. Picklable: each `--workers` process loads its own set."""

    clip: object  # search.config.ClipSettings
    bg_url: str | None = None  # a bg-removal service instead of the in-process pipeline
    bg_timeout: float = 60.0
    bg_retries: int = 5

    def load(self):
        from search.embedder import ClipEmbedder
        from search.garments import LocalGarments, RemoteGarments

        garments = (RemoteGarments(self.bg_url, timeout=self.bg_timeout, retries=self.bg_retries)
                    if self.bg_url else LocalGarments())
        return ClipEmbedder(self.clip), garments


def decode_catalog_image(catalog: Path, im: CatalogImage, max_side: int) -> DecodedImage | str:
    """The photo decoded straight to the working size, or why it is unusable."""
    try:
        return decode_image((catalog / im.product / im.file).read_bytes(), max_side=max_side)
    except ProblemError as exc:  # the image itself is unusable: skip it, say why
        return f"unreadable: {exc.detail}"


def decode_batch(catalog: Path, batch: list[CatalogImage], max_side: int) -> list[DecodedImage | str]:
    return [decode_catalog_image(catalog, im, max_side) for im in batch]


def embed_batch(catalog: Path, batch: list[CatalogImage], embedder, garments,
                decoded: list[DecodedImage | str] | None = None) -> list[tuple[str, tuple | str]]:
    """Each image's (vector, thumbnail, source, fallback), or the reason it is skipped, keyed by
    relpath. Each image keeps its product's garment classes, or all garments where those find
    none (`fallback`: never an image dropped for it).
    The batch goes through each model in one call; a build gets the same vectors whichever
    process runs it. `decoded`: the batch already decoded (by a decode pool ahead of the models)."""
    if decoded is None:
        decoded = decode_batch(catalog, batch, garments.working_max_side)
    results = [(im.relpath, d) for im, d in zip(batch, decoded, strict=True) if isinstance(d, str)]
    readable = [(im, d) for im, d in zip(batch, decoded, strict=True) if not isinstance(d, str)]
    kept, cutouts = [], []
    cutouts_or_reasons = garments.garments([d for _, d in readable], [im.classes for im, _ in readable], fallback=True)
    for (im, _), cutout in zip(readable, cutouts_or_reasons, strict=True):
        if isinstance(cutout, Unprocessable):  # the only per-image answer that means "skip"
            results.append((im.relpath, f"no garment: {cutout.detail}"))
        else:
            kept.append(im)
            cutouts.append(cutout)
    if kept:
        vectors = embedder.encode_images([c.picture for c in cutouts])
        for im, vector, cutout in zip(kept, vectors, cutouts, strict=True):
            results.append((im.relpath, (vector, thumbnail(cutout.picture), cutout.source, cutout.fallback)))
    return results


def decoded_ahead(catalog: Path, batches: list[list[CatalogImage]], max_side: int, workers: int, ahead: int = 2):
    """Each batch decoded, by `workers` processes that keep `ahead` batches in front of the
    models, so a GPU never waits for JPEG decoding (0 workers: decoded here, when needed)."""
    if workers <= 0:
        for batch in batches:
            yield decode_batch(catalog, batch, max_side)
        return
    import multiprocessing
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        def submit(batch):  # one part per worker
            chunk = max(1, -(-len(batch) // workers))
            parts = [batch[i:i + chunk] for i in range(0, len(batch), chunk)]
            return [pool.submit(decode_batch, catalog, part, max_side) for part in parts]

        pending = deque(submit(batch) for batch in batches[:ahead])
        for index in range(len(batches)):
            if index + ahead < len(batches):
                pending.append(submit(batches[index + ahead]))
            yield [d for future in pending.popleft() for d in future.result()]


def models_fingerprint(embedder, garments) -> str:
    """The models a build process loaded, as one string: CLIP's identity and the bg pipeline's."""
    return hashlib.sha256(json.dumps([embedder.identity, garments.identity], sort_keys=True).encode()).hexdigest()


def check_same_models(fingerprints, expected: str, who: str) -> None:
    """A worker (process or Ray actor) must have loaded the build's models, or its vectors and the
    index's recorded identity would disagree."""
    if set(fingerprints) != {expected}:
        raise RuntimeError(f"a {who} loaded other models than the build's; check that every {who} sees the same "
                           "CLIP_* / BG_* settings and weights")


_worker_models: tuple | None = None


def _load_worker_models(models: BuildModels) -> None:
    global _worker_models
    embedder, garments = models.load()
    _worker_models = embedder, garments, models_fingerprint(embedder, garments)


def _embed_batch_in_worker(catalog: Path, batch: list[CatalogImage]) -> tuple[str, list]:
    embedder, garments, fingerprint = _worker_models
    return fingerprint, embed_batch(catalog, batch, embedder, garments)


def embedded_batches(catalog: Path, batches: list[list[CatalogImage]], embedder, garments, workers: int,
                     models: BuildModels | None, ray: str | None = None, decode_workers: int = 0):
    """embed_batch over every batch: here (with `decode_workers` processes decoding ahead of the
    models, for a GPU), or spread over `workers` processes that each load their own models from
    `models` (CPU: one core each; the same vectors as one process), or over a Ray cluster's
    actors (`ray`: an address, or "local"; search/ray_build.py)."""
    if ray:
        from search.ray_build import ray_batches

        if models is None:
            raise ValueError("--ray needs `models`: how each actor loads its models")
        yield from ray_batches(catalog, batches, embedder, garments, models, ray, workers if workers > 1 else None)
        return
    if workers <= 1:
        decoded = decoded_ahead(catalog, batches, garments.working_max_side, decode_workers)
        for batch, batch_decoded in zip(batches, decoded, strict=True):
            yield embed_batch(catalog, batch, embedder, garments, batch_decoded)
        return
    if models is None:
        raise ValueError("workers > 1 needs `models`: how each worker process loads its models")
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: torch's and onnxruntime's thread pools do not survive a fork.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_load_worker_models, initargs=(models,)) as pool:
        futures = [pool.submit(_embed_batch_in_worker, catalog, batch) for batch in batches]
        expected = models_fingerprint(embedder, garments)
        for future in futures:
            fingerprint, results = future.result()
            check_same_models([fingerprint], expected, "worker process")
            yield results


def build_index(catalog: Path, out: Path, embedder, garments, *, pooling: str = "max",
                batch_size: int = 16, update: bool = False, dup_threshold: float = 0.97,
                progress: bool = True, ann: str | None = None, ann_params: dict | None = None,
                workers: int = 1, models: BuildModels | None = None, ray: str | None = None,
                decode_workers: int = 0, vocabulary: Vocabulary | None = None) -> BuildReport:
    """Embed every catalog image's garment and write the index. Images that cannot be read or
    hold no garment are skipped and listed with the reason; anything else that fails (the
    bg-removal service down after its retries, a model error) stops the build and leaves the
    previous index as it was. `ann` adds a FAISS approximate index of that kind (see
    search/vectors/faiss_ann.py); an --update keeps the previous index's kind unless told
    otherwise ("none" drops it). Each product keeps only its own garment: `vocabulary` (default:
    the shipped one) chooses its classes from its name."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}")
    started = time.perf_counter()
    report = BuildReport()
    images, report.warnings = scan_catalog(catalog)
    report.images = len(images)
    vocabulary = vocabulary or Vocabulary.load()
    report.choices = {name: vocabulary.choose(name) for name in sorted({im.product for im in images})}
    for im in images:
        im.classes = report.choices[im.product].classes
    identity = embedder.identity
    garment_id = garments.identity
    reuse = _reusable(out, identity, garment_id, report) if update else Reusable()
    if ann is None and update and (out / "meta.json").is_file():
        previous = json.loads((out / "meta.json").read_text()).get("ann") or {}
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
        from search.vectors.faiss_ann import ann_source, build_ann_file

        vectors, over = ann_source(image_matrix, product_matrix, pooling)
        return {"ann": build_ann_file(vectors, over, ann, ann_params, folder / f"ann-{ann}.faiss", progress=progress)}

    content = IndexArrays(
        image_embeddings=image_matrix,
        product_embeddings=product_matrix,
        counts=counts, product_names=names, image_files=[im.file for im in kept],
        image_sha256=[im.sha256 for im in kept], image_sources=[done[im.relpath][2] for im in kept],
        thumbs=np.stack([done[im.relpath][1] for im in kept]),
        product_garments=[report.choices[name] for name in names],
        image_fallbacks=[bool(done[im.relpath][3]) for im in kept],
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
    }, extra=add_ann)
    index = Index.load(out, for_building=True)
    # Random weights embed every image alike: only the pixel fingerprints can tell then.
    report.duplicates = find_duplicates(index.products, index.counts, index.image_embeddings, index.thumbs,
                                        dup_threshold if identity.get("pretrained") else None, progress=progress)
    report.seconds = time.perf_counter() - started
    return report


def print_report(report: BuildReport, out: Path) -> None:
    print(f"indexed {report.embedded + report.reused} of {report.images} images into {out} "
          f"({report.embedded} embedded, {report.reused} reused) in {report.seconds:.1f} s"
          + (f", {report.embedded / report.seconds:.2f} images/s" if report.embedded else ""))
    for line in report.warnings:
        print(f"warning: {line}")
    if report.pipeline_changes:
        print("background-removal pipeline changed: " + "; ".join(report.pipeline_changes))
    if report.reembedded:
        print("embedded because: " + ", ".join(f"{why} {n}" for why, n in report.reembedded.most_common()))
    print(garment_summary_line(garment_summary(Index.load(out))))
    for entry in report.skipped:
        print(f"skipped: {entry['image']}: {entry['reason']}")
    if report.duplicates:
        print("near-duplicate images across products:")
        for d in report.duplicates:
            a, b = d["products"]
            print(f"  {a} ({d['images'][0]} images)  <->  {b} ({d['images'][1]} images): {d['image_pairs']} image pairs "
                  f"(embedding cosine up to {d['max_embedding_cosine']}, pixels up to {d['max_pixel_similarity']})")
    else:
        print("no near-duplicate images across products")


def garment_summary(index: Index) -> dict:
    """How each product's garment classes were chosen, counted from the index's own arrays."""
    choices = [index.product_garments(row) for row in range(len(index.products))]
    fallbacks = np.asarray(index.image_fallbacks, bool)
    with_fallback = sum(bool(fallbacks[index.image_rows(row)].any()) for row in range(len(index.products)))
    return {
        "recorded": index.garment_arrays is not None,  # False: built before product-only masks (all classes)
        "products_from_text": sum(c.source == "product" for c in choices),
        "products_all_classes": sum(c.source == "all" for c in choices),
        "products_with_fallback": with_fallback,
        "fallback_images": int(fallbacks.sum()),
        "classes_chosen": dict(Counter(",".join(c.classes) for c in choices).most_common()),
        "vocabulary": index.meta.get("garment_vocabulary"),
    }


def garment_summary_line(summary: dict) -> str:
    if not summary["recorded"]:
        return "garment classes: not recorded (an index built before product-only masks keeps all classes)"
    return (f"garment classes: {summary['products_from_text']} products from their text, "
            f"{summary['products_all_classes']} with all classes (their text names no garment); "
            f"{summary['fallback_images']} images of {summary['products_with_fallback']} products fell back to "
            "all garments (their classes found none)")


def main(argv: list[str] | None = None) -> int:
    from search.config import ClipSettings
    from search.publish import key_value, register

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="embed a catalog folder into an index")
    build.add_argument("--catalog", type=Path, required=True)
    build.add_argument("--out", type=Path, required=True)
    build.add_argument("--pooling", choices=POOLINGS, default="max")
    build.add_argument("--batch-size", type=int, default=None,
                       help="images per CLIP call (default 16 on the CPU, 256 with DEVICE=cuda)")
    build.add_argument("--update", action="store_true", help="re-embed only new or changed images")
    build.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                       help="run the garment and embedding steps as a Ray Data job: on a local Ray (no ADDRESS) "
                            "or a cluster (e.g. ray://head:10001 or auto); see search/ray_build.py")
    build.add_argument("--publish", metavar="MILVUS_URI",
                       help="then upsert the new index into Milvus (as `search.index publish --milvus URI`; "
                            "MILVUS_TOKEN / MILVUS_COLLECTION from the environment)")
    build.add_argument("--workers", type=int, default=1,
                       help="processes, each with its own models (CPU: one per core, with ORT_THREADS and "
                            "TORCH_THREADS at 1); 0 = one per core. The index is the same as with 1")
    build.add_argument("--decode-workers", type=int, default=None,
                       help="processes decoding photos ahead of the models (default: 0 on the CPU, where the models "
                            "use every core; up to 8 with DEVICE=cuda, so the GPU never waits)")
    build.add_argument("--dup-threshold", type=float, default=0.97, help="embedding cosine for the duplicate report")
    build.add_argument("--vocabulary", type=Path, default=os.environ.get("GARMENT_VOCABULARY") or None,
                       help="the product-text -> garment classes file (default: GARMENT_VOCABULARY, else the one "
                            "shipped in shared/garment_vocabulary.json)")
    build.add_argument("--bg-url", default=os.environ.get("BG_SERVICE_URL"),
                       help="use a running bg-removal service instead of the in-process pipeline")
    build.add_argument("--bg-retries", type=int, default=5,
                       help="retries per image for 429/5xx/timeouts/refused connections (exponential backoff)")
    build.add_argument("--bg-timeout", type=float, default=60.0, help="seconds per request to --bg-url")
    build.add_argument("--ann", choices=(*ANN_KINDS, "none"), default=None,
                       help="also build a FAISS approximate index (SEARCH_BACKEND=faiss); --update keeps the previous one")
    build.add_argument("--ann-param", action="append", default=[], type=key_value, metavar="KEY=VALUE",
                       help="approximate-index parameter, e.g. M=32 (see search/vectors/faiss_ann.py)")
    info = sub.add_parser("info", help="describe an index")
    info.add_argument("--index", type=Path, required=True)
    ann = sub.add_parser("ann", help="add or replace the FAISS approximate index of an existing index")
    ann.add_argument("--index", type=Path, required=True)
    ann.add_argument("--ann", choices=ANN_KINDS, required=True)
    ann.add_argument("--ann-param", action="append", default=[], type=key_value, metavar="KEY=VALUE")
    register(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    if getattr(args, "func", None) is not None:  # subcommands that bring their own runner (publish)
        return args.func(args)
    if args.command == "ann":
        from search.vectors.faiss_ann import build_ann

        print(json.dumps(build_ann(args.index, args.ann, dict(args.ann_param)), indent=1))
        return 0
    if args.command == "info":
        index = Index.load(args.index)
        meta = {k: v for k, v in index.meta.items() if k != "skipped"}
        summary = garment_summary(index)
        print(json.dumps({**meta, "skipped": len(index.meta.get("skipped", [])), "garment_classes": summary}, indent=1))
        print(garment_summary_line(summary), file=sys.stderr)
        return 0

    from search.garments import GarmentServiceError

    models = BuildModels(ClipSettings.from_env(), args.bg_url, args.bg_timeout, args.bg_retries)
    embedder, garments = models.load()  # the build's identity; with --workers, each worker loads its own too
    workers = args.workers or os.cpu_count() or 1
    on_gpu = embedder.device == "cuda"
    batch_size = args.batch_size or (256 if on_gpu else 16)
    decode_workers = args.decode_workers if args.decode_workers is not None else (
        min(8, os.cpu_count() or 1) if on_gpu and workers <= 1 and not args.ray else 0)
    try:
        report = build_index(args.catalog, args.out, embedder, garments, pooling=args.pooling,
                             batch_size=batch_size, update=args.update, dup_threshold=args.dup_threshold,
                             ann=args.ann, ann_params=dict(args.ann_param), workers=workers, models=models,
                             ray=args.ray, decode_workers=decode_workers,
                             vocabulary=Vocabulary.load(args.vocabulary))
    except GarmentServiceError as exc:
        print(f"error: {exc}\nThe build stopped; the index at {args.out} was left as it was.", file=sys.stderr)
        return 1
    print_report(report, args.out)
    if args.publish:
        from search.publish import PublishError, publish

        try:
            published = publish(args.out, args.publish, token=os.environ.get("MILVUS_TOKEN") or None,
                                collection=os.environ.get("MILVUS_COLLECTION") or None)
        except PublishError as exc:
            print(f"error: the index was built, but publishing it failed: {exc}", file=sys.stderr)
            return 1
        print(json.dumps(published, indent=1))
    from search.text_encoder import EXPORT_DIRNAME, EXPORT_META

    export = args.out / EXPORT_DIRNAME / EXPORT_META
    if export.exists() and json.loads(export.read_text()).get("identity") != embedder.identity:
        print(f"warning: the text encoder in {export.parent} was exported from other CLIP weights and the "
              f"service will refuse it; export again: python -m search.export --index {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
