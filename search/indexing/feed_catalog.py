"""A shop's feed as the builder's catalog: its rows read and checked (feed.py), its URL images
downloaded into the image cache (remote_images.py), its local images hashed, each product's
garment classes chosen from its own text, and its record kept for the index.

Each image becomes a CatalogImage keyed (product = the feed's id, file = the URL as the feed
gave it, or the path relative to the feed's folder), with the local file to decode, so the
rest of the build (and --update's reuse by key and content hash) is the folder catalog's. A
local image's sha256 is left to the builder (catalog.fill_digests: an --update reads only the
files whose stat changed); a URL image's comes from the download cache.

Each product's garment classes are chosen when first asked for (`Choices`): an --update takes
the previous index's choice for a product whose choosing text is unchanged instead.
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from search.index_format import FILTERABLE_TEXT, is_remote
from search.indexing.catalog import CatalogImage, file_stat
from search.indexing.feed import BadRow, FeedProduct, check_bad_rows, load_schema, read_feed
from search.indexing.remote_images import DownloadReport, ImageCache, download_images
from shared.garment_vocabulary import GarmentChoice, Vocabulary

CHOOSING_FIELDS = ("name", "category", "description")  # the first of these that names a garment decides


class Choices(Mapping):
    """id -> the product's GarmentChoice, each chosen from its text when first asked for (choosing
    is ~60 us a product: seconds at 100k), or given by `reuse` (an --update: the previous index's
    choice for the same text and the same vocabulary)."""

    def __init__(self, vocabulary: Vocabulary):
        self.vocabulary = vocabulary
        self._products: dict[str, FeedProduct] = {}
        self._chosen: dict[str, GarmentChoice] = {}

    def add(self, product: FeedProduct) -> None:
        self._products[product.id] = product

    def reuse(self, product_id: str, choice: GarmentChoice) -> None:
        """The choice this product's text is known to give (chosen before from the same text)."""
        if product_id in self._products:
            self._chosen.setdefault(product_id, choice)

    def __getitem__(self, product_id: str) -> GarmentChoice:
        choice = self._chosen.get(product_id)
        if choice is None:
            choice = self._chosen[product_id] = choose_garments(self._products[product_id], self.vocabulary)
        return choice

    def __iter__(self) -> Iterator[str]:
        return iter(self._products)

    def __len__(self) -> int:
        return len(self._products)


@dataclass
class FeedCatalog:
    folder: Path  # the feed's folder: local image paths are relative to it (and served from it)
    images: list[CatalogImage]
    records: dict[str, dict]  # id -> the product's record
    choices: Mapping[str, GarmentChoice]  # id -> its garment classes (Choices: chosen when asked for)
    attribute_types: dict[str, str]  # the filterable fields: the feed's attributes, category, brand
    bad_rows: list[BadRow]
    downloads: DownloadReport
    inferred: set[str] = field(default_factory=set)  # attributes whose type was inferred, not declared
    skipped: list[dict] = field(default_factory=list)  # images: {"image", "reason"}
    warnings: list[str] = field(default_factory=list)


def record(product: FeedProduct) -> dict:
    """What the index keeps of a product (GET /products/<id>): its fields as the feed gave them."""
    fields = {"id": product.id, "name": product.name, "description": product.description,
              "category": product.category, "brand": product.brand, "url": product.url}
    return {**{k: v for k, v in fields.items() if v is not None}, "attributes": dict(product.attributes)}


def choose_garments(product: FeedProduct, vocabulary: Vocabulary) -> GarmentChoice:
    """The product's garment classes from its own text: the name, else the category, else the
    description (a description naming what it is worn with must not overrule the name)."""
    choice = vocabulary.choose(product.name)
    for name in CHOOSING_FIELDS[1:]:
        if choice.source == "product":
            break
        text = getattr(product, name)
        if text:
            choice = vocabulary.choose(text)
    return choice


def load_feed_catalog(feed_path: Path, *, vocabulary: Vocabulary, fetch_policy, cache_dir: Path,
                      schema_path: Path | None = None, max_bad_rows: int = 0, fetch_workers: int = 8,
                      fetch_retries: int = 5, progress: bool = True) -> FeedCatalog:
    """The feed read, checked and its images made local. Raises FeedError (too many bad rows, an
    unreadable feed) or ImageFetchError (a host that keeps failing) before anything is written."""
    feed_path = Path(feed_path)
    feed = read_feed(feed_path, load_schema(schema_path) if schema_path else None)
    check_bad_rows(feed, max_bad_rows, feed_path)
    folder = feed_path.resolve().parent
    urls = [image for product in feed.products for image in product.images if is_remote(image)]
    downloads = download_images(urls, ImageCache(cache_dir), fetch_policy, workers=fetch_workers,
                                retries=fetch_retries, progress=progress) if urls else DownloadReport()
    catalog = FeedCatalog(folder, [], {}, Choices(vocabulary), dict(feed.schema), feed.bad_rows, downloads,
                          set(feed.inferred))
    now_ns = time.time_ns()
    catalog.skipped += [{"image": url, "reason": reason} for url, reason in downloads.skipped.items()]
    for product in sorted(feed.products, key=lambda p: p.id):
        images = []
        for image in dict.fromkeys(product.images):
            if is_remote(image):
                if image in downloads.files:
                    images.append(CatalogImage(product.id, image, downloads.sha256[image],
                                               path=str(downloads.files[image])))
                continue
            relative = os.path.relpath(image, folder)
            if relative.startswith(os.pardir + os.sep) or os.path.isabs(relative):
                catalog.skipped.append({"image": image, "reason": "outside the feed's folder (not served)"})
            elif not os.path.isfile(image):
                catalog.skipped.append({"image": relative, "reason": "no such file"})
            else:  # its sha256: catalog.fill_digests, in the build
                images.append(CatalogImage(product.id, relative, "", path=image, stat=file_stat(os.stat(image), now_ns)))
        if not images:
            catalog.warnings.append(f"{product.id}: no image could be fetched or read (line {product.line}), "
                                    "not indexed")
            continue
        catalog.images += images
        catalog.records[product.id] = record(product)
        catalog.choices.add(product)
    for name in FILTERABLE_TEXT:
        if any(r.get(name) for r in catalog.records.values()):
            catalog.attribute_types[name] = "string"
    return catalog


def describe_types(catalog: FeedCatalog) -> str:
    """One line of the filterable fields and their types, the inferred ones marked."""
    fields = ", ".join(f"{name}: {kind}{' (inferred)' if name in catalog.inferred else ''}"
                       for name, kind in sorted(catalog.attribute_types.items()))
    return (f"feed: {len(catalog.records)} products with images, {len(catalog.bad_rows)} bad rows skipped; "
            f"fields {fields or '(none)'}")
