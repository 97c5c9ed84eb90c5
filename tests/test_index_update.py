"""The indexer never silently drops an image, and --update re-embeds exactly what a change affects."""
from __future__ import annotations

import json
import shutil
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from werkzeug.serving import make_server

from search.garments import GarmentServiceError, LocalGarments, RemoteGarments
from search.index_format import Index
from search.indexing.builder import build_index

FLAT_LAY = "8-grey-flat-lay-888"


def snapshot(index_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(index_dir)): p.read_bytes() for p in sorted(index_dir.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def catalog(tmp_path_factory, synthetic_catalog) -> Path:
    """The synthetic catalog plus a flat-lay: a dark, unsaturated garment and no person, so its
    mask comes from the product matte (source "product") instead of a person's garment."""
    root = tmp_path_factory.mktemp("catalog_update") / "catalog"
    shutil.copytree(synthetic_catalog, root)
    (root / FLAT_LAY).mkdir()
    picture = Image.new("RGB", (240, 320), (235, 235, 235))
    ImageDraw.Draw(picture).rectangle((60, 60, 180, 260), fill=(50, 50, 50))
    picture.save(root / FLAT_LAY / "flat.png")
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory, catalog, tiny_embedder, bg_pipeline) -> Path:
    out = tmp_path_factory.mktemp("built") / "idx"
    report = build_index(catalog, out, tiny_embedder, LocalGarments(bg_pipeline), progress=False)
    assert report.embedded == report.images and not report.skipped
    return out


def fresh_copy(built: Path, tmp_path: Path) -> Path:
    target = tmp_path / "idx"
    shutil.copytree(built, target)
    return target


def sources(index_dir: Path) -> dict[str, str]:
    index = Index.load(index_dir, for_building=True)
    return {index.image_relpath(row): ("garment", "product")[int(code)]
            for row, code in enumerate(index.builder["image_sources"])}


class ServedApp:
    """A WSGI app on 127.0.0.1 in a thread (werkzeug's server), stopped by `close()`."""

    def __init__(self, app):
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()


class Faults:
    """WSGI middleware in front of the real bg-removal app: answers the first `count` POSTs with
    `status` (or sleeps `delay` s first), and 422 for bodies containing `refuse_marker`."""

    def __init__(self, app, status: int | None = None, count: int = 0, delay: float = 0.0):
        self.app, self.status, self.count, self.delay = app, status, count, delay
        self.posts = 0
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        if environ["REQUEST_METHOD"] == "POST":
            with self.lock:
                self.posts += 1
                failing = self.status is not None and self.posts <= self.count
            if self.delay:
                time.sleep(self.delay)
            if failing:
                body = json.dumps({"title": "injected", "status": self.status, "detail": "injected failure"}).encode()
                start_response(f"{self.status} Injected", [("Content-Type", "application/problem+json"),
                                                          ("Retry-After", "0"), ("Content-Length", str(len(body)))])
                return [body]
        return self.app(environ, start_response)


@pytest.fixture
def bg_service(bg_app):
    served = []

    def start(**faults) -> tuple[str, Faults]:
        middleware = Faults(bg_app.wsgi_app, **faults)
        app = ServedApp(middleware)
        served.append(app)
        return app.url, middleware

    yield start
    for app in served:
        app.close()


# ------------------------------------------------------------------ --update honesty


def test_update_with_nothing_changed_reembeds_nothing(built, tmp_path, catalog, tiny_embedder, bg_pipeline):
    out = fresh_copy(built, tmp_path)
    report = build_index(catalog, out, tiny_embedder, LocalGarments(bg_pipeline), update=True, progress=False)
    assert report.embedded == 0 and report.reused == report.images
    assert not report.pipeline_changes


@pytest.mark.parametrize("setting,value", [("garment_threshold", 0.6), ("person_threshold", 0.4),
                                           ("working_max_side", 512)])
def test_a_changed_setting_reembeds_what_it_affects(built, tmp_path, catalog, tiny_embedder, bg_models, setting,
                                                    value):
    from bgremoval.pipeline import GarmentPipeline

    out = fresh_copy(built, tmp_path)
    changed = GarmentPipeline(bg_models, bg_pipeline_settings().model_copy(update={setting: value}))
    report = build_index(catalog, out, tiny_embedder, LocalGarments(changed), update=True, progress=False)
    by_source = sources(built)
    if setting == "garment_threshold":  # only masks of a person's garment depend on it
        expected = sum(s == "garment" for s in by_source.values())
    else:  # person model settings and the working size decide every mask
        expected = len(by_source)
    assert report.embedded == expected and report.reused == report.images - expected
    assert report.reembedded == {"pipeline changed": expected}
    assert any(change.endswith(f"{setting}: {getattr(bg_pipeline_settings(), setting)!r} -> {value!r}")
               for change in report.pipeline_changes), report.pipeline_changes


def bg_pipeline_settings():
    from bgremoval.config import PipelineSettings

    return PipelineSettings()


def test_another_product_model_reembeds_only_flat_lays(built, tmp_path, catalog, tiny_embedder, bg_models,
                                                       monkeypatch):
    from bgremoval.config import BgConfig
    from bgremoval.models import MATTE_INPUTS, open_session
    from bgremoval.pipeline import GarmentPipeline
    from tests.oracle_models import product_matte

    weights = tmp_path / "other_weights"
    weights.mkdir()
    import onnx

    onnx.save(product_matte(extra_layers=1), str(weights / "isnet-general-use.onnx"))
    monkeypatch.setenv("U2NET_HOME", str(weights))
    other_product = open_session("isnet-general-use", MATTE_INPUTS, BgConfig(weights_dir=str(weights)))
    pipeline = GarmentPipeline(replace(bg_models, product=other_product))
    out = fresh_copy(built, tmp_path)
    report = build_index(catalog, out, tiny_embedder, LocalGarments(pipeline), update=True, progress=False)
    flat_lays = [path for path, source in sources(built).items() if source == "product"]
    assert flat_lays == [f"{FLAT_LAY}/flat.png"]
    assert report.embedded == 1 and report.reused == report.images - 1
    assert any(c.startswith("product.product_model.sha256") for c in report.pipeline_changes)


def test_switching_between_in_process_and_service_reembeds_nothing(built, tmp_path, catalog, tiny_embedder,
                                                                   bg_pipeline, bg_service):
    url, _ = bg_service()
    remote = RemoteGarments(url, retries=1, backoff=0.01)
    assert remote.identity == LocalGarments(bg_pipeline).identity  # GET /pipeline
    out = fresh_copy(built, tmp_path)
    to_remote = build_index(catalog, out, tiny_embedder, remote, update=True, progress=False)
    assert to_remote.embedded == 0 and to_remote.reused == to_remote.images
    back = build_index(catalog, out, tiny_embedder, LocalGarments(bg_pipeline), update=True, progress=False)
    assert back.embedded == 0 and back.reused == back.images


def test_service_and_in_process_builds_give_the_same_index(built, tmp_path, catalog, tiny_embedder, bg_service):
    url, _ = bg_service()
    out = tmp_path / "remote"
    report = build_index(catalog, out, tiny_embedder, RemoteGarments(url, retries=1, backoff=0.01), progress=False)
    assert report.embedded == report.images
    local, remote = Index.load(built), Index.load(out)
    assert list(local.products) == list(remote.products)
    assert np.abs(local.image_embeddings - remote.image_embeddings).max() <= 1e-5
    assert sources(built) == sources(out)


# ------------------------------------------------------------------ the service failing


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_transient_service_errors_are_retried(tmp_path, catalog, tiny_embedder, bg_service, status):
    url, faults = bg_service(status=status, count=3)
    report = build_index(catalog, tmp_path / "idx", tiny_embedder, RemoteGarments(url, retries=3, backoff=0.01),
                         progress=False)
    assert report.embedded == report.images and not report.skipped
    assert faults.posts == report.images + 3  # three failed attempts, each retried


@pytest.mark.parametrize("fault", ["503-forever", "refused", "timeout", "404", "400"])
def test_a_failing_service_stops_the_build_and_keeps_the_previous_index(built, tmp_path, catalog, tiny_embedder,
                                                                         bg_service, fault):
    out = fresh_copy(built, tmp_path)
    before = snapshot(out)
    if fault == "refused":
        url, faults = bg_service()
        url = "http://127.0.0.1:9/"  # discard port: nothing listens
    elif fault == "timeout":
        url, faults = bg_service(delay=1.5)
    else:
        status = int(fault.split("-")[0])
        url, faults = bg_service(status=status, count=10**6)
    remote = RemoteGarments(url, retries=2, backoff=0.01, timeout=0.5)
    remote._identity = RemoteGarments(bg_service()[0]).identity  # so that the failures hit the images
    with pytest.raises(GarmentServiceError) as caught:
        build_index(catalog, out, tiny_embedder, remote, update=False, progress=False)
    message = str(caught.value)
    assert "bg-removal service" in message
    if fault in ("503-forever",):
        assert "503" in message and "after 2 retries" in message
        assert faults.posts == 3  # first try + 2 retries, then the build stopped
    if fault in ("404", "400"):
        assert faults.posts == 1  # not transient: no retry
    assert snapshot(out) == before  # the previous index is untouched
    Index.load(out)


def test_no_garment_is_the_only_skip_and_it_is_listed(tmp_path, catalog, tiny_embedder, bg_service):
    url, _ = bg_service()
    blank = Image.new("RGB", (200, 200), (240, 240, 240))
    mixed = tmp_path / "catalog"
    shutil.copytree(catalog, mixed)
    blank.save(mixed / "1-red-top-shop-111" / "blank.png")
    (mixed / "1-red-top-shop-111" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    report = build_index(mixed, tmp_path / "idx", tiny_embedder, RemoteGarments(url, retries=1, backoff=0.01),
                         progress=False)
    reasons = {entry["image"]: entry["reason"] for entry in report.skipped}
    assert set(reasons) == {"1-red-top-shop-111/blank.png", "1-red-top-shop-111/broken.jpg"}
    assert reasons["1-red-top-shop-111/blank.png"].startswith("no garment: ")
    assert reasons["1-red-top-shop-111/broken.jpg"].startswith("unreadable: ")
    assert report.embedded == report.images - 2
    assert Index.load(tmp_path / "idx").meta["skipped"] == report.skipped


def test_cli_reports_a_failed_service_and_exits_non_zero(built, tmp_path, catalog, bg_service, monkeypatch, capsys):
    from search.indexing import cli as index_cli
    from tests.conftest import TINY

    url, _ = bg_service(status=503, count=10**6)
    out = fresh_copy(built, tmp_path)
    before = snapshot(out)
    monkeypatch.setenv("CLIP_MODEL", TINY["model"])
    monkeypatch.setenv("CLIP_PRETRAINED", "")
    monkeypatch.setenv("CLIP_CONFIG_DIR", TINY["extra_config_dir"])
    code = index_cli.main(["build", "--catalog", str(catalog), "--out", str(out), "--bg-url", url,
                           "--bg-retries", "1", "--bg-timeout", "5"])
    err = capsys.readouterr().err
    assert code == 1 and "503" in err and "left as it was" in err
    assert snapshot(out) == before


def test_workers_build_the_same_index(tmp_path, synthetic_catalog, synthetic_index, tiny_embedder, bg_pipeline,
                                      oracle_weights):
    """--workers 2: two spawned processes, each loading its own models from the settings (the
    oracle bg models through U2NET_HOME), give the index one process gives."""
    from search.config import ClipSettings
    from search.indexing.embedding import BuildModels
    from tests.conftest import TINY

    out = tmp_path / "index"
    report = build_index(synthetic_catalog, out, tiny_embedder, LocalGarments(bg_pipeline), progress=False,
                         batch_size=2, workers=2, models=BuildModels(ClipSettings(**TINY)))
    one, two = Index.load(synthetic_index, for_building=True), Index.load(out, for_building=True)
    assert list(two.products) == list(one.products) and list(two.image_files) == list(one.image_files)
    assert report.embedded == len(one.image_files)
    # batch_size differs from the one-process build (16): the vectors agree to float rounding
    assert np.abs(np.asarray(two.image_embeddings) - np.asarray(one.image_embeddings)).max() <= 1e-5
    assert np.abs(np.asarray(two.product_embeddings) - np.asarray(one.product_embeddings)).max() <= 1e-5
    assert two.meta["embedder"] == one.meta["embedder"]
    assert two.meta["garment_pipeline"] == one.meta["garment_pipeline"]


def test_decoding_ahead_in_processes_builds_the_same_index(tmp_path, synthetic_catalog, synthetic_index,
                                                          tiny_embedder, bg_pipeline):
    """--decode-workers 2 (the GPU default): photos decoded by two processes, batches ahead of the
    models, give the index decoding in line gives, to the bit."""
    out = tmp_path / "index"
    report = build_index(synthetic_catalog, out, tiny_embedder, LocalGarments(bg_pipeline), progress=False,
                         decode_workers=2)
    one, two = Index.load(synthetic_index, for_building=True), Index.load(out, for_building=True)
    assert report.embedded == len(one.image_files)
    assert list(two.image_files) == list(one.image_files)
    assert np.array_equal(np.asarray(two.image_embeddings), np.asarray(one.image_embeddings))
    assert np.array_equal(np.asarray(two.product_embeddings), np.asarray(one.product_embeddings))
    assert two.meta["skipped"] == one.meta["skipped"]


def test_workers_refuse_models_other_than_the_builds(tmp_path, synthetic_catalog, tiny_embedder, bg_pipeline,
                                                     oracle_weights):
    from search.config import ClipSettings
    from search.indexing.embedding import BuildModels
    from tests.conftest import TINY

    with pytest.raises(RuntimeError, match="other models"):
        build_index(synthetic_catalog, tmp_path / "index", tiny_embedder, LocalGarments(bg_pipeline),
                    progress=False, workers=2, models=BuildModels(ClipSettings(**{**TINY, "seed": 3})))
    assert not (tmp_path / "index" / "meta.json").exists()


def test_ray_build_gives_the_same_index(tmp_path, synthetic_catalog, synthetic_index, tiny_embedder, bg_pipeline,
                                        oracle_weights, monkeypatch):
    """--ray on a local Ray with 2 CPUs: actors load the models from the driver's settings and
    the index matches the single-process build within 1e-5."""
    pytest.importorskip("ray", reason="the Ray build needs requirements-ray.txt")
    from search.config import ClipSettings
    from search.indexing.embedding import BuildModels
    from tests.conftest import TINY

    for key, value in {"CLIP_MODEL": TINY["model"], "CLIP_PRETRAINED": "", "CLIP_CONFIG_DIR": TINY["extra_config_dir"]}.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "index"
    report = build_index(synthetic_catalog, out, tiny_embedder, LocalGarments(bg_pipeline), progress=False,
                         batch_size=4, workers=2, models=BuildModels(ClipSettings(**TINY)), ray="local")
    one, ray_built = Index.load(synthetic_index, for_building=True), Index.load(out, for_building=True)
    assert list(ray_built.products) == list(one.products) and list(ray_built.image_files) == list(one.image_files)
    assert report.embedded == len(one.image_files)
    assert np.abs(np.asarray(ray_built.image_embeddings) - np.asarray(one.image_embeddings)).max() <= 1e-5
    assert np.abs(np.asarray(ray_built.product_embeddings) - np.asarray(one.product_embeddings)).max() <= 1e-5
    assert np.array_equal(np.asarray(ray_built.builder["image_sources"]), np.asarray(one.builder["image_sources"]))
    assert ray_built.meta["skipped"] == one.meta["skipped"]


def test_build_cli_publishes_to_milvus(tmp_path, synthetic_catalog, oracle_weights, monkeypatch, capsys):
    """`build --publish URI`: the build, then the idempotent upsert into Milvus (Lite here)."""
    pytest.importorskip("milvus_lite", reason="needs milvus-lite (requirements-dev.txt)")
    from search.indexing.cli import main
    from tests.conftest import TINY

    for key, value in {"CLIP_MODEL": TINY["model"], "CLIP_PRETRAINED": "", "CLIP_CONFIG_DIR": TINY["extra_config_dir"]}.items():
        monkeypatch.setenv(key, value)
    uri = str(tmp_path / "milvus.db")
    assert main(["build", "--catalog", str(synthetic_catalog), "--out", str(tmp_path / "index"), "--publish", uri]) == 0
    out = capsys.readouterr().out
    assert "indexed 12 of 12 images" in out and '"upserted"' in out


# ------------------------------------------------------------------ one product added (freshness)


NEW = "7-new-pink-top-777"
FIRST = {"1-red-top-shop-111": [0, 1], "2-blue-trousers-shop-222": [0], "5-navy-skirt-shop-555": [0, 2]}


class CountingEmbedder:
    """The embedder, counting the garment pictures its image tower is given."""

    def __init__(self, embedder):
        self.embedder, self.images = embedder, 0

    def __getattr__(self, name):
        return getattr(self.embedder, name)

    def encode_images(self, pictures):
        self.images += len(pictures)
        return self.embedder.encode_images(pictures)


def image_rows(index: Index) -> dict[tuple[str, str], int]:
    """(product key, file) -> image row, for folder catalogs and feeds alike."""
    return {(index.products[p], index.image_files[row]): row for p in range(len(index.products))
            for row in index.image_rows(p)}


def write_photos(folder: Path, colour, variants) -> list[str]:
    from tests.conftest import person_wearing

    folder.mkdir(parents=True, exist_ok=True)
    for v in variants:
        person_wearing(colour, v).save(folder / f"photo-{v}.jpg", quality=95)
    return [f"photo-{v}.jpg" for v in variants]


def feed_row(key: str, files: list[str]) -> dict:
    return {"id": key, "name": " ".join(key.split("-")[1:-1]), "price": 10,
            "images": [f"img/{key}/{f}" for f in files]}


@pytest.mark.parametrize("kind", ["folders", "feed"])
def test_an_update_adding_one_product_embeds_it_alone_and_keeps_every_other_vector(kind, tmp_path, tiny_embedder,
                                                                                   bg_pipeline, monkeypatch):
    """The freshness path (bench/freshness.py at 100k products): one new product, and the update
    embeds exactly its images, reads and hashes only its files (the others' stats are the ones
    recorded), chooses only its garment classes, and copies every other image row, thumbnail
    and pooled product row bit for bit; the new product's rows are a full build's."""
    from search.indexing import catalog as catalog_module
    from search.indexing.feed_catalog import load_feed_catalog
    from shared.fetch import FetchPolicy
    from shared.garment_vocabulary import Vocabulary
    from tests.conftest import PRODUCT_COLOURS

    # the photos are written a moment before each build: trust their stats anyway (RACY_NS)
    monkeypatch.setattr(catalog_module, "RACY_NS", 0)
    garments = LocalGarments(bg_pipeline)
    root = tmp_path / "catalog"
    folder = root / "img" if kind == "feed" else root
    rows = [feed_row(key, write_photos(folder / key, PRODUCT_COLOURS[key], variants))
            for key, variants in FIRST.items()]
    Image.new("RGB", (200, 200), (240, 240, 240)).save(folder / "1-red-top-shop-111" / "blank.png")  # no garment
    rows[0]["images"].append("img/1-red-top-shop-111/blank.png")

    def build(out: Path, embedder, update: bool = False):
        if kind == "folders":
            return build_index(root, out, embedder, garments, update=update, progress=False)
        (root / "products.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        feed = load_feed_catalog(root / "products.jsonl", vocabulary=Vocabulary.load(), fetch_policy=FetchPolicy(),
                                 cache_dir=out / "image-cache", progress=False)
        return build_index(None, out, embedder, garments, update=update, progress=False, feed=feed)

    out = tmp_path / "index"
    first = build(out, tiny_embedder)
    assert first.embedded == 5 and first.images == 6 and [s["reason"][:10] for s in first.skipped] == ["no garment"]
    before = Index.load(out, for_building=True)
    old_rows = image_rows(before)
    old = {name: np.array(before.builder[name] if name in before.builder else getattr(before, name))
           for name in ("image_embeddings", "thumbs", "image_sources", "product_embeddings")}
    old_products = list(before.products)
    del before

    rows.append(feed_row(NEW, write_photos(folder / NEW, (240, 40, 160), [0, 1])))
    chosen = []
    choose = Vocabulary.choose
    monkeypatch.setattr(Vocabulary, "choose", lambda self, text: chosen.append(text) or choose(self, text))
    counting = CountingEmbedder(tiny_embedder)
    report = build(out, counting, update=True)

    assert counting.images == 2 and report.embedded == 2 and report.reused == 5
    assert report.reembedded == {"new image": 2} and report.reembedded_products == {NEW}
    assert report.skipped_again == 1 and report.skipped == first.skipped  # the blank photo: not tried again
    assert report.hashed == 2  # the six unchanged files were not read: their stat is the recorded one
    assert chosen and all(text in (NEW, feed_row(NEW, [])["name"]) for text in chosen), chosen
    after = Index.load(out, for_building=True)
    new_rows = image_rows(after)
    assert set(new_rows) == set(old_rows) | {(NEW, f) for f in (["photo-0.jpg", "photo-1.jpg"] if kind == "folders"
                                                                 else [f"img/{NEW}/photo-0.jpg",
                                                                       f"img/{NEW}/photo-1.jpg"])}
    for key, row in old_rows.items():  # bit for bit
        assert np.asarray(after.image_embeddings)[new_rows[key]].tobytes() == old["image_embeddings"][row].tobytes()
        assert np.asarray(after.thumbs)[new_rows[key]].tobytes() == old["thumbs"][row].tobytes()
        assert after.builder["image_sources"][new_rows[key]] == old["image_sources"][row]
    for p, name in enumerate(old_products):
        assert np.asarray(after.product_embeddings)[after.products.find(name)].tobytes() == \
            old["product_embeddings"][p].tobytes()
    # the new product's rows are what a full build of the same catalog gives (batches differ: float rounding)
    monkeypatch.setattr(Vocabulary, "choose", choose)
    full = tmp_path / "full"
    build(full, tiny_embedder)
    reference = Index.load(full, for_building=True)
    assert list(reference.products) == list(after.products) and image_rows(reference) == new_rows
    assert np.abs(np.asarray(reference.image_embeddings) - np.asarray(after.image_embeddings)).max() <= 1e-5
    assert np.abs(np.asarray(reference.product_embeddings) - np.asarray(after.product_embeddings)).max() <= 1e-5
    assert np.array_equal(np.asarray(reference.builder["image_sources"]), np.asarray(after.builder["image_sources"]))
    # and a second update finds nothing to do, reading no file
    again = build(out, CountingEmbedder(tiny_embedder), update=True)
    assert again.embedded == 0 and again.reused == 7 and again.hashed == 0
