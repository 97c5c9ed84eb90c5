"""Every setting of the search service and its indexer: each environment variable declared once,
typed, with its default, what is allowed and a line on what it does (shared/settings.py)."""
from __future__ import annotations

import importlib
import importlib.util
import os

from pydantic import field_validator

from shared.fetch import FetchPolicy
from shared.images import DEFAULT_MAX_PIXELS
from shared.server import Device, ServerSettings, device_setting
from shared.settings import Flag, OptionalDirectory, OptionalFile, OptionalText, Settings, choice, setting

TEXT_PRECISIONS = ("auto", "fp32", "bf16", "int8")
BACKENDS = ("exact", "faiss", "milvus")
EXACT_DTYPES = ("float32", "float16")
TEXT_ENCODERS = ("auto", "onnx", "torch")


class ClipSettings(Settings):
    model: str = setting("ViT-B-32", env="CLIP_MODEL", min_length=1, description="open_clip architecture")
    # Empty = random weights from `seed` (tests and benchmarks only; results are meaningless).
    pretrained: str = setting("laion2b_s34b_b79k", env="CLIP_PRETRAINED",
                              description="open_clip pretrained tag or a local weights file; empty = random (tests)")
    cache_dir: OptionalText = setting(None, env="CLIP_CACHE_DIR", description="where pretrained weights are cached "
                                                                               "(unset: open_clip's)")
    extra_config_dir: OptionalDirectory = setting(None, env="CLIP_CONFIG_DIR",
                                                     description="extra open_clip model configs (JSON) to register")
    weights_sha256: OptionalText = setting(
        None, env="CLIP_WEIGHTS_SHA256", pattern=r"^[0-9a-fA-F]{64}$",
        description="the sha256 the downloaded CLIP weights must have (`python -m search.weights download`, run by "
                    "the Docker build, which prints it)")
    seed: int = setting(0, env="CLIP_SEED", description="seed for random weights (so every process gets the same ones)")
    threads: int = setting(1, env="TORCH_THREADS", ge=1,
                           description="threads per worker of the query text encoder (torch or onnxruntime)")
    device: Device = device_setting()
    text_precision: choice(*TEXT_PRECISIONS) = setting(
        "auto", env="CLIP_TEXT_PRECISION",
        description="query text tower: `auto` (onnx: fp32; torch: bf16 where the CPU has it natively), `fp32`, "
                    "`bf16` (torch), `int8` (onnx; opt-in, see \"Lean serving\")")


class BackendSettings(Settings):
    """Where queries are scored (see search/vectors)."""

    backend: choice(*BACKENDS) = setting(
        "exact", env="SEARCH_BACKEND",
        description="where queries are scored: `exact` (the memory-mapped product matrix, every product), `faiss` "
                    "(the index's approximate index; candidates re-scored exactly), `milvus` (a published Milvus "
                    "collection)")
    exact_dtype: choice(*EXACT_DTYPES) = setting(
        "float32", env="SEARCH_EXACT_DTYPE",
        description="`float16`: the exact backend scans a float16 copy (half the time; `search.index ann --ann "
                    "flat-fp16` writes it); scores stay float32 cosines")
    # Defaults from bench/scale.py (docs/benchmarks.md, "A million products on one box"): the fastest settings
    # with recall@10 >= 0.95 at 100k products (HNSW) and at 1M (IVF-PQ, whose coarse codes need 16x).
    faiss_ef_search: int = setting(256, env="SEARCH_FAISS_EF_SEARCH", ge=1, description="HNSW breadth at query time")
    faiss_nprobe: int = setting(32, env="SEARCH_FAISS_NPROBE", ge=1, description="IVF lists visited at query time")
    faiss_oversample: int = setting(16, env="SEARCH_FAISS_OVERSAMPLE", ge=1,
                                    description="approximate candidates re-scored exactly per result wanted")
    milvus_uri: OptionalText = setting(None, env="MILVUS_URI",
                                       description="`http(s)://host:19530` (a Milvus server) or a `.db` path "
                                                   "(Milvus Lite, one process)")
    milvus_token: OptionalText = setting(None, env="MILVUS_TOKEN",
                                         description="`user:password` or an API key, for a secured server")
    milvus_collection: OptionalText = setting(
        None, env="MILVUS_COLLECTION", description="collection base name (unset: derived from the index identity)")
    milvus_timeout: float = setting(5.0, env="MILVUS_TIMEOUT", gt=0, description="seconds per Milvus call")


class SearchConfig(Settings):
    clip: ClipSettings = ClipSettings()
    vectors: BackendSettings = BackendSettings()
    index_dir: str = setting("index", env="SEARCH_INDEX_DIR", min_length=1,
                             description="index to serve (relative paths: against the working directory at start)")
    catalog_dir: OptionalText = setting(None, env="SEARCH_CATALOG_DIR",
                                        description="where `/images/...` are read from (unset: the index's catalog)")
    index_poll_s: float = setting(
        1.0, env="SEARCH_INDEX_POLL_S", ge=0, le=60,
        description="seconds between a worker's looks at meta.json for a new index generation, which it then opens, "
                    "checks and serves without a restart (0 = only at start and on SIGHUP)")
    startup_image_sample: int = setting(
        256, env="SEARCH_STARTUP_IMAGE_SAMPLE", ge=0, le=100000,
        description="index images a worker looks for in the catalog when it opens a generation (most must be there; "
                    "`python -m search.index verify` checks them all)")
    public_base_url: OptionalText = setting(None, env="PUBLIC_BASE_URL", description="makes result urls absolute")
    fusion_method: choice("weighted", "rrf") = setting(
        "weighted", env="SEARCH_FUSION",
        description="how a text query's BM25 score over the products' text joins the CLIP score: `weighted` (a "
                    "weighted sum, BM25 over the query's best) or `rrf` (reciprocal rank fusion); see search/searcher.py")
    lexical_weight: float = setting(0.3, env="SEARCH_LEXICAL_WEIGHT", ge=0, le=1,
                                    description="the lexical (BM25) share of a text query's score (0 = visual only)")
    rrf_k: int = setting(60, env="SEARCH_RRF_K", ge=1, le=10000, description="rrf: the rank constant k")
    rrf_window: int = setting(100, env="SEARCH_RRF_WINDOW", ge=1, le=10000,
                              description="rrf: the best products of each list that count (at least n)")
    text_encoder: choice(*TEXT_ENCODERS) = setting(
        "auto", env="SEARCH_TEXT_ENCODER",
        description="who encodes queries: `onnx` (the export in SEARCH_TEXT_ENCODER_DIR, no torch needed), `torch` "
                    "(open_clip), `auto` = onnx when that export exists, else torch")
    text_encoder_dir: OptionalText = setting(
        None, env="SEARCH_TEXT_ENCODER_DIR",
        description="the export `python -m search.export` writes (unset: `<SEARCH_INDEX_DIR>/text-encoder`)")
    query_cache_size: int = setting(1024, env="QUERY_CACHE_SIZE", ge=0,
                                    description="LRU of query embeddings (keyed by the token ids the text tower sees)")
    max_body_bytes: int = setting(256 * 1024, env="SEARCH_MAX_BODY_BYTES", ge=1,
                                  description="JSON body cap (a 100 KB query is truncated, not refused)")
    image_queries: Flag = setting(True, env="SEARCH_IMAGE_QUERIES",
                                  description="photo queries; off: CLIP's image tower (and the garment step) never load")
    image_weight: float = setting(0.5, env="SEARCH_IMAGE_WEIGHT", ge=0, le=1,
                                  description="a text + photo query's share of the photo (per request: `image_weight`)")
    bg_service_url: OptionalText = setting(
        None, env="BG_SERVICE_URL",
        description="the bg-removal service that isolates garments, for the indexer and photo queries (compose: "
                    "`http://bgremoval:5000`); unset = the bg pipeline in-process (U2NET_HOME, BG_*)")
    bg_service_timeout: float = setting(30.0, env="BG_SERVICE_TIMEOUT", gt=0,
                                        description="seconds per call to that service (one retry)")
    max_upload_bytes: int = setting(20 * 1024 * 1024, env="SEARCH_MAX_UPLOAD_BYTES", ge=1,
                                    description="photo body cap (multipart and `image/*`)")
    max_image_pixels: int = setting(DEFAULT_MAX_PIXELS, env="MAX_IMAGE_PIXELS", ge=1,
                                    description="decompression-bomb cap (pixels, checked before decoding)")
    # The shipped container: 2 GB for 2 workers of ~0.5 GB PSS loaded (docker-compose.yml). Decoding
    # costs per reserved megapixel ~4.7 MB (RGB PNG, TIFF, a JPEG at its reduced scale), 5.6 (palette
    # PNG, GIF), 8.6 (RGBA PNG), 11 (16-bit PNG), 16 (WebP: libwebp's canvases). 40 = one photo at the
    # 40 MP cap at a time per worker, <= ~0.45 GB but for WebP, and a 40 MP JPEG reserves ~2.5 MP.
    max_inflight_mp: float = setting(
        40.0, env="SEARCH_MAX_INFLIGHT_MP", gt=0,
        description="megapixels of query photos one worker decodes and segments at once; past it photo queries "
                    "wait, then 503 + `Retry-After`")
    inflight_wait_s: float = setting(10.0, env="SEARCH_INFLIGHT_WAIT_S", ge=0,
                                     description="seconds a photo query waits for that budget")
    fetch: FetchPolicy = FetchPolicy()  # image_url, as the bg service fetches
    look_min_fraction: float = setting(
        0.01, env="SEARCH_LOOK_MIN_FRACTION", gt=0, le=1,
        description="a photo's garment is searched for on its own when it covers this share (the largest always is)")
    vocabulary_path: OptionalFile = setting(
        None, env="GARMENT_VOCABULARY",
        description="the product-text -> garment classes file (unset: the shipped `shared/garment_vocabulary.json`)")
    server: ServerSettings = ServerSettings()  # gunicorn's own (docker/gunicorn.conf.py)

    # Resolved once, against the working directory at start: a relative path must not be read
    # later against another base (Flask resolves relative folders against the package).
    @field_validator("index_dir", "catalog_dir", "text_encoder_dir")
    @classmethod
    def _absolute(cls, path: str | None) -> str | None:
        return os.path.abspath(path) if path else path

    @property
    def fusion(self):
        from search.searcher import Fusion

        return Fusion(self.fusion_method, self.lexical_weight, self.rrf_k, self.rrf_window)

    @field_validator("public_base_url")
    @classmethod
    def _no_trailing_slash(cls, url: str | None) -> str | None:
        return url.rstrip("/") or None if url else url

def check_settings() -> SearchConfig:
    """The service's settings from the environment; SettingsError names a bad one (gunicorn's
    master calls this before it starts a worker). Photo queries without BG_SERVICE_URL run the bg
    pipeline in this process, so its settings are checked too."""
    config = SearchConfig.from_env()
    # The lean serving image has no bg package: it needs BG_SERVICE_URL, which readiness reports.
    if config.image_queries and not config.bg_service_url and importlib.util.find_spec("bgremoval"):
        importlib.import_module("bgremoval.config").check_settings()
    return config
