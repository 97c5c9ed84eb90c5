"""The catalog folder: one folder per product (folder name = product name), any number of
jpg/png/webp images inside. Scanned in a stable order, each image with its sha256. A feed's
images (search/indexing/feed_catalog.py) are CatalogImages too, each with its local file."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from shared.errors import ProblemError
from shared.garment_vocabulary import GARMENT_CLASSES
from shared.images import DecodedImage, decode_image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


@dataclass
class CatalogImage:
    product: str
    file: str
    sha256: str
    classes: tuple[str, ...] = GARMENT_CLASSES  # the product's garment classes (from its text)
    path: str = ""  # a feed's image: its local file (downloaded or the feed's); "" = <catalog>/<product>/<file>

    @property
    def relpath(self) -> str:
        return f"{self.product}/{self.file}"

    def local_file(self, catalog: Path) -> Path:
        return Path(self.path) if self.path else catalog / self.product / self.file


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


def decode_catalog_image(catalog: Path, im: CatalogImage, max_side: int) -> DecodedImage | str:
    """The photo decoded straight to the working size, or why it is unusable."""
    try:
        return decode_image(im.local_file(catalog).read_bytes(), max_side=max_side)
    except ProblemError as exc:  # the image itself is unusable: skip it, say why
        return f"unreadable: {exc.detail}"


def decode_batch(catalog: Path, batch: list[CatalogImage], max_side: int) -> list[DecodedImage | str]:
    return [decode_catalog_image(catalog, im, max_side) for im in batch]
