"""`python -m search.index build --ray [ADDRESS]`: the index build's garment and embedding steps as a
Ray Data job, on a local Ray or a cluster.

    read    the catalog images the build has to embed, as rows (product, file, sha256)
    embed   map_batches over an actor pool: each actor loads the build's models once
            (BuildModels: CLIP + the bg pipeline, or a bg service) and runs
            search.indexing.embedding.embed_batch, the same function a local build runs; one GPU
            per actor where the cluster has GPUs and DEVICE allows it, else one CPU per actor
    merge   the driver streams the results back, keeps each image's first result (a batch that
            ran again after a node loss may come back twice) and stops with an error if one is
            missing; search.indexing.builder.build_index pools and writes the index as for any
            build (a generation folder, one atomic switch of meta.json); `search.index publish`
            takes it to Milvus from there

Every node needs this repository's code and requirements (the builder image, or a checkout with
`requirements-search-build.txt` and `requirements-ray.txt`) at the driver's path, and the catalog
at the same path. The driver passes its CLIP_*/BG_*/DEVICE settings to the actors. docs/ray-cluster.md
says how to run it on a cluster.

Failures (Ray Data's defaults would retry system failures forever, and the actor pool's defaults
change between Ray versions, so the build says what it wants):
    a node or an actor process lost   Ray restarts the actor (on a node with room, at worst once
            the others are done) and runs its batches again: the build finishes with the same
            index. At most ACTOR_RESTARTS restarts per actor, so a batch that crashes its process
            every time stops the build instead of looping.
    a batch that raises (the bg service down after its retries), models that cannot load or
            are not the build's   certain: the first batch raises it and the build stops at once
            with that error (no retry; the actor defers a load failure to its first batch so
            that it comes back as the error it is), the actors killed, nothing written.
"""
from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable, Iterator
from contextlib import closing
from pathlib import Path

import numpy as np

from search.indexing.catalog import CatalogImage
from search.indexing.embedding import check_same_models, embed_batch, load_worker_models, models_fingerprint

log = logging.getLogger("fashion.index")
REPO = Path(__file__).resolve().parents[2]
# The settings an actor's models are loaded from; sent to every actor so a cluster node builds
# exactly the models the driver checked.
FORWARDED_ENV = ("CLIP_", "BG_", "U2NET_HOME", "ORT_THREADS", "TORCH_THREADS", "DEVICE", "MODEL_CHECKSUM_DISABLED",
                 "HF_HUB_OFFLINE")
# Actor fault tolerance: restarts per actor (a lost node costs each of its actors one). A batch
# whose actor is lost waits for the restart however long the cluster takes to notice the loss
# (its health checks, ~15-30 s): a finite count of task retries would be spent within seconds on
# "actor temporarily unavailable" and fail the build; the restarts bound it instead. Application
# errors are never retried.
ACTOR_RESTARTS = 3
TASK_RETRIES = -1
# Ray appends this advice to the exception a map function raised; the build's error says it all.
_RAY_RETRY_ADVICE = "\nFailed to apply UDF transform"


class EmbedActor:
    """One model set per actor, loaded once; embeds one batch of catalog rows per call. Models that
    cannot load, or are not the build's (`expected`), are raised by the first call instead of the
    constructor: an error there is an actor death to Ray Data, reported as such; from a call it
    is the exception itself, and certain: never retried."""

    def __init__(self, models, catalog: str, expected: str):
        self.catalog = Path(catalog)
        loaded = load_worker_models(models, expected, "Ray actor")
        self.unusable = loaded if isinstance(loaded, Exception) else None
        if self.unusable is None:
            self.embedder, self.garments, self.fingerprint = loaded

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.unusable is not None:
            raise self.unusable
        batch = [CatalogImage(str(p), str(f), str(s), tuple(str(c).split(",")), str(path))
                 for p, f, s, c, path in zip(rows["product"], rows["file"], rows["sha256"], rows["classes"],
                                             rows["path"], strict=True)]
        results = dict(embed_batch(self.catalog, batch, self.embedder, self.garments))
        dim = len(self.embedder.identity["probe"])
        vectors, thumbs, sources, fallbacks, skipped = [], [], [], [], []
        for im in batch:
            outcome = results[im.relpath]
            if isinstance(outcome, str):
                vectors.append(np.zeros(dim, np.float32))
                thumbs.append(None)
                sources.append("")
                fallbacks.append(False)
                skipped.append(outcome)
            else:
                vectors.append(outcome[0])
                thumbs.append(outcome[1])
                sources.append(outcome[2])
                fallbacks.append(outcome[3])
                skipped.append("")
        thumb_shape = next((t.shape for t in thumbs if t is not None), (1,))
        thumbs = [t if t is not None else np.zeros(thumb_shape, np.float32) for t in thumbs]
        return {"relpath": np.array([im.relpath for im in batch]), "vector": np.stack(vectors),
                "thumb": np.stack(thumbs), "source": np.array(sources), "fallback": np.array(fallbacks, bool),
                "skipped": np.array(skipped),
                "models": np.array([self.fingerprint] * len(batch))}


def actor_resources(device: str) -> tuple[int, dict]:
    """How many actors, and each one's resources: one per GPU when DEVICE allows CUDA and the
    cluster has GPUs, else one per CPU."""
    import ray

    total = ray.cluster_resources()
    gpus = int(total.get("GPU", 0))
    if device in ("auto", "cuda") and gpus:
        return gpus, {"num_gpus": 1, "num_cpus": 1}
    if device == "cuda":
        log.warning("DEVICE=cuda but the Ray cluster has no GPU: the actors run on CPUs")
    return max(1, int(total.get("CPU", 1))), {"num_cpus": 1}


class RayBuildError(RuntimeError):
    """The Ray job could not give every image's result (a result missing, or the cluster's failure
    past what actor restarts mend): the build stopped, nothing written."""


def original_error(exc: Exception) -> Exception:
    """The exception an actor's batch raised, as it raised it (Ray wraps it in a RayTaskError with
    the remote traceback and its own retry advice); any other error as it is."""
    import ray

    cause = exc.cause if isinstance(exc, ray.exceptions.RayTaskError) else None
    if not isinstance(cause, Exception):
        return exc
    message = str(cause).split(_RAY_RETRY_ADVICE, 1)[0]
    try:
        return type(cause)(message)
    except Exception:  # noqa: BLE001 - an exception class that takes other arguments
        return cause


def once_each(outputs: Iterable[list[tuple[str, tuple | str]]], expected: set[str]) -> Iterator[list]:
    """The (relpath, outcome) lists as they come, each image's first result only: a batch that
    ran again after a node or actor loss may come back twice. Raises once the outputs end if an
    image never came back, or for one the build did not send."""
    seen: set[str] = set()
    duplicates = 0
    for results in outputs:
        fresh = []
        for relpath, outcome in results:
            if relpath in seen:
                duplicates += 1
                continue
            if relpath not in expected:
                raise RayBuildError(f"Ray returned a result for {relpath!r}, an image this build did not send")
            seen.add(relpath)
            fresh.append((relpath, outcome))
        if fresh:
            yield fresh
    if duplicates:
        log.warning("Ray: %d results came back twice (batches run again after a node or actor loss); "
                    "each image keeps its first", duplicates)
    missing = sorted(expected - seen)
    if missing:
        raise RayBuildError(f"Ray returned no result for {len(missing)} of {len(expected)} images "
                           f"(e.g. {', '.join(missing[:3])}); the build stopped")


def alive_nodes() -> int:
    import ray

    return sum(1 for node in ray.nodes() if node.get("Alive"))


def ray_batches(catalog: Path, batches: list, embedder, garments, models, address: str,
                workers: int | None = None) -> Iterator[list[tuple[str, tuple | str]]]:
    """search.indexing.executors.embedded_batches on Ray: the same (relpath, outcome) lists, in
    batches of the build's batch size, in whatever order the actors finish."""
    try:
        import ray
    except ImportError:
        raise RuntimeError("--ray needs Ray: pip install -r requirements-ray.txt") from None
    started_here = not ray.is_initialized()
    if started_here:
        env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        kwargs = {"runtime_env": {"env_vars": env}, "include_dashboard": False, "log_to_driver": False}
        if address == "local":
            ray.init(num_cpus=workers or os.cpu_count(), object_store_memory=256 * 2**20, **kwargs)
        else:
            ray.init(address=address, **kwargs)
    try:
        size, resources = actor_resources(models.clip.device)
        if workers:
            size = min(size, workers)
        batch_size = max(1, len(batches[0])) if batches else 1
        rows = [{"product": im.product, "file": im.file, "sha256": im.sha256, "classes": ",".join(im.classes),
                 "path": im.path}
                for batch in batches for im in batch]
        nodes = alive_nodes()
        log.info("Ray: %d images, %d actors (%s each) on %d nodes, batches of %d", len(rows), size, resources,
                 nodes, batch_size)
        expected = models_fingerprint(embedder, garments)
        with warnings.catch_warnings():
            # Ray 2.60 deprecates passing actor options as keyword arguments (removed in 2.64) but
            # names no other way to set max_restarts / max_task_retries for map_batches' actors.
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
            dataset = ray.data.from_items(rows).map_batches(
                EmbedActor, fn_constructor_args=(models, str(catalog), expected), batch_size=batch_size,
                batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=size),
                max_restarts=ACTOR_RESTARTS, max_task_retries=TASK_RETRIES, **resources)
        context = dataset.context  # this dataset's own copy: the driver's defaults stay as they are
        context.raise_original_map_exception = True  # a batch's exception comes back as its own type
        context.max_errored_blocks = 0  # a batch that raised stops the build (never a silent gap)
        context.actor_task_retry_on_errors = False  # application errors are certain: not retried

        def outputs():
            # closing: a failure here, or the build no longer reading, shuts the execution down
            # (its actors killed) now rather than when the iterator is collected
            with closing(iter(dataset.iter_batches(batch_size=batch_size, batch_format="numpy"))) as stream:
                for out in stream:
                    check_same_models(out["models"], expected, "Ray actor")
                    yield [(str(relpath), str(reason) if reason else (vector, thumb, str(source), bool(fallback)))
                           for relpath, vector, thumb, source, fallback, reason in zip(
                               out["relpath"], out["vector"], out["thumb"], out["source"], out["fallback"],
                               out["skipped"], strict=True)]

        try:
            with closing(outputs()) as results:
                yield from once_each(results, {im.relpath for batch in batches for im in batch})
        except ray.exceptions.RayTaskError as exc:
            raise original_error(exc) from None
        except ray.exceptions.RayError as exc:  # the cluster's own failure, past what restarts can mend
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise RayBuildError(
                f"Ray could not finish the build's batches: {type(exc).__name__}: {first_line}") from exc
        if (left := alive_nodes()) < nodes:
            log.warning("Ray: %d of %d nodes were lost during the build; their batches ran again on the others",
                        nodes - left, nodes)
    finally:
        if started_here:
            ray.shutdown()
