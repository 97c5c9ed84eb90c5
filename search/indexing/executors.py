"""Where the build's per-batch step (search/indexing/embedding.py) runs: in this process (with
optional decode processes ahead of the models, for a GPU), in `--workers` processes that each load
their own models, or on a Ray cluster's actors (search/indexing/ray_build.py). Every executor
yields the same (relpath, outcome) lists.

A failure stops the build within seconds, wherever it happens: the first batch that raises is
re-raised as soon as it does (not when its turn in the results comes), the queued batches are
cancelled and the worker processes still busy with batches nobody will read are terminated. A
worker whose models cannot load, or are not the build's, says so on its first batch, before any
work: every later batch would fail the same way, so none is tried."""
from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path

from search.indexing.catalog import CatalogImage, decode_batch
from search.indexing.embedding import (BuildModels, check_same_models, embed_batch, load_worker_models,
                                       models_fingerprint)
from search.indexing.ray_build import ray_batches

TERMINATE_GRACE_S = 2.0  # a terminated worker gets this long to exit before it is killed
MANAGER_EXIT_S = 10.0  # the pool's own thread, once its processes are gone, ends within this


def _spawn_pool(workers: int, **kwargs) -> ProcessPoolExecutor:
    # spawn, not fork: torch's and onnxruntime's thread pools do not survive a fork.
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), **kwargs)


def stop_pool(pool: ProcessPoolExecutor) -> None:
    """End a pool now: cancel its queued work and terminate the processes still running a batch
    (shutdown() alone would wait for every queued batch, each with its own retries). Python 3.14's
    terminate_workers() does this; before it, the pool's processes are only in `_processes`.

    The pool's manager thread reaps those processes too: a process it reaped, but whose exit code
    it has not recorded yet (it waits for the GIL), still reads as alive here. So this returns
    once that thread has ended, not only once the processes have."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # shutdown() forgets both
    manager = getattr(pool, "_executor_manager_thread", None)
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(TERMINATE_GRACE_S)
        if process.is_alive():
            process.kill()
            process.join(TERMINATE_GRACE_S)
    if manager is not None:
        manager.join(MANAGER_EXIT_S)  # it sees its processes gone, records their exit and ends


def in_order_failing_fast(futures: list[Future]) -> Iterator:
    """Each future's result, in order; but the first of them to fail raises as soon as it fails,
    not once the ones before it are done."""
    not_done = set(futures)
    for future in futures:
        while not future.done():
            done, not_done = wait(not_done, return_when=FIRST_COMPLETED)
            for finished in done:
                if not finished.cancelled() and finished.exception() is not None:
                    finished.result()
        yield future.result()


def decoded_ahead(catalog: Path, batches: list[list[CatalogImage]], max_side: int, workers: int, ahead: int = 2):
    """Each batch decoded, by `workers` processes that keep `ahead` batches in front of the
    models, so a GPU never waits for JPEG decoding (0 workers: decoded here, when needed)."""
    if workers <= 0:
        for batch in batches:
            yield decode_batch(catalog, batch, max_side)
        return
    pool = _spawn_pool(workers)

    def submit(batch):  # one part per worker
        chunk = max(1, -(-len(batch) // workers))
        parts = [batch[i:i + chunk] for i in range(0, len(batch), chunk)]
        return [pool.submit(decode_batch, catalog, part, max_side) for part in parts]

    try:
        pending = deque(submit(batch) for batch in batches[:ahead])
        for index in range(len(batches)):
            if index + ahead < len(batches):
                pending.append(submit(batches[index + ahead]))
            parts = pending.popleft()
            yield [d for part in in_order_failing_fast(parts) for d in part]
    except BaseException:  # a decode failed, or the build stopped reading (its own failure, Ctrl-C)
        stop_pool(pool)
        raise
    pool.shutdown()


_worker_models: tuple | Exception | None = None


def _load_worker_models(models: BuildModels, expected: str) -> None:
    """A worker's start: its models, or why it has none, raised by its first batch. Raising here
    would only break the pool: every batch would then fail with "a process terminated abruptly",
    the reason left in a log."""
    global _worker_models
    _worker_models = load_worker_models(models, expected, "worker process")


def _embed_batch_in_worker(catalog: Path, batch: list[CatalogImage]) -> tuple[str, list]:
    if isinstance(_worker_models, Exception):
        raise _worker_models
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
        try:
            for batch, batch_decoded in zip(batches, decoded, strict=True):
                yield embed_batch(catalog, batch, embedder, garments, batch_decoded)
        finally:
            decoded.close()  # now, not when the exception's traceback lets go of it: ends the decode pool
        return
    if models is None:
        raise ValueError("workers > 1 needs `models`: how each worker process loads its models")
    expected = models_fingerprint(embedder, garments)
    pool = _spawn_pool(workers, initializer=_load_worker_models, initargs=(models, expected))
    try:
        futures = [pool.submit(_embed_batch_in_worker, catalog, batch) for batch in batches]
        for fingerprint, results in in_order_failing_fast(futures):
            check_same_models([fingerprint], expected, "worker process")
            yield results
    except BaseException:  # a batch failed, or the build stopped reading (its own failure, Ctrl-C)
        stop_pool(pool)
        raise
    pool.shutdown()
