"""Writers of an index folder (docs/index-writers.md): one at a time (the writer lock), a crash at
any step leaves a whole index (the old or the new) and the next writer cleans up, and no generation
a reader holds is removed."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from search.index_format import GenerationChanged, Index, IndexArrays, update_meta, write_index
from search.index_guard import (
    READERS_FILE,
    REMOVING_PREFIX,
    WRITER_LOCK_FILE,
    GenerationGone,
    WriterBusy,
    hold_generation,
    is_staged,
    new_folder_version,
    switch_folder,
    writer_lock,
)
from search.text_encoder import EXPORT_DIRNAME, export_dir

REPO = Path(__file__).resolve().parent.parent
META = {"embedder": {}, "garment_pipeline": {}, "pooling": "max", "catalog_dir": "/nowhere"}
OLD, NEW, NEXT = 1, 2, 3  # seeds of the index contents: before the crashed write, its own, the next writer's
# What the crash tests kill a writer at (the k-th call of any of them), patched in the child process only.
FAULT_POINTS = ((os, "replace"), (os, "rename"), (os, "fsync"), (os, "mkdir"), (np, "save"), (shutil, "rmtree"))


# ------------------------------------------------------------------ small indexes and exports


def small_arrays(seed: int, products: int = 3) -> IndexArrays:
    rng = np.random.default_rng(seed)
    counts = [1 + i % 2 for i in range(products)]
    total = sum(counts)
    images = rng.standard_normal((total, 8)).astype(np.float32)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    pooled = np.maximum.reduceat(images, np.concatenate([[0], np.cumsum(counts)[:-1]]))
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    return IndexArrays(images, pooled, counts, [f"{seed}-product-{i}" for i in range(products)],
                       [f"{j}.jpg" for c in counts for j in range(c)], ["00" * 32] * total, ["garment"] * total,
                       np.zeros((total, 4), np.float32))


def content(index: Index) -> tuple:
    """What a reader gets: the product ids and every vector."""
    return (tuple(index.products[i] for i in range(len(index.products))),
            np.asarray(index.image_embeddings).tobytes(), np.asarray(index.product_embeddings).tobytes())


def content_of(arrays: IndexArrays) -> tuple:
    return (tuple(arrays.product_names), np.ascontiguousarray(arrays.image_embeddings).tobytes(),
            np.ascontiguousarray(arrays.product_embeddings).tobytes())


def generations(folder: Path) -> set[str]:
    return {p.name for p in folder.glob("gen-*")}


def leftovers(folder: Path) -> list[str]:
    """Temp files, folders being removed, export versions no link shows."""
    found = [str(p.relative_to(folder)) for p in folder.rglob("*")
             if is_staged(p.name) or p.name.startswith(REMOVING_PREFIX)]
    export = folder / EXPORT_DIRNAME
    shown = os.path.basename(os.path.realpath(export)) if export.is_symlink() else None
    found += [p.name for p in folder.glob(f".{EXPORT_DIRNAME}.*") if p.name != shown]
    return found


def write_then_ann(folder: Path) -> None:
    """What a build and then `search.index ann` write: a new generation, then its approximate index."""
    from search.indexing.ann import build_ann

    write_index(folder, small_arrays(NEW), META)
    build_ann(folder, "flat-fp16", progress=False)


def write_export(directory: Path, marker: str) -> None:
    (directory / "graph.onnx").write_bytes(marker.encode() * 1000)
    (directory / "export.json").write_text(json.dumps({"marker": marker}))


def swap_export(folder: Path, marker: str = "new") -> None:
    """What `search.export` writes, without the models: a new version of the export folder, then
    the link flipped to it."""
    with writer_lock(folder, "export"):
        version = new_folder_version(folder / EXPORT_DIRNAME)
        write_export(version, marker)
        switch_folder(folder / EXPORT_DIRNAME, version)


def export_marker(folder: Path) -> str | None:
    """The export as a worker loads it: the path resolved once (the service's export_dir), every
    file read from there; None when there is none."""
    resolved = export_dir(SimpleNamespace(text_encoder_dir=None, index_dir=str(folder)))
    if not (resolved / "export.json").is_file():
        return None
    marker = json.loads((resolved / "export.json").read_text())["marker"]
    assert (resolved / "graph.onnx").read_bytes() == marker.encode() * 1000, "an export of two versions"
    return marker


@pytest.fixture
def scratch(tmp_path):
    """A folder on tmpfs where there is one: the crash loops run many small writes, and their
    fsyncs would cost seconds on a disk (a SIGKILL's outcome does not depend on them)."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(prefix="index-writers-", dir=shm))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


# ------------------------------------------------------------------ crashing writers

# A process that imports the writers once, then forks one child per request: the child patches
# FAULT_POINTS to SIGKILL itself at their k-th call, and runs a scenario of this file.
CRASH_SERVER = r"""
import json, os, signal, sys, tempfile, traceback
from pathlib import Path

from tests import test_index_writers as scenarios

with tempfile.TemporaryDirectory() as warm_up:  # imports and first-use set-up (the stemmer, faiss) paid once
    scenarios.write_then_ann(Path(warm_up))
    scenarios.swap_export(Path(warm_up))


def arm(k):
    calls = [0]

    def wrap(module, name):
        real = getattr(module, name)

        def faulty(*args, **kwargs):
            calls[0] += 1
            if calls[0] == k:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)

        setattr(module, name, faulty)

    for module, name in scenarios.FAULT_POINTS:
        wrap(module, name)


for line in sys.stdin:
    request = json.loads(line)
    child = os.fork()
    if child == 0:
        status = 0
        try:
            if request["no_exchange"]:  # as on a filesystem without renameat2's exchange
                import search.index_guard
                search.index_guard._exchange = lambda a, b: False
            arm(request["k"])
            getattr(scenarios, request["scenario"])(Path(request["folder"]))
        except BaseException:
            traceback.print_exc()
            status = 1
        sys.stderr.flush()
        os._exit(status)
    _, status = os.waitpid(child, 0)
    print(json.dumps({"exit": os.waitstatus_to_exitcode(status)}), flush=True)
"""


@pytest.fixture(scope="module")
def crash_server():
    server = subprocess.Popen([sys.executable, "-c", CRASH_SERVER], cwd=REPO, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    yield server
    server.stdin.close()
    server.wait(timeout=30)


def killed_at(server, scenario: str, folder: Path, k: int, *, no_exchange: bool = False) -> bool:
    """Run `scenario` on `folder` in a child killed at its k-th FAULT_POINTS call: True when it
    was killed, False when it finished first."""
    server.stdin.write(json.dumps({"scenario": scenario, "folder": str(folder), "k": k,
                                   "no_exchange": no_exchange}) + "\n")
    server.stdin.flush()
    outcome = json.loads(server.stdout.readline())["exit"]
    assert outcome in (0, -9), f"{scenario} failed at k={k} without being killed (exit {outcome}); see stderr"
    return outcome == -9


def test_a_crash_at_any_step_of_a_build_and_its_ann_leaves_a_whole_index(crash_server, scratch):
    """SIGKILL at the k-th write step, for every k until a run completes: the index loads whole,
    as the old or the new generation; a reader's held old generation keeps its folder; the next
    writer gets the lock at once, writes, and no leftover remains."""
    base = scratch / "base"
    old = write_index(base, small_arrays(OLD), META)["generation"]
    before, after = content_of(small_arrays(OLD)), content_of(small_arrays(NEW))
    k = 0
    while True:
        k += 1
        folder = scratch / f"crash-{k}"
        shutil.copytree(base, folder)
        with hold_generation(folder, old) as reader:
            finished = not killed_at(crash_server, "write_then_ann", folder, k)
            index = Index.load(folder)
            seen = content(index)
            assert seen in (before, after), f"k={k}: neither the old index nor the new one"
            ann = index.meta.get("ann")
            if ann is not None:
                assert seen == after and (index.generation_dir / ann["file"]).is_file(), f"k={k}"
            assert reader.held and (folder / old / "image_embeddings.npy").is_file(), f"k={k}: held generation gone"
            with writer_lock(folder, "next writer", wait=False):  # WriterBusy if the dead writer's lock stayed
                current = write_index(folder, small_arrays(NEXT), META)["generation"]
            assert content(Index.load(folder)) == content_of(small_arrays(NEXT))
            assert leftovers(folder) == [], f"k={k}"
            assert generations(folder) == {old, current}, f"k={k}: only the current one and the held one stay"
        del index
        shutil.rmtree(folder)
        if finished:
            break
    assert seen == after and ann is not None and ann["kind"] == "flat-fp16"  # the last run wrote it all
    assert k > 60  # every array's save and sync, the readers file, the switch, the ann file, its meta entry


@pytest.mark.parametrize("start", ["link", "real folder", "real folder, no exchange"])
def test_a_crash_at_any_step_of_an_export_swap_leaves_one_whole_export(crash_server, scratch, start):
    """The export folder flipped to a new version, killed at every step: a worker finds the old
    export or the new one, never a mix (the first export over a real folder migrates it: with an
    atomic exchange, or by two renames the next writer undoes when killed between them); the next
    writer removes the versions no link shows, and its own swap works."""
    base = scratch / "base"
    write_index(base, small_arrays(OLD), META)
    if start == "link":
        swap_export(base, "old")
    else:
        (base / EXPORT_DIRNAME).mkdir()
        write_export(base / EXPORT_DIRNAME, "old")
    k = 0
    while True:
        k += 1
        folder = scratch / f"crash-{k}"
        shutil.copytree(base, folder, symlinks=True)
        finished = not killed_at(crash_server, "swap_export", folder, k, no_exchange=start.endswith("no exchange"))
        seen = export_marker(folder)
        if not start.endswith("no exchange"):  # killed between the two renames, there is briefly none
            assert seen in ("old", "new"), f"k={k}"
        with writer_lock(folder, "next writer", wait=False):
            pass  # taking the lock cleans up
        assert export_marker(folder) in ({seen} if seen else {"old", "new"}), f"k={k}"
        assert leftovers(folder) == [], f"k={k}"
        swap_export(folder, "next")
        assert export_marker(folder) == "next" and leftovers(folder) == []
        assert (folder / EXPORT_DIRNAME).is_symlink() and len(list(folder.glob(f".{EXPORT_DIRNAME}.*"))) == 1
        shutil.rmtree(folder)
        if finished:
            break
    assert seen == "new" and k > 5


# ------------------------------------------------------------------ generations, compare-and-set


def test_a_held_generation_outlives_later_writes_and_goes_once_released(scratch):
    out = scratch / "index"
    first = write_index(out, small_arrays(1), META)["generation"]
    assert (out / first / READERS_FILE).is_file()
    reader = hold_generation(out, first)
    second = write_index(out, small_arrays(2), META)["generation"]
    assert generations(out) == {first, second}
    third = write_index(out, small_arrays(3), META)["generation"]
    assert generations(out) == {first, third}  # the second, never held, went at the switch to the third
    assert np.asarray(np.load(out / first / "image_embeddings.npy")).tobytes() == \
        np.ascontiguousarray(small_arrays(1).image_embeddings).tobytes()
    reader.release()
    with writer_lock(out, "next writer"):  # any next writer (ann, export, publish) removes it
        pass
    assert generations(out) == {third}
    with pytest.raises(GenerationGone):
        hold_generation(out, first)
    assert content(Index.load(out)) == content_of(small_arrays(3))


def test_ann_for_a_generation_a_build_replaced_is_refused(scratch):
    out = scratch / "index"
    old = write_index(out, small_arrays(1), META)["generation"]
    new = write_index(out, small_arrays(2), META)["generation"]
    written = (out / "meta.json").read_bytes()
    with pytest.raises(GenerationChanged, match=f"now generation {new}, not {old} .*search.index ann"):
        update_meta(out, expect_generation=old, ann={"kind": "hnsw", "file": "ann-hnsw.faiss"})
    assert (out / "meta.json").read_bytes() == written
    assert update_meta(out, expect_generation=new, checked=True)["checked"] is True


def test_the_lock_is_taken_once_per_thread_and_names_its_holder(scratch):
    out = scratch / "index"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom search.index_guard import writer_lock\n"
                               f"with writer_lock({str(out)!r}, 'ann'):\n    print('held', flush=True)\n"
                               "    time.sleep(600)"], cwd=REPO, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(WriterBusy, match=rf"^`ann` \(pid {holder.pid}, since \d\d:\d\d:\d\d\) is writing {out};"):
            with writer_lock(out, "build", wait=False):
                pass
    finally:
        holder.kill()  # SIGKILL: the kernel drops its lock
        holder.wait()
    with writer_lock(out, "build", wait=False):
        with writer_lock(out, "update_meta", wait=False):  # nested in the same thread: held once
            assert json.loads((out / WRITER_LOCK_FILE).read_text())["command"] == "build"
    assert (out / WRITER_LOCK_FILE).read_text() == ""  # released: no stale holder named


# ------------------------------------------------------------------ two real build commands


@pytest.fixture(scope="module")
def tiny_catalog(tmp_path_factory) -> Path:
    from tests.conftest import PRODUCT_COLOURS, person_wearing

    root = tmp_path_factory.mktemp("writers_catalog")
    for product, colour in list(PRODUCT_COLOURS.items())[:2]:
        (root / product).mkdir()
        person_wearing(colour, 0).save(root / product / "photo-0.jpg", quality=95)
    return root


def test_two_builds_of_one_index_run_one_after_the_other(tmp_path, tiny_catalog, oracle_weights):
    """Two `search.index build --out SAME` started together: one says it waits for the other,
    both finish, and the index loads; a third with --no-wait exits 2 naming the holder."""
    from tests.conftest import TINY

    out = tmp_path / "index"
    env = {**os.environ, "PYTHONPATH": str(REPO), "CLIP_MODEL": TINY["model"], "CLIP_PRETRAINED": "",
           "CLIP_CONFIG_DIR": TINY["extra_config_dir"], "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "search.index", "build", "--catalog", str(tiny_catalog), "--out", str(out)]
    builds = [subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(2)]
    try:
        deadline = time.monotonic() + 60
        holder = None
        while holder is None and time.monotonic() < deadline:  # until one of them holds the folder
            assert all(b.poll() is None for b in builds), [b.communicate()[1][-2000:] for b in builds]
            try:
                holder = json.loads((out / WRITER_LOCK_FILE).read_text() or "null")
            except (FileNotFoundError, ValueError):
                pass
            time.sleep(0.05)
        assert holder is not None and holder["pid"] in {b.pid for b in builds}
        refused = subprocess.run(command + ["--no-wait"], cwd=REPO, env=env, capture_output=True, text=True,
                                 timeout=60)
        results = [b.communicate(timeout=120) for b in builds]
    finally:
        for b in builds:
            b.kill()
    assert [b.returncode for b in builds] == [0, 0], [err[-2000:] for _, err in results]
    waited = [i for i, (_, err) in enumerate(results) if "waiting for" in err]
    assert len(waited) == 1, [err[-2000:] for _, err in results]
    first = builds[1 - waited[0]]
    line = re.search(r"^waiting for .*$", results[waited[0]][1], re.M).group(0)
    assert re.fullmatch(rf"waiting for `build` \(pid {first.pid}, since \d\d:\d\d:\d\d\) to finish writing "
                        rf"{re.escape(str(out))} \.\.\.", line), line
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert re.search(rf"^`build` \(pid ({builds[0].pid}|{builds[1].pid}), since \d\d:\d\d:\d\d\) is writing "
                     rf"{re.escape(str(out))}; not waiting \(--no-wait\)", refused.stderr, re.M), refused.stderr[-2000:]
    index = Index.load(out)
    assert len(index.products) == 2 and generations(out) == {index.meta["generation"]}
    assert leftovers(out) == []
