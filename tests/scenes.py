"""Synthetic street photos whose right answer is known under the oracle models."""
from __future__ import annotations

from PIL import Image, ImageDraw

SCENERY = (128, 128, 128)  # grey street: no model sees anything
BUILDING = (200, 200, 200)
SKIN = (40, 200, 60)  # saturated green: person, but no clothing class
TREE = (30, 120, 30)  # saturated too: a person-like blob away from the main person
UPPER = (220, 30, 30)  # red: upper-body garment
LOWER = (30, 30, 220)  # blue: lower-body garment
FULL = (220, 220, 30)  # yellow: full-body garment


def street_photo(width: int = 600, height: int = 800) -> tuple[Image.Image, dict[str, tuple]]:
    """A main person in the middle (face, red top, blue trousers), a bystander in a red top at the
    left edge, a tree at the right edge, a building behind. Returns the photo and named boxes."""
    img = Image.new("RGB", (width, height), SCENERY)
    d = ImageDraw.Draw(img)
    sx, sy = width / 600, height / 800
    box = lambda x0, y0, x1, y1: (round(x0 * sx), round(y0 * sy), round(x1 * sx), round(y1 * sy))
    boxes = {
        "building": box(420, 20, 580, 170),
        "face": box(250, 80, 350, 180),
        "top": box(200, 180, 400, 450),
        "trousers": box(220, 450, 380, 760),
        "bystander_face": box(20, 300, 80, 360),
        "bystander_top": box(10, 360, 90, 520),
        "tree": box(520, 400, 590, 700),
    }
    d.rectangle(boxes["building"], fill=BUILDING)
    d.rectangle(boxes["face"], fill=SKIN)
    d.rectangle(boxes["top"], fill=UPPER)
    d.rectangle(boxes["trousers"], fill=LOWER)
    d.rectangle(boxes["bystander_face"], fill=SKIN)
    d.rectangle(boxes["bystander_top"], fill=UPPER)
    d.rectangle(boxes["tree"], fill=TREE)
    return img, boxes


def dress_photo(width: int = 500, height: int = 700) -> Image.Image:
    img = Image.new("RGB", (width, height), SCENERY)
    d = ImageDraw.Draw(img)
    d.rectangle((200, 40, 300, 140), fill=SKIN)
    d.rectangle((150, 140, 350, 650), fill=FULL)
    return img


def flat_lay_photo(width: int = 640, height: int = 480) -> tuple[Image.Image, tuple]:
    """A dark grey sweater on a white backdrop: no person, a product."""
    img = Image.new("RGB", (width, height), (245, 245, 245))
    garment = (200, 120, 440, 380)
    ImageDraw.Draw(img).rectangle(garment, fill=(60, 60, 60))
    return img, garment


def inner(box: tuple, margin: int = 12) -> tuple:
    """A box shrunk by `margin` px on each side (away from resampled edges)."""
    x0, y0, x1, y1 = box
    return (x0 + margin, y0 + margin, x1 - margin, y1 - margin)
