"""The product index: build it offline from a catalog folder, load it for serving.

    python -m search.index build --catalog CATALOG_DIR --out INDEX_DIR [--update] [--pooling max]
    python -m search.index info --index INDEX_DIR

Catalog: one folder per product (folder name = product name), any number of images inside.
Index: plain files. image_embeddings.npy (one normalised row per image, grouped by product),
product_embeddings.npy (one pooled row per product), thumbs.npy (tiny pixel fingerprints for
the duplicate report) and meta.json (model identity, pooling, image list, catalog fingerprint,
format version).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from shared.errors import ProblemError
from shared.images import decode_image

log = logging.getLogger("fashion.index")
FORMAT_VERSION = 1
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
POOLINGS = ("max", "mean", "score-max")
FILES = ("image_embeddings.npy", "product_embeddings.npy", "thumbs.npy", "meta.json")
THUMB_SIDE = 16
PROBE_MIN_COSINE = 0.999


class IndexLoadError(Exception):
    """The index is missing, corrupt or built with another model (message says which)."""


@dataclass
class CatalogImage:
    product: str
    file: str
    sha256: str

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


@dataclass
class Index:
    directory: Path
    meta: dict
    image_embeddings: np.ndarray  # [images, dim], grouped by product
    product_embeddings: np.ndarray  # [products, dim]
    thumbs: np.ndarray  # [images, 256]
    products: list[str] = field(init=False)
    image_files: list[str] = field(init=False)
    starts: np.ndarray = field(init=False)  # first image row of each product

    def __post_init__(self) -> None:
        self.products = [p["name"] for p in self.meta["products"]]
        self.image_files = [im["file"] for im in self.meta["images"]]
        self.starts = group_starts([p["count"] for p in self.meta["products"]])

    @property
    def pooling(self) -> str:
        return self.meta["pooling"]

    @classmethod
    def load(cls, directory: str | Path) -> "Index":
        directory = Path(directory)
        missing = [name for name in FILES if not (directory / name).is_file()]
        if missing:
            raise IndexLoadError(f"index at {directory} is missing {', '.join(missing)}; build it with "
                              "`python -m search.index build --catalog DIR --out DIR`")
        try:
            meta = json.loads((directory / "meta.json").read_text())
            images = np.load(directory / "image_embeddings.npy", allow_pickle=False)
            products = np.load(directory / "product_embeddings.npy", allow_pickle=False)
            thumbs = np.load(directory / "thumbs.npy", allow_pickle=False)
        except (ValueError, OSError, json.JSONDecodeError) as exc:
            raise IndexLoadError(f"index at {directory} is corrupt: {exc}") from None
        if meta.get("format_version") != FORMAT_VERSION:
            raise IndexLoadError(f"index format {meta.get('format_version')!r} is not {FORMAT_VERSION}; rebuild it")
        try:
            n_images, n_products = len(meta["images"]), len(meta["products"])
            counts = sum(p["count"] for p in meta["products"])
            pooling = meta["pooling"]
        except (KeyError, TypeError) as exc:
            raise IndexLoadError(f"index at {directory} has incomplete metadata ({exc})") from None
        shapes_ok = (
            images.ndim == 2 and products.ndim == 2 and images.shape[0] == n_images == counts
            and products.shape == (n_products, images.shape[1]) and thumbs.shape[0] == n_images
            and n_products > 0 and pooling in POOLINGS
        )
        if not shapes_ok or not (np.isfinite(images).all() and np.isfinite(products).all()):
            raise IndexLoadError(f"index at {directory} is corrupt: arrays and metadata disagree")
        return cls(directory, meta, images.astype(np.float32), products.astype(np.float32), thumbs)

    def check_compatible(self, identity: dict) -> None:
        """Refuse an index whose vectors came from other weights than the ones loaded now."""
        built = self.meta.get("embedder", {})
        for key in ("model", "pretrained", "seed"):
            if built.get(key) != identity.get(key):
                raise IndexLoadError(
                    f"index was built with {key}={built.get(key)!r} but the service runs "
                    f"{key}={identity.get(key)!r}; rebuild the index or fix CLIP_MODEL/CLIP_PRETRAINED"
                )
        old, new = np.asarray(built.get("probe") or [], np.float32), np.asarray(identity["probe"], np.float32)
        # Same names, other weights (a retrained file, another seed): the probe text's embedding
        # moves. Compared by cosine so float noise between CPUs does not matter.
        if old.shape != new.shape or float(old @ new) < PROBE_MIN_COSINE:
            raise IndexLoadError(
                "index was built with different weights (probe embedding differs); rebuild the index"
            )

    def visual_scores(self, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cosine score per product, and per image (for `best_image`)."""
        per_image = self.image_embeddings @ query
        if self.pooling == "score-max":
            return np.maximum.reduceat(per_image, self.starts), per_image
        return self.product_embeddings @ query, per_image

    def best_image(self, product: int, per_image: np.ndarray) -> int:
        """Row of the product's image that matches the query best (only asked for the top n)."""
        start = int(self.starts[product])
        count = self.meta["products"][product]["count"]
        return start + int(np.argmax(per_image[start:start + count]))


# --------------------------------------------------------------------------- building


@dataclass
class BuildReport:
    images: int = 0
    embedded: int = 0
    reused: int = 0
    skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    duplicates: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def _previous_rows(out: Path, identity: dict, pipeline_id: str) -> dict[tuple[str, str], tuple]:
    """(relpath, sha256) -> (embedding, thumb) from an existing compatible index, for --update."""
    try:
        old = Index.load(out)
        old.check_compatible(identity)
    except IndexLoadError as exc:
        log.warning("--update: existing index not reusable (%s); embedding everything", exc)
        return {}
    if old.meta.get("garment_pipeline") != pipeline_id:
        log.warning("--update: background-removal pipeline changed; embedding everything")
        return {}
    return {(im["product"] + "/" + im["file"], im["sha256"]): (old.image_embeddings[i], old.thumbs[i])
            for i, im in enumerate(old.meta["images"])}


def build_index(catalog: Path, out: Path, embedder, garments, *, pooling: str = "max",
                batch_size: int = 16, update: bool = False, dup_threshold: float = 0.97,
                progress: bool = True) -> BuildReport:
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}")
    started = time.perf_counter()
    report = BuildReport()
    images, report.warnings = scan_catalog(catalog)
    report.images = len(images)
    identity = embedder.identity
    pipeline_id = garments.description
    reuse = _previous_rows(out, identity, pipeline_id) if update else {}

    vectors: dict[str, np.ndarray] = {}
    thumbs: dict[str, np.ndarray] = {}
    pending = []
    for im in images:
        cached = reuse.get((im.relpath, im.sha256))
        if cached is not None:
            vectors[im.relpath], thumbs[im.relpath] = cached
            report.reused += 1
        else:
            pending.append(im)

    bar = tqdm(total=len(pending), desc="indexing", unit="img", disable=not progress)
    for first in range(0, len(pending), batch_size):
        batch, cutouts = [], []
        for im in pending[first:first + batch_size]:
            try:
                decoded = decode_image((catalog / im.product / im.file).read_bytes())
                cutouts.append(garments.garment(decoded))
                batch.append(im)
            except ProblemError as exc:
                report.skipped.append(f"{im.relpath}: {exc.detail}")
            bar.update(1)
        if batch:
            for im, vector, cutout in zip(batch, embedder.encode_images(cutouts), cutouts, strict=True):
                vectors[im.relpath], thumbs[im.relpath] = vector, thumbnail(cutout)
                report.embedded += 1
    bar.close()

    kept = [im for im in images if im.relpath in vectors]
    products: list[dict] = []
    for im in kept:
        if not products or products[-1]["name"] != im.product:
            products.append({"name": im.product, "count": 0})
        products[-1]["count"] += 1
    for name in sorted({im.product for im in images} - {p["name"] for p in products}):
        report.warnings.append(f"{name}: no usable image (no garment found in any), not indexed")
    if not kept:
        raise RuntimeError("no image of the catalog could be indexed; see the skipped list")

    image_matrix = np.stack([vectors[im.relpath] for im in kept]).astype(np.float32)
    thumb_matrix = np.stack([thumbs[im.relpath] for im in kept]).astype(np.float32)
    product_matrix = pool_products(image_matrix, [p["count"] for p in products], pooling)
    meta = {
        "format_version": FORMAT_VERSION,
        "embedder": identity,
        "embed_dim": int(image_matrix.shape[1]),
        "pooling": pooling,
        "garment_pipeline": pipeline_id,
        "catalog_dir": str(catalog.resolve()),
        "catalog_fingerprint": catalog_fingerprint(images),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "products": products,
        "images": [{"product": im.product, "file": im.file, "sha256": im.sha256} for im in kept],
        "skipped": report.skipped,
    }
    _write(out, image_matrix, product_matrix, thumb_matrix, meta)
    index = Index.load(out)
    # Random weights embed every image alike: only the pixel fingerprints can tell then.
    report.duplicates = find_duplicates(index, dup_threshold if identity.get("pretrained") else None)
    report.seconds = time.perf_counter() - started
    return report


def _write(out: Path, images: np.ndarray, products: np.ndarray, thumbs: np.ndarray, meta: dict) -> None:
    """Write every file beside its final name, then rename: a crash never leaves a mixed index."""
    out.mkdir(parents=True, exist_ok=True)
    staged = []
    for name, array in (("image_embeddings.npy", images), ("product_embeddings.npy", products),
                        ("thumbs.npy", thumbs)):
        tmp = out / f".{name}.tmp"
        with open(tmp, "wb") as fh:
            np.save(fh, array, allow_pickle=False)
        staged.append((tmp, out / name))
    tmp = out / ".meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    staged.append((tmp, out / "meta.json"))
    for tmp, final in staged:
        os.replace(tmp, final)


def find_duplicates(index: Index, threshold: float | None, pixel_threshold: float = 0.98) -> list[dict]:
    """Product pairs holding near-identical images.

    An image pair counts when its pixel fingerprints match (>= pixel_threshold: works whatever
    the model) or, when `threshold` is given, its embeddings' cosine reaches it. Random weights
    give every image nearly the same embedding, so the builder passes None for them."""
    sizes = np.diff(np.append(index.starts, len(index.image_files)))
    product_of = np.repeat(np.arange(len(index.products)), sizes)
    embed_sim = index.image_embeddings @ index.image_embeddings.T
    pixel_sim = index.thumbs @ index.thumbs.T
    similar = pixel_sim >= pixel_threshold
    if threshold is not None:
        similar |= embed_sim >= threshold
    across = np.triu(product_of[:, None] != product_of[None, :], k=1)
    pairs: dict[tuple[int, int], dict] = {}
    for a, b in np.argwhere(similar & across):
        pa, pb = int(product_of[a]), int(product_of[b])
        entry = pairs.setdefault((pa, pb), {
            "products": [index.products[pa], index.products[pb]], "image_pairs": 0,
            "images": [int(sizes[pa]), int(sizes[pb])],
            "max_embedding_cosine": 0.0, "max_pixel_similarity": 0.0})
        entry["image_pairs"] += 1
        entry["max_embedding_cosine"] = max(entry["max_embedding_cosine"], round(float(embed_sim[a, b]), 4))
        entry["max_pixel_similarity"] = max(entry["max_pixel_similarity"], round(float(pixel_sim[a, b]), 4))
    return sorted(pairs.values(), key=lambda e: -e["image_pairs"])


def print_report(report: BuildReport, out: Path) -> None:
    print(f"indexed {report.embedded + report.reused} of {report.images} images into {out} "
          f"({report.embedded} embedded, {report.reused} reused) in {report.seconds:.1f} s"
          + (f", {report.embedded / report.seconds:.2f} images/s" if report.embedded else ""))
    for line in report.warnings:
        print(f"warning: {line}")
    for line in report.skipped:
        print(f"skipped: {line}")
    if report.duplicates:
        print("near-duplicate images across products:")
        for d in report.duplicates:
            a, b = d["products"]
            print(f"  {a} ({d['images'][0]} images)  <->  {b} ({d['images'][1]} images): {d['image_pairs']} image pairs "
                  f"(embedding cosine up to {d['max_embedding_cosine']}, pixels up to {d['max_pixel_similarity']})")
    else:
        print("no near-duplicate images across products")


def main(argv: list[str] | None = None) -> int:
    from search.config import ClipSettings

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="embed a catalog folder into an index")
    build.add_argument("--catalog", type=Path, required=True)
    build.add_argument("--out", type=Path, required=True)
    build.add_argument("--pooling", choices=POOLINGS, default="max")
    build.add_argument("--batch-size", type=int, default=16)
    build.add_argument("--update", action="store_true", help="re-embed only new or changed images")
    build.add_argument("--dup-threshold", type=float, default=0.97, help="embedding cosine for the duplicate report")
    build.add_argument("--bg-url", default=os.environ.get("BG_SERVICE_URL"),
                       help="use a running bg-removal service instead of the in-process pipeline")
    info = sub.add_parser("info", help="describe an index")
    info.add_argument("--index", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    if args.command == "info":
        index = Index.load(args.index)
        meta = {k: v for k, v in index.meta.items() if k not in ("images", "products", "skipped")}
        print(json.dumps({**meta, "products": len(index.products), "images": len(index.image_files)}, indent=1))
        return 0

    from search.embedder import ClipEmbedder
    from search.garments import LocalGarments, RemoteGarments

    garments = RemoteGarments(args.bg_url) if args.bg_url else LocalGarments()
    embedder = ClipEmbedder(ClipSettings.from_env())
    report = build_index(args.catalog, args.out, embedder, garments, pooling=args.pooling,
                         batch_size=args.batch_size, update=args.update, dup_threshold=args.dup_threshold)
    print_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
