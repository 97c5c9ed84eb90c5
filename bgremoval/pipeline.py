"""Garment-only background removal as a plain Python pipeline (no Flask).

    person matte -> keep the main person -> clothing classes -> garment = classes ∩ person
    (no person: salient-object matte as the product) -> [crop to the garment's box]
    -> composite onto a background colour or a background picture.

Masks are computed at a working resolution of at most `working_max_side` (the networks see
320-1024 px anyway) and scaled up once at the end, so large photos cost little extra.

Memory per photo stays small and proportional to its pixels: everything at full size is 8-bit
(the decoded photo, the output, the upscaled mask: ~9 bytes a pixel at the peak), the composite
works through bands of rows with Pillow's 8-bit blending, and only working-size planes are float.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy import ndimage

from bgremoval.config import PipelineSettings
from bgremoval.models import CLOTH_CLASSES, Models
from shared.errors import Unprocessable
from shared.garment_request import LABEL_CODES, LABEL_PRODUCT
from shared.garment_vocabulary import GARMENT_CLASSES
from shared.images import DecodedImage, flatten_onto_black, garment_box

BAND_PIXELS = 1 << 20  # the composite works on ~1 MP of rows at a time


# What goes behind the garment: an RGB colour, or a function that returns an RGB picture of the
# size it is given. A function because that size is known only once the mask is (crop=garment),
# and so a background image is decoded only when there is a garment to put in front of it.
Background = tuple[int, int, int] | Callable[[tuple[int, int]], Image.Image]


class NoGarmentFound(Unprocessable):
    slug = "no-garment"


@dataclass
class GarmentMask:
    working: np.ndarray  # bool, at the working size (<= working_max_side): True = garment
    size: tuple[int, int]  # (width, height) of the photo it belongs to
    source: str  # "garment" (person found) or "product" (flat-lay fallback)
    classes: tuple[str, ...] = GARMENT_CLASSES  # the classes kept (a flat-lay's matte has none: those asked)
    fallback: bool = False  # the classes asked for found no garment, so all garments were kept
    # uint8 at the working size, with labels=True: 0 outside, else the LABEL_CODES of the mask
    # pixel's most probable class, or LABEL_PRODUCT for a flat-lay's matte (its class is unknown)
    labels: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def full(self) -> Image.Image:
        """The mask at the photo's size, 8-bit ("L": 0 outside, 255 inside, bilinear soft edges
        where it was scaled up): one byte a pixel."""
        plane = Image.fromarray(self.working.astype(np.uint8) * 255, "L")
        return plane if plane.size == self.size else plane.resize(self.size, Image.BILINEAR)

    @property
    def mask(self) -> np.ndarray:
        """`full()` as a uint8 array (for tools and tests; the service uses `full()`)."""
        return np.asarray(self.full())


def working_copy(img: Image.Image, max_side: int) -> Image.Image:
    """The photo at most `max_side` on its longer side (masks are computed at this size)."""
    longest = max(img.size)
    if longest <= max_side:
        return img
    scale = max_side / longest
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.resize(size, Image.BILINEAR)


def resize_plane(plane: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float HxW plane to PIL size (width, height)."""
    if plane.shape[::-1] == tuple(size):
        return plane.astype(np.float32, copy=False)
    return np.asarray(Image.fromarray(plane.astype(np.float32), "F").resize(size, Image.BILINEAR))


def keep_main_component(mask: np.ndarray) -> np.ndarray:
    """The dominant person: largest and most central blob, plus fragments inside its box.

    Fragments (an arm cut off by a bag strap) lie mostly inside the main person's bounding box;
    bystanders do not. One vectorised pass: a photo with hundreds of speckles costs about as
    much as one with a single blob (no per-label work in Python).
    """
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask.copy()
    # Per-label pixel counts and coordinate sums over the foreground pixels only. Integer sums are
    # exact in float64, so for boolean (and integer) masks the centroids, the scores and argmax's
    # tie-breaking are bit-identical to ndimage.center_of_mass. A non-boolean mask weights areas
    # and centroids by its values, as ndimage.sum_labels / center_of_mass do.
    flat = labels.ravel()
    foreground = np.flatnonzero(flat)
    owner = flat[foreground]
    weights = None if mask.dtype == bool else mask.ravel()[foreground].astype(np.float64)
    height, width = mask.shape
    rows, cols = np.divmod(foreground, width)
    if weights is not None:
        rows, cols = rows * weights, cols * weights
    areas = np.bincount(owner, weights, minlength=count + 1)[1:].astype(np.float64)
    centroids = np.stack([np.bincount(owner, rows, minlength=count + 1)[1:],
                          np.bincount(owner, cols, minlength=count + 1)[1:]], axis=1) / areas[:, None]
    centre = np.array([(height - 1) / 2, (width - 1) / 2])
    half_diagonal = np.hypot(height, width) / 2
    offcentre = np.linalg.norm(centroids - centre, axis=1) / half_diagonal
    scores = areas * (1.0 - 0.5 * offcentre)
    main_label = int(np.argmax(scores)) + 1
    box = ndimage.find_objects(labels, max_label=main_label)[main_label - 1]
    in_box = labels[box].ravel()
    box_weights = None if weights is None else mask[box].ravel().astype(np.float64)
    inside = np.bincount(in_box, box_weights, minlength=count + 1)[1:]
    keep = np.zeros(count + 1, bool)  # lookup table by label; 0 (background) is never kept
    keep[1:] = inside >= 0.5 * areas
    keep[main_label] = True
    return keep[labels]


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The biggest blob alone (BG_MAIN_PERSON_RULE=largest); ties go to the lowest label."""
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask.astype(bool)
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    areas[0] = 0
    return labels == int(np.argmax(areas))


def main_person(mask: np.ndarray, rule: str) -> np.ndarray:
    """The main person's pixels of a person mask, by BG_MAIN_PERSON_RULE."""
    return largest_component(mask) if rule == "largest" else keep_main_component(mask)


def dilate(mask: np.ndarray, radius: float) -> np.ndarray:
    if radius <= 0 or not mask.any():
        return mask
    return ndimage.distance_transform_edt(~mask) <= radius


def _settle(future: Future | None) -> None:
    """A speculative run that is no longer needed: cancelled if it has not started, else waited
    for (its own error is the caller's concern only when it uses the result)."""
    if future is not None and not future.cancel():
        wait([future])


class GarmentPipeline:
    """Turns an RGB photo into a garment mask and a garment-only picture."""

    def __init__(self, models: Models, settings: PipelineSettings | None = None):
        self.models = models
        self.settings = settings or PipelineSettings()
        # BG_CONCURRENT_MODELS: the cloth runs here beside the person matte (onnxruntime releases
        # the GIL). Threads start only when used; one per request thread at most.
        self._beside = ThreadPoolExecutor(thread_name_prefix="cloth-beside")

    def identity(self, classes: tuple[str, ...] = GARMENT_CLASSES) -> dict:
        """Everything that decides a mask, grouped by the images it affects: `shared` decides every
        mask (and whether the person or the flat-lay branch makes it), `garment` only masks of a
        person's garment, `product` only flat-lay masks. The indexer stores it to know what an
        --update must re-embed; the service reports it at GET /pipeline."""
        s, m = self.settings, self.models
        return {
            "shared": {"person_model": m.person.identity, "person_threshold": s.person_threshold,
                       "min_person_fraction": s.min_person_fraction, "working_max_side": s.working_max_side},
            "garment": {"cloth_model": m.cloth.identity if m.cloth else None, "classes": list(classes),
                        "garment_threshold": s.garment_threshold, "person_dilation": s.person_dilation,
                        "keep_main_person": s.keep_main_person, "min_garment_fraction": s.min_garment_fraction,
                        # named only when not the rule every earlier index was built with, so an
                        # --update of those does not re-embed masks that did not change
                        **({"main_person_rule": s.main_person_rule} if s.main_person_rule != "central" else {})},
            "product": {"product_model": m.product.identity if m.product else None,
                        "product_threshold": s.person_threshold, "min_garment_fraction": s.min_garment_fraction},
        }

    def _mattes(self, session, images: list[Image.Image]) -> list[np.ndarray]:
        """Each image's matte at its own size, 0..1: one batch through the model."""
        raw = session.mattes(images) if images else []
        return [np.clip(resize_plane(plane, img.size), 0.0, 1.0) for plane, img in zip(raw, images, strict=True)]

    def person_mask(self, img: Image.Image) -> np.ndarray:
        """Boolean person matte at `img`'s size, every person in it (before keeping the main one)."""
        return self._mattes(self.models.person, [img])[0] > self.settings.person_threshold

    def garment_mask(
        self,
        img: Image.Image,
        classes: tuple[str, ...] = GARMENT_CLASSES,
        alpha: np.ndarray | None = None,
        *,
        fallback: bool = False,
        labels: bool = False,
    ) -> GarmentMask:
        """Mask of the garment of `img`, at the working size. `alpha` (the photo's own uint8 alpha,
        when it arrived already cut out) is applied first: transparent parts are black and stay out
        of the mask. `fallback` and `labels` as in garment_masks. Raises NoGarmentFound."""
        result = self.garment_masks([img], classes, [alpha], fallback=fallback, labels=labels)[0]
        if isinstance(result, NoGarmentFound):
            raise result
        return result

    def garment_masks(
        self,
        images: list[Image.Image],
        classes: tuple[str, ...] | list[tuple[str, ...]] = GARMENT_CLASSES,
        alphas: list[np.ndarray | None] | None = None,
        *,
        fallback: bool = False,
        labels: bool = False,
    ) -> list[GarmentMask | NoGarmentFound]:
        """garment_mask for several photos, each model run once on the whole batch (a GPU's
        speed; on onnxruntime's batch-1 graphs the same as one by one). Each photo gets its mask,
        or the NoGarmentFound that says why it has none. The masks equal garment_mask's one by
        one; per-image timings are the batch's stage times divided by the photos in it.

        `classes`: the classes to keep, for every photo or one tuple per photo (an index batch
        mixes products). `fallback`: a photo whose classes find no garment keeps all garments
        instead (marked `fallback`), from the same cloth-model run. `labels`: also label each
        mask pixel with its most probable class (GarmentMask.labels, for a look's garments)."""
        per_image = [tuple(classes)] * len(images) if isinstance(classes, tuple) else [tuple(c) for c in classes]
        if len(per_image) != len(images):
            raise ValueError("classes: one tuple per image, or one tuple for all")
        for chosen in per_image:
            if set(chosen) - set(GARMENT_CLASSES) or not chosen:
                raise ValueError(f"classes must be a non-empty subset of {GARMENT_CLASSES}")
        per_image = [tuple(c for c in GARMENT_CLASSES if c in chosen) for chosen in per_image]
        alphas = alphas or [None] * len(images)
        s = self.settings
        timings: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[stage] = timings.get(stage, 0.0) + now - clock
            clock = now

        # Flattened at full size, then scaled down: a transient full-size copy, only for cut-outs.
        works = [working_copy(flatten_onto_black(img, alpha), s.working_max_side)
                 for img, alpha in zip(images, alphas, strict=True)]
        foregrounds = [None if alpha is None else
                       np.asarray(Image.fromarray(alpha, "L").resize(work.size, Image.BILINEAR)) >= 128
                       for work, alpha in zip(works, alphas, strict=True)]
        lap("working_copy")

        # Every probability plane the batch needs comes from ONE cloth-model run: each distinct
        # class choice, all garments (the fallback), each class alone (labels).
        wanted_sets = list(dict.fromkeys(per_image))
        if fallback and GARMENT_CLASSES not in wanted_sets:
            wanted_sets.append(GARMENT_CLASSES)
        if labels:
            wanted_sets += [(c,) for c in GARMENT_CLASSES if (c,) not in wanted_sets]
        groups = [[CLOTH_CLASSES.index(name) for name in chosen] for chosen in wanted_sets]
        plane_of = {chosen: i for i, chosen in enumerate(wanted_sets)}
        # Speculative: the cloth model needs only the photos, so it can run while the person matte does.
        cloth_ahead = self._beside.submit(self.models.cloth.class_probabilities, works, groups) \
            if s.concurrent_models and self.models.cloth is not None else None
        try:
            persons = [matte > s.person_threshold for matte in self._mattes(self.models.person, works)]
            persons = [person if fg is None else person & fg for person, fg in zip(persons, foregrounds, strict=True)]
            lap("person_matte")

            found = [person.sum() >= s.min_person_fraction * work.width * work.height
                     for person, work in zip(persons, works, strict=True)]
            garment_rows = [i for i, yes in enumerate(found) if yes]
            product_rows = [i for i, yes in enumerate(found) if not yes]

            allowed = {}
            for i in garment_rows:
                main = main_person(persons[i], s.main_person_rule) if s.keep_main_person else persons[i]
                allowed[i] = dilate(main, s.person_dilation * np.hypot(*works[i].size))
            lap("main_person")

            # The classes' probability summed at the model's resolution and resized once: bilinear
            # resizing is linear, so this equals resizing each class first.
            if cloth_ahead is not None:
                planes = cloth_ahead.result()[garment_rows]
            else:
                planes = self.models.cloth.class_probabilities([works[i] for i in garment_rows], groups) \
                    if garment_rows else []
        finally:  # also when the person step raises: no model run outlives its request
            _settle(cloth_ahead)
        results: list[GarmentMask | NoGarmentFound | None] = [None] * len(images)
        for i, plane_set in zip(garment_rows, planes, strict=True):
            area = works[i].width * works[i].height

            def mask_of(chosen: tuple[str, ...]) -> np.ndarray:
                return (resize_plane(plane_set[plane_of[chosen]], works[i].size) > s.garment_threshold) & allowed[i]

            kept, mask = per_image[i], mask_of(per_image[i])
            fell_back = False
            if mask.sum() < s.min_garment_fraction * area and fallback and kept != GARMENT_CLASSES:
                kept, mask, fell_back = GARMENT_CLASSES, mask_of(GARMENT_CLASSES), True
            if mask.sum() < s.min_garment_fraction * area:
                results[i] = NoGarmentFound(f"A person was found but no garment ({', '.join(kept)}) on them.")
                continue
            results[i] = GarmentMask(working=mask, size=images[i].size, source="garment", classes=kept,
                                     fallback=fell_back)
            if labels:
                singles = np.stack([resize_plane(plane_set[plane_of[(c,)]], works[i].size) for c in kept])
                label = np.zeros(mask.shape, np.uint8)
                codes = np.array([LABEL_CODES[c] for c in kept], np.uint8)
                label[mask] = codes[np.argmax(singles[:, mask], axis=0)]
                results[i].labels = label
        lap("cloth_seg")

        for i, product in zip(product_rows, self._product_masks([works[i] for i in product_rows],
                                                                [foregrounds[i] for i in product_rows]),
                              strict=True):
            if isinstance(product, NoGarmentFound):
                results[i] = product
            else:
                results[i] = GarmentMask(working=product, size=images[i].size, source="product",
                                         classes=per_image[i])
                if labels:
                    results[i].labels = np.where(product, LABEL_PRODUCT, 0).astype(np.uint8)
        if product_rows:
            lap("product_matte")

        share = {stage: seconds / len(images) for stage, seconds in timings.items()}
        for i, result in enumerate(results):
            if isinstance(result, GarmentMask):
                # the stages this photo went through (one photo: exactly garment_mask's old timings)
                skipped = ("product_matte",) if found[i] else ("main_person", "cloth_seg")
                result.timings = {k: v for k, v in share.items() if k not in skipped}
        return results

    def _product_masks(self, works: list[Image.Image], foregrounds: list) -> list[np.ndarray | NoGarmentFound]:
        if not works:
            return []
        if self.models.product is None:
            return [NoGarmentFound("No person found, and no product model is installed for flat-lays.")] * len(works)
        results = []
        for work, foreground, matte in zip(works, foregrounds, self._mattes(self.models.product, works), strict=True):
            product = matte > self.settings.person_threshold
            if foreground is not None:
                product &= foreground
            if product.sum() < self.settings.min_garment_fraction * work.width * work.height:
                results.append(NoGarmentFound("No person and no product could be found in the image."))
            else:
                results.append(product)
        return results

    def remove_background(
        self,
        img: Image.Image,
        classes: tuple[str, ...] = GARMENT_CLASSES,
        background: Background = (0, 0, 0),
        alpha: np.ndarray | None = None,
        *,
        mask_as_alpha: bool = False,
        crop: bool = False,
        fallback: bool = False,
    ) -> tuple[Image.Image, GarmentMask]:
        """The garment on a background (a colour, or a picture: see `Background`), and the mask
        used (always at the photo's size). Same size as the photo, or with `crop` the garment's
        box plus a margin (shared.images.garment_box, the crop the search indexer uses). RGB, or
        with `mask_as_alpha` RGBA whose alpha is the mask (for PNG/WebP). `fallback`: all
        garments when `classes` find none (the mask says so)."""
        return self._picture(img, self.garment_mask(img, classes, alpha, fallback=fallback), background, alpha,
                             mask_as_alpha, crop)

    def _picture(self, img: Image.Image, result: GarmentMask, background: Background, alpha, mask_as_alpha: bool,
                 crop: bool = False):
        start = time.perf_counter()
        full_mask = result.full()
        result.timings["mask_upscale"] = time.perf_counter() - start
        if crop:
            # The same box GarmentMask.mask would give, without upscaling the mask a second time.
            box = garment_box(np.asarray(full_mask))
            if box is not None:  # never None past NoGarmentFound's minimum; kept whole if it were
                img, full_mask = img.crop(box), full_mask.crop(box)
                alpha = None if alpha is None else alpha[box[1]:box[3], box[0]:box[2]]
        if callable(background):
            start = time.perf_counter()
            background = background(img.size)
            result.timings["background"] = time.perf_counter() - start
        start = time.perf_counter()
        picture = composite(img, full_mask, background, alpha=alpha, mask_as_alpha=mask_as_alpha)
        result.timings["composite"] = time.perf_counter() - start
        return picture, result

    def cut_out(
        self,
        decoded: DecodedImage,
        classes: tuple[str, ...] = GARMENT_CLASSES,
        background: Background = (0, 0, 0),
        *,
        mask_as_alpha: bool = False,
        crop: bool = False,
        fallback: bool = False,
    ) -> tuple[Image.Image, GarmentMask]:
        """remove_background for a decoded upload. An already-matted photo is flattened onto
        black and its alpha narrows the mask; it still goes through the garment step, because
        catalog cut-outs keep faces, hair and hands."""
        return self.remove_background(decoded.rgb, classes, background, decoded.alpha,
                                      mask_as_alpha=mask_as_alpha, crop=crop, fallback=fallback)

    def cut_outs(
        self,
        batch: list[DecodedImage],
        classes: tuple[str, ...] | list[tuple[str, ...]] = GARMENT_CLASSES,
        background: tuple[int, int, int] = (0, 0, 0),
        *,
        fallback: bool = False,
    ) -> list[tuple[Image.Image, GarmentMask] | NoGarmentFound]:
        """cut_out for a batch (the indexer on a GPU): the models run once per batch; each photo
        gets its picture and mask, or the NoGarmentFound that says why not. `classes` may be one
        tuple per photo (each product's own garment)."""
        masks = self.garment_masks([d.rgb for d in batch], classes, [d.alpha for d in batch], fallback=fallback)
        return [result if isinstance(result, NoGarmentFound)
                else self._picture(decoded.rgb, result, background, decoded.alpha, False)
                for decoded, result in zip(batch, masks, strict=True)]


def composite(img: Image.Image, mask: Image.Image, background: tuple[int, int, int] | Image.Image, *,
              alpha: np.ndarray | None = None, mask_as_alpha: bool = False) -> Image.Image:
    """img x mask + background x (1 - mask), per channel, in 8 bits: Pillow's paste with a mask
    rounds exactly as round(img * m/255 + background * (1 - m/255)). `alpha` (a cut-out's own
    alpha) first puts the photo onto black. Works through bands of rows, so the output is the
    only new full-size buffer; with `mask_as_alpha` the output is RGBA with the mask as alpha
    (the background colour at alpha 0 blends into exactly alpha = mask).

    `background` may be an RGB picture of img's size instead of a colour: it becomes the output
    (painted on in place, so it must be the caller's own copy), with the same soft edges."""
    width, height = img.size
    if isinstance(background, Image.Image):
        if background.size != img.size or background.mode != "RGB" or mask_as_alpha:
            raise ValueError("a background picture must be RGB, of the photo's size, and without mask_as_alpha")
        out = background
    elif mask_as_alpha:
        out = Image.new("RGBA", img.size, (*background, 0))
    else:
        out = Image.new("RGB", img.size, background)
    rows = max(1, BAND_PIXELS // width)
    for top in range(0, height, rows):
        box = (0, top, width, min(height, top + rows))
        band = img.crop(box)
        if alpha is not None:
            band = flatten_onto_black(band, alpha[box[1]:box[3]])
        out.paste(band, box, mask.crop(box))
    return out
