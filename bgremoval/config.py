"""Every setting of the background-removal service: each environment variable declared once, typed,
with its default, what is allowed and a line on what it does (shared/settings.py)."""
from __future__ import annotations

from shared.fetch import FetchPolicy
from shared.images import DEFAULT_MAX_PIXELS
from shared.server import Device, ServerSettings, device_setting
from shared.settings import Flag, OptionalFile, OptionalText, Settings, choice, setting

MAIN_PERSON_RULES = ("largest", "central")
BACKENDS = ("onnx", "torch")
PRECISIONS = ("fp32", "int8")


class PipelineSettings(Settings):
    person_threshold: float = setting(0.5, env="BG_PERSON_THRESHOLD", ge=0, le=1,
                                      description="matte value that counts as person")
    garment_threshold: float = setting(0.5, env="BG_GARMENT_THRESHOLD", ge=0, le=1,
                                       description="summed probability of the requested clothing classes")
    min_person_fraction: float = setting(
        0.01, env="BG_MIN_PERSON_FRACTION", ge=0, le=1,
        description="below this share of the image: no person (flat-lay, packshot), use the product matte")
    min_garment_fraction: float = setting(0.002, env="BG_MIN_GARMENT_FRACTION", ge=0, le=1,
                                          description="below this share: 422 instead of a black picture")
    person_dilation: float = setting(
        0.01, env="BG_PERSON_DILATION", ge=0, le=1,
        description="person mask grown by this share of the diagonal before intersecting (garment edges stick out)")
    working_max_side: int = setting(1024, env="BG_WORKING_MAX_SIDE", ge=16,
                                    description="masks are computed at most this large, then scaled to the input")
    keep_main_person: Flag = setting(True, env="BG_KEEP_MAIN_PERSON", description="drop bystanders: keep only the main person")
    # With the IS-Net matte on the 704 CCP street photos, largest scored main-person IoU 0.9508
    # against 0.9486 (docs/benchmarks.md, "Choosing the main person").
    main_person_rule: choice(*MAIN_PERSON_RULES) = setting(
        "largest", env="BG_MAIN_PERSON_RULE",
        description="which blob is the main person: `largest`, or `central` (area x centrality, plus fragments "
                    "inside its box)")
    # The cloth model needs only the photo, so it can start beside the person matte and one
    # request keeps two cores busy. The same masks; a flat-lay (no person) wastes that cloth run.
    concurrent_models: Flag = setting(
        False, env="BG_CONCURRENT_MODELS",
        description="run the cloth model beside the person matte (same masks; no faster on 2 cores, see bench/bg.py)")


class ModelNames(Settings):
    person: str = setting("u2net_human_seg", env="BG_PERSON_MODEL", min_length=1,
                          description="person matte (also `u2net`, `u2netp`, `silueta`, `isnet-general-use`)")
    cloth: str = setting("u2net_cloth_seg", env="BG_CLOTH_MODEL", min_length=1,
                         description="clothing segmentation (upper / lower / full)")
    product: str = setting("isnet-general-use", env="BG_PRODUCT_MODEL", min_length=1,
                           description="salient-object matte for flat-lays and packshots")


class BgConfig(Settings):
    models: ModelNames = ModelNames()
    pipeline: PipelineSettings = PipelineSettings()
    # Need not exist yet: BG_ALLOW_DOWNLOAD fills it, and readiness names what is missing.
    weights_dir: OptionalText = setting(
        None, env="U2NET_HOME",
        description="rembg weights directory (`<name>.onnx` or `models/<name>/<name>.onnx`); unset: rembg's "
                    "`~/.rembg` (or `$XDG_DATA_HOME/rembg`)")
    # rembg reads it itself, and any value (even 0) turns its check off: so text, not a flag.
    checksum_disabled: OptionalText = setting(
        None, env="MODEL_CHECKSUM_DISABLED",
        description="set (to any value): rembg skips the md5 check of its weights (only for self-made weights)")
    ort_threads: int = setting(1, env="ORT_THREADS", ge=1,
                               description="onnxruntime intra-op threads per session (workers x threads <= cores)")
    device: Device = device_setting()
    backend: choice(*BACKENDS) = setting(
        "onnx", env="BG_BACKEND",
        description="`onnx` (onnxruntime), or `torch`: rembg's graphs converted by onnx2torch, batched, fp16 on CUDA "
                    "(the indexer's GPU path; needs the builder requirements)")
    cloth_precision: choice(*PRECISIONS) = setting(
        "fp32", env="BG_CLOTH_PRECISION",
        description="`int8`: the quantised cloth model `python -m bgremoval.quantize` made, loaded only with its "
                    "recorded agreement")
    max_int8_disagreement: float = setting(0.005, env="BG_INT8_MAX_DISAGREEMENT", ge=0, le=1,
                                           description="the worst recorded share of mask pixels int8 may change")
    allow_download: Flag = setting(False, env="BG_ALLOW_DOWNLOAD",
                                   description="let the service download missing weights at start (needs internet)")
    jpeg_quality: int = setting(95, env="BG_JPEG_QUALITY", ge=1, le=100, description="JPEG quality of the answer")
    max_pixels: int = setting(DEFAULT_MAX_PIXELS, env="MAX_IMAGE_PIXELS", ge=1,
                              description="decompression-bomb cap (pixels, checked before decoding)")
    max_body_bytes: int = setting(20 * 1024 * 1024, env="MAX_BODY_BYTES", ge=1, description="request body cap")
    # <= 9 MB of memory per megapixel. 48 = one photo at the 40 MP cap plus small ones beside it.
    max_inflight_mp: float = setting(
        48.0, env="BG_MAX_INFLIGHT_MP", gt=0,
        description="megapixels one worker processes at once; past it requests wait, then 503 + `Retry-After`")
    inflight_wait_s: float = setting(10.0, env="BG_INFLIGHT_WAIT_S", ge=0,
                                     description="seconds a request waits for that budget")
    fetch: FetchPolicy = FetchPolicy()
    vocabulary_path: OptionalFile = setting(
        None, env="GARMENT_VOCABULARY",
        description="the product-text -> garment classes file (unset: the shipped `shared/garment_vocabulary.json`)")
    server: ServerSettings = ServerSettings()  # gunicorn's own (docker/gunicorn.conf.py)

def check_settings() -> BgConfig:
    """The service's settings from the environment; SettingsError names a bad one (gunicorn's
    master calls this before it starts a worker)."""
    return BgConfig.from_env()
