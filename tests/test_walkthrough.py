"""The README's local walk-through, as a newcomer runs it: a clean clone, `bash scripts/run-local.sh
--offline` (the test models and the shared sample catalog), both services answering on 127.0.0.1,
a request to each, then SIGTERM to the script, after which nothing of it is left running.

The clone is of the committed HEAD, so this tests what a newcomer gets, not the working tree. It
borrows the virtual environment running the tests (a fresh one takes many minutes to install):
the script's `pip install` then finds everything there.
"""
from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from PIL import Image

from tests import scenes
from tests.conftest import REPO, SHARED_DATA, free_port

pytestmark = pytest.mark.servers

READY_LINE = "both services answer"
READY_TIMEOUT_S = 240  # setup, index build, export and both services' start: about 2 minutes on 2 cores
STOP_TIMEOUT_S = 60  # gunicorn's graceful timeout is 30 s
# Variables that would send the clone's run elsewhere than a newcomer's default.
NOT_PASSED_ON = ("DATA_DIR", "SAMPLE_CATALOG_DIR", "PYTHONPATH", "READY_TIMEOUT_S", "GUNICORN_WORKERS")


def clean_clone(tmp_path: Path) -> Path:
    """HEAD cloned into tmp_path/repo, beside a tmp_path/shared/data/catalog that is the real one:
    the layout the script's default ../shared/data/catalog expects."""
    clone = tmp_path / "repo"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=120)
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "shared" / "data" / "catalog").symlink_to(SHARED_DATA / "catalog")
    (clone / ".venv").symlink_to(sys.prefix)
    return clone


def group_members(pgid: int) -> list[str]:
    """The processes still in process group `pgid` (zombies included), as 'pid state command'."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # it ended meanwhile
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, pgrp, ...
        if int(fields[2]) == pgid:
            members.append(f"{entry.name} {fields[0]} {command[:150]}")
    return members


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_for_line(proc: subprocess.Popen, log_path: Path, line: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while line not in log_path.read_text(errors="replace"):
        if proc.poll() is not None:
            pytest.fail(f"run-local.sh exited with status {proc.returncode} before {line!r}:\n{tail(log_path)}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {line!r} from run-local.sh within {timeout:.0f} s:\n{tail(log_path)}")
        time.sleep(1)


def tail(log_path: Path, chars: int = 4000) -> str:
    return log_path.read_text(errors="replace")[-chars:]


def check_bg_removal(base: str) -> None:
    """A generated street photo (oracle models: red top, blue trousers) comes back as a JPEG of its
    size with the garments kept and the grey street turned black."""
    photo, boxes = scenes.street_photo(300, 400)
    upload = io.BytesIO()
    photo.save(upload, "PNG")
    response = requests.post(base + "/", files={"file": ("street.png", upload.getvalue(), "image/png")}, timeout=60)
    assert response.status_code == 200, response.text[:500]
    assert response.headers["Content-Type"] == "image/jpeg"
    answer = Image.open(io.BytesIO(response.content))
    assert (answer.format, answer.size) == ("JPEG", photo.size)
    x0, y0, x1, y1 = scenes.inner(boxes["top"])
    red, green, blue = answer.convert("RGB").getpixel(((x0 + x1) // 2, (y0 + y1) // 2))
    assert red > 150 and green < 80 and blue < 80, f"the red top is not kept: {(red, green, blue)}"
    assert max(answer.convert("RGB").getpixel((5, 395))) < 40, "the street is not removed"


def check_search(base: str, catalog: Path) -> None:
    """A text query gets 3 distinct products of the sample catalog, best first, each image served."""
    response = requests.post(base + "/", json={"text": "shirt", "n": 3}, timeout=30)
    assert response.status_code == 200, response.text[:500]
    results = response.json()
    assert isinstance(results, list) and len(results) == 3, results  # the catalog has 31 products
    assert all({"product_name", "url", "score"} <= set(result) for result in results), results
    products = {path.name for path in catalog.iterdir() if path.is_dir()}
    names = [result["product_name"] for result in results]
    assert len(set(names)) == 3 and set(names) <= products, names
    scores = [result["score"] for result in results]
    assert scores == sorted(scores, reverse=True)
    image = requests.get(base + results[0]["url"], timeout=30)
    assert image.status_code == 200 and image.headers["Content-Type"].startswith("image/"), results[0]["url"]


@pytest.mark.timeout(READY_TIMEOUT_S + STOP_TIMEOUT_S + 120)
def test_offline_walkthrough_on_a_clean_clone(tmp_path):
    if not (SHARED_DATA / "catalog").is_dir():
        pytest.skip(f"{SHARED_DATA / 'catalog'} is absent: the offline walk-through indexes the shared sample catalog")
    if sys.prefix == sys.base_prefix:
        pytest.skip("the tests are not running in a virtual environment (scripts/test.sh's .venv) to lend the clone")
    clone = clean_clone(tmp_path)
    bg_port = free_port()
    search_port = free_port()
    while search_port == bg_port:  # each probe's port is free again once closed: the two may coincide
        search_port = free_port()
    env = {name: value for name, value in os.environ.items() if name not in NOT_PASSED_ON}
    env.update(BG_PORT=str(bg_port), SEARCH_PORT=str(search_port))
    log_path = tmp_path / "run-local.log"
    started = time.monotonic()
    with open(log_path, "wb") as log:  # a file, not a pipe: a full pipe would block the servers
        proc = subprocess.Popen(["bash", "scripts/run-local.sh", "--offline"], cwd=clone, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    pgid = proc.pid  # its own session: the script, both gunicorn masters and their workers
    try:
        wait_for_line(proc, log_path, READY_LINE, READY_TIMEOUT_S)
        print(f"both services answered {time.monotonic() - started:.0f} s after run-local.sh started")
        check_bg_removal(f"http://127.0.0.1:{bg_port}")
        check_search(f"http://127.0.0.1:{search_port}", clone / ".local" / "offline" / "catalog")

        # To the script alone (as `kill PID` sends it): the gunicorns get no signal but from its
        # trap, and once it has exited none of them, nor a worker, may be left.
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=STOP_TIMEOUT_S) == 128 + signal.SIGTERM, tail(log_path)
        assert not group_members(pgid), f"still running after run-local.sh exited: {group_members(pgid)}"
        assert port_is_free(bg_port) and port_is_free(search_port), "a port is still held after SIGTERM"
    finally:
        if group_members(pgid):  # a failed check: leave nothing serving
            os.killpg(pgid, signal.SIGKILL)
        proc.wait(timeout=STOP_TIMEOUT_S)
