"""Query photos -> the garment's normalised CLIP embedding, by the indexer's own steps: decode at
the pipeline's working size, isolate the garment (search/garments.py: the bg pipeline in-process,
or the bg-removal service), crop to it, embed with the image tower. Plain Python, no Flask."""
from __future__ import annotations

import logging

import numpy as np

from search.garments import GarmentServiceError, LocalGarments, RemoteGarments
from shared.errors import NotReady
from shared.images import decode_opened, open_image
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

    def __init__(self, garments, encoder, *, index_meta: dict, max_pixels: int):
        self.garments = garments
        self.encoder = encoder
        self.max_pixels = max_pixels
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

    def embed(self, data: bytes, timings: dict[str, float]) -> np.ndarray:
        """Raises the ProblemError that says what is wrong: 413/415/422 for the photo (422 also
        when it shows no garment), 503 when the bg-removal service cannot answer."""
        with timed(timings, "decode"):
            decoded = decode_opened(open_image(data, max_pixels=self.max_pixels), max_side=self.working_max_side)
        try:
            with timed(timings, "garment"):
                self._check_pipeline()
                cutout = self.garments.garment(decoded)
        except GarmentServiceError as exc:
            raise NotReady(f"The garment step is unavailable: {exc}", headers={"Retry-After": "5"}) from None
        with timed(timings, "embed_image"):
            return self.encoder.encode_images([cutout.picture])[0]
