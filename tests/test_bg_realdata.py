"""The pipeline over the real photos in ../shared/data (oracle models): no crash, right sizes."""
from __future__ import annotations

from pathlib import Path

import pytest

from bgremoval.pipeline import NoGarmentFound
from shared.images import decode_image
from tests.conftest import shared_data

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


def _run_over(pipeline, paths: list[Path]) -> tuple[int, int]:
    processed = refused = 0
    for path in paths:
        decoded = decode_image(path.read_bytes())
        try:
            out, result = pipeline.cut_out(decoded)
        except NoGarmentFound:
            refused += 1
            continue
        assert out.size == decoded.size, path
        assert result.mask.shape == (decoded.size[1], decoded.size[0]), path
        processed += 1
    return processed, refused


def test_whole_sample_catalog(bg_pipeline):
    paths = sorted(p for p in shared_data("catalog").rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    assert len(paths) > 100
    processed, refused = _run_over(bg_pipeline, paths)
    assert processed + refused == len(paths)
    assert processed > len(paths) // 2  # the oracle finds red/blue/yellow cloth in most photos


def test_street_photos_subset(bg_pipeline):
    paths = sorted(shared_data("ccp").joinpath("images").glob("*.jpg"))[::10]
    if not paths:
        pytest.skip("no CCP images")
    processed, refused = _run_over(bg_pipeline, paths)
    assert processed + refused == len(paths) and processed > 0
