"""Garment-only pictures for the indexer, from the ONE background-removal implementation:
imported in-process, or the bg-removal service over HTTP when BG_SERVICE_URL is set."""
from __future__ import annotations

import io
import logging

import numpy as np
from PIL import Image

from shared.errors import problem_for_status
from shared.images import DecodedImage

log = logging.getLogger("fashion.index")
CROP_MARGIN = 0.05  # of the garment box, so CLIP sees the whole garment, big


def crop_to_mask(picture: Image.Image, mask: np.ndarray) -> Image.Image:
    rows, cols = np.nonzero(mask > 0.5)
    if rows.size == 0:
        return picture
    pad_y = int((rows.max() - rows.min()) * CROP_MARGIN)
    pad_x = int((cols.max() - cols.min()) * CROP_MARGIN)
    box = (max(0, cols.min() - pad_x), max(0, rows.min() - pad_y),
           min(picture.width, cols.max() + 1 + pad_x), min(picture.height, rows.max() + 1 + pad_y))
    return picture.crop(box)


class LocalGarments:
    """Runs the bg-removal pipeline in this process (models loaded once)."""

    def __init__(self, pipeline=None):
        if pipeline is None:
            from bgremoval.config import BgConfig
            from bgremoval.models import load_models
            from bgremoval.pipeline import GarmentPipeline

            config = BgConfig.from_env()
            pipeline = GarmentPipeline(load_models(config), config.pipeline)
        self.pipeline = pipeline
        self.description = "in-process bgremoval pipeline"

    def garment(self, decoded: DecodedImage) -> Image.Image:
        """The garment on black, cropped to it. Raises ProblemError when there is none."""
        picture, result = self.pipeline.cut_out(decoded)
        return crop_to_mask(picture, result.mask)


class RemoteGarments:
    """Asks a running bg-removal service (POST raw image, PNG with the mask as alpha back)."""

    def __init__(self, url: str, timeout: float = 60.0):
        import requests

        self.url = url
        self.session = requests.Session()
        self.timeout = timeout
        self.description = f"bg-removal service at {url}"

    def garment(self, decoded: DecodedImage) -> Image.Image:
        buf = io.BytesIO()  # the service flattens matted input itself (GarmentPipeline.cut_out)
        rgba = decoded.rgb.convert("RGBA")
        if decoded.alpha is not None:
            rgba.putalpha(Image.fromarray(decoded.alpha, "L"))
        rgba.save(buf, "PNG")
        response = self.session.post(self.url, params={"format": "png"}, data=buf.getvalue(),
                                     headers={"Content-Type": "image/png"}, timeout=self.timeout)
        if response.status_code != 200:
            try:
                detail = response.json().get("detail", "")
            except ValueError:
                detail = response.text[:200]
            raise problem_for_status(response.status_code, f"bg-removal service: {detail}")
        cutout = Image.open(io.BytesIO(response.content))
        mask = np.asarray(cutout.getchannel("A"), dtype=np.float32) / 255.0
        return crop_to_mask(cutout.convert("RGB"), mask)
