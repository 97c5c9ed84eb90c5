"""The build's one step per batch of catalog images: decode, keep the product's garment, embed.
Every executor (this process, worker processes, Ray actors: search/indexing/executors.py and
ray_build.py) runs `embed_batch` on models loaded from the same `BuildModels`, so a build gets
the same vectors wherever it runs, and each worker proves it loaded the build's models."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from search.indexing.catalog import CatalogImage, decode_batch
from search.indexing.pooling import normalise
from shared.errors import Unprocessable
from shared.images import DecodedImage

THUMB_SIDE = 16


@dataclass(frozen=True)
class BuildModels:
    """How a build process loads its models. Picklable: each `--workers` process loads its own set."""

    clip: object  # search.config.ClipSettings
    bg_url: str | None = None  # a bg-removal service instead of the in-process pipeline
    bg_timeout: float = 60.0
    bg_retries: int = 5

    def load(self):
        from search.embedder import ClipEmbedder
        from search.garments import LocalGarments, RemoteGarments

        garments = (RemoteGarments(self.bg_url, timeout=self.bg_timeout, retries=self.bg_retries)
                    if self.bg_url else LocalGarments())
        return ClipEmbedder(self.clip), garments


def thumbnail(picture: Image.Image) -> np.ndarray:
    """A 16x16 grey, mean-centred, normalised fingerprint: near-duplicate photos score ~1."""
    grey = np.asarray(picture.convert("L").resize((THUMB_SIDE, THUMB_SIDE), Image.BILINEAR), np.float32)
    grey = grey.ravel() - grey.mean()
    return normalise(grey)


def embed_batch(catalog: Path, batch: list[CatalogImage], embedder, garments,
                decoded: list[DecodedImage | str] | None = None) -> list[tuple[str, tuple | str]]:
    """Each image's (vector, thumbnail, source, fallback), or the reason it is skipped, keyed by
    relpath. Each image keeps its product's garment classes, or all garments where those find
    none (`fallback`: never an image dropped for it).
    The batch goes through each model in one call; a build gets the same vectors whichever
    process runs it. `decoded`: the batch already decoded (by a decode pool ahead of the models)."""
    if decoded is None:
        decoded = decode_batch(catalog, batch, garments.working_max_side)
    results = [(im.relpath, d) for im, d in zip(batch, decoded, strict=True) if isinstance(d, str)]
    readable = [(im, d) for im, d in zip(batch, decoded, strict=True) if not isinstance(d, str)]
    kept, cutouts = [], []
    cutouts_or_reasons = garments.garments([d for _, d in readable], [im.classes for im, _ in readable], fallback=True)
    for (im, _), cutout in zip(readable, cutouts_or_reasons, strict=True):
        if isinstance(cutout, Unprocessable):  # the only per-image answer that means "skip"
            results.append((im.relpath, f"no garment: {cutout.detail}"))
        else:
            kept.append(im)
            cutouts.append(cutout)
    if kept:
        vectors = embedder.encode_images([c.picture for c in cutouts])
        for im, vector, cutout in zip(kept, vectors, cutouts, strict=True):
            results.append((im.relpath, (vector, thumbnail(cutout.picture), cutout.source, cutout.fallback)))
    return results


def models_fingerprint(embedder, garments) -> str:
    """The models a build process loaded, as one string: CLIP's identity and the bg pipeline's."""
    return hashlib.sha256(json.dumps([embedder.identity, garments.identity], sort_keys=True).encode()).hexdigest()


class WorkerModelsError(RuntimeError):
    """A worker (process or Ray actor) has not the build's models: they cannot load, or they are
    others. Certain, unlike a lost node: every batch it took would fail the same way, so none is
    retried."""


def check_same_models(fingerprints, expected: str, who: str) -> None:
    """A worker (process or Ray actor) must have loaded the build's models, or its vectors and the
    index's recorded identity would disagree."""
    if set(fingerprints) != {expected}:
        raise WorkerModelsError(f"a {who} loaded other models than the build's; check that every {who} sees the "
                                "same CLIP_* / BG_* settings and weights")


def load_worker_models(models: BuildModels, expected: str, who: str) -> tuple | Exception:
    """A worker's (embedder, garments, fingerprint), checked to be the build's (`expected`), or the
    exception each of its batches raises instead: a bg service that cannot be reached (its
    GarmentServiceError, which the CLI reports), models that cannot load, or other models."""
    from search.garments import GarmentServiceError

    try:
        embedder, garments = models.load()
        fingerprint = models_fingerprint(embedder, garments)  # a bg service's identity: a request
    except GarmentServiceError as exc:
        return exc
    except Exception as exc:  # noqa: BLE001 - a model that cannot load, said with its reason
        return WorkerModelsError(f"a {who} could not load the build's models: {type(exc).__name__}: {exc}")
    try:
        check_same_models([fingerprint], expected, who)
    except WorkerModelsError as exc:
        return exc
    return embedder, garments, fingerprint
