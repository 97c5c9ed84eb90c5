"""Typed settings: a bad value stops a service before it serves, with one line naming the
variable, the value and what is allowed; values allowed before keep their meaning (the settings table of
docs/operations.md is generated from the declarations: tests/test_docs.py checks it)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bgremoval.config import BgConfig, PipelineSettings
from search.config import SearchConfig
from shared.fetch import FetchPolicy
from shared.server import ServerSettings
from shared.settings import SettingsError

REPO = Path(__file__).resolve().parents[1]

# One bad value per kind, with the line it must produce.
BAD = [
    pytest.param("search", "SEARCH_FAISS_NPROBE", "abc",
                 "SEARCH_FAISS_NPROBE='abc' is not allowed: Input should be a valid integer", id="number"),
    pytest.param("bg", "BG_PERSON_THRESHOLD", "1.5",
                 "BG_PERSON_THRESHOLD='1.5' is not allowed: Input should be less than or equal to 1", id="bound"),
    pytest.param("search", "SEARCH_BACKEND", "pinecone",
                 "SEARCH_BACKEND='pinecone' is not allowed: choose 'exact', 'faiss' or 'milvus'", id="choice"),
    pytest.param("bg", "DEVICE", "tpu", "DEVICE='tpu' is not allowed: choose 'auto', 'cpu' or 'cuda'", id="device"),
    pytest.param("search", "CLIP_TEXT_PRECISION", "int9",
                 "CLIP_TEXT_PRECISION='int9' is not allowed: choose 'auto', 'fp32', 'bf16' or 'int8'", id="precision"),
    pytest.param("bg", "GARMENT_VOCABULARY", "/nowhere/vocabulary.json",
                 "GARMENT_VOCABULARY='/nowhere/vocabulary.json' is not allowed: Path does not point to a file", id="path"),
    pytest.param("search", "SEARCH_IMAGE_QUERIES", "perhaps",
                 "SEARCH_IMAGE_QUERIES='perhaps' is not allowed: a flag is one of 1, 0, true, false, yes, no, on, off",
                 id="bool"),
]
MODELS = {"bg": BgConfig, "search": SearchConfig}
APPS = {"bg": "bgremoval:create_app()", "search": "search:create_app()"}


@pytest.mark.parametrize("service, name, value, line", BAD)
def test_a_bad_value_names_the_variable_the_value_and_what_is_allowed(service, name, value, line):
    with pytest.raises(SettingsError) as caught:
        MODELS[service].from_env({name: value})
    assert str(caught.value).startswith(line)
    assert "\n" not in str(caught.value)


def test_the_app_factories_refuse_a_bad_value_before_loading(monkeypatch):
    from bgremoval import create_app as create_bg_app
    from search import create_app as create_search_app

    monkeypatch.setenv("SEARCH_FAISS_NPROBE", "abc")  # was a bare int() error inside the factory
    with pytest.raises(SettingsError, match="SEARCH_FAISS_NPROBE='abc'"):
        create_search_app()
    monkeypatch.setenv("BG_INFLIGHT_WAIT_S", "ten")
    with pytest.raises(SettingsError, match="BG_INFLIGHT_WAIT_S='ten'"):
        create_bg_app()


def _gunicorn(app: str, env: dict) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "gunicorn", "-c", str(REPO / "docker" / "gunicorn.conf.py"),
           "--bind", "127.0.0.1:0", app]
    clean = {k: v for k, v in os.environ.items() if k not in {row.values[1] for row in BAD}}
    return subprocess.run(cmd, cwd=REPO, env={**clean, **env, "PYTHONPATH": str(REPO)}, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("service, name, value, line", [
    *BAD[::2],
    pytest.param("bg", "GUNICORN_WORKERS", "two",
                 "GUNICORN_WORKERS='two' is not allowed: Input should be a valid integer", id="gunicorn"),
    pytest.param("bg", "BG_KEEP_MAIN_PERSON", "maybe", "BG_KEEP_MAIN_PERSON='maybe' is not allowed", id="bg-bool"),
    pytest.param("search", "BG_JPEG_QUALITY", "high", "BG_JPEG_QUALITY='high' is not allowed",
                 id="search-in-process-bg"),
])
def test_gunicorn_master_exits_with_the_line_before_starting_a_worker(service, name, value, line):
    done = _gunicorn(APPS[service], {name: value})
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert f"bad setting: {line}" in output
    assert "Booting worker" not in output  # no worker crash loop: the master stopped first


def test_values_allowed_before_keep_their_meaning(tmp_path):
    env = {"BG_MAIN_PERSON_RULE": " Largest ", "BG_KEEP_MAIN_PERSON": "no", "BG_CONCURRENT_MODELS": "ON",
           "BG_ALLOW_DOWNLOAD": "yes", "BG_BACKEND": "Torch ", "U2NET_HOME": "", "GARMENT_VOCABULARY": "",
           "FETCH_ALLOW_HOSTS": "Images.Test, 127.0.0.1,,", "MAX_IMAGE_PIXELS": "1000"}
    bg = BgConfig.from_env(env)
    assert bg.pipeline.main_person_rule == "largest" and bg.pipeline.keep_main_person is False
    assert bg.pipeline.concurrent_models and bg.allow_download and bg.backend == "torch"
    assert bg.weights_dir is None and bg.vocabulary_path is None and bg.max_pixels == 1000
    assert bg.fetch.allow_hosts == frozenset({"images.test", "127.0.0.1"})
    assert BgConfig.from_env({"BG_KEEP_MAIN_PERSON": ""}).pipeline.keep_main_person is False  # empty was off
    assert BgConfig.from_env({}) == BgConfig()
    search = SearchConfig.from_env({"SEARCH_INDEX_DIR": "some/index", "PUBLIC_BASE_URL": "https://shop.test/",
                                    "CLIP_PRETRAINED": "", "CLIP_TEXT_PRECISION": "INT8", "BG_SERVICE_URL": " ",
                                    "SEARCH_IMAGE_QUERIES": "0", "MILVUS_TOKEN": ""})
    assert search.index_dir == os.path.abspath("some/index")
    assert search.public_base_url == "https://shop.test" and search.clip.pretrained == ""
    assert search.clip.text_precision == "int8" and search.bg_service_url is None
    assert search.image_queries is False and search.vectors.milvus_token is None
    assert SearchConfig().index_dir == os.path.abspath("index")


def test_settings_are_typed_and_immutable():
    config = PipelineSettings.from_env({"BG_WORKING_MAX_SIDE": "512", "BG_GARMENT_THRESHOLD": "0.25"})
    assert config.working_max_side == 512 and config.garment_threshold == 0.25
    with pytest.raises(Exception, match="frozen"):
        config.working_max_side = 1
    assert FetchPolicy(allow_hosts=frozenset({"x"})).model_copy(update={"deadline": 1.0}).deadline == 1.0


def test_a_variable_both_services_read_is_declared_once():
    bg, search = BgConfig.variables(), SearchConfig.variables()
    for name in bg.keys() & search.keys():
        assert bg[name] is search[name] or (bg[name].description, bg[name].default) == \
            (search[name].description, search[name].default), name
    assert set(ServerSettings.variables()) <= bg.keys() & search.keys()


# The one place a setting goes back into the environment: rembg finds weights only through it.
HANDED_TO_LIBRARIES = {("bgremoval/weights.py", "U2NET_HOME")}


def test_no_module_reads_a_declared_variable_from_the_environment_itself():
    declared = set(BgConfig.variables()) | set(SearchConfig.variables())
    reads = re.compile(r"""environ(?:\.get\(|\[)\s*["']([A-Z0-9_]+)["']|getenv\(\s*["']([A-Z0-9_]+)["']""")
    offenders = []
    for folder in ("bgremoval", "search", "shared", "docker"):
        for path in (REPO / folder).rglob("*.py"):
            for match in reads.finditer(path.read_text(encoding="utf-8")):
                name = match.group(1) or match.group(2)
                if name in declared and (str(path.relative_to(REPO)), name) not in HANDED_TO_LIBRARIES:
                    offenders.append(f"{path.relative_to(REPO)}: {name}")
    assert not offenders, offenders

def test_the_weights_directory_setting_is_where_the_models_load_from(oracle_weights, monkeypatch, tmp_path):
    """U2NET_HOME is BgConfig.weights_dir: a config that names a directory loads from it, whatever
    the environment says (rembg itself reads only the variable), and leaves the environment alone."""
    from bgremoval.models import MissingWeights, load_models

    elsewhere = str(tmp_path / "elsewhere")
    monkeypatch.setenv("U2NET_HOME", elsewhere)
    models = load_models(BgConfig(weights_dir=str(oracle_weights)))
    assert models.cloth.weights_path.startswith(str(oracle_weights))
    assert os.environ["U2NET_HOME"] == elsewhere
    with pytest.raises(MissingWeights, match="elsewhere"):
        load_models(BgConfig.from_env())
