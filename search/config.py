"""Every setting of the search service and its indexer, read from the environment in this one place."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from shared.env import env_flag
from shared.fetch import FetchPolicy
from shared.images import DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class ClipSettings:
    model: str = "ViT-B-32"
    # An open_clip pretrained tag (downloaded once into cache_dir) or a local weights file.
    # Empty = random weights from `seed` (tests and benchmarks only; results are meaningless).
    pretrained: str = "laion2b_s34b_b79k"
    cache_dir: str | None = None
    extra_config_dir: str | None = None  # more model configs (JSON) to register with open_clip
    seed: int = 0
    threads: int = 1
    device: str = "cpu"  # DEVICE: auto | cpu | cuda; the image tower (indexing) runs there in fp16 on CUDA
    # Query text tower: auto = fp32 on ONNX Runtime, bf16 on torch where the CPU has it natively;
    # fp32; bf16 (torch only); int8 (ONNX only, never the default: check search.evaluate first).
    text_precision: str = "auto"

    @classmethod
    def from_env(cls, env=os.environ) -> ClipSettings:
        return cls(
            model=env.get("CLIP_MODEL", cls.model),
            pretrained=env.get("CLIP_PRETRAINED", cls.pretrained),
            cache_dir=env.get("CLIP_CACHE_DIR") or None,
            extra_config_dir=env.get("CLIP_CONFIG_DIR") or None,
            seed=int(env.get("CLIP_SEED", cls.seed)),
            threads=int(env.get("TORCH_THREADS", cls.threads)),
            device=env.get("DEVICE", cls.device).strip().lower(),
            text_precision=env.get("CLIP_TEXT_PRECISION", cls.text_precision).lower(),
        )


@dataclass(frozen=True)
class BackendSettings:
    """Where queries are scored (see search/vectors)."""

    backend: str = "exact"  # exact | faiss | milvus
    exact_dtype: str = "float32"  # exact backend: float32, or float16 (half the scan; needs `ann --ann flat-fp16`)
    # Defaults from bench/scale.py (README "A million products on one box"): the fastest settings
    # with recall@10 >= 0.95 at 100k products (HNSW) and at 1M (IVF-PQ, whose coarse codes need 16x).
    faiss_ef_search: int = 256  # HNSW breadth at query time (recall vs time)
    faiss_nprobe: int = 32  # IVF lists visited at query time
    faiss_oversample: int = 16  # candidates re-scored exactly per result wanted
    milvus_uri: str | None = None  # a file path = Milvus Lite; http(s)://host:19530 = a server
    milvus_token: str | None = None  # "user:password" or an API key, for a secured server
    milvus_collection: str | None = None  # default: the name `publish` derives from the index
    milvus_timeout: float = 5.0  # seconds per call

    @classmethod
    def from_env(cls, env=os.environ) -> BackendSettings:
        return cls(
            backend=env.get("SEARCH_BACKEND", cls.backend).strip().lower(),
            exact_dtype=env.get("SEARCH_EXACT_DTYPE", cls.exact_dtype).strip().lower(),
            faiss_ef_search=int(env.get("SEARCH_FAISS_EF_SEARCH", cls.faiss_ef_search)),
            faiss_nprobe=int(env.get("SEARCH_FAISS_NPROBE", cls.faiss_nprobe)),
            faiss_oversample=int(env.get("SEARCH_FAISS_OVERSAMPLE", cls.faiss_oversample)),
            milvus_uri=env.get("MILVUS_URI") or None,
            milvus_token=env.get("MILVUS_TOKEN") or None,
            milvus_collection=env.get("MILVUS_COLLECTION") or None,
            milvus_timeout=float(env.get("MILVUS_TIMEOUT", cls.milvus_timeout)),
        )


@dataclass(frozen=True)
class SearchConfig:
    clip: ClipSettings = field(default_factory=ClipSettings)
    vectors: BackendSettings = field(default_factory=BackendSettings)
    index_dir: str = "index"
    catalog_dir: str | None = None  # where /images/ are served from; default: the index's catalog
    public_base_url: str | None = None  # makes result urls absolute
    name_weight: float = 0.3  # share of the score that comes from matching the product name
    # Who encodes query text: onnx (the export in text_encoder_dir, no torch needed), torch
    # (open_clip), or auto = onnx when that export exists, else torch.
    text_encoder: str = "auto"
    text_encoder_dir: str | None = None  # default: <index_dir>/text-encoder (search.export writes it)
    query_cache_size: int = 1024
    max_body_bytes: int = 256 * 1024  # JSON bodies; a 100 KB query is truncated, not refused
    # Photo queries (SEARCH_IMAGE_QUERIES): the CLIP image tower loads only when they are on.
    image_queries: bool = True
    image_weight: float = 0.5  # share of a text + photo query's visual score that comes from the photo
    # Where query photos get their garment isolated: the bg-removal service at this URL, or
    # (empty) the bg pipeline in this process, which then loads the bg models (U2NET_HOME, BG_*).
    bg_service_url: str | None = None
    bg_service_timeout: float = 30.0  # seconds per call; one retry
    max_upload_bytes: int = 20 * 1024 * 1024  # multipart and raw image bodies
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    fetch: FetchPolicy = field(default_factory=FetchPolicy)  # image_url, as the bg service fetches
    # A photo's garment is searched for on its own when it covers at least this share of the photo
    look_min_fraction: float = 0.01
    # GARMENT_VOCABULARY: the product-text -> garment classes file (default: the one shipped in shared/)
    vocabulary_path: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.image_weight <= 1.0:
            raise ValueError(f"SEARCH_IMAGE_WEIGHT must be within 0..1, not {self.image_weight}")
        if not 0.0 < self.look_min_fraction <= 1.0:
            raise ValueError(f"SEARCH_LOOK_MIN_FRACTION must be within (0, 1], not {self.look_min_fraction}")
        # Resolved once, against the working directory at start: a relative path must not be
        # read later against another base (Flask resolves relative folders against the package).
        object.__setattr__(self, "index_dir", os.path.abspath(self.index_dir))
        if self.catalog_dir:
            object.__setattr__(self, "catalog_dir", os.path.abspath(self.catalog_dir))
        if self.text_encoder_dir:
            object.__setattr__(self, "text_encoder_dir", os.path.abspath(self.text_encoder_dir))

    @classmethod
    def from_env(cls, env=os.environ) -> SearchConfig:
        return cls(
            clip=ClipSettings.from_env(env),
            vectors=BackendSettings.from_env(env),
            index_dir=env.get("SEARCH_INDEX_DIR", cls.index_dir),
            catalog_dir=env.get("SEARCH_CATALOG_DIR") or None,
            public_base_url=(env.get("PUBLIC_BASE_URL") or "").rstrip("/") or None,
            name_weight=float(env.get("SEARCH_NAME_WEIGHT", cls.name_weight)),
            text_encoder=env.get("SEARCH_TEXT_ENCODER", cls.text_encoder).strip().lower(),
            text_encoder_dir=env.get("SEARCH_TEXT_ENCODER_DIR") or None,
            query_cache_size=int(env.get("QUERY_CACHE_SIZE", cls.query_cache_size)),
            max_body_bytes=int(env.get("SEARCH_MAX_BODY_BYTES", cls.max_body_bytes)),
            image_queries=env_flag(env, "SEARCH_IMAGE_QUERIES", cls.image_queries),
            image_weight=float(env.get("SEARCH_IMAGE_WEIGHT", cls.image_weight)),
            bg_service_url=(env.get("BG_SERVICE_URL") or "").strip() or None,
            bg_service_timeout=float(env.get("BG_SERVICE_TIMEOUT", cls.bg_service_timeout)),
            max_upload_bytes=int(env.get("SEARCH_MAX_UPLOAD_BYTES", cls.max_upload_bytes)),
            max_image_pixels=int(env.get("MAX_IMAGE_PIXELS", cls.max_image_pixels)),
            fetch=FetchPolicy.from_env(env),
            look_min_fraction=float(env.get("SEARCH_LOOK_MIN_FRACTION", cls.look_min_fraction)),
            vocabulary_path=env.get("GARMENT_VOCABULARY") or None,
        )
