"""`search.index build --ray` on a real two-node Ray cluster (tests/ray_cluster.py: `ray start`
head and worker, one CPU each, in a network namespace of their own where the kernel allows it):

- the CLI's cluster build equals the local build of the same catalog within 1e-5;
- a batch that raises stops the cluster build within seconds, its actors gone, the previous
  index as it was;
- the worker node SIGKILLed mid-build: the build finishes on the head with the same index, each
  image once (search/indexing/ray_build.py: Ray restarts the lost actor and runs its batches
  again; the driver keeps each image's first result and fails on a missing one).

The last two drive build_index with tests/test_build_cancel.py's scripted numpy-only models
(slow batches, markers saying which process ran what), so the kill lands mid-build and actors
start in seconds. Without Ray the cluster tests skip, except under CI (env CI set), where they
fail. The whole file, cluster start included, stays under 120 s (pytest --durations=0)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from search.index_format import Index
from tests.conftest import REPO, TINY
from tests.test_build_cancel import (FAILING_SIZE, IMAGES, STOPPED_WITHIN_S, ScriptedModels, markers, snapshot,
                                     write_catalog)

pytestmark = pytest.mark.timeout(240)

CLI_BUILD_TIMEOUT_S = 150
NODE_LOSS_IMAGES = 24
NODE_LOSS_DELAY_S = 0.5
# A driver like the CLI's, with the scripted models: build_index on the cluster at argv[1]'s settings.
DRIVER = """
import json, logging, sys
from pathlib import Path
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
from search.indexing.builder import build_index
from tests.test_build_cancel import ScriptedModels
args = json.loads(sys.argv[1])
embedder, garments = ScriptedModels().load()
build_index(Path(args["catalog"]), Path(args["out"]), embedder, garments, progress=False, batch_size=1,
            models=ScriptedModels(**args["models"]), ray=args["address"])
print("BUILT", flush=True)
"""


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _require_ray() -> None:
    """Skip (fail under CI) when Ray or its CLI is missing, saying so."""
    from tests.ray_cluster import RAY

    try:
        import ray  # noqa: F401
    except ImportError:
        problem = "ray is not installed"
    else:
        problem = "" if RAY.exists() else f"the ray CLI is missing at {RAY}"
    if problem:
        message = f"the Ray cluster tests need ray[data] (pip install -r requirements-ray.txt): {problem}"
        if _ci():
            pytest.fail(message + " (CI is set: a missing Ray is a failure, not a skip)", pytrace=False)
        pytest.skip(message)


@pytest.fixture(scope="module")
def cluster(oracle_weights, request):
    """Head + one worker node, one CPU each; the CLI's settings (tiny CLIP, the oracle bg models)
    in every node's and driver's environment. The local reference index (conftest's
    synthetic_index) is built while the nodes start: the tests ask for it through
    request.getfixturevalue, as a session fixture in their arguments would be built first."""
    _require_ray()
    from tests.ray_cluster import launch_cluster, wait_ready

    env = {"CLIP_MODEL": TINY["model"], "CLIP_PRETRAINED": "", "CLIP_CONFIG_DIR": TINY["extra_config_dir"],
           "U2NET_HOME": str(oracle_weights), "PYTHONPATH": str(REPO)}
    started = time.monotonic()
    ray_cluster = launch_cluster(workers=1, cpus_per_node=1, env=env)
    try:
        request.getfixturevalue("synthetic_index")
        wait_ready(ray_cluster)
        print(f"cluster of {len(ray_cluster.nodes)} nodes up in {time.monotonic() - started:.1f} s "
              f"({'own network namespace' if ray_cluster.network.isolated else ray_cluster.network.why_shared})")
        yield ray_cluster
    finally:
        ray_cluster.stop()


def assert_same_index(built: Path, reference: Path) -> None:
    one, other = Index.load(reference, for_building=True), Index.load(built, for_building=True)
    assert list(other.products) == list(one.products)
    assert list(other.image_files) == list(one.image_files)  # each image once: none lost, none twice
    assert np.abs(np.asarray(other.image_embeddings) - np.asarray(one.image_embeddings)).max() <= 1e-5
    assert np.abs(np.asarray(other.product_embeddings) - np.asarray(one.product_embeddings)).max() <= 1e-5
    assert np.array_equal(np.asarray(other.builder["image_sources"]), np.asarray(one.builder["image_sources"]))
    assert other.meta["skipped"] == one.meta["skipped"]


def start_driver(cluster, tmp_path: Path, catalog: Path, out: Path, **models) -> tuple[subprocess.Popen, Path]:
    log = tmp_path / "driver.log"
    args = json.dumps({"catalog": str(catalog), "out": str(out), "address": cluster.address, "models": models})
    with open(log, "wb") as sink:
        driver = cluster.popen([sys.executable, "-c", DRIVER, args], cwd=REPO, stdout=sink, stderr=subprocess.STDOUT)
    return driver, log


def map_workers(cluster) -> list[int]:
    """The nodes' processes still running a map_batches actor."""
    found = []
    for node in cluster.nodes:
        for pid in node.processes():
            try:
                if b"MapWorker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(pid)
            except OSError:
                continue
    return found


def test_results_are_merged_once_each_by_relpath(caplog):
    """The driver's merge (no cluster needed): an image's second result is dropped, one that never
    came back or was never sent is an error."""
    from search.indexing.ray_build import RayBuildError, once_each

    first, again = ("a/1.jpg", "no garment: first"), ("a/1.jpg", "no garment: again")
    sent = {"a/1.jpg", "b/1.jpg", "c/1.jpg"}
    merged = list(once_each([[first, ("b/1.jpg", "x")], [again], [("c/1.jpg", "y")]], sent))
    assert merged == [[first, ("b/1.jpg", "x")], [("c/1.jpg", "y")]]
    assert "1 results came back twice" in caplog.text
    with pytest.raises(RayBuildError, match=r"no result for 1 of 2 images \(e.g. b/1.jpg\)"):
        list(once_each([[first]], {"a/1.jpg", "b/1.jpg"}))
    with pytest.raises(RayBuildError, match="'z/1.jpg', an image this build did not send"):
        list(once_each([[("z/1.jpg", "x")]], {"a/1.jpg"}))


def test_cluster_build_equals_a_local_build(cluster, tmp_path, request):
    """The real CLI, `build --ray ADDRESS`, on both nodes (real tiny CLIP and oracle bg models in
    each actor, from the forwarded settings): the local build's index within 1e-5."""
    synthetic_catalog, synthetic_index = map(request.getfixturevalue, ("synthetic_catalog", "synthetic_index"))
    out = tmp_path / "index"
    started = time.monotonic()
    done = cluster.run([sys.executable, "-m", "search.index", "build", "--catalog", str(synthetic_catalog),
                        "--out", str(out), "--ray", cluster.address, "--batch-size", "2"],
                       timeout=CLI_BUILD_TIMEOUT_S, cwd=REPO)
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    assert "on 2 nodes" in done.stderr, done.stderr[-3000:]
    print(f"cluster CLI build of {synthetic_catalog}: {seconds:.1f} s")
    assert_same_index(out, synthetic_index)


def test_a_failing_batch_stops_the_cluster_build_within_seconds(cluster, tmp_path):
    """40 batches of 1 s queued on two actors (20 s of work), the third raises: the driver exits
    with that error within seconds of it, no actor left running, the previous index unchanged."""
    catalog = write_catalog(tmp_path / "catalog")
    out, marks = tmp_path / "index", tmp_path / "markers"
    marks.mkdir()
    from search.indexing.builder import build_index

    build_index(catalog, out, *ScriptedModels().load(), progress=False)
    before = snapshot(out)
    driver, log = start_driver(cluster, tmp_path, catalog, out, delay=1.0, fail_size=list(FAILING_SIZE),
                               markers=str(marks))
    try:
        driver.wait(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
    exited = time.time()
    text = log.read_text(errors="replace")
    assert driver.returncode != 0 and "BUILT" not in text
    assert "RuntimeError: scripted failure: a batch holding a (61, 80) image" in text, text[-3000:]
    [(failed_at, _)] = markers(marks, "failed")
    print(f"cluster build stopped {exited - failed_at:.1f} s after the failing batch raised")
    assert exited - failed_at < STOPPED_WITHIN_S + 2, f"stopped {exited - failed_at:.1f} s after the failure"
    assert len(markers(marks, "started")) <= 6, f"{len(markers(marks, 'started'))} of {IMAGES} batches started"
    deadline = time.monotonic() + 10  # the actors die with their driver's job
    while map_workers(cluster) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not map_workers(cluster)
    assert snapshot(out) == before


def test_losing_the_worker_node_mid_build_gives_the_same_index(cluster, tmp_path):
    """SIGKILL every process of the worker node while its actor is busy: the build finishes on the
    head with the index a local build gives, each image once."""
    from search.indexing.builder import build_index

    catalog = write_catalog(tmp_path / "catalog", images=NODE_LOSS_IMAGES, failing=None)
    reference = tmp_path / "local"
    build_index(catalog, reference, *ScriptedModels().load(), progress=False)
    out, marks = tmp_path / "index", tmp_path / "markers"
    marks.mkdir()
    worker = cluster.workers[0]
    driver, log = start_driver(cluster, tmp_path, catalog, out, delay=NODE_LOSS_DELAY_S, markers=str(marks))
    try:
        deadline = time.monotonic() + 90
        # mid-build: the worker node's actor has finished two batches, the queue is still long
        while sum(pid in worker.processes() for _, pid in markers(marks, "done")) < 2:
            assert driver.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "the worker node's actor never finished a batch"
            time.sleep(0.1)
        done_before = len(markers(marks, "done"))
        killed_at = worker.kill()
        driver.wait(timeout=110)
    finally:
        if driver.poll() is None:
            driver.kill()
    after_kill = time.monotonic() - killed_at
    text = log.read_text(errors="replace")
    assert driver.returncode == 0 and "BUILT" in text, text[-4000:]
    print(f"worker node killed after {done_before} of {NODE_LOSS_IMAGES} batches; "
          f"the build finished {after_kill:.1f} s later")
    assert "nodes were lost during the build" in text
    assert_same_index(out, reference)
