"""`python -m search.index build --ray [ADDRESS]`: the index build's garment and embedding steps as a
Ray Data job, on a local Ray or a cluster.

    read    the catalog images the build has to embed, as rows (product, file, sha256)
    embed   map_batches over an actor pool: each actor loads the build's models once
            (BuildModels: CLIP + the bg pipeline, or a bg service) and runs
            search.indexing.embedding.embed_batch, the same function a local build runs; one GPU
            per actor where the cluster has GPUs and DEVICE allows it, else one CPU per actor
    merge   the driver streams the results back and search.indexing.builder.build_index pools and
            writes the index as for any build (a generation folder, one atomic switch of meta.json);
            `search.index publish` takes it to Milvus from there

Every node needs this repository's code and requirements (the builder image, or a checkout with
`requirements-search-build.txt` and `requirements-ray.txt`) and the catalog at the same path.
The driver passes its CLIP_*/BG_*/DEVICE settings to the actors.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from search.indexing.catalog import CatalogImage
from search.indexing.embedding import check_same_models, embed_batch, models_fingerprint

log = logging.getLogger("fashion.index")
REPO = Path(__file__).resolve().parents[2]
# The settings an actor's models are loaded from; sent to every actor so a cluster node builds
# exactly the models the driver checked.
FORWARDED_ENV = ("CLIP_", "BG_", "U2NET_HOME", "ORT_THREADS", "TORCH_THREADS", "DEVICE", "MODEL_CHECKSUM_DISABLED",
                 "HF_HUB_OFFLINE")


class EmbedActor:
    """One model set per actor, loaded once; embeds one batch of catalog rows per call."""

    def __init__(self, models, catalog: str):
        self.embedder, self.garments = models.load()
        self.catalog = Path(catalog)
        self.fingerprint = models_fingerprint(self.embedder, self.garments)

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
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
        log.info("Ray: %d images, %d actors (%s each), batches of %d", len(rows), size, resources, batch_size)
        dataset = ray.data.from_items(rows).map_batches(
            EmbedActor, fn_constructor_args=(models, str(catalog)), batch_size=batch_size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=size), **resources)
        expected = models_fingerprint(embedder, garments)
        for out in dataset.iter_batches(batch_size=batch_size, batch_format="numpy"):
            check_same_models(out["models"], expected, "Ray actor")
            yield [(str(relpath), str(reason) if reason else (vector, thumb, str(source), bool(fallback)))
                   for relpath, vector, thumb, source, fallback, reason in zip(
                       out["relpath"], out["vector"], out["thumb"], out["source"], out["fallback"], out["skipped"],
                       strict=True)]
    finally:
        if started_here:
            ray.shutdown()
