"""The catalog folder: one folder per product (folder name = product name), any number of
jpg/png/webp images inside. Scanned in a stable order, each image with its file's stat and its
sha256. A feed's images (search/indexing/feed_catalog.py) are CatalogImages too, each with its
local file.

Hashing every image is what an --update of a large catalog would spend its time on, so a scan
can leave the digests out (`digests=False`) and `fill_digests` takes each one from the previous
index where the file's stat is the one recorded with it (size, mtime, ctime, inode: what git's
index compares), reading and hashing only the files that are new or whose stat changed."""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from shared.digests import file_sha256
from shared.errors import ProblemError
from shared.garment_vocabulary import GARMENT_CLASSES
from shared.images import DecodedImage, decode_image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
NO_STAT = (-1, -1, -1, -1)  # a URL image's (the download cache knows its digest), or a stat never to trust
# A file changed within this long before its stat was taken may change again within the same
# timestamp tick after it was hashed ("racy" in git's words): its stat is recorded as untrusted
# (NO_STAT), so the next --update hashes it again.
RACY_NS = 2_000_000_000


@dataclass
class CatalogImage:
    product: str
    file: str
    sha256: str
    classes: tuple[str, ...] = GARMENT_CLASSES  # the product's garment classes (from its text)
    path: str = ""  # a feed's image: its local file (downloaded or the feed's); "" = <catalog>/<product>/<file>
    # (size, mtime_ns, ctime_ns, inode) of its local file when scanned, NO_STAT for none; sha256
    # is "" until fill_digests gives it
    stat: tuple[int, int, int, int] = NO_STAT

    @cached_property
    def relpath(self) -> str:  # product and file never change after the scan
        return f"{self.product}/{self.file}"

    def local_file(self, catalog: Path) -> Path:
        return Path(self.path) if self.path else catalog / self.product / self.file


def file_stat(st: os.stat_result, now_ns: int | None = None) -> tuple[int, int, int, int]:
    """What an --update compares to trust a recorded digest: size, mtime, ctime and inode (a file
    replaced by another, even with its size and mtime kept, has another inode or ctime). A file
    changed within RACY_NS of `now_ns` gets NO_STAT: never trusted."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    if max(st.st_mtime_ns, st.st_ctime_ns) >= now_ns - RACY_NS:
        return NO_STAT
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def scan_catalog(catalog: Path, *, digests: bool = True) -> tuple[list[CatalogImage], list[str]]:
    """Every image of every product folder, in a stable order (by product, then file: the order
    of the index's rows), each with its file's stat, plus warnings for what was skipped.
    `digests=False` leaves each sha256 "" for `fill_digests` (one stat per file, no file read)."""
    if not catalog.is_dir():
        raise FileNotFoundError(f"catalog folder {catalog} does not exist")
    images, warnings = [], []
    now_ns = time.time_ns()
    with os.scandir(catalog) as listing:
        products = sorted((e.name, e) for e in listing if not e.name.startswith("."))
    for name, entry in products:
        if not entry.is_dir():
            warnings.append(f"{name}: not a product folder (files must be inside one), ignored")
            continue
        with os.scandir(entry.path) as listing:
            files = sorted((f.name, f) for f in listing if not f.name.startswith("."))
        for file_name, file in files:
            dot = file_name.rfind(".")
            if dot <= 0 or file_name[dot:].lower() not in IMAGE_SUFFIXES or not file.is_file():
                warnings.append(f"{name}/{file_name}: not an image (jpg/png/webp), ignored")
                continue
            stat = file_stat(file.stat(), now_ns)  # follows a symlink, as reading it does
            images.append(CatalogImage(name, file_name, file_sha256(file.path) if digests else "", stat=stat))
    return images, warnings


def fill_digests(catalog: Path, images: list[CatalogImage]) -> int:
    """Read and hash the file of every image that has no sha256 yet (an --update gave the others
    theirs from the previous index: search/indexing/update.py). Returns how many were hashed."""
    hashed = 0
    for im in images:
        if not im.sha256:
            im.sha256 = file_sha256(im.local_file(catalog))
            hashed += 1
    return hashed


def catalog_fingerprint(images: list[CatalogImage]) -> str:
    return hashlib.sha256("".join(f"{im.relpath}\0{im.sha256}\n" for im in images).encode()).hexdigest()


def decode_catalog_image(catalog: Path, im: CatalogImage, max_side: int) -> DecodedImage | str:
    """The photo decoded straight to the working size, or why it is unusable."""
    try:
        return decode_image(im.local_file(catalog).read_bytes(), max_side=max_side)
    except ProblemError as exc:  # the image itself is unusable: skip it, say why
        return f"unreadable: {exc.detail}"


def decode_batch(catalog: Path, batch: list[CatalogImage], max_side: int) -> list[DecodedImage | str]:
    return [decode_catalog_image(catalog, im, max_side) for im in batch]
