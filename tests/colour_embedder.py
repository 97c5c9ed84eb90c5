"""A test double for CLIP whose vectors follow pixel colours, so tests can see which garments a
vector holds: an image's vector is the histogram of its non-black pixels over a few named
colours, a text's vector names the colours it mentions. A "blue" query scores a product by how
much blue its garment pictures show, and exactly 0 where they show none."""
from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np

from tests import scenes

# Each named colour is the scene colour it stands for (tests/scenes.py), matched within a tolerance.
COLOURS = {"red": scenes.UPPER, "blue": scenes.LOWER, "yellow": scenes.FULL, "green": scenes.SKIN}
OTHER = len(COLOURS)  # the last dimension: any other non-black pixel, and texts that name no colour
DIM = OTHER + 1
TOLERANCE = 60  # per channel: JPEG and bilinear edges stay within it


class ColourEmbedder:
    """The parts of ClipEmbedder the indexer and the search service use."""

    model_name = "colour-histogram"
    device = "cpu"
    model = SimpleNamespace(visual=True)  # "has an image tower": photo queries reuse this object

    @property
    def identity(self) -> dict:
        return {"model": self.model_name, "pretrained": "test-double", "seed": None,
                "probe": self.encode_query_tokens(self.query_tokens("probe")).round(6).tolist()}

    def describe(self) -> str:
        return "colour histogram (test double)"

    def encode_images(self, pictures) -> np.ndarray:
        return np.stack([colour_vector(picture) for picture in pictures])

    def query_tokens(self, text: str) -> np.ndarray:
        words = re.findall(r"[a-z]+", text.lower())
        return np.array([i for i, name in enumerate(COLOURS) if name in words] or [OTHER], np.int32)

    def encode_query_tokens(self, ids: np.ndarray) -> np.ndarray:
        vector = np.zeros(DIM, np.float32)
        vector[ids] = 1.0
        return vector / np.linalg.norm(vector)


def colour_counts(picture) -> np.ndarray:
    """Non-black pixels per named colour (and OTHER)."""
    pixels = np.asarray(picture.convert("RGB"), np.int16).reshape(-1, 3)
    pixels = pixels[pixels.max(axis=1) > 40]  # black is "not kept"
    counts = np.zeros(DIM, np.float32)
    named = np.zeros(len(pixels), bool)
    for i, rgb in enumerate(COLOURS.values()):
        hit = (np.abs(pixels - np.array(rgb)) <= TOLERANCE).all(axis=1) & ~named
        counts[i] = hit.sum()
        named |= hit
    counts[OTHER] = (~named).sum()
    return counts


def colour_vector(picture) -> np.ndarray:
    counts = colour_counts(picture)
    return (counts / max(float(np.linalg.norm(counts)), 1e-12)).astype(np.float32)
