"""What a build reports (BuildReport, printed by the CLI) and the index's garment-class summary
(`python -m search.index info`), counted from the index's own arrays."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from search.index_format import Index
from search.indexing.remote_images import DownloadReport
from shared.garment_vocabulary import GarmentChoice


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
    bad_rows: list[str] = field(default_factory=list)  # a feed's rows --max-bad-rows let through, with reasons
    downloads: DownloadReport | None = None  # a feed's URL images: fetched, not modified, bytes


def print_report(report: BuildReport, out: Path) -> None:
    print(f"indexed {report.embedded + report.reused} of {report.images} images into {out} "
          f"({report.embedded} embedded, {report.reused} reused) in {report.seconds:.1f} s"
          + (f", {report.embedded / report.seconds:.2f} images/s" if report.embedded else ""))
    if report.downloads is not None:
        d = report.downloads
        print(f"feed images: {d.bodies} downloaded ({d.bytes / 1e6:.1f} MB), {d.not_modified} unchanged "
              f"(cache, no body), {len(d.skipped)} skipped")
    for line in report.bad_rows:
        print(f"bad row (skipped, --max-bad-rows): {line}")
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
