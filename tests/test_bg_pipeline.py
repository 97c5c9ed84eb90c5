"""The garment pipeline against the oracle models: exact outcomes on synthetic photos."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from bgremoval.pipeline import NoGarmentFound, keep_main_component
from shared.images import decode_image, encode_image
from tests import scenes


def region(picture: Image.Image, box: tuple) -> np.ndarray:
    x0, y0, x1, y1 = scenes.inner(box)
    return np.asarray(picture.convert("RGB"), dtype=np.int16)[y0:y1, x0:x1].reshape(-1, 3)


def test_keeps_garments_and_blacks_out_everything_else(bg_pipeline):
    photo, boxes = scenes.street_photo()
    out, result = bg_pipeline.remove_background(photo)
    assert out.size == photo.size and result.source == "garment"
    assert (region(out, boxes["top"]) == scenes.UPPER).all()
    assert (region(out, boxes["trousers"]) == scenes.LOWER).all()
    for name in ("face", "bystander_face", "bystander_top", "tree", "building"):
        assert (region(out, boxes[name]) == 0).all(), name
    # The street around everything is black too.
    assert (np.asarray(out)[:40, :150] == 0).all()


def test_the_bystander_is_only_removed_by_the_main_person_step(bg_models):
    from bgremoval.config import PipelineSettings
    from bgremoval.pipeline import GarmentPipeline

    photo, boxes = scenes.street_photo()
    everyone = GarmentPipeline(bg_models, PipelineSettings(keep_main_person=False))
    out, _ = everyone.remove_background(photo)
    assert (region(out, boxes["bystander_top"]) == scenes.UPPER).all()


def test_classes_select_garments(bg_pipeline):
    photo, boxes = scenes.street_photo()
    out, _ = bg_pipeline.remove_background(photo, classes=("lower",))
    assert (region(out, boxes["top"]) == 0).all()
    assert (region(out, boxes["trousers"]) == scenes.LOWER).all()


def test_full_body_garment(bg_pipeline):
    out, _ = bg_pipeline.remove_background(scenes.dress_photo(), classes=("full",))
    arr = np.asarray(out)
    assert (arr[200:600, 170:330] == scenes.FULL).all()
    assert (arr[50:130, 210:290] == 0).all()  # face


def test_background_colour(bg_pipeline):
    photo, boxes = scenes.street_photo()
    out, _ = bg_pipeline.remove_background(photo, background=(255, 255, 255))
    assert (region(out, boxes["face"]) == 255).all()
    assert (region(out, boxes["top"]) == scenes.UPPER).all()


def test_flat_lay_falls_back_to_the_product_matte(bg_pipeline):
    photo, garment = scenes.flat_lay_photo()
    out, result = bg_pipeline.remove_background(photo)
    assert result.source == "product"
    assert (region(out, garment) == 60).all()
    assert (np.asarray(out)[:100, :] == 0).all()


def test_nothing_found_is_an_error_not_a_black_picture(bg_pipeline):
    with pytest.raises(NoGarmentFound) as err:
        bg_pipeline.remove_background(Image.new("RGB", (300, 300), (240, 240, 240)))
    assert err.value.status == 422


def test_person_without_the_requested_garment(bg_pipeline):
    photo, _ = scenes.street_photo()
    with pytest.raises(NoGarmentFound, match="no garment"):
        bg_pipeline.remove_background(photo, classes=("full",))


def test_large_photo_is_processed_at_working_size_and_returned_full_size(bg_pipeline):
    photo, boxes = scenes.street_photo(1800, 2400)
    out, _ = bg_pipeline.remove_background(photo)
    assert out.size == (1800, 2400)
    assert (region(out, boxes["top"]) == scenes.UPPER).all()
    assert (region(out, boxes["bystander_top"]) == 0).all()


def test_keep_main_component_prefers_large_central_blob():
    mask = np.zeros((100, 100), bool)
    mask[20:90, 35:65] = True  # main, central
    mask[40:60, 0:10] = True  # bystander at the edge
    mask[50:55, 40:45] = False  # a hole is irrelevant
    fragment = np.zeros_like(mask)
    fragment[25:30, 66:69] = True  # detached hand-sized fragment inside the main box? no: outside
    kept = keep_main_component(mask | fragment)
    assert kept[50, 50] and not kept[50, 5]
    assert not kept[27, 67]  # outside the main box: dropped
    inside = mask.copy()
    inside[30:40, 40:60] = False
    inside[32:38, 45:55] = True  # island inside the main person's box: kept
    assert keep_main_component(inside)[35, 50]


def test_main_person_rules_differ_on_a_large_blob_at_the_edge():
    from bgremoval.config import PipelineSettings
    from bgremoval.pipeline import largest_component, main_person

    mask = np.zeros((100, 100), bool)
    mask[0:25, 0:30] = True  # 750 px in the corner
    mask[40:70, 40:60] = True  # 600 px in the centre
    assert main_person(mask, "central")[50, 50] and not main_person(mask, "central")[10, 10]
    assert main_person(mask, "largest")[10, 10] and not main_person(mask, "largest")[50, 50]
    assert np.array_equal(largest_component(mask), main_person(mask, "largest"))
    assert not largest_component(np.zeros((4, 4), bool)).any()
    with pytest.raises(ValueError, match="BG_MAIN_PERSON_RULE='biggest' is not allowed: choose 'largest' or 'central'"):
        PipelineSettings.from_env({"BG_MAIN_PERSON_RULE": "biggest"})
    assert PipelineSettings.from_env({"BG_MAIN_PERSON_RULE": " Largest "}).main_person_rule == "largest"


def test_the_main_person_rule_is_part_of_the_garment_identity(bg_models):
    from bgremoval.config import PipelineSettings
    from bgremoval.pipeline import GarmentPipeline

    central = GarmentPipeline(bg_models, PipelineSettings(main_person_rule="central")).identity()
    largest = GarmentPipeline(bg_models, PipelineSettings()).identity()
    assert "main_person_rule" not in central["garment"]  # indexes built before the rule existed stay valid
    assert largest["garment"]["main_person_rule"] == "largest"
    assert largest["shared"] == central["shared"] and largest["product"] == central["product"]


def _roundtrip(picture: Image.Image, fmt: str, **save) -> bytes:
    buf = io.BytesIO()
    picture.save(buf, fmt, **save)
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["RGBA", "L", "CMYK", "P", "LA", "I;16"])
def test_input_modes(bg_pipeline, mode):
    photo, boxes = scenes.street_photo()
    if mode == "I;16":
        gray = np.asarray(photo.convert("L"), dtype=np.uint16) * 257
        converted = Image.fromarray(gray)
    else:
        converted = photo.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else ("PNG" if mode != "P" else "GIF")
    decoded = decode_image(_roundtrip(converted, fmt))
    assert decoded.rgb.mode == "RGB" and decoded.size == photo.size
    if mode in ("L", "LA", "I;16"):
        # Grey photos have no colour, so the oracle sees no person; the product fallback or a
        # clean 422 are both acceptable, a crash is not.
        try:
            out, _ = bg_pipeline.remove_background(decoded.rgb, alpha=decoded.alpha)
            assert out.size == photo.size
        except NoGarmentFound:
            pass
        return
    out, _ = bg_pipeline.remove_background(decoded.rgb, alpha=decoded.alpha)
    assert out.size == photo.size
    top = region(out, boxes["top"])
    assert (np.abs(top - scenes.UPPER) <= 40).all()  # CMYK/palette shift colours a little
    assert (region(out, boxes["face"]) == 0).all()


def test_sixteen_bit_values_are_scaled_not_clipped():
    gray = np.full((20, 20), 32768, np.uint16)
    decoded = decode_image(_roundtrip(Image.fromarray(gray), "PNG"))
    assert abs(int(np.asarray(decoded.rgb)[0, 0, 0]) - 128) <= 1


def test_exif_rotated_input_is_turned_upright(bg_pipeline):
    photo, boxes = scenes.street_photo()
    stored = photo.transpose(Image.Transpose.ROTATE_90)  # camera stored it sideways
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    decoded = decode_image(_roundtrip(stored, "JPEG", exif=exif, quality=95))
    assert decoded.size == photo.size
    out, _ = bg_pipeline.remove_background(decoded.rgb)
    top = region(out, boxes["top"])
    assert (np.abs(top - scenes.UPPER) <= 12).all()
    assert (region(out, boxes["bystander_top"]) == 0).all()


def test_matted_input_alpha_limits_the_garment(bg_pipeline):
    """A catalog cut-out: transparent parts must stay out even if the models saw a garment."""
    photo, boxes = scenes.street_photo()
    alpha = np.zeros((photo.height, photo.width), np.uint8)
    x0, y0, x1, y1 = boxes["top"]
    alpha[y0:(y0 + y1) // 2, x0:x1] = 255  # only the top half of the top survived the cut-out
    _, result = bg_pipeline.remove_background(photo, alpha=alpha)
    assert result.mask[y0 + 20, (x0 + x1) // 2] == 255
    assert result.mask[y1 - 20, (x0 + x1) // 2] == 0


def test_jpeg_output_decodes_at_the_same_size(bg_pipeline):
    photo, _ = scenes.street_photo(333, 517)
    out, _ = bg_pipeline.remove_background(photo)
    data = encode_image(out, "jpeg", jpeg_quality=95)
    again = Image.open(io.BytesIO(data))
    assert again.format == "JPEG" and again.size == (333, 517)


def _reference_keep_main_component(mask: np.ndarray) -> np.ndarray:
    """The loop implementation keep_main_component replaced (one ndimage call per label)."""
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask.copy()
    index = np.arange(1, count + 1)
    areas = ndimage.sum_labels(mask, labels, index)
    centroids = np.array(ndimage.center_of_mass(mask, labels, index))
    height, width = mask.shape
    centre = np.array([(height - 1) / 2, (width - 1) / 2])
    half_diagonal = np.hypot(height, width) / 2
    offcentre = np.linalg.norm(centroids - centre, axis=1) / half_diagonal
    scores = areas * (1.0 - 0.5 * offcentre)
    main_label = int(index[np.argmax(scores)])
    box = ndimage.find_objects(labels)[main_label - 1]
    keep = [main_label]
    for label, area in zip(index, areas, strict=True):
        if label == main_label:
            continue
        inside = ndimage.sum_labels(mask[box], labels[box], label)
        if inside >= 0.5 * area:
            keep.append(int(label))
    return np.isin(labels, keep)


def _random_masks(seed: int = 9):
    """(name, mask) pairs: every shape of input keep_main_component has to decide on."""
    rng = np.random.default_rng(seed)
    yield "empty", np.zeros((40, 30), bool)
    yield "full", np.ones((25, 35), bool)
    one = np.zeros((60, 50), bool)
    one[10:50, 15:35] = True
    yield "one blob", one
    # Ties: two identical blobs mirrored about the centre score exactly the same; the lower label
    # (the first in raster order) must win in both implementations.
    tie = np.zeros((40, 40), bool)
    tie[5:15, 5:15] = tie[25:35, 25:35] = True
    yield "tie", tie
    # A fragment with exactly half of its pixels inside the main box (the >= boundary).
    half = np.zeros((50, 50), bool)
    half[10:40, 20:30] = True
    half[20:22, 31:33] = False
    half[20, 29:31] = True  # joins the main blob: widens its box to column 30
    half[30:32, 30:32] = True  # 2x2 fragment: column 30 inside the box, column 31 outside
    half[30:32, 30] = False
    half[30:32, 31] = True
    half[33:35, 30:32] = True  # touches nothing above (row 32 is empty), half inside
    yield "half inside", half
    for i in range(150):
        height, width = int(rng.integers(8, 120)), int(rng.integers(8, 120))
        kind = i % 5
        if kind == 0:  # speckles: many one- and few-pixel components
            mask = rng.random((height, width)) < rng.uniform(0.02, 0.45)
        elif kind == 1:  # several rectangular blobs of random sizes and places
            mask = np.zeros((height, width), bool)
            for _ in range(int(rng.integers(2, 8))):
                y0, x0 = rng.integers(0, height), rng.integers(0, width)
                mask[y0:y0 + rng.integers(1, height // 2 + 2), x0:x0 + rng.integers(1, width // 2 + 2)] = True
        elif kind == 2:  # a main person with holes, fragments inside its box and bystanders outside
            mask = np.zeros((height, width), bool)
            y0, x0 = height // 5, width // 3
            mask[y0:height - y0, x0:width - x0] = True
            mask &= rng.random((height, width)) > 0.35  # breaks it into fragments
            mask[:, : max(1, width // 8)] |= rng.random((height, max(1, width // 8))) < 0.4
            mask[: max(1, height // 8)] |= rng.random((max(1, height // 8), width)) < 0.3
        elif kind == 3:  # one blob plus sparse speckles
            mask = np.zeros((height, width), bool)
            mask[height // 4: 3 * height // 4, width // 4: 3 * width // 4] = True
            mask |= rng.random((height, width)) < 0.03
        else:  # symmetric layouts, where ties between scores are likely
            quarter = rng.random((height // 2 + 1, width // 2 + 1)) < 0.2
            mask = np.block([[quarter, quarter[:, ::-1]], [quarter[::-1], quarter[::-1, ::-1]]])
        yield f"random {i} ({kind})", mask


def test_keep_main_component_matches_the_loop_implementation():
    compared = 0
    for name, mask in _random_masks():
        expected = _reference_keep_main_component(mask)
        got = keep_main_component(mask)
        assert got.dtype == expected.dtype and got.shape == mask.shape, name
        assert np.array_equal(got, expected), name
        compared += 1
    assert compared > 150


def test_keep_main_component_matches_the_loop_implementation_on_weighted_masks():
    """Non-boolean masks weight areas and centroids by their values, as ndimage did."""
    rng = np.random.default_rng(3)
    for i, (name, mask) in enumerate(_random_masks(seed=4)):
        weighted = mask.astype(np.uint8) * rng.integers(1, 4, mask.shape).astype(np.uint8)
        if i % 3 == 0:
            weighted = mask.astype(np.uint8) * 255
        assert np.array_equal(keep_main_component(weighted), _reference_keep_main_component(weighted)), name


def test_keep_main_component_drops_many_speckles_keeps_fragments_in_the_box():
    mask = np.zeros((200, 150), bool)
    mask[30:190, 50:100] = True  # the main person
    mask[40:46, 60:66] = False
    mask[42:44, 62:64] = True  # an island in a hole, inside the person's box: kept
    mask[150:160, 85:100] = False
    mask[152:158, 90:104] = True  # a hand cut off by a strap, two thirds inside the box: kept
    expected = mask.copy()
    mask[60:120, 0:20] = True  # a bystander at the edge: dropped
    mask[100:110, 102:120] = True  # a fragment entirely right of the box: dropped
    mask[2:28:3, 2:148:3] = True  # 9 x 49 separate one-pixel speckles above the person: dropped
    assert ndimage.label(mask)[1] == 5 + 9 * 49
    assert np.array_equal(keep_main_component(mask), expected)
