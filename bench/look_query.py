"""What a "shop the look" photo query adds per extra garment, against a one-garment photo query
measured in the same run.

    python bench/look_query.py --weights DIR [--photos ../shared/data/ccp/images] [--queries 6]

DIR holds rembg's three models at real cost: ../shared/tools/real-cost-models/make_models.py --out
DIR, plus ../shared/models/isnet-general-use.onnx. The person matte is IS-Net (--person-model),
the only real matte here: random U^2-Net person weights find no person in a street photo, and the
flat-lay branch would run instead of the cloth model. CLIP is ViT-B-32 with random weights (real size
and cost) exported to ONNX as the shipped image serves it (image tower, 1 thread: ORT_THREADS /
TORCH_THREADS=1 as shipped), over a synthetic exact index of --products products.

A look query runs the garment step once (the label map comes from the same person-matte and
cloth-model runs as a plain cut-out: the model runs are counted), then embeds every garment in
ONE image-tower call and ranks each garment's vector. So the stages that grow with the garments
are the image tower and the ranking; this prints both for 1, 2 and 3 garments, and the garment
step with and without labels, as medians over --queries street photos (CCP, 1185 x 1600).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.memory import write_synthetic_index  # noqa: E402


def median_ms(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


class CountingSession:
    """A ModelSession whose runs are counted and timed (the look must not add any run)."""

    def __init__(self, session):
        self.session, self.runs, self.seconds = session, 0, 0.0

    def __getattr__(self, name):
        attr = getattr(self.session, name)
        if name in ("mattes", "class_probabilities"):
            def counted(*args, **kwargs):
                self.runs += 1
                started = time.perf_counter()
                try:
                    return attr(*args, **kwargs)
                finally:
                    self.seconds += time.perf_counter() - started
            return counted
        return attr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, required=True, help="rembg models (U2NET_HOME) of real cost")
    parser.add_argument("--photos", type=Path, default=REPO.parent / "shared" / "data" / "ccp" / "images")
    parser.add_argument("--queries", type=int, default=6, help="street photos for the garment step")
    parser.add_argument("--repeats", type=int, default=7, help="runs per image-tower / ranking figure")
    parser.add_argument("--products", type=int, default=20_000)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--person-model", default="isnet-general-use",
                        help="BG_PERSON_MODEL (IS-Net: real weights, so a person is found and the cloth model runs)")
    args = parser.parse_args()
    if not args.photos.is_dir():
        print(f"skipped: {args.photos} is absent (needs ../shared/data beside the repo)")
        return 0
    os.environ.setdefault("ORT_THREADS", "1")
    os.environ["U2NET_HOME"] = str(args.weights)
    os.environ["BG_PERSON_MODEL"] = args.person_model

    import numpy as np
    from PIL import Image

    from bgremoval.config import BgConfig
    from bgremoval.models import load_models
    from bgremoval.pipeline import GarmentPipeline
    from search.config import ClipSettings
    from search.embedder import ClipEmbedder
    from search.garments import LocalGarments
    from search.image_encoder import OnnxImageEncoder
    from search.index_format import Index
    from search.indexing.export import export_text_encoder
    from search.searcher import Searcher
    from search.text_encoder import EXPORT_DIRNAME
    from shared.images import decode_image

    embedder = ClipEmbedder(ClipSettings(model=args.model, pretrained=""))
    identity = embedder.identity
    with tempfile.TemporaryDirectory() as tmp:
        _, index_dir, images, _ = write_synthetic_index(Path(tmp), args.products, 3, identity, len(identity["probe"]))
        export_text_encoder(embedder, index_dir / EXPORT_DIRNAME, int8=False)
        del embedder
        tower = OnnxImageEncoder(index_dir / EXPORT_DIRNAME, threads=1)
        index = Index.load(index_dir)
        searcher = Searcher(index, embedder=None)

        config = BgConfig.from_env()
        models = load_models(config)
        models.person, models.cloth, models.product = (CountingSession(m) for m in (models.person, models.cloth,
                                                                                    models.product))
        pipeline = GarmentPipeline(models, config.pipeline)
        garments = LocalGarments(pipeline)
        photos = sorted(args.photos.glob("*.jpg"))[: args.queries]
        decoded = [decode_image(p.read_bytes(), max_side=garments.working_max_side) for p in photos]
        garments.garment(decoded[0])  # first runs of each session

        plain, look, runs = [], [], {}
        own = {"plain": [], "look": []}  # the pipeline's own work: its time less the models'
        sessions = (models.person, models.cloth, models.product)
        for photo in decoded:
            for label, times, call in (("plain", plain, lambda d=photo: pipeline.garment_mask(d.rgb, alpha=d.alpha)),
                                       ("look", look, lambda d=photo: pipeline.garment_mask(d.rgb, alpha=d.alpha,
                                                                                           labels=True))):
                before = (models.person.runs, models.cloth.runs, models.product.runs)
                model_seconds = sum(m.seconds for m in sessions)
                started = time.perf_counter()
                try:
                    call()
                except Exception:  # noqa: BLE001 - random weights may find no garment: the runs still count
                    pass
                times.append((time.perf_counter() - started) * 1000)
                own[label].append(times[-1] - (sum(m.seconds for m in sessions) - model_seconds) * 1000)
                runs[label] = (models.person.runs - before[0], models.cloth.runs - before[1],
                               models.product.runs - before[2])
        plain_ms, look_ms = statistics.median(plain), statistics.median(look)

        crops = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (300 + 40 * i, 220, 3), np.uint8))
                 for i in range(3)]
        queries = tower.encode_images(crops)
        tower_ms = {k: median_ms(lambda k=k: tower.encode_images(crops[:k]), args.repeats) for k in (1, 2, 3)}
        rank_ms = {k: median_ms(lambda k=k: searcher.search_vectors(list(queries[:k]), 10, "linen tunic"),
                                args.repeats) for k in (1, 2, 3)}
        look_lists_ms = {k: median_ms(lambda k=k: [searcher.search_vector(q, 10, "linen tunic") for q in queries[:k]],
                                      args.repeats) for k in (1, 2, 3)}

    print(f"{args.model} image tower (ONNX, 1 thread), exact index of {args.products:,} products ({images:,} images), "
          f"{len(decoded)} CCP street photos at the working size")
    print(f"\ngarment step ({args.person_model} person matte + real-cost U^2-Net cloth, median of {len(decoded)} "
          "photos; model runs of the last photo):")
    for key, label, ms in (("plain", "plain cut-out mask", plain_ms), ("look", "with the look's labels", look_ms)):
        person, cloth, product = runs[key]
        print(f"  {label:<24} {ms:8.1f} ms, of which outside the models {statistics.median(own[key]):6.1f} ms; "
              f"model runs: person {person}, cloth {cloth}, flat-lay matte {product}")
    print(f"  the labels add {statistics.median(own['look']) - statistics.median(own['plain']):+.1f} ms of the "
          "pipeline's own work (the model times vary by seconds between runs on a 2-core VM)")
    print("\nper garment in the photo (median ms):")
    print("  garments | image tower (one call) | rank, best over garments | rank, one list per garment (look)")
    for k in (1, 2, 3):
        print(f"  {k:8d} | {tower_ms[k]:22.1f} | {rank_ms[k]:24.1f} | {look_lists_ms[k]:10.1f}")
    base = plain_ms + tower_ms[1] + rank_ms[1]
    extra_tower = (tower_ms[3] - tower_ms[1]) / 2
    extra_rank = (look_lists_ms[3] - look_lists_ms[1]) / 2
    print(f"\na one-garment photo query ~ {base:.0f} ms here (garment step + tower + rank); each extra garment adds "
          f"one image in the tower's call ({extra_tower:.1f} ms) and one ranking ({extra_rank:.1f} ms): "
          f"+{(extra_tower + extra_rank) / base:.1%} of the query per garment, and no model run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
