"""Background choices of the bg-removal service: `background_url` (an image behind the garment),
`format=webp` and `crop=garment`. Each option's effect is checked on the pixels, in all three
input forms (JSON, multipart, raw image/* body with a query string); every bad value of a new
field gets a problem+json 400/4xx/5xx naming the field, and the service keeps serving; responses
match the OpenAPI document."""
from __future__ import annotations

import io
from urllib.parse import urlencode

import jsonschema
import numpy as np
import pytest
from PIL import Image, ImageDraw

from bgremoval.api import OPTION_FIELDS
from shared.images import cover, cover_box, decode_covering, decode_image, encode_image, garment_box, open_image
from tests import scenes
from tests.conftest import send_bytes
from tests.test_hardening import _assert_problem, _huge_header_png, _stalled
from tests.test_openapi import _check

FORMS = ("json", "multipart", "query")

# A portrait background of four horizontal bands, 100 px each. Covering the (portrait, but far
# less so) 300x400 photo scales it by 3 and keeps its middle: the result's top half is RED_BAND,
# its bottom half BLUE_BAND, and neither GREEN_BAND nor YELLOW_BAND shows. Stretching it would
# show all four bands, and a crop that is not centred would show green or yellow.
GREEN_BAND, RED_BAND, BLUE_BAND, YELLOW_BAND = (0, 160, 0), (200, 0, 0), (0, 0, 200), (230, 230, 0)
BANDS = (GREEN_BAND, RED_BAND, BLUE_BAND, YELLOW_BAND)
BAND_HEIGHT = 100


def banded_background(width: int = 100) -> Image.Image:
    img = Image.new("RGB", (width, BAND_HEIGHT * len(BANDS)))
    draw = ImageDraw.Draw(img)
    for i, colour in enumerate(BANDS):
        draw.rectangle((0, i * BAND_HEIGHT, width - 1, (i + 1) * BAND_HEIGHT - 1), fill=colour)
    return img


def expected_bands(source: tuple[int, int], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """For each output row of a banded background covering `size`: the band colour it must show
    (worked out here from the cover rule, not by shared.images), and whether the row is far enough
    from a band edge for resampling not to blur it."""
    band_height = source[1] / len(BANDS)
    scale = max(size[0] / source[0], size[1] / source[1])
    top = (source[1] - size[1] / scale) / 2  # centred
    source_rows = top + (np.arange(size[1]) + 0.5) / scale
    band = np.clip((source_rows // band_height).astype(int), 0, len(BANDS) - 1)
    offset = source_rows % band_height
    reach = 2.5 * max(1.0, 1 / scale)  # bicubic's support in source pixels (wider when shrinking)
    clear = (np.minimum(offset, band_height - offset) > reach) | (source_rows < reach) \
        | (source_rows > source[1] - reach)
    return np.array(BANDS, np.int16)[band], clear


def encode(picture: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    picture.save(buf, fmt, **kw)
    return buf.getvalue()


def opened_picture(response) -> Image.Image:
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    return Image.open(io.BytesIO(response.data))


def rgb(picture: Image.Image) -> np.ndarray:
    return np.asarray(picture.convert("RGB"), np.int16)


PHOTO, PHOTO_BOXES = scenes.street_photo(300, 400)
PHOTO_PNG = encode(PHOTO)


@pytest.fixture
def assert_still_serving(bg_client):
    """After a refusal the service answers the next good request (as in test_hardening)."""
    def check():
        response = bg_client.post("/", data=PHOTO_PNG, content_type="image/png")
        assert response.status_code == 200, response.json
    return check


@pytest.fixture(scope="module")
def photo_mask(bg_pipeline) -> np.ndarray:
    """The mask the service computes for PHOTO (the app and bg_pipeline share settings and models)."""
    return bg_pipeline.garment_mask(PHOTO).mask


@pytest.fixture(scope="module")
def urls(upstream) -> dict[str, str]:
    routes = {
        "/opt-photo.png": lambda h: send_bytes(h, PHOTO_PNG, "image/png"),
        "/bands.png": lambda h: send_bytes(h, encode(banded_background()), "image/png"),
        "/bands.jpg": lambda h: send_bytes(h, encode(banded_background(), "JPEG", quality=95)),
        "/bands-with-alpha.png": lambda h: send_bytes(h, encode(transparent_background()), "image/png"),
        "/bg-404.png": lambda h: h.send_error(404),
        "/bg-500.png": lambda h: h.send_error(500),
        "/bg-page.html": lambda h: send_bytes(h, b"<html><body>not an image</body></html>", "image/png"),
        "/bg.svg": lambda h: send_bytes(h, b'<svg xmlns="http://www.w3.org/2000/svg"/>', "image/svg+xml"),
        "/bg-empty.png": lambda h: send_bytes(h, b"", "image/png"),
        "/bg-truncated.jpg": lambda h: send_bytes(h, encode(scenes.street_photo()[0], "JPEG")[:5000]),
        "/bg-tiny.png": lambda h: send_bytes(h, encode(Image.new("RGB", (2, 2))), "image/png"),
        "/bg-oversize.png": lambda h: send_bytes(h, b"\0" * 2_500_000, "image/png"),
        "/bg-huge-header.png": lambda h: send_bytes(h, _huge_header_png(), "image/png"),
        "/bg-stalled.png": _stalled,
        "/bg-redirect-private": redirect_to("http://10.0.0.1/internal.png"),
    }
    upstream.routes.update(routes)
    return {path.strip("/"): upstream.base_url + path for path in routes}


def redirect_to(location: str):
    def handler(h):
        h.send_response(302)
        h.send_header("Location", location)
        h.send_header("Content-Length", "0")
        h.end_headers()
    return handler


def transparent_background() -> Image.Image:
    """The banded background whose right half is fully transparent (and white under it)."""
    img = banded_background().convert("RGBA")
    ImageDraw.Draw(img).rectangle((50, 0, 99, 399), fill=(255, 255, 255, 0))
    return img


def post(client, form: str, urls: dict, options: dict, photo: bytes = PHOTO_PNG):
    """POST `photo` with `options` in one of the three input forms. Option values are strings as a
    form or query string spells them (classes comma-separated); JSON sends them as given, with
    `classes` as a list."""
    if form == "json":
        body = {"url": urls["opt-photo.png"], **options}
        if isinstance(body.get("classes"), str):
            body["classes"] = body["classes"].split(",")
        if photo is not PHOTO_PNG:
            raise ValueError("the JSON form fetches PHOTO from the test upstream")
        return client.post("/", json=body)
    if form == "multipart":
        return client.post("/", data={"file": (io.BytesIO(photo), "photo.png"), **options},
                           content_type="multipart/form-data")
    return client.post("/?" + urlencode(options), data=photo, content_type="image/png")


# ------------------------------------------------------------------ shared.images helpers


def test_cover_scales_to_cover_and_crops_the_centre():
    background = banded_background()
    for size in ((300, 400), (60, 400), (400, 100), (37, 51), (100, 400)):
        out = cover(background, size)
        assert out.size == size and out.mode == "RGB"
        colours, clear = expected_bands(background.size, size)
        got = np.asarray(out, np.int16)
        assert (np.abs(got[clear] - colours[clear][:, None, :]) <= 2).all(), size
    # 300x400: the middle two bands only, split at the middle row (cover, centred; not stretched)
    got = np.asarray(cover(background, (300, 400)), np.int16)
    assert (got[:190] == RED_BAND).all() and (got[210:] == BLUE_BAND).all()
    assert cover_box((100, 400), (300, 400)) == pytest.approx((0, 400 / 3, 100, 800 / 3))
    assert cover_box((200, 100), (50, 50)) == (50, 0, 150, 100)


def test_cover_of_the_same_size_is_a_copy_the_caller_may_paint_on():
    background = banded_background()
    out = cover(background, background.size)
    assert out is not background and np.array_equal(np.asarray(out), np.asarray(background))


def test_decode_covering_reads_a_large_jpeg_at_a_reduced_scale_upright():
    big = banded_background(1000).resize((1000, 4000), Image.NEAREST)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: shown rotated by 90 degrees
    data = encode(big.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif.tobytes())
    opened = open_image(data)
    assert opened.image.size == (4000, 1000)
    out = decode_covering(opened, (150, 200))
    assert out.size == (150, 200) and out.mode == "RGB"
    assert max(opened.image.size) <= 1000  # decoded at 1/4 or less of its size (JPEG draft), not 4000 px
    reference = cover(decode_image(data).rgb, (150, 200))
    assert np.abs(np.asarray(out, np.int16) - np.asarray(reference, np.int16)).mean() < 3
    colours, clear = expected_bands((1000, 4000), (150, 200))
    assert (np.abs(np.asarray(out, np.int16)[clear] - colours[clear][:, None, :]) <= 12).all()


def test_decode_covering_puts_transparent_parts_on_black():
    out = np.asarray(decode_covering(open_image(encode(transparent_background())), (100, 400)))
    assert (out[:, 60:] == 0).all() and (out[:90, :40] == GREEN_BAND).all()


def test_webp_encoding_keeps_alpha_and_refuses_what_webp_cannot_hold():
    from shared.errors import Unprocessable

    rgba = PHOTO.convert("RGBA")
    alpha = Image.linear_gradient("L").resize(PHOTO.size)
    rgba.putalpha(alpha)
    decoded = Image.open(io.BytesIO(encode_image(rgba, "webp", jpeg_quality=90)))
    assert decoded.format == "WEBP" and decoded.mode == "RGBA" and decoded.size == PHOTO.size
    assert np.array_equal(np.asarray(decoded.getchannel("A")), np.asarray(alpha))  # alpha kept exactly
    assert Image.open(io.BytesIO(encode_image(PHOTO, "webp"))).mode == "RGB"
    with pytest.raises(Unprocessable):
        encode_image(Image.new("RGB", (16384, 8)), "webp")


def test_pipeline_takes_a_background_picture_and_crops_without_flask(bg_pipeline, photo_mask):
    from bgremoval.pipeline import composite

    background = banded_background()
    decoded = decode_image(PHOTO_PNG)
    sizes = []

    def backdrop(size):
        sizes.append(size)
        return cover(background, size)
    picture, result = bg_pipeline.cut_out(decoded, background=backdrop, crop=True)
    box = garment_box(photo_mask)
    assert sizes == [picture.size] == [(box[2] - box[0], box[3] - box[1])]
    assert picture.mode == "RGB" and "background" in result.timings
    assert np.array_equal(result.mask, photo_mask)  # the mask stays the photo's, uncropped
    outside = photo_mask[box[1]:box[3], box[0]:box[2]] == 0
    assert np.array_equal(np.asarray(picture)[outside], np.asarray(cover(background, picture.size))[outside])
    with pytest.raises(ValueError):  # a picture under alpha would be thrown away: refused
        composite(PHOTO, Image.new("L", PHOTO.size), cover(background, PHOTO.size), mask_as_alpha=True)


# ------------------------------------------------------------------ each option's effect, in each form


@pytest.mark.parametrize("form", FORMS)
def test_defaults_are_unchanged(bg_client, bg_pipeline, urls, form):
    """No new option: the same JPEG as before, byte for byte the pipeline's default cut-out, and the
    same as spelling every default out."""
    plain = post(bg_client, form, urls, {})
    spelled = post(bg_client, form, urls, {"format": "jpeg", "background": "#000000", "crop": "none",
                                           "classes": "upper,lower,full"})
    assert plain.status_code == 200 and plain.mimetype == "image/jpeg"
    assert plain.data == spelled.data
    picture, _ = bg_pipeline.cut_out(decode_image(PHOTO_PNG))
    assert plain.data == encode_image(picture, "jpeg")
    assert opened_picture(plain).size == PHOTO.size


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_background_url_shows_the_covering_image_outside_the_garment(bg_client, urls, photo_mask, form, fmt):
    response = post(bg_client, form, urls, {"background_url": urls["bands.png"], "format": fmt})
    assert response.mimetype == f"image/{fmt}"
    out = opened_picture(response)
    assert out.size == PHOTO.size
    assert out.mode == "RGB"  # opaque: a background picture is meant to be seen, not hidden under alpha
    got = rgb(out)
    outside = photo_mask == 0
    colours, clear = expected_bands((100, 400), PHOTO.size)
    check = outside & clear[:, None]
    if fmt == "png":  # lossless: exactly the covering picture, and the bands the cover rule predicts
        expected = np.asarray(cover(banded_background(), PHOTO.size), np.int16)
        assert np.array_equal(got[outside], expected[outside])
        assert (np.abs(got - colours[:, None, :])[check] <= 2).all()
    else:  # lossy: away from edges the colours are close
        assert np.median(np.abs(got - colours[:, None, :])[check]) <= 3
    top = scenes.inner(PHOTO_BOXES["top"], 8)
    garment = got[top[1]:top[3], top[0]:top[2]].reshape(-1, 3)
    assert (np.abs(garment - scenes.UPPER) <= (0 if fmt == "png" else 12)).mean() > 0.99  # the garment stays
    face = scenes.inner(PHOTO_BOXES["face"], 6)  # the face is background now: red band (upper half)
    assert (np.abs(got[face[1]:face[3], face[0]:face[2]] - RED_BAND) <= 12).all()


def test_a_background_picture_gets_the_soft_edges_a_colour_gets():
    """Where the mask is partial (upscaled masks of large photos) the output blends garment and
    background picture as round(photo x m + background x (1 - m)), as with a colour."""
    from bgremoval.pipeline import composite

    mask = Image.linear_gradient("L").resize(PHOTO.size)  # every mask value, 0..255
    backdrop = cover(banded_background(), PHOTO.size)
    m = np.asarray(mask, np.float64)[..., None] / 255.0
    blended = np.round(np.asarray(PHOTO, np.float64) * m + np.asarray(backdrop, np.float64) * (1 - m))
    out = composite(PHOTO, mask, backdrop.copy())
    assert np.abs(np.asarray(out, np.float64) - blended).max() <= 1
    # the same blend a colour gets: with a one-colour picture, the colour's result exactly
    plain = composite(PHOTO, mask, Image.new("RGB", PHOTO.size, (10, 200, 30)))
    assert np.array_equal(np.asarray(plain), np.asarray(composite(PHOTO, mask, (10, 200, 30))))


def test_background_url_jpeg_and_transparent_backgrounds(bg_client, urls, photo_mask):
    out = rgb(opened_picture(post(bg_client, "json", urls, {"background_url": urls["bands.jpg"]})))
    colours, clear = expected_bands((100, 400), PHOTO.size)
    check = (photo_mask == 0) & clear[:, None]
    assert np.median(np.abs(out - colours[:, None, :])[check]) <= 3
    # transparent parts of a background image are black, as everywhere in these services
    out = rgb(opened_picture(post(bg_client, "query", urls, {"background_url": urls["bands-with-alpha.png"],
                                                             "format": "png"})))
    right = np.zeros_like(photo_mask, bool)
    right[:, 160:] = True  # the transparent half of the background, scaled by 3 and centred
    assert (out[right & (photo_mask == 0)] == 0).all()


@pytest.mark.parametrize("form", FORMS)
def test_webp_carries_the_mask_as_alpha_like_png(bg_client, urls, photo_mask, form):
    webp = opened_picture(post(bg_client, form, urls, {"format": "webp", "background": "#ffffff"}))
    png = opened_picture(post(bg_client, form, urls, {"format": "png", "background": "#ffffff"}))
    assert webp.format == "WEBP" and webp.size == PHOTO.size and webp.mode == "RGBA"
    alpha = np.asarray(webp.getchannel("A"))
    assert np.array_equal(alpha, np.asarray(png.getchannel("A")))  # WebP's alpha is lossless
    assert np.array_equal(alpha, photo_mask)
    opaque = alpha == 255
    colour_error = np.abs(rgb(webp)[opaque] - rgb(png)[opaque])
    assert np.median(colour_error) <= 2  # lossy at BG_JPEG_QUALITY


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_crop_garment_returns_the_garment_box(bg_client, urls, photo_mask, form, fmt):
    box = garment_box(photo_mask)
    assert box is not None and (box[2] - box[0], box[3] - box[1]) != PHOTO.size
    x0, y0, x1, y1 = box
    assert x0 <= PHOTO_BOXES["top"][0] and x1 > PHOTO_BOXES["top"][2] and y1 > PHOTO_BOXES["trousers"][3] - 12
    cropped = opened_picture(post(bg_client, form, urls, {"crop": "garment", "format": fmt}))
    assert cropped.size == (x1 - x0, y1 - y0)
    if fmt == "png":  # exactly the uncropped result's box: the same pixels and alpha, nothing else
        whole = opened_picture(post(bg_client, form, urls, {"format": "png"}))
        assert np.array_equal(np.asarray(cropped), np.asarray(whole.crop(box)))


@pytest.mark.parametrize("form", FORMS)
def test_crop_with_background_url_covers_the_cropped_output(bg_client, urls, photo_mask, form):
    box = garment_box(photo_mask)
    size = (box[2] - box[0], box[3] - box[1])
    out = opened_picture(post(bg_client, form, urls, {"crop": "garment", "background_url": urls["bands.png"],
                                                      "format": "png"}))
    assert out.size == size and out.mode == "RGB"
    outside = photo_mask[box[1]:box[3], box[0]:box[2]] == 0
    assert np.array_equal(rgb(out)[outside], np.asarray(cover(banded_background(), size), np.int16)[outside])
    colours, clear = expected_bands((100, 400), size)
    assert (np.abs(rgb(out) - colours[:, None, :])[outside & clear[:, None]] <= 2).all()


def test_options_combine_with_classes(bg_client, urls):
    out = rgb(opened_picture(post(bg_client, "multipart", urls, {"classes": "lower", "format": "png",
                                                                 "background_url": urls["bands.png"]})))
    x0, y0, x1, y1 = scenes.inner(PHOTO_BOXES["top"], 8)
    colours, clear = expected_bands((100, 400), PHOTO.size)
    rows = np.arange(y0, y1)[clear[y0:y1]]
    assert (out[rows, x0:x1] == colours[rows][:, None, :]).all()  # the top is background now


# ------------------------------------------------------------------ bad input, in each form


BAD_FIELDS = [  # (options, status, field); values as a form or query string spells them
    ({"background": "red"}, 400, "background"),
    ({"background": "#12345"}, 400, "background"),
    ({"background": "#gggggg"}, 400, "background"),
    ({"background": "#000000", "background_url": "BANDS"}, 400, "background_url"),
    ({"background_url": ""}, 400, "background_url"),
    ({"background_url": "   "}, 400, "background_url"),
    ({"background_url": "ftp://example.com/bg.png"}, 400, "background_url"),
    ({"background_url": "file:///etc/passwd"}, 400, "background_url"),
    ({"background_url": "javascript:alert(1)"}, 400, "background_url"),
    ({"background_url": "http:///nohost.png"}, 400, "background_url"),
    ({"background_url": "not a url"}, 400, "background_url"),
    ({"background_url": "http://example.com:99999/bg.png"}, 400, "background_url"),
    ({"background_url": "http://10.0.0.1/bg.png"}, 400, "background_url"),
    ({"background_url": "http://169.254.169.254/latest/meta-data/"}, 400, "background_url"),
    ({"background_url": "http://[::1]/bg.png"}, 400, "background_url"),
    ({"background_url": "http://localhost/bg.png"}, 400, "background_url"),
    ({"background_url": "bg-redirect-private"}, 400, "background_url"),
    ({"background_url": "bg-404.png"}, 502, "background_url"),
    ({"background_url": "bg-500.png"}, 502, "background_url"),
    ({"background_url": "bg-page.html"}, 415, "background_url"),
    ({"background_url": "bg.svg"}, 415, "background_url"),
    ({"background_url": "bg-empty.png"}, 422, "background_url"),
    ({"background_url": "bg-tiny.png"}, 422, "background_url"),
    ({"background_url": "bg-truncated.jpg"}, 422, "background_url"),
    ({"background_url": "bg-oversize.png"}, 413, "background_url"),
    ({"background_url": "bg-huge-header.png"}, 413, "background_url"),
    ({"format": "gif"}, 400, "format"),
    ({"format": ""}, 400, "format"),
    ({"format": "web p"}, 400, "format"),
    ({"crop": "yes"}, 400, "crop"),
    ({"crop": ""}, 400, "crop"),
    ({"crop": " garment"}, 400, "crop"),
    ({"crop": "box"}, 400, "crop"),
    ({"crop_margin": "0.1"}, 400, "crop_margin"),  # unknown fields are still refused
    ({"background_colour": "#ffffff"}, 400, "background_colour"),
]


def _resolve(options: dict, urls: dict) -> dict:
    """Route names of the test upstream (and the BANDS placeholder) as full URLs."""
    named = {**urls, "BANDS": urls["bands.png"]}
    return {k: named.get(v, v) if k == "background_url" else v for k, v in options.items()}


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("options,status,field", BAD_FIELDS, ids=lambda v: repr(v) if isinstance(v, dict) else None)
def test_bad_options(bg_client, urls, assert_still_serving, form, options, status, field):
    response = post(bg_client, form, urls, _resolve(options, urls))
    _assert_problem(response, status)
    assert response.json["field"] == field, response.json
    if field == "background_url" and status != 400:
        assert response.json["detail"].startswith("background_url: ")
    assert_still_serving()


@pytest.mark.parametrize("body", [
    {"background_url": 5}, {"background_url": None}, {"background_url": ["http://example.com/bg.png"]},
    {"background_url": {"href": "http://example.com/bg.png"}}, {"background_url": True},
    {"background": 0}, {"background": None}, {"background": ["#000000"]},
    {"background": "#000000", "background_url": 5},
    {"format": 5}, {"format": None}, {"format": ["webp"]},
    {"crop": True}, {"crop": 1}, {"crop": None}, {"crop": ["garment"]}, {"crop": {"garment": True}},
])
def test_wrong_json_types(bg_client, urls, assert_still_serving, body):
    response = bg_client.post("/", json={"url": urls["opt-photo.png"], **body})
    _assert_problem(response, 400)
    field = "background_url" if "background_url" in body else next(iter(body))
    assert response.json["field"] == field
    assert_still_serving()


def test_private_background_is_refused_under_the_production_policy(bg_models, assert_still_serving):
    """No host exempt at all (the shipped FetchPolicy): the loopback the tests' upstream uses too."""
    from bgremoval import create_app
    from bgremoval.config import BgConfig

    client = create_app(BgConfig(), models=bg_models).test_client()
    for form in ("multipart", "query"):  # the JSON form's own url would be refused first
        response = post(client, form, {}, {"background_url": "http://127.0.0.1/bg.png"})
        _assert_problem(response, 400)
        assert response.json["field"] == "background_url" and "non-public" in response.json["detail"]
    assert_still_serving()


def test_a_stalled_background_host_is_504(bg_client, urls, assert_still_serving):
    response = post(bg_client, "query", urls, {"background_url": urls["bg-stalled.png"]})
    _assert_problem(response, 504)
    assert response.json["field"] == "background_url"
    assert_still_serving()


def test_background_fetch_waits_for_the_photo_header(bg_client, upstream, assert_still_serving):
    """The background is downloaded only once the photo passed its header checks: a refused photo
    costs no download and its problem names no background."""
    requested = []

    def counted(handler):
        requested.append(handler.path)
        handler.send_error(404)
    upstream.routes["/bg-counted.png"] = counted
    query = urlencode({"background_url": upstream.base_url + "/bg-counted.png"})
    refused = bg_client.post("/?" + query, data=b"%PDF-1.4 not an image", content_type="image/png")
    _assert_problem(refused, 415)
    assert "field" not in refused.json and requested == []  # never downloaded for a refused photo
    failed = bg_client.post("/?" + query, data=PHOTO_PNG, content_type="image/png")
    _assert_problem(failed, 502)
    assert failed.json["field"] == "background_url" and requested == ["/bg-counted.png"]
    assert_still_serving()


@pytest.mark.parametrize("form", ("multipart", "query"))
def test_webp_too_large_for_the_format_is_422_before_the_models(bg_app, urls, assert_still_serving, form,
                                                                monkeypatch):
    pipeline = bg_app.extensions["bg_pipeline"]
    monkeypatch.setattr(pipeline, "remove_background", lambda *a, **k: pytest.fail("models ran"))
    wide = encode(Image.new("RGB", (16384 + 16, 8), (128, 128, 128)))
    response = post(bg_app.test_client(), form, urls, {"format": "webp"}, photo=wide)
    _assert_problem(response, 422)
    assert response.json["field"] == "format" and "16383" in response.json["detail"]
    monkeypatch.undo()
    assert_still_serving()


# ------------------------------------------------------------------ the OpenAPI document


def test_openapi_documents_every_option_in_every_form(bg_client):
    post_op = bg_client.get("/openapi.json").json["paths"]["/"]["post"]
    content = post_op["requestBody"]["content"]
    assert set(content["application/json"]["schema"]["properties"]) == OPTION_FIELDS | {"url"}
    assert set(content["multipart/form-data"]["schema"]["properties"]) == OPTION_FIELDS | {"file"}
    assert {p["name"] for p in post_op["parameters"] if p["in"] == "query"} == OPTION_FIELDS
    assert {"image/jpeg", "image/png", "image/webp"} <= set(post_op["responses"]["200"]["content"])
    assert post_op["requestBody"]["content"]["application/json"]["schema"]["properties"]["format"]["enum"] == [
        "jpeg", "png", "webp"]


def test_openapi_request_schema_accepts_good_bodies_and_refuses_bad_ones(bg_client, urls):
    document = bg_client.get("/openapi.json").json
    schema = document["paths"]["/"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    good = {"url": "http://example.com/a.jpg", "background_url": "http://example.com/bg.jpg",
            "format": "webp", "crop": "garment", "classes": ["upper"]}
    jsonschema.validate(good, schema)
    for bad in ({**good, "background": "#000000"}, {**good, "crop": "yes"}, {**good, "format": "gif"},
                {**good, "crop_margin": 1}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_responses_match_the_openapi_document(bg_client, urls):
    document = bg_client.get("/openapi.json").json
    bands = urls["bands.png"]
    assert _check(bg_client, document, "post", "/?format=webp", "/", data=PHOTO_PNG,
                  content_type="image/png").mimetype == "image/webp"
    assert _check(bg_client, document, "post", "/?" + urlencode({"format": "png", "background_url": bands,
                                                                   "crop": "garment"}), "/",
                  data=PHOTO_PNG, content_type="image/png").status_code == 200
    assert _check(bg_client, document, "post", "/", "/", json={"url": urls["opt-photo.png"], "format": "webp",
                                                                "background_url": bands}).status_code == 200
    assert _check(bg_client, document, "post", "/", "/", data={"file": (io.BytesIO(PHOTO_PNG), "p.png"),
                                                               "crop": "garment", "format": "webp"},
                  content_type="multipart/form-data").status_code == 200
    for options, status in (({"background": "#000000", "background_url": bands}, 400), ({"crop": "yes"}, 400),
                            ({"background_url": urls["bg-404.png"]}, 502),
                            ({"background_url": urls["bg-page.html"]}, 415),
                            ({"background_url": urls["bg-huge-header.png"]}, 413),
                            ({"background_url": urls["bg-truncated.jpg"]}, 422)):
        response = _check(bg_client, document, "post", "/", "/", json={"url": urls["opt-photo.png"], **options})
        assert response.status_code == status and response.json["field"] in ("background_url", "crop")
