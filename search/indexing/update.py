"""What an --update may keep from the previous index: rows whose image bytes, CLIP weights and
mask settings are unchanged. The index records the bg pipeline's identity in parts (`shared`,
`crop`, `garment`, `product`), so a changed setting re-embeds exactly the images it affects, and
each product's garment classes, so a vocabulary change re-embeds exactly the products it moves.

At 100k products an --update that adds one product must not cost what a build costs, so the
previous index is read as arrays (its rows are copied into the new generation in one gather, not
one Python object per image), its digests are trusted where a file's stat is the one recorded
with it (`STAT_ARRAY`), its garment choices are kept where the product's text and the chooser
are unchanged, and the near-duplicate report compares only the images this update embedded
(`duplicates_of`) instead of every pair of the catalog."""
from __future__ import annotations

import hashlib
import logging
import mmap
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from search.index_format import CLASS_SOURCES, SOURCES, Index, IndexLoadError, bits_classes
from search.indexing.catalog import NO_STAT, CatalogImage
from search.indexing.report import BuildReport
from search.string_table import StringTable
from shared.garment_vocabulary import GarmentChoice

log = logging.getLogger("fashion.index")

# A generation's file beside the builder-only arrays (written through write_index's `extra`):
# [images, 4] int64, each image row's file stat when its digest was taken, as
# search.indexing.catalog.file_stat gives it (size, mtime_ns, ctime_ns, inode; -1s: never trust
# it, hash the file again). Absent in older indexes: their first --update hashes every file.
STAT_ARRAY = "image_stat"


def identity_changes(old, new, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two identity dicts, with both values."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [change for key in sorted(set(old) | set(new))
                for change in identity_changes(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


def all_strings(table: StringTable) -> list[str]:
    """Every string of a table, decoded from one copy of its blob (not one array slice each)."""
    raw, ends = bytes(np.asarray(table.blob)), np.asarray(table.offsets).tolist()
    return [raw[a:b].decode("utf-8") for a, b in zip(ends[:-1], ends[1:])]


def chooser_fingerprint(vocabulary, feed: bool) -> str:
    """What a product's garment choice depends on besides its text: the vocabulary's content and
    the code that chooses (shared/garment_vocabulary.py, and for feeds feed_catalog.py's
    field order). An --update keeps the previous choices only under the same fingerprint."""
    from search.indexing import feed_catalog
    from shared import garment_vocabulary

    digest = hashlib.sha256(str(vocabulary.sha256).encode())
    for module in (garment_vocabulary, *((feed_catalog,) if feed else ())):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()


def write_stats(folder: Path, stats: np.ndarray) -> None:
    """STAT_ARRAY into a generation folder before the switch (fsynced like write_index's arrays)."""
    with open(folder / f"{STAT_ARRAY}.npy", "wb") as fh:
        np.save(fh, np.ascontiguousarray(stats, np.int64), allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())


def image_stats(images: Sequence[CatalogImage]) -> np.ndarray:
    """[images, 4] int64: each image's file stat as scanned (STAT_ARRAY's rows)."""
    return np.array([im.stat for im in images], np.int64).reshape(-1, 4)


READ_CHUNK = 64 * 2**20  # bytes per read when gathering rows from a previous generation's file


def _whole_file_array(array: np.ndarray) -> tuple[str | None, int]:
    """(file, data offset) of a whole memory-mapped .npy array (np.load(mmap_mode=...)); (None, 0)
    for anything else, e.g. a slice of one (which carries its parent's offset)."""
    filename, offset, region = getattr(array, "filename", None), getattr(array, "offset", None), getattr(array, "_mmap", None)
    if filename is None or offset is None or region is None:
        return None, 0
    try:
        start = array.ctypes.data - np.frombuffer(region, np.uint8).ctypes.data
    except (TypeError, ValueError):
        return None, 0
    whole = start == offset % mmap.ALLOCATIONGRANULARITY and offset + array.nbytes == os.path.getsize(filename)
    return (filename, offset) if whole else (None, 0)


def gather_rows(source: np.ndarray, rows: np.ndarray, out: np.ndarray, positions: np.ndarray) -> None:
    """out[positions] = source[rows]. For a memory-mapped .npy (a previous generation's array),
    each run of consecutive rows is one sequential read of the file into `out`: on a cold page
    cache that is the disk's sequential rate, not a page fault per row (which measured 5-45 s for
    the 1 GB image matrix of 100k products, against ~1 s read this way)."""
    rows, positions = np.asarray(rows, np.int64), np.asarray(positions, np.int64)
    filename, offset = _whole_file_array(source)
    if (not len(rows) or filename is None or source.dtype != out.dtype
            or not (source.flags.c_contiguous and out.flags.c_contiguous) or source.shape[1:] != out.shape[1:]):
        if len(rows):
            out[positions] = np.asarray(source)[rows]
        return
    row_bytes = source.strides[0]
    breaks = np.flatnonzero((np.diff(rows) != 1) | (np.diff(positions) != 1)) + 1
    firsts, lasts = np.concatenate([[0], breaks]).tolist(), np.concatenate([breaks, [len(rows)]]).tolist()
    flat = out.reshape(out.shape[0], -1).view(np.uint8)
    with open(filename, "rb", buffering=0) as fh:
        for first, last in zip(firsts, lasts):
            target = memoryview(flat[positions[first]:positions[first] + last - first]).cast("B")
            fh.seek(offset + int(rows[first]) * row_bytes)
            done = 0
            while done < len(target):
                got = fh.readinto(target[done:done + READ_CHUNK])
                if not got:
                    raise OSError(f"{filename} ended early (truncated generation?)")
                done += got


@dataclass
class Reusable:
    """What an --update may keep from the previous index, by its image rows."""

    index: Index | None = None  # the previous index (for building), None on a full build
    row_of: dict[str, int] = field(default_factory=dict)  # relpath -> its image row
    sha: list[str] = field(default_factory=list)  # per previous row: its sha256 (hex)
    stats: np.ndarray | None = None  # per previous row: STAT_ARRAY, None for an index without it
    stale: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # per row: its mask settings changed
    classes: dict[str, tuple[str, ...]] = field(default_factory=dict)  # product -> the classes its masks kept
    product_of: dict[str, int] = field(default_factory=dict)  # product key -> its previous product row
    row_bits: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))  # per row: its product's class bits
    same_chooser: bool = False  # choices made under the same vocabulary and code (chooser_fingerprint)
    # relpath -> (sha256, reason, stat) of the images skipped before (no garment, unreadable)
    skipped: dict[str, tuple[str, str, tuple]] = field(default_factory=dict)
    _choices: list | None = None  # per previous product: its GarmentChoice (made once, shared)

    def rows(self, images: Sequence[CatalogImage]) -> np.ndarray:
        """Each image's row in the previous index (same relpath), -1 where it had none."""
        row_of = self.row_of
        return np.fromiter((row_of.get(im.relpath, -1) for im in images), np.int64, len(images))

    def take_digests(self, images: Sequence[CatalogImage], rows: np.ndarray, stats: np.ndarray) -> int:
        """Give each image without a sha256 the previous index's, where its file's stat (`stats`,
        image_stats order) is the one recorded with it; returns how many. The others are left
        for catalog.fill_digests to hash."""
        taken = 0
        if self.skipped:  # images without a row: skipped before, their digest is in the skip list
            for i in np.flatnonzero(rows < 0).tolist():
                im = images[i]
                known = self.skipped.get(im.relpath)
                if known is not None and not im.sha256 and im.stat != NO_STAT and known[2] == im.stat:
                    im.sha256 = known[0]
                    taken += 1
        if self.stats is None or not len(images):
            return taken
        known = rows >= 0
        same = known.copy()
        same[known] = (np.asarray(self.stats)[rows[known]] == stats[known]).all(axis=1)
        same &= stats[:, 1] != NO_STAT[1]
        for i in np.flatnonzero(same).tolist():
            im = images[i]
            if not im.sha256:
                im.sha256 = self.sha[rows[i]]
                taken += 1
        return taken

    def still_right(self, images: Sequence[CatalogImage], rows: np.ndarray, bits: np.ndarray) -> np.ndarray:
        """Per image: whether its previous row (`rows`) is still right: same bytes, mask settings
        unchanged, and its product's garment classes (`bits`, per image) the same."""
        ok = rows >= 0
        if not ok.any():
            return ok
        at = rows[ok]
        ok[ok] = ~self.stale[at] & (self.row_bits[at] == bits[ok])
        sha = self.sha
        for i in np.flatnonzero(ok).tolist():
            if images[i].sha256 != sha[rows[i]]:
                ok[i] = False
        return ok

    def skipped_again(self, im: CatalogImage) -> str | None:
        """Why this image was skipped before, when skipping it again is certain: same bytes, same
        bg pipeline, same garment classes (no garment, unreadable). None: try it."""
        known = self.skipped.get(im.relpath)
        if known is None or known[0] != im.sha256 or self.classes.get(im.product, im.classes) != im.classes:
            return None
        return known[1]

    def previous_sha(self, relpath: str) -> str | None:
        row = self.row_of.get(relpath)
        return None if row is None else self.sha[row]

    def choice(self, product: str, record: dict | None = None) -> GarmentChoice | None:
        """The previous index's garment choice for this product when it would be chosen again the
        same way: same chooser, and (a feed) the same choosing fields."""
        from search.indexing.feed_catalog import CHOOSING_FIELDS

        row = self.product_of.get(product)
        if row is None or not self.same_chooser or self._choices is None:
            return None
        if record is not None:
            old = self.index.product_record(row)
            if any(old.get(f) != record.get(f) for f in CHOOSING_FIELDS):
                return None
        return self._choices[row]


def reusable_rows(out: Path, identity: dict, garment_id: dict, report: BuildReport,
                  chooser: str | None = None) -> Reusable:
    """Rows of the previous index that are still right: same image bytes, same CLIP weights, and
    unchanged settings for the part of the bg pipeline that made the image's mask. `shared` and
    `crop` settings affect every image; `garment` only images where a person's garment was cut
    out; `product` only flat-lays (the salient-object fallback). `chooser` (chooser_fingerprint)
    lets the previous garment choices be kept where it is the one the index recorded."""
    reusable = Reusable()
    try:
        old = Index.load(out, for_building=True)
        old.check_compatible(identity)
    except IndexLoadError as exc:
        log.warning("--update: existing index not reusable (%s); embedding everything", exc)
        return reusable
    reusable.index = old
    old_garment = old.meta.get("garment_pipeline") or {}
    report.pipeline_changes = identity_changes(old_garment, garment_id)
    changed_parts = {part for part in set(old_garment) | set(garment_id)
                     if old_garment.get(part) != garment_id.get(part)}
    if report.pipeline_changes:
        log.warning("--update: background-removal pipeline changed (%s); re-embedding the images it affects",
                    "; ".join(report.pipeline_changes))
    names = all_strings(old.products)
    files = all_strings(old.image_files)
    product_of_row = np.repeat(np.arange(len(names)), np.asarray(old.counts))
    reusable.row_of = {f"{names[p]}/{f}": row for row, (p, f) in enumerate(zip(product_of_row.tolist(), files))}
    hexed = np.asarray(old.builder["image_sha256"]).tobytes().hex()
    reusable.sha = [hexed[i:i + 64] for i in range(0, len(hexed), 64)]
    sources = np.asarray(old.builder["image_sources"])
    stale_codes = [code for code, source in enumerate(SOURCES)
                   if changed_parts & {"shared", "crop", source} or source not in garment_id]
    reusable.stale = np.isin(sources, stale_codes)
    stats_path = old.generation_dir / f"{STAT_ARRAY}.npy"
    if stats_path.is_file():
        stats = np.load(stats_path, mmap_mode="r", allow_pickle=False)
        if stats.shape == (len(files), 4) and stats.dtype == np.int64:
            reusable.stats = np.asarray(stats)
    reusable.product_of = {name: p for p, name in enumerate(names)}
    if old.garment_arrays is None:  # built before product-only masks: every product kept all classes
        bits = np.full(len(names), 7, np.uint8)
    else:
        bits = np.asarray(old.garment_arrays["product_classes"])
        garments = all_strings(StringTable(old.garment_arrays["product_garments.utf8"],
                                           old.garment_arrays["product_garments.offsets"]))
        made: dict[tuple, GarmentChoice] = {}  # a few distinct choices, shared by many products
        reusable._choices = [
            made.get(key) or made.setdefault(key, GarmentChoice(bits_classes(key[0]), CLASS_SOURCES[key[1]],
                                                                key[2] or None))
            for key in zip(bits.tolist(), np.asarray(old.garment_arrays["product_class_sources"]).tolist(), garments)]
    by_bits = {b: bits_classes(b) for b in range(8)}
    reusable.classes = {name: by_bits[b] for name, b in zip(names, bits.tolist())}
    reusable.row_bits = bits[product_of_row]
    if not report.pipeline_changes:  # another pipeline may find a garment where this one found none
        reusable.skipped = {entry["image"]: (entry["sha256"], entry["reason"], tuple(entry.get("stat") or NO_STAT))
                            for entry in old.meta.get("skipped", []) if entry.get("sha256") and entry.get("image")}
    recorded = (old.meta.get("garment_vocabulary") or {}).get("chooser")
    reusable.same_chooser = chooser is not None and recorded == chooser
    return reusable


def duplicates_of(rows: Sequence[int], products: Sequence[str], counts: Sequence[int], embeddings: np.ndarray,
                  thumbs: np.ndarray, threshold: float | None, pixel_threshold: float = 0.98, top_k: int = 16,
                  max_block_bytes: int = 256 * 2**20) -> list[dict]:
    """search.indexing.duplicates.find_duplicates' report, restricted to the image pairs that hold
    at least one of `rows` (the images an --update embedded): the others were compared when they
    were embedded. Costs len(rows) x images dot products instead of images^2 / 2. Each of `rows`
    keeps at most `top_k` partners in other products, the most similar first; same entries,
    same order (most image pairs first, then by product index)."""
    rows = np.unique(np.asarray(rows, np.int64))
    counts_arr = np.asarray(counts, np.int64)
    n = int(counts_arr.sum())
    if not len(rows) or n < 2:
        return []
    product_of = np.repeat(np.arange(len(counts_arr), dtype=np.int64), counts_arr)
    is_changed = np.zeros(n, bool)
    is_changed[rows] = True
    block = max(1, max_block_bytes // (n * 4 * (2 if threshold is not None else 1)))
    found_a, found_b, found_emb, found_pix = [], [], [], []
    for first in range(0, len(rows), block):
        part = rows[first:first + block]
        pix = np.asarray(thumbs[part], np.float32) @ np.asarray(thumbs, np.float32).T
        score = pix
        mask = pix >= pixel_threshold
        emb = None
        if threshold is not None:
            emb = np.asarray(embeddings[part], np.float32) @ np.asarray(embeddings, np.float32).T
            mask |= emb >= threshold
            score = np.maximum(pix, emb)
        mask &= product_of[None, :] != product_of[part][:, None]  # pairs within one product never count
        # a pair of two changed images is kept once: from its lower row
        mask &= ~is_changed[None, :] | (np.arange(n)[None, :] > part[:, None])
        for i in np.flatnonzero(mask.sum(axis=1) > top_k):
            cols = np.flatnonzero(mask[i])
            keep = cols[np.argsort(-score[i, cols], kind="stable")[:top_k]]
            mask[i] = False
            mask[i, keep] = True
        li, lj = np.nonzero(mask)
        if len(li):
            a, b = part[li], lj
            found_a.append(np.minimum(a, b))
            found_b.append(np.maximum(a, b))
            found_pix.append(pix[li, lj])
            found_emb.append(emb[li, lj] if emb is not None else
                             np.einsum("ij,ij->i", np.asarray(embeddings[a]), np.asarray(embeddings[b])))
    if not found_a:
        return []
    pa, pb = product_of[np.concatenate(found_a)], product_of[np.concatenate(found_b)]
    uniq, inverse = np.unique(pa * len(counts_arr) + pb, return_inverse=True)
    n_pairs = np.bincount(inverse, minlength=len(uniq))
    max_emb, max_pix = np.zeros(len(uniq)), np.zeros(len(uniq))
    np.maximum.at(max_emb, inverse, np.concatenate(found_emb).astype(np.float64))
    np.maximum.at(max_pix, inverse, np.concatenate(found_pix).astype(np.float64))
    result = []
    for k, key in enumerate(uniq.tolist()):
        ia, ib = divmod(key, len(counts_arr))
        result.append({"products": [products[ia], products[ib]], "image_pairs": int(n_pairs[k]),
                       "images": [int(counts_arr[ia]), int(counts_arr[ib])],
                       "max_embedding_cosine": round(float(max_emb[k]), 4),
                       "max_pixel_similarity": round(float(max_pix[k]), 4)})
    return sorted(result, key=lambda e: -e["image_pairs"])

