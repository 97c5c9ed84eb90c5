"""Evaluate the pipeline on street photos with pixel labels (the CCP subset in ../shared/data/ccp).

    python -m bgremoval.evaluate --data ../shared/data/ccp [--limit N] [--out eval_out/bg]

Three measurements, each with whatever weights are installed (U2NET_HOME, BG_*_MODEL):
  garment IoU      full pipeline mask vs the garment classes below (needs the cloth model)
  product IoU      the photo's largest labelled garment taken as the product: the mask that keeps
                   only its classes (chosen from its label's name by the garment vocabulary, as a
                   product name would choose them) vs that garment's pixels, beside the mask that
                   keeps every garment; and how much of the OTHER garments each keeps
  main-person IoU  person step alone vs every labelled pixel, with and without the
                   keep-the-main-person step (needs only the person model)
Prints a per-image table and the overall figures, and saves side-by-side pictures of the worst
cases (photo | truth | prediction | output) into --out.
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from bgremoval.config import MAIN_PERSON_RULES, BgConfig
from bgremoval.models import CLOTH_INPUTS, MATTE_INPUTS, MissingWeights, Models, open_session
from bgremoval.pipeline import GarmentPipeline, NoGarmentFound, composite, main_person
from shared.garment_vocabulary import Vocabulary
from shared.settings import exit_on_bad_settings

# Clothing worn on the body. Everything else is not garment: null (background), skin, hair,
# footwear, legwear (socks, stockings, tights), bags and accessories (belt, scarf, hat, glasses,
# jewellery, watch, tie, gloves...). Names as in the dataset's classes.tsv.
GARMENT_CLASS_NAMES = frozenset({
    "blazer", "blouse", "bodysuit", "bra", "cape", "cardigan", "coat", "dress", "hoodie",
    "intimate", "jacket", "jeans", "jumper", "leggings", "panties", "pants", "romper", "shirt",
    "shorts", "skirt", "suit", "sweater", "sweatshirt", "swimwear", "t-shirt", "top", "vest",
})
BACKGROUND_CLASS = "null"


def read_classes(data: Path) -> dict[int, str]:
    with open(data / "classes.tsv", newline="") as fh:
        return {int(row["index"]): row["name"] for row in csv.DictReader(fh, delimiter="\t")}


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    union = np.logical_or(pred, truth).sum()
    return float(np.logical_and(pred, truth).sum() / union) if union else 1.0


@dataclass
class Row:
    image: str
    garment_iou: float | None = None
    person_iou_main: float | None = None
    person_iou_all: float | None = None
    person_iou_by_rule: dict = field(default_factory=dict)  # every BG_MAIN_PERSON_RULE, to compare
    product: str | None = None  # the largest labelled garment the vocabulary names, as the product
    product_classes: tuple[str, ...] = ()
    product_fallback: bool = False  # its classes found no garment: all were kept
    product_iou: float | None = None  # product-only mask vs the product's pixels
    product_iou_all: float | None = None  # every-garment mask vs the product's pixels
    others_kept: float | None = None  # share of the other garments' pixels the product-only mask keeps
    others_kept_all: float | None = None  # ... that the every-garment mask keeps
    note: str = ""


def main_product(labels: np.ndarray, classes: dict[int, str], garment_ids: list[int],
                 vocabulary: Vocabulary) -> int | None:
    """The label index of the photo's largest garment whose name the vocabulary knows."""
    areas = np.bincount(labels.ravel(), minlength=max(classes) + 1)
    named = [i for i in garment_ids if areas[i] and vocabulary.choose(classes[i]).source == "product"]
    return max(named, key=lambda i: areas[i]) if named else None


def kept_share(mask: np.ndarray, pixels: np.ndarray) -> float | None:
    return float((mask & pixels).sum() / pixels.sum()) if pixels.any() else None


def _optional(name: str, specs, config: BgConfig):
    try:
        return open_session(name, specs, config)
    except MissingWeights as exc:
        print(f"note: {exc}", file=sys.stderr)
        return None


def side_by_side(photo: Image.Image, truth: np.ndarray, pred: np.ndarray, out: Image.Image) -> Image.Image:
    tiles = [photo, Image.fromarray(truth.astype(np.uint8) * 255).convert("RGB"),
             Image.fromarray(pred.astype(np.uint8) * 255).convert("RGB"), out]
    w, h = photo.size
    canvas = Image.new("RGB", (w * len(tiles), h))
    for i, tile in enumerate(tiles):
        canvas.paste(tile, (i * w, 0))
    return canvas.resize((canvas.width // 2, canvas.height // 2))


def evaluate(data: Path, out_dir: Path, limit: int | None, worst: int) -> list[Row]:
    config = exit_on_bad_settings(BgConfig.from_env)
    person = open_session(config.models.person, MATTE_INPUTS, config)  # required
    cloth = _optional(config.models.cloth, CLOTH_INPUTS, config)
    product = _optional(config.models.product, MATTE_INPUTS, config)
    pipeline = GarmentPipeline(Models(person=person, cloth=cloth, product=product), config.pipeline)
    if cloth is None:
        print("garment IoU skipped: no clothing-segmentation weights installed", file=sys.stderr)

    classes = read_classes(data)
    vocabulary = Vocabulary.load(config.vocabulary_path)
    garment_ids = [i for i, n in classes.items() if n in GARMENT_CLASS_NAMES]
    unnamed = sorted(classes[i] for i in garment_ids if vocabulary.choose(classes[i]).source != "product")
    background_id = next(i for i, n in classes.items() if n == BACKGROUND_CLASS)
    images = sorted((data / "images").glob("*.jpg"))[:limit]
    rows: list[Row] = []
    pictures: dict[str, tuple] = {}
    started = time.perf_counter()
    for path in tqdm(images, desc="evaluating", unit="img"):
        photo = Image.open(path).convert("RGB")
        labels = np.asarray(Image.open(data / "labels" / f"{path.stem}.png"))
        row = Row(path.stem)
        person_truth = labels != background_id
        everyone = pipeline.person_mask(photo)
        row.person_iou_all = iou(everyone, person_truth)
        row.person_iou_by_rule = {rule: iou(main_person(everyone, rule) if everyone.any() else everyone, person_truth)
                                  for rule in MAIN_PERSON_RULES}
        row.person_iou_main = row.person_iou_by_rule[config.pipeline.main_person_rule]
        if cloth is not None:
            garment_truth = np.isin(labels, garment_ids)
            try:
                mask = pipeline.garment_mask(photo).mask > 127
            except NoGarmentFound as exc:
                mask, row.note = np.zeros_like(garment_truth), exc.detail
            row.garment_iou = iou(mask, garment_truth)
            pictures[path.stem] = (photo, garment_truth, mask)
            product_label = main_product(labels, classes, garment_ids, vocabulary)
            if product_label is not None:
                row.product, truth = classes[product_label], labels == product_label
                row.product_classes = vocabulary.choose(row.product).classes
                try:
                    chosen = pipeline.garment_mask(photo, row.product_classes, fallback=True)
                    row.product_fallback, chosen = chosen.fallback, chosen.mask > 127
                except NoGarmentFound:
                    chosen = np.zeros_like(truth)
                others = garment_truth & ~truth
                row.product_iou, row.product_iou_all = iou(chosen, truth), iou(mask, truth)
                row.others_kept, row.others_kept_all = kept_share(chosen, others), kept_share(mask, others)
        rows.append(row)
    elapsed = time.perf_counter() - started

    print_table(rows)
    print(f"\n{len(rows)} images in {elapsed:.1f} s ({elapsed / max(len(rows), 1):.2f} s/image); "
          f"models: person={person.name}, cloth={cloth.name if cloth else '-'}, "
          f"product={product.name if product else '-'}")
    print_products(rows, unnamed)
    if pictures:
        out_dir.mkdir(parents=True, exist_ok=True)
        ranked = sorted((r for r in rows if r.garment_iou is not None), key=lambda r: r.garment_iou)
        for r in ranked[:worst]:
            photo, truth, mask = pictures[r.image]
            picture = side_by_side(photo, truth, mask,
                                   composite(photo, Image.fromarray(mask.astype(np.uint8) * 255, "L"), (0, 0, 0)))
            picture.save(out_dir / f"worst_{r.garment_iou:.3f}_{r.image}.jpg", quality=90)
        print(f"worst {min(worst, len(ranked))} cases saved to {out_dir}/ (photo | truth | prediction | output)")
    return rows


def _mean(values) -> str:
    values = [v for v in values if v is not None]
    return f"{np.mean(values):.4f}" if values else "-"


def print_table(rows: list[Row]) -> None:
    fmt = lambda v: "-" if v is None else f"{v:.3f}"
    print(f"{'image':<8} {'garment_iou':>11} {'person_main':>11} {'person_all':>10}  note")
    for r in rows:
        print(f"{r.image:<8} {fmt(r.garment_iou):>11} {fmt(r.person_iou_main):>11} "
              f"{fmt(r.person_iou_all):>10}  {r.note}")
    print(f"{'MEAN':<8} {_mean(r.garment_iou for r in rows):>11} {_mean(r.person_iou_main for r in rows):>11} "
          f"{_mean(r.person_iou_all for r in rows):>10}")
    changed = [r for r in rows if r.person_iou_main is not None and abs(r.person_iou_main - r.person_iou_all) > 1e-6]
    better = sum(r.person_iou_main > r.person_iou_all for r in changed)
    print(f"keep-main-person changed {len(changed)} of {len(rows)} images: {better} better, "
          f"{len(changed) - better} worse")
    by_rule = [r.person_iou_by_rule for r in rows if r.person_iou_by_rule]
    if by_rule:
        means = ", ".join(f"{rule} {np.mean([b[rule] for b in by_rule]):.4f}" for rule in MAIN_PERSON_RULES)
        central, largest = (np.array([b[rule] for b in by_rule]) for rule in ("central", "largest"))
        print(f"main-person IoU by BG_MAIN_PERSON_RULE: {means}; largest beats central on "
              f"{int((largest > central + 1e-6).sum())} images, loses on {int((largest < central - 1e-6).sum())}")


def print_products(rows: list[Row], unnamed: list[str]) -> None:
    """Product-only masks against keeping every garment, over the photos with a named product."""
    scored = [r for r in rows if r.product_iou is not None]
    if not scored:
        return
    both = [r for r in scored if r.others_kept is not None]
    better = sum(r.product_iou > r.product_iou_all + 1e-6 for r in scored)
    worse = sum(r.product_iou < r.product_iou_all - 1e-6 for r in scored)
    print(f"product only ({len(scored)} photos, the largest labelled garment as the product, its classes from the "
          f"vocabulary): product IoU {_mean(r.product_iou for r in scored)} vs "
          f"{_mean(r.product_iou_all for r in scored)} keeping every garment ({better} better, {worse} worse); "
          f"other garments kept {_mean(r.others_kept for r in both)} vs {_mean(r.others_kept_all for r in both)} "
          f"({len(both)} photos with other garments); fell back to all garments on "
          f"{sum(r.product_fallback for r in scored)}")
    if unnamed:
        print(f"garment labels the vocabulary names no garment for (never taken as the product): {', '.join(unnamed)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder with images/, labels/, classes.tsv")
    parser.add_argument("--out", type=Path, default=Path("eval_out/bg"), help="where worst cases are saved")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    parser.add_argument("--worst", type=int, default=8, help="how many worst cases to save")
    args = parser.parse_args(argv)
    if not (args.data / "images").is_dir():
        print(f"{args.data}/images not found", file=sys.stderr)
        return 2
    evaluate(args.data, args.out, args.limit, args.worst)
    return 0


if __name__ == "__main__":
    sys.exit(main())
