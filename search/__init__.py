"""Text search over precomputed, per-product pooled CLIP embeddings of garment-only photos."""
from __future__ import annotations

from flask import Flask

from search.config import SearchConfig


def create_app(config: SearchConfig | None = None, *, embedder=None, garments=None) -> Flask:
    """App factory. `embedder` (a ClipEmbedder) and `garments` (a garment source, search/garments.py)
    let tests share loaded models between apps."""
    from search.api import bp
    from search.schemas import openapi_document
    from search.searcher import Searcher
    from shared.web import create_service_app

    from shared.garment_vocabulary import Vocabulary

    config = config or SearchConfig.from_env()
    vocabulary = Vocabulary.load(config.vocabulary_path)  # a bad file stops the start, naming it

    def load(app: Flask) -> str:
        import logging
        import os

        from prometheus_client import Counter

        from search.index_format import FORMAT_VERSION, check_built_with, read_meta
        from search.live import Generation, LiveIndex, check_catalog
        from search.searcher import QueryCache
        from search.text_encoder import export_dir, open_text_encoder
        from search.vectors import VectorStoreError, open_store

        startup_log = logging.getLogger("fashion.startup")

        export = export_dir(config)  # resolved once: both towers come from the same export
        model = embedder if embedder is not None else open_text_encoder(
            config.clip, config.text_encoder, export, keep_image_tower=config.image_queries)
        try:
            meta = read_meta(config.index_dir)
        except (OSError, ValueError):
            meta = None  # opening the index below says what is wrong with it
        if isinstance(meta, dict) and meta.get("format_version") == FORMAT_VERSION:
            check_built_with(meta, model.identity)  # other weights fail here, before the image tower loads
        photo_parts = None
        if config.image_queries:  # the image tower (and the garment step) load only for photo queries
            from search.image_encoder import open_image_encoder
            from search.photos import PhotoEmbedder, open_garments
            from shared.budget import PixelBudget

            photo_parts = (garments if garments is not None else open_garments(config),
                           open_image_encoder(config.clip, model, export))
            # One per worker, whatever generation serves: photo queries' pixels, as the bg service's.
            app.extensions["pixel_budget"] = PixelBudget(config.max_inflight_mp, config.inflight_wait_s)
        cache = QueryCache(config.query_cache_size)  # one for every generation: the model is the same

        def open_generation(index, hold) -> Generation:
            """A generation checked as at start, over the models loaded once."""
            catalog = check_catalog(index, config.catalog_dir, config.startup_image_sample)
            index.check_compatible(model.identity)
            photos = None
            if photo_parts is not None:
                photos = PhotoEmbedder(*photo_parts, index_meta=index.meta, max_pixels=config.max_image_pixels,
                                       budget=app.extensions["pixel_budget"],
                                       look_min_fraction=config.look_min_fraction)
            store = open_store(config.vectors, index)
            try:
                searcher = Searcher(index, model, store=store, fusion=config.fusion, cache=cache)
                try:
                    searcher.search("warm up", 1)  # pages the new arrays in before any request reads them
                except VectorStoreError as exc:  # a vector database that is down: /readyz says so, and it recovers
                    startup_log.warning("warm-up query skipped: %s", exc)
            except BaseException:
                store.close()
                raise
            return Generation(index, searcher, photos, catalog, hold)

        readiness = app.extensions["readiness"]
        registry = app.extensions["metrics"].registry
        generations = Counter("search_index_generations_total",
                              "Index generations a worker opened: initial, swapped (a new one served) or refused",
                              ["outcome"], registry=registry)
        app.extensions["missing_images"] = Counter(
            "search_missing_images_total", "Index images not found in the catalog at query time: a result shown "
            "with another image of its product (result), or a 404 for that image (image)", ["where"], registry=registry)

        def on_event(outcome: str, generation: Generation | None, detail: str) -> None:
            generations.labels(outcome).inc()
            if generation is None:
                readiness.info["last_refused_generation"] = detail  # /readyz says why the old one still serves
            else:
                readiness.info.pop("last_refused_generation", None)

        live = LiveIndex(config.index_dir, open_generation, poll_s=config.index_poll_s, on_event=on_event)
        current = live.current
        app.extensions["live_index"] = live
        app.extensions["photos_on"] = photo_parts is not None
        app.extensions["garment_vocabulary"] = vocabulary
        readiness.info.update(pid=os.getpid(), text_encoder=model.describe(),
                              photo_queries=current.photos.describe() if current.photos is not None else "off")
        readiness.probe = lambda: live.current.store.check()
        readiness.dynamic_info = lambda: live.current.info  # the generation serving now, never a stale copy
        live.start_watching()
        return (f"{len(current.index.products)} products, {len(current.index.image_files)} images, generation "
                f"{current.name}, {model.model_name} ({model.describe()}), backend {current.store.backend}, photo "
                f"queries {current.photos.describe() if current.photos is not None else 'off'}")

    app = create_service_app(
        __name__, service="search", openapi=openapi_document(config), blueprint=bp,
        max_body_bytes=max(config.max_body_bytes, config.max_upload_bytes),
        settings=("SEARCH", config), loader=load, page="search.page",
    )

    @app.after_request
    def _generation_header(response):
        """Which index generation answered: the request's own, else the one served now."""
        from flask import g

        generation = g.get("index_generation")
        live = app.extensions.get("live_index")
        if generation is None and live is not None:
            generation = live.current
        if generation is not None:
            response.headers["X-Index-Generation"] = generation.name
        return response

    return app
