"""Query photo -> normalised CLIP image embedding on onnxruntime, without torch: the image tower
that `python -m search.export` writes beside the text tower (image.fp32.onnx), fed by a numpy
copy of open_clip's preprocessing (resize the shortest side, bicubic; centre crop; normalise).

The export records the preprocessing it was measured with and the embedding of a fixed probe
picture: a graph that does not give that probe back is not the one exported, and is refused.

The image tower of photo queries runs in the text encoder's runtime (IMAGE_TOWERS, keyed by it):
the export's graph beside the ONNX text encoder, open_clip's tower beside the torch one.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from search.text_encoder import SELF_PROBE_MIN_COSINE, ExportError, OnnxTextEncoder, read_export_meta
from shared.sessions import ENGINES, Registry, query_options

log = logging.getLogger("fashion.search")
RESAMPLING = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}


def probe_picture() -> Image.Image:
    """A fixed, odd-sized picture (gradients and stripes) that exercises the resize and the crop."""
    y, x = np.mgrid[0:131, 0:97]
    rgb = np.stack([(x * 255 // 96), (y * 255 // 130), ((x // 8 + y // 8) % 2) * 200 + 20], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def check_pictures() -> list[Image.Image]:
    """Pictures the export is measured on: portrait, landscape, square, tiny, and the probe."""
    rng = np.random.default_rng(0)
    sizes = [(240, 320), (320, 240), (224, 224), (57, 300), (1000, 700), (31, 17)]
    pictures = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB") for w, h in sizes]
    return pictures + [probe_picture()]


def preprocess_spec(preprocess_cfg: dict) -> dict:
    """What the numpy preprocessing needs, from open_clip's `visual.preprocess_cfg`; refuses what
    it does not reproduce exactly."""
    size = preprocess_cfg["size"]
    size = (size, size) if isinstance(size, int) else tuple(size)
    if (preprocess_cfg.get("resize_mode", "shortest") != "shortest" or size[0] != size[1]
            or preprocess_cfg.get("interpolation", "bicubic") not in RESAMPLING):
        raise ExportError(f"image preprocessing {preprocess_cfg} is not supported by the ONNX image encoder "
                          "(square 'shortest' resize, bicubic or bilinear); serve it with torch")
    return {"size": int(size[0]), "interpolation": preprocess_cfg.get("interpolation", "bicubic"),
            "mean": [float(v) for v in preprocess_cfg["mean"]], "std": [float(v) for v in preprocess_cfg["std"]]}


def clip_pixels(picture: Image.Image, spec: dict) -> np.ndarray:
    """open_clip's image transform, step for step as torchvision does it on a PIL image
    (Resize(size) of the shortest side, CenterCrop, to RGB, ToTensor, Normalize): [3, size, size]."""
    size = spec["size"]
    width, height = picture.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    new_size = (new_short, new_long) if width <= height else (new_long, new_short)
    resized = picture.resize(new_size, RESAMPLING[spec["interpolation"]])
    top = int(round((resized.height - size) / 2.0))
    left = int(round((resized.width - size) / 2.0))
    cropped = resized.crop((left, top, left + size, top + size)).convert("RGB")
    pixels = np.asarray(cropped, np.float32) / np.float32(255.0)
    mean = np.asarray(spec["mean"], np.float32)
    std = np.asarray(spec["std"], np.float32)
    return ((pixels - mean) / std).transpose(2, 0, 1)


class OnnxImageEncoder:
    """The exported image tower in an onnxruntime session; loaded once per worker."""

    def __init__(self, directory: str | Path, *, threads: int = 1, meta: dict | None = None):
        directory = Path(directory)
        self.meta = meta if meta is not None else read_export_meta(directory)
        image = self.meta.get("image")
        if not image:
            raise ExportError(f"the export at {directory} has no image tower (made before photo queries "
                              "existed, or with --no-image); export again with `python -m search.export`, "
                              "or set SEARCH_IMAGE_QUERIES=0")
        self.spec = image["preprocess"]
        # Weights stay in the memory-mapped .data file, shared by the workers of a host, instead of
        # a repacked private copy: ViT-B-32's tower then costs each worker ~50 MB of its own
        # instead of ~370 MB, for ~70 ms more per photo (118 -> 190 ms; the garment step takes
        # seconds). bench/photo_query.py measures both.
        options = query_options(threads, prepacking=False)
        graph = directory / image["file"]
        try:
            self.runner = ENGINES.get("onnxruntime-cpu")().open(str(graph), options)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise ExportError(f"{graph} cannot be loaded: {exc}") from None
        recorded = image.get("probe")
        if recorded is not None:
            probe = self.encode_images([probe_picture()])[0]
            recorded = np.asarray(recorded, np.float32)
            if probe.shape != recorded.shape or float(probe @ recorded) < SELF_PROBE_MIN_COSINE:
                raise ExportError(f"{graph} does not give the probe embedding its export.json recorded; "
                                  "the folder is mixed up: export again")

    def describe(self) -> str:
        return "onnx fp32"

    def encode_images(self, pictures: list[Image.Image]) -> np.ndarray:
        batch = np.stack([clip_pixels(picture, self.spec) for picture in pictures])
        return self.runner(batch)  # the graph's one input, "pixels"


class TorchImageEncoder:
    """open_clip's image tower (ClipEmbedder.encode_images), where there is no ONNX export."""

    def __init__(self, embedder):
        self.embedder = embedder

    def describe(self) -> str:
        return "torch fp32"

    def encode_images(self, pictures: list[Image.Image]) -> np.ndarray:
        return self.embedder.encode_images(pictures)


# The text encoder's runtime -> its photo queries' image tower: (clip settings, text encoder, export folder) -> encoder.
IMAGE_TOWERS: Registry = Registry("image tower")


def open_image_encoder(clip, text_encoder, directory: Path):
    """The image tower for photo queries, in the same runtime as `text_encoder`: the export's
    ONNX graph beside an ONNX text encoder, else open_clip (a full ClipEmbedder is reused; a
    text-only one means a second, full model). Raises ExportError with the reason."""
    # Anything but the ONNX text encoder is a ClipEmbedder (or, given to search.create_app as
    # `embedder`, an object standing in for one): torch.
    runtime = "onnx" if isinstance(text_encoder, OnnxTextEncoder) else "torch"
    return IMAGE_TOWERS.get(runtime)(clip, text_encoder, directory)


@IMAGE_TOWERS.register("onnx")
def open_onnx_image_tower(clip, text_encoder: OnnxTextEncoder, directory: Path) -> OnnxImageEncoder:
    encoder = OnnxImageEncoder(directory, threads=clip.threads, meta=text_encoder.meta)
    log.info("image encoder: onnxruntime fp32 from %s", directory)
    return encoder


@IMAGE_TOWERS.register("torch")
def open_torch_image_tower(clip, text_encoder, directory: Path) -> TorchImageEncoder:
    embedder = text_encoder
    if embedder.model.visual is None:  # ClipEmbedder(text_only=True) freed its image tower
        from search.embedder import ClipEmbedder

        embedder = ClipEmbedder(clip)
    log.info("image encoder: torch (no ONNX export at %s)", directory)
    return TorchImageEncoder(embedder)
