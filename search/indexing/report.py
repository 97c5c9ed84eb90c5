"""What a build reports (BuildReport, printed by the CLI) and the index's garment-class summary
(`python -m search.index info`), counted from the index's own arrays."""
from __future__ import annotations

import gc
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from search.index_format import CLASS_SOURCES, Index, bits_classes
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
    skipped_again: int = 0  # images an --update did not try again: skipped before, same bytes, pipeline, classes
    hashed: int = 0  # image files read and hashed (an --update trusts the digests of files whose stat is unchanged)
    stages: dict[str, float] = field(default_factory=dict)  # seconds per build stage (Stages), in order
    duplicates_scope: str = "all"  # "embedded": an --update compared only the images it embedded
    switched_at: float | None = None  # time.time() when meta.json named the new generation


class Stages:
    """Seconds per build stage, added up into a dict: `with stages("scan"): ...`; `timing(obj,
    method, name)` wraps one method of a model object so its calls count as stage `name`.

    `bookkeeping=True`: the cyclic garbage collector is off during the stage. The builder's
    bookkeeping makes an object or two per image (a CatalogImage, its relpath, rows) that hold
    no cycles, and with the models loaded every full collection walks ~1M objects: a
    100k-product scan took 4.3 s with it, 3.4 s without."""

    def __init__(self, seconds: dict[str, float]):
        self.seconds = seconds

    @contextmanager
    def __call__(self, name: str, *, bookkeeping: bool = False):
        collecting = gc.isenabled()
        if bookkeeping:
            gc.disable()
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started
            if bookkeeping and collecting:
                gc.enable()

    def timing(self, target, method: str, name: str):
        return _Timed(target, method, self, name)


class _Timed:
    """`target` with its `method` timed into a stage; every other attribute is the target's."""

    def __init__(self, target, method: str, stages: Stages, name: str):
        self._target, self._method, self._stages, self._name = target, method, stages, name

    def __getattr__(self, attribute):
        value = getattr(self._target, attribute)
        if attribute != self._method:
            return value

        def timed(*args, **kwargs):
            with self._stages(self._name):
                return value(*args, **kwargs)

        return timed


STAGE_NAMES = {"scan": "catalog scan", "previous": "previous index", "hash": "hash", "choose": "garment classes",
               "match": "reuse", "models": "garment step + CLIP", "garment": "garment step",
               "embed": "CLIP", "decode": "decode",
               "gather": "previous rows", "assemble": "assemble", "write": "write", "duplicates": "duplicate check"}


def stages_line(report: BuildReport) -> str:
    return "stages: " + ", ".join(f"{STAGE_NAMES.get(name, name)} {seconds:.2f} s"
                                  for name, seconds in report.stages.items())


def print_report(report: BuildReport, out: Path) -> None:
    print(f"indexed {report.embedded + report.reused} of {report.images} images into {out} "
          f"({report.embedded} embedded, {report.reused} reused) in {report.seconds:.1f} s"
          + (f", {report.embedded / report.seconds:.2f} images/s" if report.embedded else ""))
    print(f"{stages_line(report)} ({report.hashed} files hashed"
          + (f", {report.skipped_again} images skipped again without trying" if report.skipped_again else "") + ")")
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
    scope = " (pairs with an image this update embedded)" if report.duplicates_scope == "embedded" else ""
    if report.duplicates:
        print(f"near-duplicate images across products{scope}:")
        for d in report.duplicates:
            a, b = d["products"]
            print(f"  {a} ({d['images'][0]} images)  <->  {b} ({d['images'][1]} images): {d['image_pairs']} image pairs "
                  f"(embedding cosine up to {d['max_embedding_cosine']}, pixels up to {d['max_pixel_similarity']})")
    else:
        print(f"no near-duplicate images across products{scope}")


def garment_summary(index: Index) -> dict:
    """How each product's garment classes were chosen, counted from the index's own arrays."""
    fallbacks = np.asarray(index.image_fallbacks, bool)
    with_fallback = int(np.logical_or.reduceat(fallbacks, np.asarray(index.starts)).sum()) if len(fallbacks) else 0
    if index.garment_arrays is None:
        classes, sources = np.full(len(index.products), 7, np.uint8), np.zeros(len(index.products), np.uint8)
    else:
        classes = np.asarray(index.garment_arrays["product_classes"])
        sources = np.asarray(index.garment_arrays["product_class_sources"])
    chosen = Counter(classes.tolist())
    return {
        "recorded": index.garment_arrays is not None,  # False: built before product-only masks (all classes)
        "products_from_text": int((sources == CLASS_SOURCES.index("product")).sum()),
        "products_all_classes": int((sources == CLASS_SOURCES.index("all")).sum()),
        "products_with_fallback": with_fallback,
        "fallback_images": int(fallbacks.sum()),
        "classes_chosen": {",".join(bits_classes(bits)): n for bits, n in chosen.most_common()},
        "vocabulary": index.meta.get("garment_vocabulary"),
    }


def garment_summary_line(summary: dict) -> str:
    if not summary["recorded"]:
        return "garment classes: not recorded (an index built before product-only masks keeps all classes)"
    return (f"garment classes: {summary['products_from_text']} products from their text, "
            f"{summary['products_all_classes']} with all classes (their text names no garment); "
            f"{summary['fallback_images']} images of {summary['products_with_fallback']} products fell back to "
            "all garments (their classes found none)")
