"""Shared fixtures: oracle models on disk, the bg pipeline and app, local HTTP servers."""
from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_data(name: str) -> Path:
    """A folder of ../shared/data, or a clean skip when this machine does not have it."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is absent: the real-data checks need ../shared/data beside the repo")
    return path


@pytest.fixture(scope="session")
def oracle_weights(tmp_path_factory) -> Path:
    from tests.oracle_models import write_oracle_models

    directory = tmp_path_factory.mktemp("u2net_home")
    write_oracle_models(str(directory))
    previous = os.environ.get("U2NET_HOME")
    os.environ["U2NET_HOME"] = str(directory)  # rembg reads it when sessions are created
    yield directory
    if previous is None:
        os.environ.pop("U2NET_HOME", None)
    else:
        os.environ["U2NET_HOME"] = previous


@pytest.fixture(scope="session")
def bg_models(oracle_weights):
    from bgremoval.config import BgConfig
    from bgremoval.models import load_models

    return load_models(BgConfig(weights_dir=str(oracle_weights)))


@pytest.fixture(scope="session")
def bg_pipeline(bg_models):
    from bgremoval.pipeline import GarmentPipeline

    return GarmentPipeline(bg_models)


@pytest.fixture(scope="session")
def bg_app(bg_models):
    from bgremoval import create_app
    from bgremoval.config import BgConfig
    from shared.fetch import FetchPolicy

    config = BgConfig(fetch=FetchPolicy(allow_hosts=frozenset({"127.0.0.1", "localhost"}), deadline=3.0,
                                        read_timeout=2.0, max_bytes=2_000_000))
    app = create_app(config, models=bg_models)
    app.testing = True
    return app


@pytest.fixture
def bg_client(bg_app):
    return bg_app.test_client()


class _Upstream(http.server.ThreadingHTTPServer):
    daemon_threads = True
    routes: dict  # path -> callable(handler)


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):  # noqa: N802 - http.server's naming
        route = self.server.routes.get(self.path.split("?")[0])
        if route is None:
            self.send_error(404)
            return
        route(self)


def send_bytes(handler, body: bytes, content_type: str = "image/jpeg", status: int = 200) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


@pytest.fixture(scope="session")
def upstream():
    """A local image host on 127.0.0.1; tests register routes: upstream.routes['/x.jpg'] = fn."""
    server = _Upstream(("127.0.0.1", 0), _Handler)
    server.routes = {}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_gunicorn(app_spec: str, env: dict, *, ready_timeout: float = 120.0):
    """Start gunicorn on 127.0.0.1 with the project's config; returns (process, base_url)."""
    port = free_port()
    cmd = [sys.executable, "-m", "gunicorn", "-c", str(REPO / "docker" / "gunicorn.conf.py"),
           "--bind", f"127.0.0.1:{port}", app_spec]
    full_env = {**os.environ, **env, "PYTHONPATH": str(REPO)}
    log = tempfile.TemporaryFile()  # a file, not a pipe: a full pipe would block the server
    proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    proc.log = log
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited: {server_log(proc)}")
        try:
            if requests.get(base + "/readyz", timeout=1).status_code == 200:
                return proc, base
        except requests.RequestException:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise RuntimeError(f"gunicorn not ready in {ready_timeout} s: {server_log(proc)}")


def server_log(proc) -> str:
    proc.log.seek(0)
    return proc.log.read().decode(errors="replace")[-3000:]


def stop(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
