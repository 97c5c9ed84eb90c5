"""The index format, in one place: what an index folder holds, how it is read (memory-mapped,
for serving, and with the builder-only arrays for an --update) and how it is written (a new
generation, then one atomic switch of meta.json). The service only reads it; search/indexing/
writes it.

Layout of an index folder:

    meta.json        small: identities, pooling, counts, catalog (kind: folders or feed), the
                     filterable fields, the lexical analysis, skipped images; names the generation
    gen-<id>/        the arrays of one build, all .npy (memory-mappable):
        image_embeddings.npy     [images, dim] float32, normalised, rows grouped by product
        product_embeddings.npy   [products, dim] float32, one pooled row per product
        product_starts.npy       [products + 1] int64, first image row of each product (+ total)
        product_ids.*.npy        product keys, sorted, as UTF-8 + offsets: a feed's ids, a folder
                                 catalog's folder names; products are in this order
        product_names.*.npy      each product's display name (product_name of results)
        product_records.*.npy    each product's record as the feed gave it (JSON), for /products/<id>
        image_files.*.npy        each image row's file: inside its product folder (folders), or the
                                 feed's URL, or a path relative to the feed's folder (feeds)
        lexical.*.npy            the BM25 index over the products' text (search/lexical.py)
        attr.<i>.*.npy           the filterable fields' columns (search/filters.py)
        image_sha256.npy, image_sources.npy, thumbs.npy   only the builder reads these (--update,
                                                          duplicate report); serving never maps them
        image_stat.npy           builder-only, optional: [images, 4] int64, each file's size, mtime_ns,
                                 ctime_ns and inode when its sha256 was taken (an --update re-reads
                                 only files whose stat differs; search/indexing/update.py)
        product_classes.npy        [products] uint8, bit i = GARMENT_CLASSES[i] kept in its masks
        product_class_sources.npy  [products] uint8, CLASS_SOURCES: chosen from the product's text, or all
        product_garments.*.npy     the vocabulary garment its text named ("tunic"; "" for none)
        image_fallbacks.npy        [images] uint8, 1 = its product's classes found no garment: all kept
        (these four are absent in indexes built before product-only masks: all classes, no fallback)
        ann-<kind>.faiss           optional: the FAISS approximate index (search/indexing/ann.py),
                                   described by meta.json's "ann" entry

A build writes a new generation folder, then replaces meta.json in one atomic rename: a crash or a
failed build leaves the previous index whole, and a worker that loads meanwhile sees either the old
or the new index, never a mix. An old generation is removed only once no process holds it
(search/index_guard.py; docs/index-writers.md), and running workers switch to the new one by
themselves (search/live.py; docs/live-index.md).

Serving maps every array read-only (`np.load(mmap_mode="r")`): the operating system shares those
pages between all gunicorn workers, and no per-product Python object is created (names are decoded
only for the results of a query).
"""
from __future__ import annotations

import json
import mmap
import os
import shutil
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from search.filters import PREFIX as ATTRIBUTE_PREFIX
from search.filters import AttributeColumns
from search.lexical import LexicalIndex
from search.string_table import StringTable
from shared.garment_vocabulary import GARMENT_CLASSES, GarmentChoice

FORMAT_VERSION = 3  # 3: product ids, records, filterable fields, BM25 (replacing the name words)
POOLINGS = ("max", "mean", "score-max")
SOURCES = ("garment", "product")  # which branch of the bg pipeline made an image's mask
CLASS_SOURCES = ("all", "product")  # where a product's garment classes came from (GarmentChoice.source)
CATALOG_KINDS = ("folders", "feed")
FINITE_CHECK_ROWS = 65536  # rows per block when checking for NaN/inf: bounded temporary memory
EDGE_CHECK_ROWS = 1024  # image rows checked at each end of the matrix at load
PROBE_MIN_COSINE = 0.999


class IndexLoadError(Exception):
    """The index is missing, corrupt or built with another model (message says which)."""


# --------------------------------------------------------------------------- loading

SERVING_ARRAYS = ("image_embeddings", "product_embeddings", "product_starts", "product_ids.utf8",
                  "product_ids.offsets", "product_names.utf8", "product_names.offsets", "product_records.utf8",
                  "product_records.offsets", "image_files.utf8", "image_files.offsets")
OPTIONAL_PREFIXES = (LexicalIndex.PREFIX, ATTRIBUTE_PREFIX)  # every such .npy file of the generation is mapped
BUILDER_ARRAYS = ("image_sha256", "image_sources", "thumbs")
GARMENT_ARRAYS = ("product_classes", "product_class_sources", "product_garments.utf8", "product_garments.offsets",
                  "image_fallbacks")  # optional: older indexes kept all classes


def class_bits(classes: Sequence[str]) -> int:
    return sum(1 << GARMENT_CLASSES.index(c) for c in classes)


def bits_classes(bits: int) -> tuple[str, ...]:
    return tuple(c for i, c in enumerate(GARMENT_CLASSES) if bits >> i & 1)


def _advise(array: np.ndarray, advice: int) -> None:
    """madvise a memory-mapped array (where the platform has it)."""
    region = getattr(array, "_mmap", None)
    if region is not None and hasattr(region, "madvise"):
        region.madvise(advice)


def _all_finite(matrix: np.ndarray) -> bool:
    """NaN/inf check a block of rows at a time, through sums (a NaN or inf makes its block's sum
    non-finite): no temporary array, so a memory-mapped matrix is never copied, and no large
    malloc/free that would raise glibc's mmap threshold and strand freed model memory in the heap.
    Summed in float32 (5x faster than float64 at 1M products): unit rows cannot overflow it, and a
    row of values so large that they do is refused as well."""
    return all(np.isfinite(matrix[start:start + FINITE_CHECK_ROWS].sum(dtype=np.float32))
               for start in range(0, matrix.shape[0], FINITE_CHECK_ROWS))


@dataclass(frozen=True)
class Index:
    directory: Path
    meta: dict
    image_embeddings: np.ndarray  # [images, dim], memory-mapped, grouped by product
    product_embeddings: np.ndarray  # [products, dim], memory-mapped
    product_starts: np.ndarray  # [products + 1]
    products: StringTable  # product keys (a feed's ids, a folder catalog's folder names), sorted
    image_files: StringTable  # each image row's file (see the layout above)
    product_names: StringTable  # display names, in product order
    records: StringTable  # each product's record as JSON, in product order
    lexical: LexicalIndex  # BM25 over the products' text
    attributes: AttributeColumns  # the filterable fields
    builder: dict | None = None  # image_sha256, image_sources, thumbs: only when loaded for building
    garment_arrays: dict | None = None  # GARMENT_ARRAYS, None for an index built before them

    @property
    def catalog_kind(self) -> str:
        return self.meta.get("catalog_kind", "folders")

    def product_name(self, product: int) -> str:
        return self.product_names[product]

    def product_record(self, product: int) -> dict:
        """The product's record: id, name, and what the feed gave (description, category, brand,
        url, attributes)."""
        return json.loads(self.records[product])

    @property
    def pooling(self) -> str:
        return self.meta["pooling"]

    @property
    def generation_dir(self) -> Path:
        """The folder of the generation meta.json names (the arrays, the approximate index)."""
        return self.directory / self.meta["generation"]

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.product_starts)

    @property
    def starts(self) -> np.ndarray:
        return self.product_starts[:-1]

    @property
    def thumbs(self) -> np.ndarray:
        if self.builder is None:
            raise RuntimeError("thumbs are only loaded for building (Index.load(..., for_building=True))")
        return self.builder["thumbs"]

    def product_garments(self, product: int) -> GarmentChoice:
        """The garment classes the product's masks kept, and where the choice came from."""
        if self.garment_arrays is None:
            return GarmentChoice(GARMENT_CLASSES, "all")
        a = self.garment_arrays
        garment = StringTable(a["product_garments.utf8"], a["product_garments.offsets"])[product] or None
        return GarmentChoice(bits_classes(int(a["product_classes"][product])),
                             CLASS_SOURCES[int(a["product_class_sources"][product])], garment)

    @property
    def image_fallbacks(self) -> np.ndarray:
        """Per image row: 1 where its product's classes found no garment and all were kept."""
        if self.garment_arrays is None:
            return np.zeros(len(self.image_files), np.uint8)
        return self.garment_arrays["image_fallbacks"]

    def image_rows(self, product: int) -> range:
        return range(int(self.product_starts[product]), int(self.product_starts[product + 1]))

    def image_relpath(self, row: int, product: int | None = None) -> str:
        """Where the image row's file is, relative to the catalog folder (folders) or the feed's
        folder; for a feed's URL image, the URL."""
        if self.catalog_kind == "feed":
            return self.image_files[row]
        if product is None:
            product = int(np.searchsorted(self.product_starts, row, side="right")) - 1
        return f"{self.products[product]}/{self.image_files[row]}"

    def find_image(self, product_key: str, file: str) -> int | None:
        """Row of that image if the index lists it (the only files /images/ may serve)."""
        product = self.products.find(product_key)
        if product is None:
            return None
        return next((row for row in self.image_rows(product) if self.image_files[row] == file), None)

    def check_compatible(self, identity: dict) -> None:
        """Refuse an index whose vectors came from other weights than the ones loaded now."""
        check_built_with(self.meta, identity)

    def visual_scores(self, query: np.ndarray) -> np.ndarray:
        """Cosine score of every product. score-max takes each product's best image (reads every
        image row); max and mean read one pooled row per product."""
        if self.pooling == "score-max":
            return np.maximum.reduceat(self.image_embeddings @ query, self.starts)
        return self.product_embeddings @ query

    def best_image(self, product: int, query: np.ndarray) -> int:
        """Row of the product's image that matches the query best (asked only for the top n)."""
        rows = self.image_rows(product)
        return rows.start + int(np.argmax(self.image_embeddings[rows.start:rows.stop] @ query))

    def with_pooling(self, method: str, product_embeddings: np.ndarray) -> Index:
        return replace(self, meta={**self.meta, "pooling": method}, product_embeddings=product_embeddings)

    @classmethod
    def load(cls, directory: str | Path, *, for_building: bool = False) -> Index:
        directory = Path(directory)
        meta_path = directory / "meta.json"
        if not meta_path.is_file():
            raise IndexLoadError(f"index at {directory} is missing meta.json; build it with "
                                 "`python -m search.index build --catalog DIR --out DIR`")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise IndexLoadError(f"index at {directory} is corrupt: meta.json: {exc}") from None
        if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
            found = meta.get("format_version") if isinstance(meta, dict) else None
            raise IndexLoadError(f"index format {found!r} is not {FORMAT_VERSION}; rebuild it with "
                                 "`python -m search.index build`")
        generation = directory / str(meta.get("generation", ""))
        if not meta.get("generation") or not generation.is_dir():
            raise IndexLoadError(f"index at {directory} is missing its arrays folder {generation.name!r}")
        arrays = {}
        has_garments = (generation / "product_classes.npy").is_file()
        optional = sorted(p.name[:-4] for p in generation.glob("*.npy") if p.name.startswith(OPTIONAL_PREFIXES))
        for name in (SERVING_ARRAYS + (BUILDER_ARRAYS if for_building else ()) + (GARMENT_ARRAYS if has_garments else ())
                     + tuple(optional)):
            path = generation / f"{name}.npy"
            if not path.is_file():
                raise IndexLoadError(f"index at {directory} is missing {generation.name}/{path.name}")
            try:
                arrays[name] = np.load(path, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError) as exc:
                raise IndexLoadError(f"index at {directory} is corrupt: {path.name}: {exc}") from None
        try:
            index = cls._assemble(directory, meta, arrays, for_building)
        except (KeyError, TypeError, IndexError, ValueError, UnicodeDecodeError) as exc:
            raise IndexLoadError(f"index at {directory} is corrupt: arrays and metadata disagree ({exc})") from None
        return index

    @classmethod
    def _assemble(cls, directory: Path, meta: dict, a: dict, for_building: bool) -> Index:
        images, products, starts = a["image_embeddings"], a["product_embeddings"], a["product_starts"]
        n_products, n_images = int(meta["products"]), int(meta["images"])
        ok = (
            images.ndim == 2 and products.ndim == 2 and images.shape == (n_images, products.shape[1])
            and products.shape[0] == n_products > 0
            and images.dtype == products.dtype == np.float32
            and starts.shape == (n_products + 1,) and starts[0] == 0 and starts[-1] == n_images
            and bool((np.diff(starts) > 0).all()) and meta["pooling"] in POOLINGS
            and len(a["product_names.offsets"]) == len(a["product_ids.offsets"]) == n_products + 1
            and len(a["product_records.offsets"]) == n_products + 1 and len(a["image_files.offsets"]) == n_images + 1
            and meta.get("catalog_kind", "folders") in CATALOG_KINDS
        )
        if for_building:
            ok = ok and a["thumbs"].shape[0] == n_images and a["image_sha256"].shape == (n_images, 32) \
                and a["image_sources"].shape == (n_images,)
        garments = {k: a[k] for k in GARMENT_ARRAYS} if "product_classes" in a else None
        if garments is not None:
            ok = ok and garments["product_classes"].shape == garments["product_class_sources"].shape == (n_products,) \
                and len(garments["product_garments.offsets"]) == n_products + 1 \
                and garments["image_fallbacks"].shape == (n_images,) \
                and bool((garments["product_class_sources"] < len(CLASS_SOURCES)).all()) \
                and bool(((garments["product_classes"] > 0) & (garments["product_classes"] < 8)).all())
        if not ok:
            raise ValueError("shapes or types")
        # Product rows are scored by every query: check all of them. Image rows are only read for
        # the top results; their ends catch truncation and garbage without reading 10 GB per start.
        edges = images[:EDGE_CHECK_ROWS], images[-EDGE_CHECK_ROWS:]
        if not (_all_finite(products) and all(_all_finite(e) for e in edges)):
            raise ValueError("NaN or infinite values")
        # The check mapped every product row into this process; unmap them (they stay in the page
        # cache), so a worker maps only what its queries read (with the kernel's fault-around).
        _advise(products, getattr(mmap, "MADV_DONTNEED", 0))
        # Image rows are read a few at a time (the best image of each result): on a cold page
        # cache, read the rows a query needs instead of a readahead window around each.
        _advise(images, getattr(mmap, "MADV_RANDOM", 0))
        lexical = LexicalIndex({k: v for k, v in a.items() if k.startswith(LexicalIndex.PREFIX)}, n_products,
                               meta.get("lexical", {}).get("language", "english"))
        attributes = AttributeColumns(meta.get("attributes", []),
                                      {k: v for k, v in a.items() if k.startswith(ATTRIBUTE_PREFIX)}, n_products)
        builder = {k: a[k] for k in BUILDER_ARRAYS} if for_building else None
        return cls(directory, meta, images, products, starts,
                   StringTable(a["product_ids.utf8"], a["product_ids.offsets"]),
                   StringTable(a["image_files.utf8"], a["image_files.offsets"]),
                   StringTable(a["product_names.utf8"], a["product_names.offsets"]),
                   StringTable(a["product_records.utf8"], a["product_records.offsets"]),
                   lexical, attributes, builder, garments)

    def missing_images(self, catalog: Path, rows=None, limit: int = 5) -> tuple[int, int, list[str]]:
        """Of the image rows given (every row when None), how many are local files looked for,
        how many of those are not files under `catalog` (the catalog folder, or a feed's folder),
        and the first few missing. A feed's URL images are not looked for."""
        rows = range(len(self.image_files)) if rows is None else rows
        checked, missing, examples = 0, 0, []
        for row in rows:
            relpath = self.image_relpath(int(row))
            if is_remote(relpath):
                continue
            checked += 1
            if not os.path.isfile(catalog / relpath):
                missing += 1
                if len(examples) < limit:
                    examples.append(relpath)
        return checked, missing, examples

    def sample_rows(self, count: int) -> np.ndarray:
        """`count` image rows spread evenly over the index (every one when it has fewer): what a
        worker checks at start, in O(count) whatever the catalog's size."""
        total = len(self.image_files)
        return np.unique(np.linspace(0, total - 1, min(count, total)).astype(np.int64)) if count else np.zeros(0, np.int64)

    def image_path(self, catalog: Path, row: int) -> Path | None:
        """Where the image row's file is under `catalog`; None for a feed's URL image."""
        relpath = self.image_relpath(row)
        return None if is_remote(relpath) else catalog / relpath


def check_built_with(meta: dict, identity: dict) -> None:
    """Refuse an index (its meta.json) whose vectors came from other weights than `identity`'s."""
    built = meta.get("embedder", {})
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
        raise IndexLoadError("index was built with different weights (probe embedding differs); rebuild the index")


def is_remote(file: str) -> bool:
    """Whether an image file entry is a feed's URL (not a file of the catalog)."""
    return file.startswith(("http://", "https://"))


# --------------------------------------------------------------------------- writing

# Every write below runs under the index folder's writer_lock (search/index_guard.py): one writer
# at a time, and what a crashed one left is removed by the next.
from search.index_guard import (  # noqa: E402 - the writers' part of the format
    READERS_FILE,
    remove_unused_generations,
    staged_path,
    sync_folder,
    writer_lock,
)


@dataclass
class IndexArrays:
    """One build's content, rows of images grouped by product, products sorted by name."""

    image_embeddings: np.ndarray
    product_embeddings: np.ndarray
    counts: Sequence[int]
    product_names: Sequence[str]  # the product keys, sorted: folder names, or a feed's ids (with product_records)
    image_files: Sequence[str]
    image_sha256: Sequence[str]  # hex digests
    image_sources: Sequence[str]  # SOURCES
    thumbs: np.ndarray
    product_garments: Sequence[GarmentChoice] | None = None  # None: every product kept all classes
    image_fallbacks: Sequence[bool] | None = None
    # A feed's products: each one's record ({"id", "name", "description", "category", "brand",
    # "url", "attributes"}), in product order; then product_names are the ids (sorted) and the
    # records' names are shown. None: a folder catalog (key = name = folder).
    product_records: Sequence[dict] | None = None
    attribute_types: Mapping[str, str] | None = None  # the filterable fields and their types
    lexical_language: str = "english"


RECORD_FIELDS = ("description", "category", "brand", "url")  # a feed's optional fields (results' `fields` may name them)
FILTERABLE_TEXT = ("category", "brand")  # a feed's text fields that filters can name too
LEXICAL_FIELDS = ("name", "category", "brand", "description")  # what BM25 reads of a product


def product_text(record: Mapping) -> str:
    """The text the lexical engine indexes for a product."""
    return " ".join(str(record[f]) for f in LEXICAL_FIELDS if record.get(f))


def record_values(record: Mapping, text_fields: Sequence[str] = RECORD_FIELDS) -> dict:
    """A record's attributes and the text fields named (those it has), as one mapping."""
    return {**record.get("attributes", {}), **{f: record[f] for f in text_fields if record.get(f)}}


def filterable_values(record: Mapping) -> dict:
    """A record's values of the filterable fields: its attributes, category and brand."""
    return record_values(record, FILTERABLE_TEXT)


def write_index(out: Path, content: IndexArrays, meta: dict, *, extra=None) -> dict:
    """Write a new generation, then switch meta.json to it atomically; returns the meta written.
    `extra(folder)` may add files to the generation before the switch (the approximate index)
    and returns entries for meta.json. Holds the folder's writer_lock (nested in a command's own);
    after the switch every other generation no process holds is removed."""
    keys = list(content.product_names)
    if keys != sorted(keys) or len(set(keys)) != len(keys):
        raise ValueError("product keys (names, or a feed's ids) must be unique and sorted")
    records = list(content.product_records or ({"id": key, "name": key, "attributes": {}} for key in keys))
    if [r["id"] for r in records] != keys:
        raise ValueError("product records must be in product order")
    with writer_lock(out, "write_index"):
        return _write_generation(Path(out), content, meta, keys, records, extra)


def _write_generation(out: Path, content: IndexArrays, meta: dict, keys: list, records: list, extra) -> dict:
    generation = new_generation_name()
    folder = out / generation
    folder.mkdir()
    try:
        meta = _fill_generation(folder, content, meta, keys, records, extra)
    except BaseException:  # a failed write leaves no half generation (a killed one: the next writer removes it)
        shutil.rmtree(folder, ignore_errors=True)
        raise
    sync_folder(out)  # the generation's folder is on disk before meta.json can name it
    write_meta(out, meta)  # the switch: one atomic rename
    remove_unused_generations(out, generation)
    return meta


def _fill_generation(folder: Path, content: IndexArrays, meta: dict, keys: list, records: list, extra) -> dict:
    """The generation's arrays, the extra files and its .readers file, all synced; returns its meta."""
    names = [r["name"] for r in records]
    starts = np.zeros(len(names) + 1, np.int64)
    np.cumsum(content.counts, out=starts[1:])
    arrays = {
        "image_embeddings": content.image_embeddings, "product_embeddings": content.product_embeddings,
        "product_starts": starts, "thumbs": content.thumbs.astype(np.float32, copy=False),
        "image_sha256": np.frombuffer(b"".join(bytes.fromhex(h) for h in content.image_sha256),
                                      np.uint8).reshape(-1, 32),
        "image_sources": np.array([SOURCES.index(s) for s in content.image_sources], np.uint8),
        **LexicalIndex.arrays([product_text(r) for r in records], content.lexical_language),
    }
    fields, columns = AttributeColumns.arrays(content.attribute_types or {}, [filterable_values(r) for r in records])
    arrays.update(columns)
    choices = content.product_garments or [GarmentChoice(GARMENT_CLASSES, "all")] * len(names)
    arrays["product_classes"] = np.array([class_bits(c.classes) for c in choices], np.uint8)
    arrays["product_class_sources"] = np.array([CLASS_SOURCES.index(c.source) for c in choices], np.uint8)
    arrays["image_fallbacks"] = np.array(content.image_fallbacks or [False] * int(starts[-1]), np.uint8)
    for prefix, strings in (("product_ids", keys), ("product_names", names), ("image_files", content.image_files),
                            ("product_records", [json.dumps(r, ensure_ascii=False, sort_keys=True) for r in records]),
                            ("product_garments", [c.garment or "" for c in choices])):
        arrays[f"{prefix}.utf8"], arrays[f"{prefix}.offsets"] = StringTable.arrays(strings)
    for name, array in arrays.items():
        with open(folder / f"{name}.npy", "wb") as fh:
            np.save(fh, np.ascontiguousarray(array), allow_pickle=False)
            fh.flush()
            os.fsync(fh.fileno())
    meta = {"format_version": FORMAT_VERSION, "generation": folder.name,
            "catalog_kind": "feed" if content.product_records is not None else "folders", **meta,
            "attributes": fields, "lexical": {"language": content.lexical_language},
            "products": len(names), "images": int(starts[-1]), **(extra(folder) if extra else {})}
    # Readers hold a generation through this file (search/index_guard.py): it exists before any
    # reader can learn the generation's name, so every reader of it can be seen.
    with open(folder / READERS_FILE, "wb") as fh:
        os.fsync(fh.fileno())
    sync_folder(folder)
    return meta


def ann_file_name(kind: str) -> str:
    """The approximate index's file name inside a generation folder (meta.json's ann.file)."""
    return f"ann-{kind}.faiss"


def replace_file(path: Path, write) -> None:
    """Write a file atomically: `write(staged)` writes it beside `path` (a hidden name unique to
    this call), then it is synced and one rename puts it in place, so a reader sees the old file
    or the new one, never a part. Call it holding the folder's writer_lock."""
    path = Path(path)
    staged = staged_path(path)
    try:
        write(staged)
        with open(staged, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(staged, path)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    sync_folder(path.parent)


def new_generation_name() -> str:
    """A generation folder name that sorts by time and never repeats."""
    return f"gen-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{time.time_ns() % 10**9:09d}-{uuid.uuid4().hex[:4]}"


def write_meta(index_dir: Path, meta: dict) -> None:
    """Replace meta.json atomically (replace_file: written and synced beside it under a name
    unique to this call, renamed over it, the folder synced). Call it holding the writer_lock."""
    replace_file(Path(index_dir) / "meta.json", lambda staged: staged.write_text(json.dumps(meta, indent=1)))


def read_meta(index_dir: Path) -> dict | None:
    """An index folder's meta.json as written (no checks), or None where there is none yet."""
    path = Path(index_dir) / "meta.json"
    return json.loads(path.read_text()) if path.is_file() else None


class GenerationChanged(Exception):
    """meta.json names another generation than the one a change was made for (a build switched
    the index meanwhile): nothing was changed."""


def update_meta(index_dir: Path, *, expect_generation: str | None = None, **changes) -> dict:
    """Change top-level meta.json entries of an index atomically, under its writer_lock. With
    `expect_generation` (compare-and-set), only while meta.json still names that generation:
    GenerationChanged otherwise, and meta.json is left as it is."""
    with writer_lock(index_dir, "update_meta"):
        current = json.loads((Path(index_dir) / "meta.json").read_text())
        if expect_generation is not None and current.get("generation") != expect_generation:
            raise GenerationChanged(
                f"the index at {index_dir} is now generation {current.get('generation')}, not {expect_generation} "
                f"that this change was made for (a build replaced it meanwhile); meta.json was left as it is: "
                f"run the command again (e.g. `python -m search.index ann --index {index_dir} --ann KIND`)")
        meta = {**current, **changes}
        write_meta(index_dir, meta)
    return meta
