"""Garment-only pictures for the indexer, from the ONE background-removal implementation:
imported in-process, or the bg-removal service over HTTP when BG_SERVICE_URL is set.

Both report the same identity (models with their weights' sha256, and every setting that changes
a mask), so an index built one way can be updated the other way without re-embedding anything.
Only "no garment in this image" (422) skips an image; a service that is down, overloaded or
misconfigured stops the build instead of silently leaving images out.
"""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from urllib.parse import urljoin

import numpy as np
from PIL import Image

from shared.errors import Unprocessable
from shared.images import CROP_MARGIN, DecodedImage, crop_to_mask

log = logging.getLogger("fashion.index")
RETRY_STATUSES = (429, 500, 502, 503, 504)


class GarmentServiceError(RuntimeError):
    """The bg-removal service failed for good (after retries) or answered something other than a
    garment or "no garment". The build must stop: skipping would drop images silently."""


@dataclass
class Cutout:
    picture: Image.Image  # the garment on black, cropped to it
    source: str  # "garment" (a person's clothes) or "product" (flat-lay matte): which settings made it


def with_crop(pipeline_identity: dict) -> dict:
    """The indexer's identity: the bg pipeline's, plus how the indexer feeds and crops it (photos
    are decoded straight to the working size, so the pipeline never scales them)."""
    return {**pipeline_identity, "crop": {"margin": CROP_MARGIN, "input": "decoded at the working size"}}


class _Garments:
    identity: dict

    def garments(self, batch: list[DecodedImage]) -> list[Cutout | Unprocessable]:
        """garment() for each photo; "no garment" comes back in its place instead of raised."""
        results = []
        for decoded in batch:
            try:
                results.append(self.garment(decoded))
            except Unprocessable as exc:
                results.append(exc)
        return results

    @property
    def working_max_side(self) -> int:
        """Photos are decoded at most this large (the pipeline's working size): memory per catalog
        photo stays bounded whatever its size, and the result equals the full-size path's masks."""
        return int(self.identity["shared"]["working_max_side"])


class LocalGarments(_Garments):
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

    @property
    def identity(self) -> dict:
        return with_crop(self.pipeline.identity())

    def garment(self, decoded: DecodedImage) -> Cutout:
        """The garment on black, cropped to it. Raises Unprocessable when there is none."""
        picture, result = self.pipeline.cut_out(decoded)
        return Cutout(crop_to_mask(picture, result.mask), result.source)

    def garments(self, batch: list[DecodedImage]) -> list[Cutout | Unprocessable]:
        """The whole batch through each model at once (BG_BACKEND=torch batches on a GPU)."""
        return [result if isinstance(result, Unprocessable) else Cutout(crop_to_mask(result[0], result[1].mask),
                                                                         result[1].source)
                for result in self.pipeline.cut_outs(batch)]


def retrying_session(retries: int, backoff: float):
    """A requests session that retries 429/5xx, timeouts and refused connections with
    exponential backoff (urllib3's Retry, honouring Retry-After), POST included: asking the
    bg service twice for the same picture is harmless."""
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    retry = Retry(total=retries, connect=retries, read=retries, status=retries, other=0,
                  backoff_factor=backoff, backoff_max=60, status_forcelist=RETRY_STATUSES,
                  allowed_methods=None, respect_retry_after_header=True, raise_on_status=False)
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class RemoteGarments(_Garments):
    """Asks a running bg-removal service (POST raw image, PNG with the mask as alpha back)."""

    def __init__(self, url: str, timeout: float = 60.0, retries: int = 5, backoff: float = 1.0):
        self.url = url if url.endswith("/") else url + "/"
        self.timeout = timeout
        self.retries = retries
        self.session = retrying_session(retries, backoff)
        self.description = f"bg-removal service at {self.url}"
        self._identity: dict | None = None

    def _call(self, method: str, path: str, **kwargs):
        import requests

        url = urljoin(self.url, path)
        try:
            return self.session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise GarmentServiceError(
                f"{self.description} could not be reached after {self.retries} retries: {exc}") from None

    @staticmethod
    def _detail(response) -> str:
        try:
            return str(response.json().get("detail", ""))
        except (ValueError, AttributeError):
            return response.text[:200]

    @property
    def identity(self) -> dict:
        if self._identity is None:
            response = self._call("GET", "pipeline")
            if response.status_code != 200:
                raise GarmentServiceError(
                    f"{self.description} answered {response.status_code} to GET /pipeline "
                    f"({self._detail(response) or 'no detail'}); it must be a ready bg-removal service "
                    "of this project's version")
            self._identity = with_crop(response.json()["garment_pipeline"])
        return self._identity

    def garment(self, decoded: DecodedImage) -> Cutout:
        buf = io.BytesIO()  # the service flattens matted input itself (GarmentPipeline.cut_out)
        rgba = decoded.rgb.convert("RGBA")
        if decoded.alpha is not None:
            rgba.putalpha(Image.fromarray(decoded.alpha, "L"))
        rgba.save(buf, "PNG", compress_level=1)
        response = self._call("POST", "", params={"format": "png"}, data=buf.getvalue(),
                              headers={"Content-Type": "image/png"})
        if response.status_code == 422:  # the one answer that means "skip this image"
            raise Unprocessable(self._detail(response) or "no garment found")
        if response.status_code != 200:
            retried = f" after {self.retries} retries" if response.status_code in RETRY_STATUSES else ""
            raise GarmentServiceError(
                f"{self.description} answered {response.status_code}{retried}: "
                f"{self._detail(response) or response.reason}")
        cutout = Image.open(io.BytesIO(response.content))
        mask = np.asarray(cutout.getchannel("A"))
        return Cutout(crop_to_mask(cutout.convert("RGB"), mask), response.headers.get("X-Mask-Source", "garment"))
