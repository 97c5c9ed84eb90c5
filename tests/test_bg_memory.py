"""Memory per bg-removal request is bounded: by the photo's pixels (<= 12 bytes a pixel), and per
worker by configuration (BG_MAX_INFLIGHT_MP), whatever clients send at once."""
from __future__ import annotations

import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image

from bench.bg_memory import measure, street_jpeg
from bench.load import rss_mb, worker_pids
from shared.budget import PixelBudget
from shared.errors import Overloaded
from tests import scenes
from tests.conftest import REPO, server_log, start_gunicorn, stop

MAX_BYTES_PER_PIXEL = 12


def test_a_24_megapixel_request_costs_at_most_12_bytes_a_pixel(oracle_weights):
    result = measure(REPO, 24.0, 1, str(oracle_weights))  # a fresh process: ru_maxrss before/after
    pixels = result["width"] * result["height"]
    per_pixel = result["extra_peak_kb"] * 1024 / pixels
    assert pixels >= 23.9e6
    assert per_pixel <= MAX_BYTES_PER_PIXEL, f"{per_pixel:.1f} bytes per pixel: {result}"


# ------------------------------------------------------------------ same output as the float version


def _float_reference(photo: Image.Image, working: np.ndarray, background, alpha=None) -> np.ndarray:
    """The composite as it was computed before, in float32 at full size (the old code)."""
    plane = Image.fromarray(working.astype(np.float32), "F")
    weight = np.clip(np.asarray(plane.resize(photo.size, Image.BILINEAR)), 0.0, 1.0)[..., None]
    rgb = np.asarray(photo.convert("RGB"), dtype=np.float32)
    if alpha is not None:
        rgb = np.round(rgb * (alpha.astype(np.float32)[..., None] / 255.0))
    out = rgb * weight + np.asarray(background, np.float32) * (1.0 - weight)
    return np.clip(np.round(out), 0, 255).astype(np.int16)


@pytest.mark.parametrize("background", [(0, 0, 0), (255, 255, 255), (12, 200, 99)])
@pytest.mark.parametrize("matted", [False, True])
def test_8bit_banded_composite_is_within_one_grey_level_of_the_float_one(bg_pipeline, background, matted):
    photo = scenes.street_photo(2400, 3200)[0]  # > working size: the mask is scaled up, soft edges
    noise = np.random.default_rng(0).integers(0, 40, (3200, 2400, 3), dtype=np.uint8)
    photo = Image.fromarray(np.asarray(photo) // 2 + noise)  # every grey level, not flat colours
    alpha = None
    if matted:
        yy, xx = np.mgrid[0:3200, 0:2400]
        alpha = np.clip((xx - 300) / 4, 0, 255).astype(np.uint8)  # a soft cut-out edge
    out, result = bg_pipeline.remove_background(photo, background=background, alpha=alpha)
    soft = (result.mask > 0) & (result.mask < 255)
    assert soft.sum() > 10_000  # the comparison covers real soft edges
    reference = _float_reference(photo, result.working, background, alpha)
    assert np.abs(np.asarray(out, dtype=np.int16) - reference).max() <= 1

    rgba, _ = bg_pipeline.remove_background(photo, background=background, alpha=alpha, mask_as_alpha=True)
    assert rgba.mode == "RGBA"
    old_alpha = np.round(np.clip(np.asarray(Image.fromarray(result.working.astype(np.float32), "F").resize(
        photo.size, Image.BILINEAR)), 0, 1) * 255)
    assert np.abs(np.asarray(rgba.getchannel("A"), np.int16) - old_alpha).max() <= 1
    assert np.abs(np.asarray(rgba.convert("RGB"), np.int16) - reference).max() <= 1


# ------------------------------------------------------------------ the per-worker budget


def test_pixel_budget_waits_then_refuses_with_retry_after():
    budget = PixelBudget(capacity_mp=10, wait_s=0.3, retry_after_s=3)
    with budget.reserve(6_000_000):
        with budget.reserve(4_000_000):  # fits beside it
            started = time.monotonic()
            with pytest.raises(Overloaded) as refused:
                with budget.reserve(1_000_000):
                    pass
            assert time.monotonic() - started >= 0.3  # it waited first
    assert refused.value.status == 503 and refused.value.headers == {"Retry-After": "3"}
    assert budget.in_flight == 0

    released = threading.Event()

    def hold_then_release():
        with budget.reserve(10_000_000):
            released.wait(5)

    worker = threading.Thread(target=hold_then_release)
    worker.start()
    time.sleep(0.05)
    budget.wait_s = 5
    threading.Timer(0.2, released.set).start()
    with budget.reserve(80_000_000):  # larger than the whole budget: runs alone once it is free
        assert budget.in_flight == 10
    worker.join()


def test_four_concurrent_max_size_requests_stay_within_the_budget(oracle_weights):
    """2 workers, a budget of one 40 MP photo each: four at once get 200 or 503 + Retry-After,
    and no worker grows beyond its budget."""
    budget_mp = 40
    body = street_jpeg(39.9)
    proc, base = start_gunicorn("bgremoval:create_app()", {
        "U2NET_HOME": str(oracle_weights), "GUNICORN_WORKERS": "2", "GUNICORN_THREADS": "2",
        "BG_MAX_INFLIGHT_MP": str(budget_mp), "BG_INFLIGHT_WAIT_S": "1"})
    try:
        warm = io.BytesIO()
        scenes.street_photo(600, 800)[0].save(warm, "JPEG")
        with ThreadPoolExecutor(4) as pool:  # every thread of both workers has run the models: the baseline
            warmed = pool.map(lambda _: requests.post(base + "/", data=warm.getvalue(), timeout=60,
                                                      headers={"Content-Type": "image/jpeg"}).status_code, range(12))
            assert set(warmed) == {200}
        pids = worker_pids(proc.pid)
        baseline = {pid: rss_mb(pid) for pid in pids}
        peak = dict(baseline)
        sampling = threading.Event()

        def sample():
            while not sampling.is_set():
                for pid in pids:
                    try:
                        peak[pid] = max(peak[pid], rss_mb(pid))
                    except OSError:
                        pass
                time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: requests.post(base + "/", data=body, timeout=120,
                                                            headers={"Content-Type": "image/jpeg"}), range(4)))
        sampling.set()
        sampler.join()
        statuses = [a.status_code for a in answers]
        assert set(statuses) <= {200, 503} and 200 in statuses, (statuses, server_log(proc))
        for answer in answers:
            if answer.status_code == 503:
                assert answer.headers["Retry-After"].isdigit()
                assert answer.json()["type"].endswith("/overloaded")
            else:
                assert Image.open(io.BytesIO(answer.content)).size == Image.open(io.BytesIO(body)).size
        allowed_mb = budget_mp * 1e6 * MAX_BYTES_PER_PIXEL / 2**20
        growth = {pid: peak[pid] - baseline[pid] for pid in pids}
        assert all(g <= allowed_mb for g in growth.values()), (growth, allowed_mb)
        print(f"statuses {statuses}, RSS growth per worker {growth} MB, allowed {allowed_mb:.0f} MB")
        assert worker_pids(proc.pid) == pids  # nobody was killed
    finally:
        stop(proc)


def test_the_indexer_decodes_large_catalog_photos_at_the_working_size(tmp_path):
    """A 40 MP catalog JPEG is decoded at a reduced DCT scale and shrunk to the working size: its
    memory does not grow with its pixels (a fresh process, ru_maxrss before and after)."""
    import json
    import subprocess
    import sys

    photo = tmp_path / "big.jpg"
    photo.write_bytes(street_jpeg(39.6))
    child = (
        "import json, resource, sys\n"
        "from shared.images import decode_image\n"
        "data = open(sys.argv[1], 'rb').read()\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "decoded = decode_image(data, max_side=1024)\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(json.dumps({'size': decoded.size, 'extra_kb': after - before}))\n"
    )
    done = subprocess.run([sys.executable, "-c", child, str(photo)], cwd=REPO, capture_output=True, text=True,
                          check=True)
    result = json.loads(done.stdout)
    assert max(result["size"]) == 1024
    assert result["extra_kb"] < 40 * 1024, result  # a full decode would need 160 MB (4 bytes a pixel)
