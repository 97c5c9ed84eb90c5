"""Query photos -> the garment's normalised CLIP embedding, by the indexer's own steps: decode at
the pipeline's working size, isolate the garment (search/garments.py: the bg pipeline in-process,
or the bg-removal service), crop to it, embed with the image tower. Plain Python, no Flask.

Each query holds its pixels in the worker's budget (shared/budget.py, SEARCH_MAX_INFLIGHT_MP) from
its header on, before any pixel is decoded: as the bg service does, so a worker's memory is
bounded by configuration whatever size and number of photos clients send at once."""
from __future__ import annotations

import logging
import math
from contextlib import contextmanager

import numpy as np

from search.garments import DEFAULT_LOOK_MIN_FRACTION, GarmentServiceError, LocalGarments, RemoteGarments
from shared.budget import PixelBudget
from shared.errors import NotReady, Unprocessable
from shared.garment_request import GarmentOptions
from shared.images import decode_opened, open_image, pixels_to_decode, upright_size
from shared.timing import timed

log = logging.getLogger("fashion.search")
DEFAULT_WORKING_SIDE = 1024


def open_garments(config):
    """The garment source for query photos: the bg-removal service when BG_SERVICE_URL is set
    (one retry: a query waits, an index build does not mind), else the bg pipeline in this process."""
    if config.bg_service_url:
        return RemoteGarments(config.bg_service_url, timeout=config.bg_service_timeout, retries=1, backoff=0.2)
    try:
        return LocalGarments()
    except ImportError as exc:
        raise RuntimeError(f"photo queries need the garment step: set BG_SERVICE_URL to the bg-removal service, "
                           f"or install requirements-bg.txt to run it in this process ({exc}); "
                           "or turn photo queries off with SEARCH_IMAGE_QUERIES=0") from None


class PhotoEmbedder:
    """One photo's garment embedding, with the time of each stage."""

    def __init__(self, garments, encoder, *, index_meta: dict, max_pixels: int, budget: PixelBudget,
                 look_min_fraction: float = DEFAULT_LOOK_MIN_FRACTION):
        self.garments = garments
        self.budget = budget  # the worker's: one for every generation, as there is one memory
        self.encoder = encoder
        self.max_pixels = max_pixels
        self.look_min_fraction = look_min_fraction
        self.index_pipeline = index_meta.get("garment_pipeline")
        shared = (self.index_pipeline or {}).get("shared", {})
        # Decoded as the indexer decodes catalog photos (memory bounded whatever the upload's size).
        self.working_max_side = int(shared.get("working_max_side", DEFAULT_WORKING_SIDE))
        self._pipeline_checked = False

    def describe(self) -> str:
        return f"{self.encoder.describe()}, garments by {self.garments.description}"

    def _check_pipeline(self) -> None:
        """Once: warn when the garment step differs from the one the index was built with (its
        masks, and so the vectors, would differ from the catalog's)."""
        if self._pipeline_checked or self.index_pipeline is None:
            return
        identity = self.garments.identity  # a service that is down raises: checked on a later call
        self._pipeline_checked = True
        if identity != self.index_pipeline:
            log.warning("photo queries: the garment pipeline of %s differs from the one the index was built "
                        "with; photo results may be worse than the catalog's own", self.garments.description)

    def _pixels(self, opened, upright: tuple[int, int]) -> int:
        """What a query reserves: the pixels its decode holds (pixels_to_decode: a JPEG at its
        reduced DCT scale, every other format at full size) and, when the bg models run in this
        process, the working-size picture the garment step works on (the bg service budgets its
        own)."""
        pixels = pixels_to_decode(opened, max_side=self.working_max_side)
        if isinstance(self.garments, LocalGarments):
            scale = min(1.0, self.working_max_side / max(upright))
            pixels += round(upright[0] * scale) * round(upright[1] * scale)
        return pixels

    @contextmanager
    def _decoded(self, data: bytes, timings: dict[str, float]):
        """The photo at the working size and its upright size as sent, its pixels held in the
        worker's budget while the block runs (503 + Retry-After when they do not fit in time).
        The header is checked first: a photo refused anyway (413/415/422) waits for nothing."""
        with timed(timings, "decode"):
            opened = open_image(data, max_pixels=self.max_pixels)
            size = upright_size(opened.image)
            pixels = self._pixels(opened, size)
        with self.budget.reserve(pixels):
            with timed(timings, "decode"):
                decoded = decode_opened(opened, max_side=self.working_max_side)
            if opened.source_format == "PNG":  # decoded whole and turned upright: an eXIf chunk after its pixels counts
                size = opened.image.size
            del opened  # the full-size decode is freed before the garment step
            yield decoded, size

    def _garment_step(self, timings: dict[str, float], step):
        try:
            with timed(timings, "garment"):
                self._check_pipeline()
                return step()
        except GarmentServiceError as exc:
            raise NotReady(f"The garment step is unavailable: {exc}", headers={"Retry-After": "5"}) from None

    def embed(self, data: bytes, timings: dict[str, float], garments: GarmentOptions = GarmentOptions()) -> np.ndarray:
        """The vector of the photo's garments together (`garments` chooses which), as the indexer
        embeds a catalog photo. Raises the ProblemError that says what is wrong: 413/415/422 for
        the photo (422 also when it shows no garment), 503 when the bg-removal service cannot answer."""
        with self._decoded(data, timings) as (decoded, _):
            cutout = self._garment_step(timings, lambda: self.garments.garment(decoded, garments.classes,
                                                                               garments.fallback))
        with timed(timings, "embed_image"):  # the tower's input is 224 px whatever the photo: outside the budget
            return self.encoder.encode_images([cutout.picture])[0]

    def look(self, data: bytes, timings: dict[str, float], garments: GarmentOptions = GarmentOptions()):
        """Each garment of the photo (of the classes `garments` chooses) that covers at least
        look_min_fraction of it, with its own vector: [(LookGarment with its box in the photo's
        pixels as sent, vector)]. One garment step and one image-tower batch, whatever their number."""
        with self._decoded(data, timings) as (decoded, size):
            found = self._garment_step(timings, lambda: self.garments.look(
                decoded, garments.classes, garments.fallback, self.look_min_fraction))
            if not found:  # the garment step answers 422 first: only an empty label map gets here
                raise Unprocessable(f"No garment ({', '.join(garments.classes)}) found in the photo.")
            scale_x, scale_y = size[0] / decoded.size[0], size[1] / decoded.size[1]
        for garment in found:  # boxes in the photo's own pixels, not the working size's
            x0, y0, x1, y1 = garment.box
            garment.box = (int(x0 * scale_x), int(y0 * scale_y),
                           min(size[0], math.ceil(x1 * scale_x)), min(size[1], math.ceil(y1 * scale_y)))
        with timed(timings, "embed_image"):
            vectors = self.encoder.encode_images([garment.picture for garment in found])
        return list(zip(found, vectors, strict=True))
