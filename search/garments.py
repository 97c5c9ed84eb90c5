"""Garment-only pictures for the indexer, from the ONE background-removal implementation:
imported in-process, or the bg-removal service over HTTP when BG_SERVICE_URL is set.

Both report the same identity (models with their weights' sha256, and every setting that changes
a mask), so an index built one way can be updated the other way without re-embedding anything.
Only "no garment in this image" (422) skips an image; a service that is down, overloaded or
misconfigured stops the build instead of silently leaving images out.
"""
from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from urllib.parse import urlencode, urljoin

import numpy as np
from PIL import Image

from shared.errors import Unprocessable
from shared.garment_request import LABEL_CLASSES
from shared.garment_vocabulary import GARMENT_CLASSES
from shared.images import CROP_MARGIN, DecodedImage, crop_to_mask, flatten_onto_black

log = logging.getLogger("fashion.index")
RETRY_STATUSES = (429, 500, 502, 503, 504)
POOL_MAXSIZE = 16  # connections kept alive to the bg service: more than a worker's request threads use at once


class GarmentServiceError(RuntimeError):
    """The bg-removal service failed for good (after retries) or answered something other than a
    garment or "no garment". The build must stop: skipping would drop images silently."""


DEFAULT_LOOK_MIN_FRACTION = 0.01  # a look's garment covers at least this share of the photo


@dataclass
class Cutout:
    picture: Image.Image  # the garment on black, cropped to it
    source: str  # "garment" (a person's clothes) or "product" (flat-lay matte): which settings made it
    classes: tuple[str, ...] = GARMENT_CLASSES  # the garment classes kept
    fallback: bool = False  # the classes asked for found no garment: all garments were kept


@dataclass
class LookGarment:
    """One garment of a photo, cut out on its own (a "shop the look" query)."""

    garment_class: str | None  # upper | lower | full; None for a flat-lay's product (class unknown)
    picture: Image.Image  # the garment alone on black, cropped to its box plus the margin
    box: tuple[int, int, int, int]  # (left, top, right, bottom) of its pixels in the decoded photo


def look_garments(decoded: DecodedImage, labels: np.ndarray, min_fraction: float) -> list[LookGarment]:
    """Each garment class of a label map (POST /labels' codes) that covers at least `min_fraction`
    of the photo (or, when none does, the largest), cut out as the indexer cuts a photo out (on
    black, hard mask, cropped to its box plus the margin): a photo that shows one garment gives
    exactly the catalog's cut-out."""
    flat = flatten_onto_black(decoded.rgb, decoded.alpha)
    if labels.shape != (flat.height, flat.width):
        raise ValueError(f"label map {labels.shape[::-1]} does not match the photo {flat.size}")
    areas = {code: int((labels == code).sum()) for code in LABEL_CLASSES}
    large = [code for code, area in areas.items() if area >= min_fraction * labels.size]
    largest = max(areas, key=areas.get)
    garments = []
    for code in large or ([largest] if areas[largest] else []):
        name, mask = LABEL_CLASSES[code], labels == code
        plane = Image.fromarray(mask.astype(np.uint8) * 255, "L")
        picture = Image.new("RGB", flat.size, (0, 0, 0))
        picture.paste(flat, mask=plane)
        rows, cols = np.nonzero(mask)
        box = (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)
        garments.append(LookGarment(name, crop_to_mask(picture, np.asarray(plane)), box))
    return garments


def class_params(classes: tuple[str, ...], fallback: bool) -> dict:
    """The bg service's query parameters for a class choice (none for the defaults)."""
    params = {}
    if tuple(classes) != GARMENT_CLASSES:
        params["classes"] = ",".join(classes)
        if fallback:  # all garments are the fallback: moot when they are asked for
            params["fallback"] = "all"
    return params


def with_crop(pipeline_identity: dict) -> dict:
    """The indexer's identity: the bg pipeline's, plus how the indexer feeds and crops it (photos
    are decoded straight to the working size, so the pipeline never scales them)."""
    return {**pipeline_identity, "crop": {"margin": CROP_MARGIN, "input": "decoded at the working size"}}


class _Garments:
    identity: dict

    def garments(self, batch: list[DecodedImage], classes: list[tuple[str, ...]] | None = None,
                 fallback: bool = False) -> list[Cutout | Unprocessable]:
        """garment() for each photo (with its own classes: each product's garment); "no garment"
        comes back in its place instead of raised."""
        results = []
        for i, decoded in enumerate(batch):
            try:
                results.append(self.garment(decoded, classes[i] if classes else GARMENT_CLASSES, fallback))
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

    @staticmethod
    def _cutout(picture: Image.Image, result) -> Cutout:
        return Cutout(crop_to_mask(picture, result.mask), result.source, result.classes, result.fallback)

    def garment(self, decoded: DecodedImage, classes: tuple[str, ...] = GARMENT_CLASSES,
                fallback: bool = False) -> Cutout:
        """The garment on black, cropped to it. Raises Unprocessable when there is none."""
        return self._cutout(*self.pipeline.cut_out(decoded, classes, fallback=fallback))

    def garments(self, batch: list[DecodedImage], classes: list[tuple[str, ...]] | None = None,
                 fallback: bool = False) -> list[Cutout | Unprocessable]:
        """The whole batch through each model at once (BG_BACKEND=torch batches on a GPU)."""
        return [result if isinstance(result, Unprocessable) else self._cutout(*result)
                for result in self.pipeline.cut_outs(batch, classes or GARMENT_CLASSES, fallback=fallback)]

    def look(self, decoded: DecodedImage, classes: tuple[str, ...] = GARMENT_CLASSES, fallback: bool = False,
             min_fraction: float = DEFAULT_LOOK_MIN_FRACTION) -> list[LookGarment]:
        """Each garment of the photo on its own, from one pipeline run. Raises Unprocessable."""
        result = self.pipeline.garment_mask(decoded.rgb, classes, decoded.alpha, fallback=fallback, labels=True)
        return look_garments(decoded, result.labels, min_fraction)


def retrying_pool(retries: int, backoff: float, timeout: float, maxsize: int = POOL_MAXSIZE):
    """One HTTP client for every thread of a worker: urllib3's PoolManager is thread-safe (a
    requests.Session is not documented to be, and shares its cookies among threads). It keeps
    connections alive, and retries 429/5xx, timeouts and refused connections with exponential
    backoff (honouring Retry-After), POST included: asking the bg service twice for the same
    picture is harmless."""
    import urllib3
    from urllib3.util.retry import Retry

    retry = Retry(total=retries, connect=retries, read=retries, status=retries, other=0,
                  backoff_factor=backoff, backoff_max=60, status_forcelist=RETRY_STATUSES,
                  allowed_methods=None, respect_retry_after_header=True, raise_on_status=False)
    return urllib3.PoolManager(maxsize=maxsize, retries=retry, timeout=urllib3.Timeout(connect=timeout, read=timeout))


class RemoteGarments(_Garments):
    """Asks a running bg-removal service (POST raw image, PNG with the mask as alpha back)."""

    def __init__(self, url: str, timeout: float = 60.0, retries: int = 5, backoff: float = 1.0):
        self.url = url if url.endswith("/") else url + "/"
        self.timeout = timeout
        self.retries = retries
        self.http = retrying_pool(retries, backoff, timeout)
        self.description = f"bg-removal service at {self.url}"
        self._identity: dict | None = None

    def _call(self, method: str, path: str, *, params: dict | None = None, **kwargs):
        from urllib3.exceptions import HTTPError

        url = urljoin(self.url, path) + (f"?{urlencode(params)}" if params else "")
        try:
            return self.http.request(method, url, **kwargs)
        except HTTPError as exc:  # refused, timed out, or the connection cut mid-answer, after the retries
            raise GarmentServiceError(
                f"{self.description} could not be reached after {self.retries} retries: {exc}") from None

    def _unexpected(self, answer: str) -> GarmentServiceError:
        """A 200 that is not what this project's bg service answers (a proxy's HTML page, a body cut
        short, another program on that port): logged, and a GarmentServiceError (a query's 503)."""
        log.warning("unexpected answer from the %s: %s", self.description, answer)
        return GarmentServiceError(f"{self.description} answered {answer}")

    @staticmethod
    def _detail(response) -> str:
        try:
            return str(json.loads(response.data).get("detail", ""))
        except (ValueError, AttributeError):
            return response.data[:200].decode(errors="replace")

    def _picture(self, response, request: str) -> Image.Image:
        """The PNG of a 200 answer, decoded in full here, so that a body that is not one (a wrong
        content type, an undecodable or cut-off PNG) is the service's error, not this one's."""
        content_type = response.headers.get("Content-Type", "")
        if content_type.split(";")[0].strip().lower() != "image/png":
            raise self._unexpected(f"{request} with {content_type or 'no content type'} instead of a PNG "
                                   f"({len(response.data)} bytes)")
        try:
            picture = Image.open(io.BytesIO(response.data))
            picture.load()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise self._unexpected(f"{request} with an undecodable PNG ({len(response.data)} bytes: {exc})") from None
        return picture

    @property
    def identity(self) -> dict:
        if self._identity is None:
            response = self._call("GET", "pipeline")
            if response.status != 200:
                raise GarmentServiceError(
                    f"{self.description} answered {response.status} to GET /pipeline "
                    f"({self._detail(response) or 'no detail'}); it must be a ready bg-removal service "
                    "of this project's version")
            try:
                pipeline = json.loads(response.data)["garment_pipeline"]
                if not isinstance(pipeline.get("shared"), dict):
                    raise TypeError("no shared settings")
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                raise self._unexpected(
                    f"GET /pipeline with {response.headers.get('Content-Type') or 'no content type'} that is not "
                    f"this project's pipeline identity ({type(exc).__name__}: {exc})") from None
            self._identity = with_crop(pipeline)
        return self._identity

    def _post_photo(self, path: str, decoded: DecodedImage, params: dict):
        """The photo as PNG (the service flattens matted input itself, GarmentPipeline.cut_out);
        the answer when it is 200, Unprocessable for 422 (no garment), else GarmentServiceError."""
        buf = io.BytesIO()
        rgba = decoded.rgb.convert("RGBA")
        if decoded.alpha is not None:
            rgba.putalpha(Image.fromarray(decoded.alpha, "L"))
        rgba.save(buf, "PNG", compress_level=1)
        response = self._call("POST", path, params=params, body=buf.getvalue(), headers={"Content-Type": "image/png"})
        if response.status == 422:  # the one answer that means "skip this image"
            raise Unprocessable(self._detail(response) or "no garment found")
        if response.status != 200:
            retried = f" after {self.retries} retries" if response.status in RETRY_STATUSES else ""
            raise GarmentServiceError(
                f"{self.description} answered {response.status}{retried}: "
                f"{self._detail(response) or response.reason}")
        return response

    def garment(self, decoded: DecodedImage, classes: tuple[str, ...] = GARMENT_CLASSES,
                fallback: bool = False) -> Cutout:
        response = self._post_photo("", decoded, {"format": "png", **class_params(classes, fallback)})
        cutout = self._picture(response, "POST /")
        if "A" not in cutout.getbands():
            raise self._unexpected(f"POST / with a {cutout.mode} PNG: no alpha channel, so no mask")
        mask = np.asarray(cutout.getchannel("A"))
        kept = tuple(response.headers.get("X-Garment-Classes", ",".join(classes)).split(","))
        return Cutout(crop_to_mask(cutout.convert("RGB"), mask), response.headers.get("X-Mask-Source", "garment"),
                      kept, response.headers.get("X-Garment-Fallback") == "true")

    def look(self, decoded: DecodedImage, classes: tuple[str, ...] = GARMENT_CLASSES, fallback: bool = False,
             min_fraction: float = DEFAULT_LOOK_MIN_FRACTION) -> list[LookGarment]:
        """Each garment of the photo on its own, cut from the service's label map (POST /labels)."""
        response = self._post_photo("labels", decoded, class_params(classes, fallback))
        labels = self._picture(response, "POST /labels")
        if labels.mode != "L" or labels.size != decoded.rgb.size:
            raise self._unexpected(f"POST /labels with a {labels.mode} {labels.size[0]}x{labels.size[1]} PNG, not a "
                                   f"label map (L) of the photo's {decoded.rgb.size[0]}x{decoded.rgb.size[1]}")
        return look_garments(decoded, np.asarray(labels), min_fraction)
