"""Where the build's per-batch step (search/indexing/embedding.py) runs: in this process (with
optional decode processes ahead of the models, for a GPU), in `--workers` processes that each load
their own models, or on a Ray cluster's actors (search/indexing/ray_build.py). Every executor
yields the same (relpath, outcome) lists."""
from __future__ import annotations

import multiprocessing
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from search.indexing.catalog import CatalogImage, decode_batch
from search.indexing.embedding import BuildModels, check_same_models, embed_batch, models_fingerprint
from search.indexing.ray_build import ray_batches


def decoded_ahead(catalog: Path, batches: list[list[CatalogImage]], max_side: int, workers: int, ahead: int = 2):
    """Each batch decoded, by `workers` processes that keep `ahead` batches in front of the
    models, so a GPU never waits for JPEG decoding (0 workers: decoded here, when needed)."""
    if workers <= 0:
        for batch in batches:
            yield decode_batch(catalog, batch, max_side)
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        def submit(batch):  # one part per worker
            chunk = max(1, -(-len(batch) // workers))
            parts = [batch[i:i + chunk] for i in range(0, len(batch), chunk)]
            return [pool.submit(decode_batch, catalog, part, max_side) for part in parts]

        pending = deque(submit(batch) for batch in batches[:ahead])
        for index in range(len(batches)):
            if index + ahead < len(batches):
                pending.append(submit(batches[index + ahead]))
            yield [d for future in pending.popleft() for d in future.result()]


_worker_models: tuple | None = None


def _load_worker_models(models: BuildModels) -> None:
    global _worker_models
    embedder, garments = models.load()
    _worker_models = embedder, garments, models_fingerprint(embedder, garments)


def _embed_batch_in_worker(catalog: Path, batch: list[CatalogImage]) -> tuple[str, list]:
    embedder, garments, fingerprint = _worker_models
    return fingerprint, embed_batch(catalog, batch, embedder, garments)


def embedded_batches(catalog: Path, batches: list[list[CatalogImage]], embedder, garments, workers: int,
                     models: BuildModels | None, ray: str | None = None, decode_workers: int = 0):
    """embed_batch over every batch: here (with `decode_workers` processes decoding ahead of the
    models, for a GPU), or spread over `workers` processes that each load their own models from
    `models` (CPU: one core each; the same vectors as one process), or over a Ray cluster's
    actors (`ray`: an address, or "local"; search/indexing/ray_build.py)."""
    if ray:
        if models is None:
            raise ValueError("--ray needs `models`: how each actor loads its models")
        yield from ray_batches(catalog, batches, embedder, garments, models, ray, workers if workers > 1 else None)
        return
    if workers <= 1:
        decoded = decoded_ahead(catalog, batches, garments.working_max_side, decode_workers)
        for batch, batch_decoded in zip(batches, decoded, strict=True):
            yield embed_batch(catalog, batch, embedder, garments, batch_decoded)
        return
    if models is None:
        raise ValueError("workers > 1 needs `models`: how each worker process loads its models")
    # spawn, not fork: torch's and onnxruntime's thread pools do not survive a fork.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_load_worker_models, initargs=(models,)) as pool:
        futures = [pool.submit(_embed_batch_in_worker, catalog, batch) for batch in batches]
        expected = models_fingerprint(embedder, garments)
        for future in futures:
            fingerprint, results = future.result()
            check_same_models([fingerprint], expected, "worker process")
            yield results
