"""A failed build stops within seconds (search/indexing/executors.py): many slow batches queued,
one fails early, and the build raises a clear error soon after that failure, long before the
queued batches could have run; the worker processes are gone and the previous index is as it was.
A failure that is certain (models that cannot load, or are not the build's) is raised by each
worker's first batch, before any work.

The steps run in spawned worker processes, so the test's models travel to them: ScriptedModels
loads numpy-only test doubles (tests/colour_embedder.py's CLIP double and a whole-photo garment
step) that sleep per batch, fail on the batch holding an image of a chosen size, and leave a
marker file per batch (what, when, which process). Workers start in about a second."""
from __future__ import annotations

import hashlib
import multiprocessing
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from search.garments import Cutout, _Garments
from search.indexing.embedding import BuildModels, WorkerModelsError
from tests.colour_embedder import ColourEmbedder
from tests.conftest import PRODUCT_COLOURS

pytestmark = pytest.mark.timeout(120)

IMAGE_SIZE = (60, 80)
FAILING_SIZE = (61, 80)  # the one image whose batch raises
BATCH_DELAY_S = 1.0
IMAGES = 40  # with 2 workers and BATCH_DELAY_S per batch of one: 20 s to run them all
STOPPED_WITHIN_S = 4.0  # from the failure to the build's error: "within seconds", on a busy 2-core machine


class ScriptedGarments(_Garments):
    """The whole photo as the garment, after `delay` seconds; raises on a batch holding an image of
    `fail_size`; each batch leaves `<markers>/<what>-<time>-<pid>` (started, done, failed)."""

    def __init__(self, script: ScriptedModels):
        self.script = script
        self.description = f"scripted garment step (test double, variant {script.variant})"

    @property
    def identity(self) -> dict:
        return {"test_double": "whole photo", "variant": self.script.variant, "shared": {"working_max_side": 512}}

    def _mark(self, what: str) -> None:
        if self.script.markers:
            Path(self.script.markers, f"{what}-{time.time():.6f}-{os.getpid()}").touch()

    def garments(self, batch, classes=None, fallback=False):
        self._mark("started")
        if self.script.lose and os.path.exists(self.script.lose):  # the catalog changes under the build
            shutil.rmtree(self.script.lose)
        if self.script.fail_size and any(tuple(d.rgb.size) == tuple(self.script.fail_size) for d in batch):
            time.sleep(self.script.fail_after)
            self._mark("failed")
            raise RuntimeError(f"scripted failure: a batch holding a {tuple(self.script.fail_size)} image")
        time.sleep(self.script.delay)
        self._mark("done")
        return [Cutout(d.rgb, "garment", tuple(classes[i]) if classes else ("upper", "lower", "full"), False)
                for i, d in enumerate(batch)]


@dataclass(frozen=True)
class OnTheCpu:
    """What the executors read of ClipSettings: where the models run."""

    device: str = "cpu"


@dataclass(frozen=True)
class ScriptedModels(BuildModels):
    """BuildModels whose load() gives the test doubles (picklable: workers and Ray actors load
    their own)."""

    clip: object = OnTheCpu()
    delay: float = 0.0
    fail_size: tuple[int, int] | None = None
    fail_after: float = 0.2
    markers: str = ""
    variant: int = 0  # another variant: "other models" than a build of variant 0
    cannot_load: bool = False
    lose: str = ""  # a folder the first batch deletes

    def load(self):
        if self.cannot_load:
            raise OSError("scripted: the model weights are not where the settings say")
        return ColourEmbedder(), ScriptedGarments(self)


def write_catalog(root: Path, images: int = IMAGES, failing: int | None = 2) -> Path:
    """`images` products of one photo each (sorted by name: image i is batch i at batch size 1);
    image `failing` has FAILING_SIZE."""
    colours = list(PRODUCT_COLOURS.values())
    for i in range(images):
        folder = root / f"p{i:03d}-shirt"
        folder.mkdir(parents=True)
        size = FAILING_SIZE if i == failing else IMAGE_SIZE
        Image.new("RGB", size, colours[i % len(colours)]).save(folder / "photo.png")
    return root


def snapshot(folder: Path) -> dict[str, tuple[int, int, str]]:
    """Every file and folder under `folder` with its size, mtime and content digest."""
    files = {}
    for path in sorted(folder.rglob("*")):
        stat = path.stat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        files[str(path.relative_to(folder))] = (stat.st_size, stat.st_mtime_ns, digest)
    return files


def markers(folder: Path, what: str) -> list[tuple[float, int]]:
    """(time, pid) of each `what` marker."""
    found = []
    for path in folder.glob(f"{what}-*"):
        _, stamp, pid = path.name.split("-")
        found.append((float(stamp), int(pid)))
    return sorted(found)


@pytest.fixture
def catalog(tmp_path) -> Path:
    return write_catalog(tmp_path / "catalog")


@pytest.fixture
def previous_index(tmp_path, catalog) -> Path:
    """An index already built into the folder the failing builds write to."""
    from search.indexing.builder import build_index

    embedder, garments = ScriptedModels().load()
    out = tmp_path / "index"
    build_index(catalog, out, embedder, garments, progress=False)
    return out


def no_worker_left() -> bool:
    return not multiprocessing.active_children()


def test_a_failing_batch_stops_a_workers_build_within_seconds(tmp_path, catalog, previous_index):
    """--workers 2, 40 batches of 1 s each queued (20 s of work), the third fails: the build raises
    that failure within seconds of it, runs no queued batch, ends its workers and leaves the
    previous index as it was."""
    from search.indexing.builder import build_index

    marks = tmp_path / "markers"
    marks.mkdir()
    before = snapshot(previous_index)
    models = ScriptedModels(delay=BATCH_DELAY_S, fail_size=FAILING_SIZE, markers=str(marks))
    embedder, garments = ScriptedModels().load()
    started = time.time()
    with pytest.raises(RuntimeError, match=r"scripted failure: a batch holding a \(61, 80\) image"):
        build_index(catalog, previous_index, embedder, garments, progress=False, batch_size=1, workers=2,
                    models=models)
    raised = time.time()
    [(failed_at, _)] = markers(marks, "failed")
    ran = markers(marks, "started")
    assert raised - failed_at < STOPPED_WITHIN_S, f"stopped {raised - failed_at:.1f} s after the failure"
    assert raised - started < IMAGES / 2 * BATCH_DELAY_S / 2, "the build took as long as half its batches"
    # the two workers' first batches, the failing one and at most one more each: none of the queue
    assert len(ran) <= 5, f"{len(ran)} of {IMAGES} batches started"
    assert all(stamp < failed_at + STOPPED_WITHIN_S for stamp, _ in ran)
    assert no_worker_left(), [(p.name, p.pid, p.exitcode) for p in multiprocessing.active_children()]
    assert snapshot(previous_index) == before


@pytest.mark.parametrize("broken, message", [
    (dict(cannot_load=True), r"a worker process could not load the build's models: OSError: scripted"),
    (dict(variant=1), r"a worker process loaded other models than the build's"),
], ids=["models-cannot-load", "other-models"])
def test_workers_without_the_builds_models_stop_before_any_batch(tmp_path, catalog, previous_index, broken,
                                                                 message):
    """Certain failures, the same for every batch: the first batch raises it, no batch is embedded
    (no marker), nothing is retried."""
    from search.indexing.builder import build_index

    marks = tmp_path / "markers"
    marks.mkdir()
    before = snapshot(previous_index)
    embedder, garments = ScriptedModels().load()
    models = ScriptedModels(delay=BATCH_DELAY_S, markers=str(marks), **broken)
    started = time.monotonic()
    with pytest.raises(WorkerModelsError, match=message):
        build_index(catalog, previous_index, embedder, garments, progress=False, batch_size=1, workers=2,
                    models=models)
    assert time.monotonic() - started < IMAGES / 2 * BATCH_DELAY_S / 2
    assert not list(marks.iterdir()), "a worker embedded a batch with models other than the build's"
    assert no_worker_left(), [(p.name, p.pid, p.exitcode) for p in multiprocessing.active_children()]
    assert snapshot(previous_index) == before


def test_a_failing_batch_stops_the_decode_workers(tmp_path, catalog, previous_index):
    """--decode-workers 2 (photos decoded ahead in processes, models here): the models' failure
    ends the decode processes at once, the queued photos are not decoded."""
    from search.indexing.builder import build_index

    before = snapshot(previous_index)
    embedder, garments = ScriptedModels(delay=0.2, fail_size=FAILING_SIZE).load()
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="scripted failure"):
        build_index(catalog, previous_index, embedder, garments, progress=False, batch_size=1, decode_workers=2)
    assert time.monotonic() - started < IMAGES * 0.2
    assert no_worker_left(), [(p.name, p.pid, p.exitcode) for p in multiprocessing.active_children()]
    assert snapshot(previous_index) == before


def test_a_decode_failure_stops_the_build(tmp_path, catalog, previous_index):
    """A photo that raises in a decode process (not "unreadable": its file is gone once the build
    started) stops the build with that error."""
    from search.indexing.builder import build_index

    before = snapshot(previous_index)
    embedder, garments = ScriptedModels(delay=0.2, lose=str(catalog / "p010-shirt")).load()
    with pytest.raises(FileNotFoundError, match="p010-shirt"):
        build_index(catalog, previous_index, embedder, garments, progress=False, batch_size=1, decode_workers=2)
    assert no_worker_left(), [(p.name, p.pid, p.exitcode) for p in multiprocessing.active_children()]
    assert snapshot(previous_index) == before


def test_workers_without_a_failure_build_the_same_index(tmp_path, catalog, previous_index):
    """The other side: --workers 2 that all succeed give, in order, the index one process gives,
    and end their processes."""
    import numpy as np

    from search.index_format import Index
    from search.indexing.builder import build_index

    catalog_ok = write_catalog(tmp_path / "catalog-ok", failing=None)
    one = tmp_path / "one"
    build_index(catalog_ok, one, *ScriptedModels().load(), progress=False)
    two = tmp_path / "two"
    build_index(catalog_ok, two, *ScriptedModels().load(), progress=False, batch_size=3, workers=2,
                models=ScriptedModels())
    a, b = Index.load(one, for_building=True), Index.load(two, for_building=True)
    assert list(b.image_files) == list(a.image_files) and list(b.products) == list(a.products)
    assert np.array_equal(np.asarray(b.image_embeddings), np.asarray(a.image_embeddings))
    assert no_worker_left(), [(p.name, p.pid, p.exitcode) for p in multiprocessing.active_children()]
