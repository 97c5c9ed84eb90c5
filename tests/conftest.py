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
from PIL import Image, ImageDraw

from search.config import ClipSettings, SearchConfig
from tests import scenes

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

    config = BgConfig(fetch=FetchPolicy(allow_hosts=frozenset({"127.0.0.1"}), deadline=3.0,
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


@pytest.fixture(scope="session")
def bg_server(bg_app):
    """The bg-removal app on 127.0.0.1 (werkzeug, threaded): the garment step over HTTP."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, bg_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


# ------------------------------------------------------------------ search fixtures

TINY = dict(model="tiny-clip", pretrained="", extra_config_dir=str(REPO / "tests" / "clip_configs"))
PRODUCT_COLOURS = {
    "1-red-top-shop-111": scenes.UPPER,
    "2-blue-trousers-shop-222": scenes.LOWER,
    "3-yellow-dress-shop-333": scenes.FULL,
    "4-dark-red-blouse-shop-444": (150, 20, 20),
    "5-navy-skirt-shop-555": (20, 20, 150),
    "6-orange-tunic-shop-666": (230, 120, 20),
}


@pytest.fixture(scope="session")
def tiny_embedder():
    from search.embedder import ClipEmbedder

    return ClipEmbedder(ClipSettings(**TINY))


def person_wearing(colour, variant: int, size=(240, 320)) -> Image.Image:
    img = Image.new("RGB", size, scenes.SCENERY)
    d = ImageDraw.Draw(img)
    d.rectangle((95, 20, 145, 70), fill=scenes.SKIN)
    d.rectangle((60 + variant * 4, 70, 180 - variant * 4, 300), fill=colour)
    return img


@pytest.fixture(scope="session")
def synthetic_catalog(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("catalog")
    for i, (product, colour) in enumerate(PRODUCT_COLOURS.items()):
        folder = root / product
        folder.mkdir()
        for v in range(1 + i % 3):
            person_wearing(colour, v).save(folder / f"photo-{v}.jpg", quality=95)
    (root / "2-blue-trousers-shop-222" / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="session")
def synthetic_index(tmp_path_factory, synthetic_catalog, tiny_embedder, bg_pipeline) -> Path:
    from search.garments import LocalGarments
    from search.indexing.builder import build_index

    out = tmp_path_factory.mktemp("index")
    report = build_index(synthetic_catalog, out, tiny_embedder, LocalGarments(bg_pipeline), progress=False)
    assert report.embedded == report.images == sum(1 + i % 3 for i in range(6))
    assert any("notes.txt" in w for w in report.warnings)
    return out


SEARCH_BACKENDS = ("exact", "faiss", "milvus")


def backend_settings(backend: str, index_dir: Path, scratch: Path):
    """BackendSettings serving `index_dir` from `backend`, after whatever that backend needs:
    an approximate index for faiss (built on a copy), a published Milvus Lite collection."""
    import shutil

    from search.config import BackendSettings

    if backend == "exact":
        return index_dir, BackendSettings()
    if backend == "faiss":
        from search.indexing.ann import build_ann

        copy = scratch / "index"
        shutil.copytree(index_dir, copy)
        build_ann(copy, "hnsw", {"M": 8}, progress=False)
        return copy, BackendSettings(backend="faiss")
    pytest.importorskip("milvus_lite", reason="the milvus backend's tests need milvus-lite (requirements-dev.txt)")
    publish = pytest.importorskip("search.indexing.publish", reason="search/indexing/publish.py is not there yet").publish
    uri = str(scratch / "milvus.db")
    publish(index_dir, uri, progress=False)
    return index_dir, BackendSettings(backend="milvus", milvus_uri=uri)


@pytest.fixture(scope="session")
def text_export(tmp_path_factory, tiny_embedder) -> Path:
    """The tiny model's text tower exported to ONNX (fp32 and int8), as search.export writes it."""
    from search.indexing.export import export_text_encoder

    out = tmp_path_factory.mktemp("export") / "text-encoder"
    export_text_encoder(tiny_embedder, out)
    return out


@pytest.fixture(scope="session")
def onnx_index(synthetic_index, text_export, tmp_path_factory) -> Path:
    """The synthetic index with its text-encoder export inside, where the service looks first."""
    import shutil

    from search.text_encoder import EXPORT_DIRNAME

    copy = tmp_path_factory.mktemp("onnx-index") / "index"
    shutil.copytree(synthetic_index, copy)
    shutil.copytree(text_export, copy / EXPORT_DIRNAME)
    return copy


# "onnx": the exact backend with queries encoded by the ONNX export instead of torch (the default
# wherever an export exists, as in the shipped image).
SEARCH_APPS = (*SEARCH_BACKENDS, "onnx")


@pytest.fixture(scope="session")
def local_garments(bg_pipeline):
    """The garment step photo queries run, in-process over the oracle models (shared by the apps)."""
    from search.garments import LocalGarments

    return LocalGarments(bg_pipeline)


@pytest.fixture(scope="session", params=SEARCH_APPS)
def search_app(request, synthetic_index, tiny_embedder, local_garments, tmp_path_factory):
    """The search service over the synthetic index, once per vector backend and once with the ONNX
    text encoder: every test that uses it (contract, bad input, OpenAPI) runs against exact, faiss,
    milvus (Milvus Lite) and exact on ONNX Runtime."""
    from search import create_app

    if request.param == "onnx":
        index_dir = request.getfixturevalue("onnx_index")
        app = create_app(SearchConfig(clip=ClipSettings(**TINY), index_dir=str(index_dir)), garments=local_garments)
        assert app.extensions["readiness"].info["text_encoder"] == "onnx fp32"
        app.testing = True
        return app
    index_dir, vectors = backend_settings(request.param, synthetic_index, tmp_path_factory.mktemp(request.param))
    app = create_app(SearchConfig(clip=ClipSettings(**TINY), index_dir=str(index_dir), vectors=vectors),
                     embedder=tiny_embedder, garments=local_garments)
    app.testing = True
    assert app.extensions["readiness"].ready, app.extensions["readiness"].error
    return app


@pytest.fixture
def client(search_app):
    return search_app.test_client()


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


def server_log(proc, tail: int | None = 3000) -> str:
    """What the server printed (its last `tail` characters; None = everything)."""
    proc.log.seek(0)
    text = proc.log.read().decode(errors="replace")
    return text[-tail:] if tail else text


def stop(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


REAL_SERVER_FIXTURES = {"milvus_server", "cluster"}  # tests/milvus_server.py's server, tests/test_ray_cluster.py's


def pytest_collection_modifyitems(config, items):
    """Tests on a real Milvus server or Ray cluster are marked `servers`: their own CI step."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if REAL_SERVER_FIXTURES & set(item.fixturenames) or "server" in (params.get("backend"), params.get("where")):
            item.add_marker(pytest.mark.servers)
