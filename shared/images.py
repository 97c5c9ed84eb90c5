"""Decoding untrusted image bytes into a predictable RGB picture, and encoding results.

Every image either service touches goes through `decode_image`, so EXIF orientation, odd modes
(16-bit, CMYK, palette, alpha), animated files and decompression bombs are handled in one place.
"""
from __future__ import annotations

import io
import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from shared.errors import PayloadTooLarge, Unprocessable, UnsupportedMediaType

# Formats sniffed from the bytes that we accept; anything else (SVG, HTML, PDF...) is refused.
ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO"})
DEFAULT_MAX_PIXELS = 40_000_000
MIN_SIDE = 8  # smaller pictures carry no garment worth segmenting
MAX_SIDE = 65_500  # JPEG cannot encode a longer side; within the pixel cap only slivers reach it
CROP_MARGIN = 0.05  # of the garment box, so CLIP (and a cropped result) shows the whole garment
WEBP_MAX_SIDE = 16383  # the format's limit: larger pictures cannot be WebP at all


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
    """The picture as 8-bit RGB plus its alpha. Done with Pillow's own conversions: no float
    copy of the whole image (a 40 MP photo must not cost 8 bytes a pixel here)."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # Pillow's convert("L") clips 16-bit values at 255; scale them instead (rounded).
        im = im.convert("I") if im.mode != "I" else im
        low, high = im.getextrema()
        scale = 255.0 / (65535.0 if high > 255 else 255.0)
        return im.point(lambda v: v * scale + 0.5).convert("L").convert("RGB"), None
    if im.mode == "F":
        return im.convert("L").convert("RGB"), None  # clipped to 0..255
    if im.mode == "P" or im.mode == "PA":
        im = im.convert("RGBA")
    if im.mode in ("LA", "La", "RGBa"):
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        alpha = im.getchannel("A")
        if alpha.getextrema()[0] == 255:
            return im.convert("RGB"), None
        return im.convert("RGB"), np.asarray(alpha)
    if im.mode == "RGB":
        return im, None  # no copy: a 40 MP photo is 160 MB in Pillow's 4-byte pixels
    # CMYK: Adobe CMYK JPEGs are stored inverted; Pillow's conversion knows about it.
    return im.convert("RGB"), None


@dataclass
class OpenedImage:
    """An image whose header was read and checked, no pixel decoded yet."""

    image: Image.Image
    source_format: str

    @property
    def pixels(self) -> int:
        return self.image.width * self.image.height


def open_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> OpenedImage:
    """Read and check the header of untrusted bytes: format, pixel count (the decompression-bomb
    guard) and size, before any pixel is decoded. Raises a ProblemError saying what is wrong."""
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
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"The image is {width}x{height} = {width * height:,} pixels; the limit is {max_pixels:,}."
        )
    if min(width, height) < MIN_SIDE:
        raise Unprocessable(f"The image is {width}x{height}; both sides must be at least {MIN_SIDE} px.")
    if max(width, height) > MAX_SIDE:
        raise Unprocessable(f"The image is {width}x{height}; no side may be longer than {MAX_SIDE:,} px.")
    return OpenedImage(im, source_format)


def _draft_for(im: Image.Image, max_side: int | None) -> None:
    """Ask a JPEG for the smallest DCT scale (1/2, 1/4, 1/8) still at least `max_side` on its
    longest upright side; once per image (Pillow ignores a second call), a no-op for other formats."""
    if max_side and max(im.size) > max_side:
        upright = upright_size(im)
        scale = max_side / max(upright)
        target = (round(upright[0] * scale), round(upright[1] * scale))
        im.draft("RGB", target if upright == im.size else target[::-1])


def pixels_to_decode(opened: OpenedImage, *, max_side: int | None = None) -> int:
    """The pixels `decode_opened(opened, max_side=...)` will hold at once, from the header alone:
    what a pixel budget reserves before decoding. Only JPEG decodes reduced (the DCT scale is set
    here); Pillow decodes PNG, WebP, TIFF, GIF and BMP whole, at full size, whatever `max_side`,
    so for them this is every pixel of the image."""
    try:
        _draft_for(opened.image, max_side)
    except Exception as exc:  # noqa: BLE001 - a corrupt EXIF block raises all sorts; untrusted input
        raise Unprocessable(f"The image could not be decoded: {type(exc).__name__}") from None
    return opened.image.width * opened.image.height


def decode_opened(opened: OpenedImage, *, max_side: int | None = None) -> DecodedImage:
    """Decode the pixels of a checked image. `max_side` scales it down to at most that many
    pixels on its longest side (the indexer's working size); JPEGs are then decoded at a reduced
    DCT scale, so a large catalog photo never exists in memory at full size. Other formats decode
    at full size (pixels_to_decode), and are shrunk before their mode is converted, so the full
    size exists once (4 bytes a pixel), not in an RGB copy beside the decoded RGBA."""
    im = opened.image
    try:
        if getattr(im, "is_animated", False):
            im.seek(0)  # animated GIF/WebP: the first frame is the product photo
        _draft_for(im, max_side)
        im.load()  # Pillow drops its reference to the bytes once loaded
        ImageOps.exif_transpose(im, in_place=True)  # not in place, it copies even upright photos
        opaque = None
        if max_side and max(im.size) > max_side and im.mode in _SHRUNK_BEFORE_CONVERSION:
            if im.mode not in ("RGB", "RGBA"):  # a palette without transparency needs no alpha band
                im = im.convert("RGB" if im.mode == "P" and not im.has_transparency_data else "RGBA")
            # Whether the photo had any transparency, judged at full size as before (no copy).
            opaque = im.mode == "RGB" or im.getextrema()[3][0] == 255
            im = _shrink_loaded(im, max_side)
        rgb, alpha = _to_8bit_rgb_and_alpha(im)
        if opaque is not None and not opaque and alpha is None:
            alpha = np.asarray(im.getchannel("A"))  # shrinking made a barely transparent photo opaque
        if max_side and max(rgb.size) > max_side:
            rgb, alpha = _shrink(rgb, alpha, max_side)
    except Image.DecompressionBombError as exc:
        raise PayloadTooLarge(f"The image has too many pixels: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - Pillow's decoders raise many types on corrupt data
        raise Unprocessable(f"The image could not be decoded (truncated or corrupt): {exc}") from None
    return DecodedImage(rgb=rgb, alpha=alpha, source_format=opened.source_format)


# 8-bit modes that become RGB or RGBA anyway: shrunk once in that mode, with the same pixels as
# converting first and shrinking after (RGBA is resized premultiplied either way). 16-bit and
# float modes are converted first, as before: their scaling to 8 bits must see every pixel.
_SHRUNK_BEFORE_CONVERSION = frozenset({"RGB", "RGBA", "P", "PA", "LA", "La", "RGBa"})


def _shrink_loaded(im: Image.Image, max_side: int) -> Image.Image:
    scale = max_side / max(im.size)
    return im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BILINEAR)


def upright_size(im: Image.Image) -> tuple[int, int]:
    """The size after EXIF orientation (5-8 swap width and height), from the header alone: a PNG
    without an eXIf chunk before its pixels is taken as stored (Pillow's PNG getexif would decode
    the whole image to look for one after them; decode_opened applies what it finds)."""
    if im.format == "PNG" and "exif" not in im.info:
        return im.size
    orientation = im.getexif().get(0x0112, 1)
    return im.size[::-1] if orientation in (5, 6, 7, 8) else im.size


def _shrink(rgb: Image.Image, alpha: np.ndarray | None, max_side: int) -> tuple[Image.Image, np.ndarray | None]:
    scale = max_side / max(rgb.size)
    size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
    if alpha is None:
        return rgb.resize(size, Image.BILINEAR), None
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.fromarray(alpha, "L"))
    small = rgba.resize(size, Image.BILINEAR)  # Pillow resizes RGBA premultiplied: no dark fringes
    return small.convert("RGB"), np.asarray(small.getchannel("A"))


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_side: int | None = None) -> DecodedImage:
    """Decode untrusted bytes. Raises a ProblemError with a clear message for anything unusable."""
    return decode_opened(open_image(data, max_pixels=max_pixels), max_side=max_side)


def flatten_onto_black(picture: Image.Image, alpha: np.ndarray | None) -> Image.Image:
    """The picture with transparent parts black, as matted catalog photos must be seen:
    round(rgb * alpha / 255), computed by Pillow in 8 bits (no float copy)."""
    if alpha is None:
        return picture
    flat = Image.new("RGB", picture.size, (0, 0, 0))
    flat.paste(picture, mask=Image.fromarray(alpha, "L"))
    return flat


def encode_image(picture: Image.Image, fmt: str, *, jpeg_quality: int = 95) -> bytes:
    """Encode as JPEG (RGB), PNG (any mode, e.g. RGBA with the garment mask as alpha) or WebP
    (RGB or RGBA, lossy at `jpeg_quality`; its alpha is stored losslessly)."""
    out = io.BytesIO()
    if fmt == "jpeg":
        # convert() copies even when the mode already matches: only convert what is not RGB.
        rgb = picture if picture.mode == "RGB" else picture.convert("RGB")
        rgb.save(out, "JPEG", quality=jpeg_quality, subsampling=0)
    elif fmt == "png":
        picture.save(out, "PNG", compress_level=3)
    elif fmt == "webp":
        if max(picture.size) > WEBP_MAX_SIDE:
            raise Unprocessable(f"The picture is {picture.width}x{picture.height}; WebP holds at most "
                                f"{WEBP_MAX_SIDE} px a side: ask for jpeg or png.")
        picture.save(out, "WEBP", quality=jpeg_quality)
    else:
        raise ValueError(f"unknown output format {fmt!r}")
    return out.getvalue()


def garment_box(mask: np.ndarray, margin: float = CROP_MARGIN) -> tuple[int, int, int, int] | None:
    """The (left, top, right, bottom) box of a uint8 mask's pixels over half, widened by `margin`
    of its size on each side and clipped to the image; None when the mask is empty."""
    rows, cols = np.nonzero(mask > 127)
    if rows.size == 0:
        return None
    pad_y = int((rows.max() - rows.min()) * margin)
    pad_x = int((cols.max() - cols.min()) * margin)
    height, width = mask.shape[:2]
    return (max(0, int(cols.min()) - pad_x), max(0, int(rows.min()) - pad_y),
            min(width, int(cols.max()) + 1 + pad_x), min(height, int(rows.max()) + 1 + pad_y))


def crop_to_mask(picture: Image.Image, mask: np.ndarray) -> Image.Image:
    """The picture cropped to the garment's box (garment_box), or whole when the mask is empty."""
    box = garment_box(mask)
    return picture if box is None else picture.crop(box)


def cover_box(source: tuple[int, int], target: tuple[int, int]) -> tuple[float, float, float, float]:
    """The part of a `source`-sized picture that shows when it is scaled, aspect ratio kept, just
    enough to cover `target` and then centre-cropped to it: the largest centred box with
    target's aspect ratio, as (left, top, right, bottom) in source pixels (fractions allowed)."""
    scale = max(target[0] / source[0], target[1] / source[1])
    width, height = target[0] / scale, target[1] / scale
    left, top = (source[0] - width) / 2, (source[1] - height) / 2
    return (left, top, left + width, top + height)


def cover(picture: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`picture` scaled (aspect ratio kept) to cover `size` and centre-cropped to exactly `size`.
    One Pillow resize of just the part that shows: no scaled-up intermediate, no float copy.
    Always a new image, so the caller may paint on it."""
    return picture.resize(size, Image.BICUBIC, box=cover_box(picture.size, size))


def decode_covering(opened: OpenedImage, size: tuple[int, int]) -> Image.Image:
    """A checked image decoded into an RGB picture of exactly `size` that it covers (`cover`):
    a backdrop. JPEGs are decoded at the smallest DCT scale that still covers `size`, so a large
    backdrop never exists in memory at full size; transparent parts are black, as cut-outs are
    seen everywhere else."""
    im = opened.image
    try:
        upright = upright_size(im)
        scale = max(size[0] / upright[0], size[1] / upright[1])
        if scale < 1:
            needed = (math.ceil(upright[0] * scale), math.ceil(upright[1] * scale))
            # draft never goes below the size asked for; JPEG only, a no-op for other formats
            im.draft("RGB", needed if upright == im.size else needed[::-1])
    except Exception as exc:  # noqa: BLE001 - a corrupt EXIF block raises all sorts; untrusted input
        raise Unprocessable(f"The image could not be decoded: {type(exc).__name__}") from None
    decoded = decode_opened(opened)
    flat = flatten_onto_black(decoded.rgb, decoded.alpha)
    del decoded
    return cover(flat, size)


def threaded_map(fn, items) -> list:
    """[fn(item) ...] on up to 8 threads: for per-image Pillow work (resizes) feeding a GPU, which
    outruns one core; Pillow releases the GIL while it resizes."""
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(fn, items))
