"""Decoding untrusted image bytes into a predictable RGB picture, and encoding results.

Every image either service touches goes through `decode_image`, so EXIF orientation, odd modes
(16-bit, CMYK, palette, alpha), animated files and decompression bombs are handled in one place.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from shared.errors import PayloadTooLarge, UnsupportedMediaType, Unprocessable

# Formats sniffed from the bytes that we accept; anything else (SVG, HTML, PDF...) is refused.
ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO"})
DEFAULT_MAX_PIXELS = 40_000_000
MIN_SIDE = 8  # smaller pictures carry no garment worth segmenting


@dataclass
class DecodedImage:
    """An upright RGB picture plus the alpha it arrived with (None when it had none)."""

    rgb: Image.Image
    alpha: np.ndarray | None  # uint8 HxW, 255 = opaque
    source_format: str

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.size


def _to_8bit_rgb_and_alpha(im: Image.Image) -> tuple[Image.Image, np.ndarray | None]:
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # Pillow's convert("L") clips 16-bit values at 255; scale them instead.
        values = np.asarray(im, dtype=np.float64)
        peak = 65535.0 if values.max() > 255 else 255.0
        gray = np.clip(values / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB"), None
    if im.mode == "F":
        values = np.asarray(im, dtype=np.float64)
        gray = np.clip(values, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB"), None
    if im.mode == "P" or im.mode == "PA":
        im = im.convert("RGBA")
    if im.mode in ("LA", "La", "RGBa"):
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        alpha = np.asarray(im.getchannel("A"))
        if alpha.min() == 255:
            return im.convert("RGB"), None
        return im.convert("RGB"), alpha.copy()
    if im.mode == "CMYK":
        # Adobe CMYK JPEGs are stored inverted; Pillow's conversion knows about it.
        return im.convert("RGB"), None
    return im.convert("RGB"), None


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode untrusted bytes. Raises a ProblemError with a clear message for anything unusable."""
    if not data:
        raise Unprocessable("The image is empty (0 bytes).")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise UnsupportedMediaType(
            "The content is not an image we can read (accepted: JPEG, PNG, WebP, GIF, BMP, TIFF)."
        ) from None
    except Image.DecompressionBombError as exc:
        raise PayloadTooLarge(f"The image has too many pixels: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - malformed headers raise all sorts; untrusted input
        raise Unprocessable(f"The image header could not be read: {type(exc).__name__}") from None
    source_format = im.format or ""
    if source_format not in ACCEPTED_FORMATS:
        raise UnsupportedMediaType(f"Image format {source_format!r} is not accepted.")
    width, height = im.size
    # Checked from the header, before any pixel is decoded: this is the decompression-bomb guard.
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"The image is {width}x{height} = {width * height:,} pixels; the limit is {max_pixels:,}."
        )
    if min(width, height) < MIN_SIDE:
        raise Unprocessable(f"The image is {width}x{height}; both sides must be at least {MIN_SIDE} px.")
    try:
        if getattr(im, "is_animated", False):
            im.seek(0)  # animated GIF/WebP: the first frame is the product photo
        im.load()
        im = ImageOps.exif_transpose(im)
        rgb, alpha = _to_8bit_rgb_and_alpha(im)
    except Image.DecompressionBombError as exc:
        raise PayloadTooLarge(f"The image has too many pixels: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - Pillow's decoders raise many types on corrupt data
        raise Unprocessable(f"The image could not be decoded (truncated or corrupt): {exc}") from None
    return DecodedImage(rgb=rgb, alpha=alpha, source_format=source_format)


def flatten_onto_black(decoded: DecodedImage) -> Image.Image:
    """The picture with transparent parts black, as matted catalog photos must be seen."""
    if decoded.alpha is None:
        return decoded.rgb
    rgb = np.asarray(decoded.rgb, dtype=np.float32)
    weight = decoded.alpha.astype(np.float32)[..., None] / 255.0
    return Image.fromarray(np.round(rgb * weight).astype(np.uint8), "RGB")


def encode_image(picture: Image.Image, fmt: str, *, jpeg_quality: int = 95) -> bytes:
    """Encode as JPEG (RGB) or PNG (any mode, e.g. RGBA with the garment mask as alpha)."""
    out = io.BytesIO()
    if fmt == "jpeg":
        picture.convert("RGB").save(out, "JPEG", quality=jpeg_quality, subsampling=0)
    elif fmt == "png":
        picture.save(out, "PNG", compress_level=3)
    else:
        raise ValueError(f"unknown output format {fmt!r}")
    return out.getvalue()
