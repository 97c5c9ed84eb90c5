"""Photo queries on the search service hold their pixels in the worker's budget (SEARCH_MAX_INFLIGHT_MP,
shared/budget.py, as the bg service's BG_MAX_INFLIGHT_MP): reserved from the header before any pixel
is decoded, the in-process garment step's pixels included, so a worker's memory is bounded by
configuration whatever photos clients send at once."""
from __future__ import annotations

import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image

import search.photos
from bench.load import rss_mb, worker_pids
from search.garments import Cutout, LocalGarments, RemoteGarments
from search.photos import PhotoEmbedder
from shared.budget import PixelBudget
from shared.errors import Overloaded
from shared.images import open_image, pixels_to_decode
from tests import scenes
from tests.conftest import REPO, TINY, person_wearing, server_log, start_gunicorn, stop

WORKING_SIDE = 1024  # the pipeline's default working size (PhotoEmbedder's without index metadata)
BIG = (5472, 7296)  # 39.9 MP: just under the 40 MP MAX_IMAGE_PIXELS cap


def encoded(picture: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    picture.save(buf, fmt, **options)
    return buf.getvalue()


def big_person_png(size=BIG) -> bytes:
    """A person in a red top (the oracle models' "upper" garment) at `size`: flat colours, so a
    39.9 MP PNG is a few hundred KB, well within the 20 MB upload cap (SEARCH_MAX_UPLOAD_BYTES)."""
    return encoded(person_wearing(scenes.UPPER, 0).resize(size, Image.NEAREST), "PNG")


class _Tower:
    def encode_images(self, pictures):
        return np.ones((len(pictures), 4), np.float32)

    def describe(self) -> str:
        return "stub tower"


class _InProcess(LocalGarments):
    """The in-process garment step's type without its models: a fixed cut-out."""

    def __init__(self):
        super().__init__(pipeline=object())

    def garment(self, decoded, classes, fallback=False):
        self.seen = decoded.size
        return Cutout(decoded.rgb, "garment")


class _Remote(RemoteGarments):
    def garment(self, decoded, classes, fallback=False):
        return Cutout(decoded.rgb, "garment")


def embedder(garments, budget: PixelBudget) -> PhotoEmbedder:
    return PhotoEmbedder(garments, _Tower(), index_meta={}, max_pixels=40_000_000, budget=budget)


def reserved_by(monkeypatch, budget: PixelBudget) -> list[int]:
    """The pixels each reserve() call of `budget` asked for."""
    asked, reserve = [], budget.reserve

    def spy(pixels):
        asked.append(pixels)
        return reserve(pixels)

    monkeypatch.setattr(budget, "reserve", spy)
    return asked


# ------------------------------------------------------------------ without a server


def test_a_full_budget_refuses_before_any_pixel_is_decoded(monkeypatch):
    """A 39.9 MP PNG (its header says so; the bytes are 200 KB) while another query holds the budget:
    503 + Retry-After once the wait is over, and the decoder never ran."""
    decodes = []
    monkeypatch.setattr(search.photos, "decode_opened", lambda *a, **k: decodes.append(a) or pytest.fail("decoded"))
    budget = PixelBudget(capacity_mp=40, wait_s=0.3, retry_after_s=3)
    photos = embedder(_InProcess(), budget)
    with budget.reserve(1_000_000):  # another query in flight: a whole-budget photo does not fit beside it
        started = time.monotonic()
        with pytest.raises(Overloaded) as refused:
            photos.embed(big_person_png(), {})
        assert time.monotonic() - started >= 0.3  # it waited first
        assert budget.in_flight == 1
    assert refused.value.status == 503 and refused.value.headers == {"Retry-After": "3"}
    assert refused.value.to_dict()["type"].endswith("/overloaded")
    assert decodes == [] and budget.in_flight == 0


def test_a_decoding_bomb_header_allocates_nothing_while_it_waits(tmp_path):
    """A PNG header claiming 39.9 MP over 130 KB of data, refused by a full budget: reading its
    header (size, orientation) and waiting cost its bytes, not its pixels (a fresh process, its
    VmHWM before and after: ru_maxrss would start at this big pytest process's size; decoding it
    takes 180 MB)."""
    import json
    import subprocess
    import sys

    photo = tmp_path / "big.png"
    photo.write_bytes(big_person_png())  # made here: making it costs the child's peak 160 MB
    child = (
        "import json, sys\n"
        "from shared.budget import PixelBudget\n"
        "from shared.errors import Overloaded\n"
        "from tests.test_photo_budget import _InProcess, embedder\n"
        "data = open(sys.argv[1], 'rb').read()\n"
        "budget = PixelBudget(capacity_mp=40, wait_s=0.05)\n"
        "photos = embedder(_InProcess(), budget)\n"
        "from tests.test_photo_budget import _peak_mb\n"
        "before = _peak_mb('self')\n"
        "with budget.reserve(1):\n"
        "    try:\n"
        "        photos.embed(data, {})\n"
        "    except Overloaded:\n"
        "        refused = True\n"
        "print(json.dumps({'refused': refused, 'extra_mb': _peak_mb('self') - before}))\n"
    )
    done = subprocess.run([sys.executable, "-c", child, str(photo)], cwd=REPO, capture_output=True, text=True,
                          check=True)
    result = json.loads(done.stdout)
    assert result["refused"] and result["extra_mb"] < 8, result
    assert pixels_to_decode(open_image(photo.read_bytes()), max_side=WORKING_SIDE) == BIG[0] * BIG[1]  # PNG: whole


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF", "GIF", "JPEG"])
def test_the_reservation_counts_what_the_decoder_holds(monkeypatch, fmt):
    """Full size for every format Pillow decodes only whole; a JPEG's reduced DCT scale (1/4 here);
    plus, with the garment step in this process, its working-size picture, and the reservation
    is released after the query, even a refused one."""
    size = (2048, 1536)
    options = {"WEBP": {"lossless": True}, "TIFF": {"compression": "tiff_deflate"}}.get(fmt, {})
    data = encoded(person_wearing(scenes.UPPER, 0).resize(size, Image.NEAREST), fmt, **options)
    decoded_at = {"JPEG": (1024, 768)}.get(fmt, size)  # a JPEG at 1/2 scale: still >= the working size
    working = WORKING_SIDE * 768
    for garments, extra in ((_InProcess(), working), (_Remote("http://bg.invalid"), 0)):
        budget = PixelBudget(capacity_mp=40, wait_s=0)
        asked = reserved_by(monkeypatch, budget)
        embedder(garments, budget).embed(data, {})
        assert asked == [decoded_at[0] * decoded_at[1] + extra]
        assert budget.in_flight == 0


def test_the_garment_step_runs_inside_the_reservation(monkeypatch):
    budget = PixelBudget(capacity_mp=40, wait_s=0)
    held = []

    class Watching(_InProcess):
        def garment(self, decoded, classes, fallback=False):
            held.append(budget.in_flight)
            raise RuntimeError("the garment step failed")

    with pytest.raises(RuntimeError):
        embedder(Watching(), budget).embed(encoded(Image.new("RGB", (2000, 1000), scenes.UPPER), "PNG"), {})
    assert held == [pytest.approx(2.0 + WORKING_SIDE * 512 / 1e6)]  # the decode's and the garment step's
    assert budget.in_flight == 0  # released on failure


def test_larger_photos_are_decoded_once_at_full_size_then_shrunk_before_conversion():
    """An RGBA or palette PNG shrinks to the working size before it becomes RGB: the full-size
    pixels exist once (plus Pillow's premultiplied copy for RGBA), with the same result as before."""
    from shared.images import decode_image

    rng = np.random.default_rng(0)
    rgba = Image.fromarray(rng.integers(0, 256, (600, 400, 4), dtype=np.uint8), "RGBA")
    decoded = decode_image(encoded(rgba, "PNG"), max_side=300)
    expected = rgba.resize((200, 300), Image.BILINEAR)  # premultiplied, as the convert-first path resized
    assert np.array_equal(np.asarray(decoded.rgb), np.asarray(expected.convert("RGB")))
    assert np.array_equal(decoded.alpha, np.asarray(expected.getchannel("A")))
    opaque = decode_image(encoded(rgba.convert("RGB").quantize(32), "PNG"), max_side=300)
    assert opaque.alpha is None and opaque.size == (200, 300)


# ------------------------------------------------------------------ under gunicorn

BUDGET_MP = 40  # SEARCH_MAX_INFLIGHT_MP's default: one 40 MP photo at a time per worker
PNG_RGB_BYTES_PER_PIXEL = 5  # an RGB PNG decoded whole: Pillow's 4 bytes a pixel, plus the shrunk copy
MODELS_MARGIN_MB = 64  # the oracle bg models and tiny CLIP at the working size: measured ~10-30 MB


def _peak_mb(pid: int | str) -> float:
    """VmHWM: the worker's resident high-water mark, which no sampling interval can miss."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def test_four_concurrent_40mp_png_queries_stay_within_the_budget(onnx_index, oracle_weights):
    """The shipped 2 workers x 2 threads, the bg models in-process: four 39.9 MP PNG photo queries at
    once get 200 or 503 + Retry-After, and no worker's resident memory grows past its budget (at an
    RGB PNG's bytes a pixel) plus a margin for the models."""
    body = big_person_png()
    assert len(body) < 20 * 1024 * 1024  # within SEARCH_MAX_UPLOAD_BYTES' default: no limit raised
    proc, base = start_gunicorn("search:create_app()", {
        "CLIP_MODEL": TINY["model"], "CLIP_PRETRAINED": "", "CLIP_CONFIG_DIR": TINY["extra_config_dir"],
        "SEARCH_INDEX_DIR": str(onnx_index), "U2NET_HOME": str(oracle_weights),
        "GUNICORN_WORKERS": "2", "GUNICORN_THREADS": "2", "GUNICORN_MAX_REQUESTS": "0",
        "SEARCH_MAX_INFLIGHT_MP": str(BUDGET_MP), "SEARCH_INFLIGHT_WAIT_S": "1"})
    try:
        warm = encoded(person_wearing(scenes.UPPER, 0, size=(600, 800)), "PNG")
        with ThreadPoolExecutor(4) as pool:  # every thread of both workers has run a photo query: the baseline
            warmed = list(pool.map(lambda _: requests.post(base + "/", data=warm, timeout=60,
                                                           headers={"Content-Type": "image/png"}).status_code,
                                   range(12)))
        assert set(warmed) == {200}, (warmed, server_log(proc))
        pids = worker_pids(proc.pid)
        assert len(pids) == 2
        baseline = {pid: rss_mb(pid) for pid in pids}
        high_water = {pid: _peak_mb(pid) for pid in pids}
        sampled = dict(baseline)
        sampling = threading.Event()

        def sample():
            while not sampling.is_set():
                for pid in pids:
                    sampled[pid] = max(sampled[pid], rss_mb(pid))
                time.sleep(0.01)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            with ThreadPoolExecutor(4) as pool:
                answers = list(pool.map(lambda _: requests.post(base + "/", data=body, timeout=60,
                                                                headers={"Content-Type": "image/png"}), range(4)))
        finally:
            sampling.set()
            sampler.join()
        statuses = [a.status_code for a in answers]
        assert set(statuses) <= {200, 503} and 200 in statuses, (statuses, server_log(proc))
        for answer in answers:
            if answer.status_code == 503:
                assert answer.headers["Retry-After"].isdigit()
                assert answer.headers["Content-Type"].startswith("application/problem+json")
                assert answer.json()["type"].endswith("/overloaded")
            else:
                assert answer.json()[0]["product_name"] == "1-red-top-shop-111"
        # The burst's peak: the high-water mark when the burst raised it, else the sampled RSS.
        growth = {pid: max(sampled[pid], _peak_mb(pid) if _peak_mb(pid) > high_water[pid] else 0) - baseline[pid]
                  for pid in pids}
        allowed_mb = BUDGET_MP * 1e6 * PNG_RGB_BYTES_PER_PIXEL / 2**20 + MODELS_MARGIN_MB
        print(f"statuses {sorted(statuses)}; worker RSS growth {({p: round(g) for p, g in growth.items()})} MB; "
              f"allowed {allowed_mb:.0f} MB ({BUDGET_MP} MP x {PNG_RGB_BYTES_PER_PIXEL} B + {MODELS_MARGIN_MB} MB)")
        assert all(g <= allowed_mb for g in growth.values()), (growth, allowed_mb)
        assert worker_pids(proc.pid) == pids  # nobody was killed
    finally:
        stop(proc)
