"""Every setting of the background-removal service, read from the environment in this one place."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from shared.env import env_flag
from shared.fetch import FetchPolicy
from shared.images import DEFAULT_MAX_PIXELS

MAIN_PERSON_RULES = ("largest", "central")
BACKENDS = ("onnx", "torch")
PRECISIONS = ("fp32", "int8")


@dataclass(frozen=True)
class PipelineSettings:
    person_threshold: float = 0.5  # matte value above which a pixel is "person"
    garment_threshold: float = 0.5  # summed probability of the selected clothing classes
    min_person_fraction: float = 0.01  # below this share of the image: no person (flat-lay/packshot)
    min_garment_fraction: float = 0.002  # below this share: nothing to return (422)
    person_dilation: float = 0.01  # of the working image's diagonal; garment edges may stick out
    working_max_side: int = 1024  # masks are computed at most this large, then scaled up
    keep_main_person: bool = True
    # Which blob is the main person: "largest" (the biggest blob alone) or "central" (area x
    # centrality, plus fragments inside its box). With the IS-Net matte on the 704 CCP street
    # photos, largest scored main-person IoU 0.9508 against 0.9486 (README "Choosing the main person").
    main_person_rule: str = "largest"
    # BG_CONCURRENT_MODELS: start the cloth model beside the person matte instead of after it (it
    # needs only the photo), so one request keeps two cores busy. The same masks; a flat-lay (no
    # person) wastes that cloth run. See bench/bg.py for what it buys.
    concurrent_models: bool = False

    def __post_init__(self) -> None:
        if self.main_person_rule not in MAIN_PERSON_RULES:
            raise ValueError(f"BG_MAIN_PERSON_RULE must be one of {', '.join(MAIN_PERSON_RULES)}, "
                             f"not {self.main_person_rule!r}")

    @classmethod
    def from_env(cls, env=os.environ) -> "PipelineSettings":
        return cls(
            person_threshold=float(env.get("BG_PERSON_THRESHOLD", cls.person_threshold)),
            garment_threshold=float(env.get("BG_GARMENT_THRESHOLD", cls.garment_threshold)),
            min_person_fraction=float(env.get("BG_MIN_PERSON_FRACTION", cls.min_person_fraction)),
            min_garment_fraction=float(env.get("BG_MIN_GARMENT_FRACTION", cls.min_garment_fraction)),
            person_dilation=float(env.get("BG_PERSON_DILATION", cls.person_dilation)),
            working_max_side=int(env.get("BG_WORKING_MAX_SIDE", cls.working_max_side)),
            keep_main_person=env_flag(env, "BG_KEEP_MAIN_PERSON", cls.keep_main_person),
            main_person_rule=env.get("BG_MAIN_PERSON_RULE", cls.main_person_rule).strip().lower(),
            concurrent_models=env_flag(env, "BG_CONCURRENT_MODELS", cls.concurrent_models),
        )


@dataclass(frozen=True)
class ModelNames:
    person: str = "u2net_human_seg"
    cloth: str = "u2net_cloth_seg"
    product: str = "isnet-general-use"

    @classmethod
    def from_env(cls, env=os.environ) -> "ModelNames":
        return cls(
            person=env.get("BG_PERSON_MODEL", cls.person),
            cloth=env.get("BG_CLOTH_MODEL", cls.cloth),
            product=env.get("BG_PRODUCT_MODEL", cls.product),
        )


@dataclass(frozen=True)
class BgConfig:
    models: ModelNames = field(default_factory=ModelNames)
    pipeline: PipelineSettings = field(default_factory=PipelineSettings)
    weights_dir: str | None = None  # U2NET_HOME; rembg reads it too
    ort_threads: int = 1  # per session; workers x threads should not exceed the cores
    device: str = "cpu"  # DEVICE: auto | cpu | cuda (onnxruntime's CUDA provider; shared/device.py)
    # BG_BACKEND: "onnx" (onnxruntime, the default) or "torch" (the same ONNX graphs converted by
    # onnx2torch, batched and fp16 on a GPU: the indexer's GPU path where onnxruntime-gpu is missing)
    backend: str = "onnx"
    # BG_CLOTH_PRECISION: "int8" runs the quantised cloth model `python -m bgremoval.quantize` made,
    # refused when its recorded mask disagreement with fp32 is over max_int8_disagreement
    cloth_precision: str = "fp32"
    max_int8_disagreement: float = 0.005  # share of mask pixels that may differ from fp32
    allow_download: bool = False  # let rembg download missing weights at start (needs internet)
    jpeg_quality: int = 95
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_body_bytes: int = 20 * 1024 * 1024
    # Megapixels one worker processes at once (<= 9 MB of memory each); past it a request waits
    # up to inflight_wait_s, then gets 503 + Retry-After. 48 = one photo at the 40 MP cap plus
    # small ones beside it.
    max_inflight_mp: float = 48.0
    inflight_wait_s: float = 10.0
    fetch: FetchPolicy = field(default_factory=FetchPolicy)
    # GARMENT_VOCABULARY: the product-text -> garment classes file (default: the one shipped in shared/)
    vocabulary_path: str | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"BG_BACKEND must be one of {', '.join(BACKENDS)}, not {self.backend!r}")
        if self.cloth_precision not in PRECISIONS:
            raise ValueError(f"BG_CLOTH_PRECISION must be one of {', '.join(PRECISIONS)}, not {self.cloth_precision!r}")

    @classmethod
    def from_env(cls, env=os.environ) -> "BgConfig":
        return cls(
            models=ModelNames.from_env(env),
            pipeline=PipelineSettings.from_env(env),
            weights_dir=env.get("U2NET_HOME") or None,
            ort_threads=int(env.get("ORT_THREADS", cls.ort_threads)),
            device=env.get("DEVICE", cls.device).strip().lower(),
            backend=env.get("BG_BACKEND", cls.backend).strip().lower(),
            cloth_precision=env.get("BG_CLOTH_PRECISION", cls.cloth_precision).strip().lower(),
            max_int8_disagreement=float(env.get("BG_INT8_MAX_DISAGREEMENT", cls.max_int8_disagreement)),
            allow_download=env_flag(env, "BG_ALLOW_DOWNLOAD"),
            jpeg_quality=int(env.get("BG_JPEG_QUALITY", cls.jpeg_quality)),
            max_pixels=int(env.get("MAX_IMAGE_PIXELS", cls.max_pixels)),
            max_body_bytes=int(env.get("MAX_BODY_BYTES", cls.max_body_bytes)),
            max_inflight_mp=float(env.get("BG_MAX_INFLIGHT_MP", cls.max_inflight_mp)),
            inflight_wait_s=float(env.get("BG_INFLIGHT_WAIT_S", cls.inflight_wait_s)),
            fetch=FetchPolicy.from_env(env),
            vocabulary_path=env.get("GARMENT_VOCABULARY") or None,
        )
