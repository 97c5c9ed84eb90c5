"""The command-line tools run end to end: evaluations, weights check, sample fetch, index info."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.conftest import REPO, TINY, shared_data

# A tiny CCP-like dataset whose scores are known exactly under the oracle models: class indices
# as in classes.tsv, regions as PIL boxes (x0, y0, x1, y1), both ends inclusive.
CLASSES = {0: "null", 1: "skin", 2: "hair", 3: "t-shirt", 4: "pants", 5: "shoes", 6: "sweater", 7: "scarf"}


def _labelled(size: tuple[int, int], regions: list[tuple[tuple, int]]) -> Image.Image:
    labels = Image.new("L", size, 0)
    draw = ImageDraw.Draw(labels)
    for box, class_index in regions:
        draw.rectangle(box, fill=class_index)
    return labels


def _write_ccp_like(root) -> None:
    from tests import scenes

    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.tsv").write_text("index\tname\n" + "".join(f"{i}\t{n}\n" for i, n in CLASSES.items()))

    # a_street (240x320): the oracle sees face + red top + blue trousers as the main person, a
    # bystander and a tree as other people, top + trousers as garment. The labels differ on
    # purpose: hair above the face and a sleeve beside the top that the oracle cannot see (grey
    # pixels), shoes at the bottom of the blue trousers (not a garment); bystander/tree are null.
    street, b = scenes.street_photo(240, 320)
    assert b["face"] == (100, 32, 140, 72) and b["top"] == (80, 72, 160, 180)
    assert b["trousers"] == (88, 180, 152, 304) and b["tree"] == (208, 160, 236, 280)
    assert b["bystander_face"] == (8, 120, 32, 144) and b["bystander_top"] == (4, 144, 36, 208)
    street_labels = _labelled(street.size, [
        (b["face"], 1), (b["top"], 3), (b["trousers"], 4),
        ((88, 290, 152, 304), 5),  # shoes
        ((100, 24, 140, 31), 2),  # hair
        ((70, 80, 79, 150), 3),  # sleeve
    ])
    # b_flatlay (640x480): no person, so the product matte finds the dark sweater; its top 21 rows
    # are labelled scarf (not a garment).
    flat, sweater = scenes.flat_lay_photo()
    assert sweater == (200, 120, 440, 380)
    flat_labels = _labelled(flat.size, [(sweater, 6), ((200, 120, 440, 140), 7)])
    # c_nothing: a light wall; labels claim a t-shirt the models cannot see -> refused, IoU 0.
    wall = Image.new("RGB", (240, 320), (240, 240, 240))
    wall_labels = _labelled(wall.size, [((80, 72, 160, 180), 3)])

    for stem, photo, labels in (("a_street", street, street_labels), ("b_flatlay", flat, flat_labels),
                                ("c_nothing", wall, wall_labels)):
        # Flat colours, 4:4:4, quality 100: JPEG moves no pixel across an oracle threshold.
        photo.save(root / "images" / f"{stem}.jpg", quality=100, subsampling=0)
        labels.save(root / "labels" / f"{stem}.png")


# Areas from the boxes above (w x h, inclusive ends):
#   face 41x41 = 1681, top 81x109 = 8829 (shares row 72 with the face: 41 px),
#   trousers 65x125 = 8125 (shares row 180 with the top: 65 px), shoes 65x15 = 975, hair 41x8 = 328,
#   sleeve 10x71 = 710, bystander 25x25 + 33x65 - 25 = 2745, tree 29x121 = 3509.
#   predicted garment = top | trousers = 8829 + 8125 - 65 = 16889
#   garment truth = predicted - shoes + sleeve: IoU = (16889 - 975) / (16889 + 710)
#   main person = face | top | trousers = 16889 + 1681 - 41 = 18529
#   person truth = main person + hair + sleeve: IoU = 18529 / (18529 + 328 + 710)
#   everyone = main person + bystander + tree: IoU = 18529 / (18529 + 2745 + 3509 + 328 + 710)
#   flat-lay sweater 241x261 = 62901, scarf 241x21 = 5061: IoU = (62901 - 5061) / 62901
STREET_GARMENT_IOU = 15914 / 17599
STREET_MAIN_IOU = 18529 / 19567
STREET_ALL_IOU = 18529 / 25821
FLATLAY_GARMENT_IOU = 57840 / 62901
# The street photo's largest labelled garment is the t-shirt (top - 65 px under the trousers +
# sleeve = 9474 px; pants 8125 - 975 under the shoes = 7150): the product. Its classes (upper)
# keep the red top alone (8764 px); every garment kept adds the trousers.
STREET_PRODUCT_IOU = 8764 / 9474
STREET_PRODUCT_IOU_ALL = 8764 / 17599


def test_bg_evaluation_scores_a_constructed_dataset_exactly(oracle_weights, tmp_path, capsys):
    from bgremoval import evaluate

    data = tmp_path / "ccp_like"
    _write_ccp_like(data)
    rows = evaluate.evaluate(data, tmp_path / "worst", limit=None, worst=2)
    out = capsys.readouterr().out
    assert [r.image for r in rows] == ["a_street", "b_flatlay", "c_nothing"]
    street, flat, nothing = rows
    exact = lambda value: pytest.approx(value, abs=2e-4)  # a few pixels of resampled edge at most
    assert street.garment_iou == exact(STREET_GARMENT_IOU)
    assert street.person_iou_main == exact(STREET_MAIN_IOU)
    # the main person is also the largest blob here: both rules agree
    assert street.person_iou_by_rule == {"largest": exact(STREET_MAIN_IOU), "central": exact(STREET_MAIN_IOU)}
    assert street.person_iou_all == exact(STREET_ALL_IOU)
    assert street.note == ""
    # No person on a flat-lay: the garment comes from the product matte; the person IoU is 0.
    assert flat.garment_iou == exact(FLATLAY_GARMENT_IOU)
    assert flat.person_iou_main == flat.person_iou_all == 0.0 and flat.note == ""
    assert nothing.garment_iou == nothing.person_iou_main == nothing.person_iou_all == 0.0
    assert nothing.note == "No person and no product could be found in the image."

    # Product-only masks: the street photo's t-shirt (upper) without the trousers under it.
    assert (street.product, street.product_classes, street.product_fallback) == ("t-shirt", ("upper",), False)
    assert street.product_iou == exact(STREET_PRODUCT_IOU) and street.product_iou_all == exact(STREET_PRODUCT_IOU_ALL)
    assert street.others_kept == 0.0 and street.others_kept_all == exact(1.0)
    # a flat-lay's product matte has no classes: the same mask either way; no other garment labelled
    assert flat.product == "sweater" and flat.product_iou == flat.product_iou_all == exact(FLATLAY_GARMENT_IOU)
    assert flat.others_kept is None and nothing.product_iou == nothing.product_iou_all == 0.0
    assert "product only (3 photos" in out and "(1 better, 0 worse)" in out
    assert "other garments kept 0.0000 vs 1.0000 (1 photos with other garments)" in out

    assert "keep-main-person changed 1 of 3 images: 1 better, 0 worse" in out
    assert "largest beats central on 0 images, loses on 0" in out
    saved = sorted(p.name for p in (tmp_path / "worst").glob("*.jpg"))
    assert saved == ["worst_0.000_c_nothing.jpg", f"worst_{street.garment_iou:.3f}_a_street.jpg"]


def test_bg_evaluation_report_on_labelled_street_photos(oracle_weights, tmp_path, capsys):
    """The real CCP photos (oracle models, so the numbers themselves mean little): the report
    covers the first images in order, and its means, counts and saved worst cases agree."""
    from bgremoval import evaluate

    data = shared_data("ccp")
    rows = evaluate.evaluate(data, tmp_path / "worst", limit=4, worst=2)
    out = capsys.readouterr().out
    assert [r.image for r in rows] == [p.stem for p in sorted((data / "images").glob("*.jpg"))[:4]]
    assert all(None not in (r.garment_iou, r.person_iou_main, r.person_iou_all) for r in rows)
    mean = lambda attr: np.mean([getattr(r, attr) for r in rows])
    assert (f"MEAN     {mean('garment_iou'):>11.4f} {mean('person_iou_main'):>11.4f} "
            f"{mean('person_iou_all'):>10.4f}") in out
    changed = [r for r in rows if abs(r.person_iou_main - r.person_iou_all) > 1e-6]
    better = sum(r.person_iou_main > r.person_iou_all for r in changed)
    assert (f"keep-main-person changed {len(changed)} of 4 images: {better} better, "
            f"{len(changed) - better} worse") in out
    worst = sorted(rows, key=lambda r: r.garment_iou)[:2]
    saved = sorted(p.name for p in (tmp_path / "worst").glob("worst_*.jpg"))
    assert saved == sorted(f"worst_{r.garment_iou:.3f}_{r.image}.jpg" for r in worst)


def test_iou_and_class_mapping():
    from bgremoval.evaluate import GARMENT_CLASS_NAMES, iou

    a = np.zeros((4, 4), bool); a[:2] = True
    b = np.zeros((4, 4), bool); b[1:3] = True
    assert iou(a, b) == 4 / 12
    assert {"skin", "hair", "null", "shoes", "bag", "scarf", "sunglasses"}.isdisjoint(GARMENT_CLASS_NAMES)
    assert {"dress", "jeans", "t-shirt", "coat"} <= GARMENT_CLASS_NAMES


def test_search_evaluation(synthetic_catalog, synthetic_index, tmp_path, capsys, monkeypatch):
    from search import evaluate

    queries = tmp_path / "q.tsv"
    queries.write_text("query\trelevant_products\tkind\nyellow dress\t3-yellow-dress-shop-333\tname_words\n"
                       "red top\t1-red-top-shop-111,4-dark-red-blouse-shop-444\tname_words\n")
    monkeypatch.setenv("CLIP_MODEL", TINY["model"])
    monkeypatch.setenv("CLIP_PRETRAINED", "")
    monkeypatch.setenv("CLIP_CONFIG_DIR", TINY["extra_config_dir"])
    assert evaluate.main(["--catalog", str(synthetic_catalog), "--queries", str(queries),
                          "--index", str(synthetic_index)]) == 0
    out = capsys.readouterr().out
    assert "OVERALL" in out and "score-max" in out
    assert evaluate.metrics(["a", "b", "c"], {"b"}) == {"R@1": 0.0, "R@5": 1.0, "MRR": 0.5}


def test_weights_check_reports_missing(tmp_path):
    result = subprocess.run([sys.executable, "-m", "bgremoval.weights", "check"], cwd=REPO,
                            env={"U2NET_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert result.returncode == 1 and "MISSING" in result.stdout


def test_sample_fetch_verifies_a_local_copy(tmp_path):
    catalog = shared_data("catalog")
    out = tmp_path / "copy"
    result = subprocess.run([sys.executable, "sample/fetch_catalog.py", "--from", str(catalog), "--out", str(out)],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-500:]
    assert len(list(out.glob("*/*.png"))) == 171
    tampered = tmp_path / "tampered"
    subprocess.run(["cp", "-r", str(out), str(tampered)], check=True)
    victim = sorted(tampered.glob("*/*.png"))[0]
    Image.new("RGB", (10, 10)).save(victim)
    bad = subprocess.run([sys.executable, "sample/fetch_catalog.py", "--from", str(tampered), "--out",
                          str(tmp_path / "again")], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 1 and "sha256 differs" in bad.stderr


def test_index_info(synthetic_index):
    result = subprocess.run([sys.executable, "-m", "search.index", "info", "--index", str(synthetic_index)],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0 and '"products": 6' in result.stdout


def test_problem_for_status_maps_remote_errors():
    from shared.errors import ProblemError, Unprocessable, UpstreamTimeout, problem_for_status

    assert isinstance(problem_for_status(422, "no garment"), Unprocessable)
    assert isinstance(problem_for_status(504, "slow"), UpstreamTimeout)
    odd = problem_for_status(418, "teapot")
    assert isinstance(odd, ProblemError) and odd.status == 418 and odd.detail == "teapot"


def test_the_scale_bench_writes_a_servable_index_of_clip_like_vectors(tmp_path):
    """bench/scale.py's generator writes the service's index format, and its vectors have the
    geometry its docstring promises (shared direction, close neighbours, a text-like gap)."""
    from bench.scale import PER_PRODUCT, ClipLike, ClipLikeParams, data_stats, write_generated_index
    from search.index_format import Index
    from search.vectors.exact import ExactStore

    generator = ClipLike(ClipLikeParams(categories=30))
    write_generated_index(tmp_path / "index", generator, 3000, {"model": "test"}, tmp_path / "catalog")
    index = Index.load(tmp_path / "index")
    assert len(index.products) == 3000 and len(index.image_files) == 3000 * PER_PRODUCT
    assert list(index.products[i] for i in range(3)) == sorted(index.products[i] for i in range(3))
    rows = index.image_rows(7)
    pooled = np.asarray(index.image_embeddings[rows.start:rows.stop]).max(axis=0)
    assert np.allclose(index.product_embeddings[7], pooled / np.linalg.norm(pooled), atol=1e-6)
    texts, queries, query_categories = generator.queries(40)
    stats = data_stats(index, queries, query_categories, generator.categories(3000))
    assert 0.4 < stats["product_pair_cos"] < 0.7  # one shared image direction
    assert stats["nn1_cos"] > stats["product_pair_cos"] + 0.2  # neighbours within a category
    assert stats["query_top1"] < stats["product_pair_cos"]  # text queries sit apart (modality gap)
    assert stats["top10_in_category"] > 0.5  # and still find their category
    top = ExactStore(index).top(queries[0], 10)
    assert np.all(np.diff(top.scores) <= 0)
